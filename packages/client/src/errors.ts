/**
 * Errors from a Generate call, as classes of @moela/core's tree, so the same `instanceof` checks
 * work in a moela service and in an application using this client. Each status code comes back as
 * its class (core's ERROR_CLASS_BY_CODE, the mapping @moela/rpc uses too), for example:
 *
 *   CANCELLED -> CancelledError            INVALID_ARGUMENT   -> InvalidArgumentError
 *   UNAVAILABLE -> UnavailableError        RESOURCE_EXHAUSTED -> ResourceExhaustedError
 *   DATA_LOSS -> DataLossError             DEADLINE_EXCEEDED  -> DeadlineExceededError
 *   UNAUTHENTICATED -> UnauthenticatedError (no API key, or a wrong one: MoelaClientOptions.apiKey)
 *   INTERNAL -> InternalError              FAILED_PRECONDITION -> FailedPreconditionError
 *   and so on for every code; the code is also `err.code`.
 *
 * The message is the server's status details; the grpc-js error is kept as `cause`.
 */
import type { ServiceError } from "@grpc/grpc-js";
import { Code, codeName, errorForCode, errorMessage, InternalError, isErrorCode, MoelaError } from "@moela/core";

export { codeName };

function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === "number";
}

/**
 * A status (code + details) as the MoelaError subclass of its code. OK or an unknown code is
 * UNKNOWN here: a failed call cannot have succeeded.
 */
export function errorFromStatus(code: number, details: string, cause?: unknown): MoelaError {
  const message = details === "" ? `${codeName(isErrorCode(code) ? code : Code.UNKNOWN)} (no details from the server)` : details;
  return errorForCode(code, message, cause === undefined ? undefined : { cause });
}

/** Any error a call produced, as a MoelaError (a grpc-js error by its status; others as INTERNAL). */
export function toMoelaError(err: unknown): MoelaError {
  if (err instanceof MoelaError) return err;
  if (isServiceError(err)) return errorFromStatus(err.code, err.details ?? err.message, err);
  return new InternalError(errorMessage(err), { cause: err });
}
