/**
 * Errors from a Generate call, as classes of @moela/core's tree, so the same `instanceof` checks
 * work in a moela service and in an application using this client:
 *
 *   CANCELLED -> CancelledError            INVALID_ARGUMENT   -> InvalidArgumentError
 *   UNAVAILABLE -> UnavailableError        RESOURCE_EXHAUSTED -> ResourceExhaustedError
 *   DATA_LOSS -> DataLossError             DEADLINE_EXCEEDED  -> DeadlineExceededError
 *   UNAUTHENTICATED -> UnauthenticatedError (no API key, or a wrong one: MoelaClientOptions.apiKey)
 *   any other code -> MoelaError carrying that code (err.code)
 *
 * The message is the server's status details; the grpc-js error is kept as `cause`.
 */
import type { ServiceError } from "@grpc/grpc-js";
import {
  CancelledError,
  Code,
  DataLossError,
  InvalidArgumentError,
  MoelaError,
  ResourceExhaustedError,
  UnavailableError,
} from "@moela/core";

/**
 * The call ran out of time (its deadline, or the time left for retries). @moela/core has no class
 * for this code, and a client is where deadlines are set, so it lives here.
 */
export class DeadlineExceededError extends MoelaError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, Code.DEADLINE_EXCEEDED, options);
  }
}

/** The router wants an API key and the call carried none, or a wrong one (MoelaClientOptions.apiKey). */
export class UnauthenticatedError extends MoelaError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, Code.UNAUTHENTICATED, options);
  }
}

type ErrorClass = new (message: string, options?: { cause?: unknown }) => MoelaError;

const CLASS_BY_CODE: ReadonlyMap<number, ErrorClass> = new Map<number, ErrorClass>([
  [Code.CANCELLED, CancelledError],
  [Code.INVALID_ARGUMENT, InvalidArgumentError],
  [Code.DEADLINE_EXCEEDED, DeadlineExceededError],
  [Code.RESOURCE_EXHAUSTED, ResourceExhaustedError],
  [Code.UNAVAILABLE, UnavailableError],
  [Code.DATA_LOSS, DataLossError],
  [Code.UNAUTHENTICATED, UnauthenticatedError],
]);

const CODE_NAMES: ReadonlyMap<number, string> = new Map(Object.entries(Code).map(([name, code]) => [code, name]));

/** The name of a gRPC status code ("UNAVAILABLE"), or its number as text when unknown. */
export function codeName(code: number): string {
  return CODE_NAMES.get(code) ?? String(code);
}

function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === "number";
}

/**
 * A status (code + details) as the MoelaError subclass of its code. OK or an unknown code is
 * UNKNOWN here: a failed call cannot have succeeded.
 */
export function errorFromStatus(code: number, details: string, cause?: unknown): MoelaError {
  const known = CODE_NAMES.has(code) && code !== Code.OK;
  const c = (known ? code : Code.UNKNOWN) as Code;
  const message = details === "" ? `${codeName(c)} (no details from the server)` : details;
  const Class = CLASS_BY_CODE.get(c);
  const options = cause === undefined ? undefined : { cause };
  return Class === undefined ? new MoelaError(message, c, options) : new Class(message, options);
}

/** Any error a call produced, as a MoelaError (a grpc-js error by its status; others as INTERNAL). */
export function toMoelaError(err: unknown): MoelaError {
  if (err instanceof MoelaError) return err;
  if (isServiceError(err)) return errorFromStatus(err.code, err.details ?? err.message, err);
  return new MoelaError(err instanceof Error ? err.message : String(err), Code.INTERNAL, { cause: err });
}
