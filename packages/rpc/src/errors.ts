/**
 * Errors across the wire. The server edge sends a known MoelaError as its own gRPC code and
 * message, and anything else as INTERNAL with a fixed message (no stack, no internals: those go
 * to the server's log); RESOURCE_EXHAUSTED carries `retry-after` trailing metadata, and an error with a
 * structured why (MoelaError.reason) carries it as `moela-failure-reason`. The client edge turns a
 * status back into the class of its code (@moela/core's ERROR_CLASS_BY_CODE, the mapping @moela/client
 * uses too), so `catch (e) { if (e instanceof ResourceExhaustedError) ... }` works on both sides.
 */
import { Metadata, status as GrpcStatus, type ServiceError, type StatusObject } from "@grpc/grpc-js";
import { Code, errorForCode, errorMessage, InternalError, isErrorCode, isFailureReason, MoelaError } from "@moela/core";

export { errorForCode };

/** Trailing metadata of a RESOURCE_EXHAUSTED status: seconds to wait before trying again (HTTP's Retry-After). */
export const RETRY_AFTER_METADATA = "retry-after";
export const RETRY_AFTER_SECONDS = 1;

/** Trailing metadata of a failed call whose error carries a structured why (MoelaError.reason, a FailureReason). */
export const FAILURE_REASON_METADATA = "moela-failure-reason";

/** What every error that is not a MoelaError becomes on the wire. */
export const INTERNAL_DETAILS = "internal error";

/**
 * The status a server sends for `err`: a MoelaError keeps its code and message (and its reason, as
 * FAILURE_REASON_METADATA); anything else is INTERNAL "internal error". A MoelaError carrying OK (not
 * an error code) is a bug and also becomes INTERNAL, since sending OK would turn a failure into a
 * silent success.
 */
export function toStatus(err: unknown): StatusObject {
  if (err instanceof MoelaError && isErrorCode(err.code)) {
    const metadata = new Metadata();
    // A full queue or pool clears up: tell the caller when to come back, as HTTP's 429 does (@moela/client honours it).
    if (err.code === Code.RESOURCE_EXHAUSTED) metadata.set(RETRY_AFTER_METADATA, String(RETRY_AFTER_SECONDS));
    if (err.reason !== undefined) metadata.set(FAILURE_REASON_METADATA, err.reason);
    return { code: err.code as number as GrpcStatus, details: err.message, metadata };
  }
  return { code: GrpcStatus.INTERNAL, details: INTERNAL_DETAILS, metadata: new Metadata() };
}

/** Whether `err` is an error that grpc-js produced for a call (it carries a numeric status code). */
export function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === "number" && typeof (err as Partial<ServiceError>).details === "string";
}

/**
 * The MoelaError for a failed call's status (a grpc-js ServiceError or any `{code, details}`): the
 * class of its code (@moela/core's errorForCode), with the server's `details` as message, the
 * original kept as `cause`, and the reason its trailing metadata names. A non-error code (OK, or out
 * of range) becomes UNKNOWN, since a call that failed cannot have succeeded.
 */
export function fromStatus(status: Pick<StatusObject, "code" | "details"> & { readonly metadata?: Metadata | undefined }): MoelaError {
  const reason = status.metadata?.get(FAILURE_REASON_METADATA)[0];
  return errorForCode(status.code, status.details, isFailureReason(reason) ? { cause: status, reason } : { cause: status });
}

/** `err` as a MoelaError: itself when it is one, `fromStatus` for a grpc-js error, else INTERNAL wrapping it. */
export function asMoelaError(err: unknown): MoelaError {
  if (err instanceof MoelaError) return err;
  if (isServiceError(err)) return fromStatus(err);
  return new InternalError(errorMessage(err), { cause: err });
}
