/**
 * Errors across the wire. The server edge sends a known MoelaError as its own gRPC code and
 * message, and anything else as INTERNAL with a fixed message (no stack, no internals: those go
 * to the server's log); RESOURCE_EXHAUSTED carries `retry-after` trailing metadata. The client edge turns a status back into the MoelaError subclass of its
 * code, so `catch (e) { if (e instanceof ResourceExhaustedError) ... }` works on both sides.
 */
import { Metadata, status as GrpcStatus, type ServiceError, type StatusObject } from "@grpc/grpc-js";
import {
  CancelledError,
  Code,
  DataLossError,
  InvalidArgumentError,
  MoelaError,
  ResourceExhaustedError,
  UnavailableError,
} from "@moela/core";

/** Trailing metadata of a RESOURCE_EXHAUSTED status: seconds to wait before trying again (HTTP's Retry-After). */
export const RETRY_AFTER_METADATA = "retry-after";
export const RETRY_AFTER_SECONDS = 1;

/** What every error that is not a MoelaError becomes on the wire. */
export const INTERNAL_DETAILS = "internal error";

function isValidErrorCode(code: unknown): code is Code {
  return typeof code === "number" && Number.isInteger(code) && code >= Code.CANCELLED && code <= Code.UNAUTHENTICATED;
}

/**
 * The status a server sends for `err`: a MoelaError keeps its code and message; anything else is
 * INTERNAL "internal error". A MoelaError carrying OK (not an error code) is a bug and also
 * becomes INTERNAL, since sending OK would turn a failure into a silent success.
 */
export function toStatus(err: unknown): StatusObject {
  if (err instanceof MoelaError && isValidErrorCode(err.code)) {
    const metadata = new Metadata();
    // A full queue or pool clears up: tell the caller when to come back, as HTTP's 429 does (@moela/client honours it).
    if (err.code === Code.RESOURCE_EXHAUSTED) metadata.set(RETRY_AFTER_METADATA, String(RETRY_AFTER_SECONDS));
    return { code: err.code as number as GrpcStatus, details: err.message, metadata };
  }
  return { code: GrpcStatus.INTERNAL, details: INTERNAL_DETAILS, metadata: new Metadata() };
}

/** Whether `err` is an error that grpc-js produced for a call (it carries a numeric status code). */
export function isServiceError(err: unknown): err is ServiceError {
  return (
    err instanceof Error &&
    typeof (err as Partial<ServiceError>).code === "number" &&
    typeof (err as Partial<ServiceError>).details === "string"
  );
}

/** The subclass each code comes back as; codes not listed come back as a plain MoelaError with that code. */
const ERROR_CLASS_BY_CODE: ReadonlyMap<Code, new (message: string, options?: { cause?: unknown }) => MoelaError> =
  new Map<Code, new (message: string, options?: { cause?: unknown }) => MoelaError>([
    [Code.CANCELLED, CancelledError],
    [Code.INVALID_ARGUMENT, InvalidArgumentError],
    [Code.RESOURCE_EXHAUSTED, ResourceExhaustedError],
    [Code.UNAVAILABLE, UnavailableError],
    [Code.DATA_LOSS, DataLossError],
  ]);

/**
 * The MoelaError for a failed call's status (a grpc-js ServiceError or any `{code, details}`):
 * the subclass registered for its code, else a MoelaError carrying the code. The message is the
 * server's `details`; the original error is kept as `cause`. A non-error code (OK, or out of
 * range) becomes UNKNOWN, since a call that failed cannot have succeeded.
 */
export function fromStatus(status: Pick<StatusObject, "code" | "details">): MoelaError {
  return errorForCode(status.code, status.details, { cause: status });
}

/**
 * The MoelaError subclass registered for a status `code`, with the caller's own `message` (a client
 * that words its errors itself, naming its peer); a non-error code (OK, or out of range) becomes UNKNOWN.
 */
export function errorForCode(code: number, message: string, options?: { cause?: unknown }): MoelaError {
  const c: Code = isValidErrorCode(code) ? code : Code.UNKNOWN;
  const ErrorClass = ERROR_CLASS_BY_CODE.get(c);
  return ErrorClass === undefined ? new MoelaError(message, c, options) : new ErrorClass(message, options);
}

/** `err` as a MoelaError: itself when it is one, `fromStatus` for a grpc-js error, else INTERNAL wrapping it. */
export function asMoelaError(err: unknown): MoelaError {
  if (err instanceof MoelaError) return err;
  if (isServiceError(err)) return fromStatus(err);
  return new MoelaError(err instanceof Error ? err.message : String(err), Code.INTERNAL, { cause: err });
}
