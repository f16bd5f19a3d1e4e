/**
 * One error tree for the whole platform. Every error carries a gRPC status code so the
 * server edge can pass known errors through unchanged and clients can map them back. Each error
 * code has one class (ERROR_CLASS_BY_CODE, errorForCode); @moela/rpc and @moela/client both map a
 * status back to that class. Throw the class of the code (`new UnavailableError(...)`), never a
 * bare MoelaError with a code; where the code is only known at run time, `errorForCode(code, ...)`.
 */

/** gRPC status codes (grpc.status), repeated here so core imports nothing. */
export const Code = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;
export type Code = (typeof Code)[keyof typeof Code];

/**
 * Why a call failed, where a caller acts on the why and not only on the code. It travels with the
 * error (`MoelaError.reason`) and across the wire as trailing metadata (@moela/rpc's
 * FAILURE_REASON_METADATA), so no caller has to read it out of a message.
 */
export const FailureReason = {
  /**
   * Decode ended the request because a decode step failed (an expert host was lost, say): the
   * request moves to another decode instance, and this one stays in the choice (it is not gone).
   */
  DECODE_STEP_FAILED: "decode_step_failed",
} as const;
export type FailureReason = (typeof FailureReason)[keyof typeof FailureReason];

const FAILURE_REASONS: ReadonlySet<string> = new Set(Object.values(FailureReason));

/** Whether `value` is one of the FailureReason values (what came over the wire may be anything). */
export function isFailureReason(value: unknown): value is FailureReason {
  return typeof value === "string" && FAILURE_REASONS.has(value);
}

export interface MoelaErrorOptions {
  /** The error this one wraps or reports. */
  readonly cause?: unknown;
  /** The structured why, where a caller acts on it (FailureReason). */
  readonly reason?: FailureReason;
}

export class MoelaError extends Error {
  readonly code: Code;
  /** The structured why (FailureReason), where a caller acts on it; absent on most errors. */
  declare readonly reason?: FailureReason;
  constructor(message: string, code: Code = Code.INTERNAL, options?: MoelaErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    if (options?.reason !== undefined) this.reason = options.reason;
  }
}

/** A gRPC status code that reports a failure: every code but OK. */
export type ErrorCode = Exclude<Code, typeof Code.OK>;

/**
 * The base of the class of each error code below: the class fixes the code (its static `code`), so
 * a subclass is one line and is constructed as `new XError(message, { cause, reason })`.
 */
export abstract class CodedError extends MoelaError {
  declare static readonly code: ErrorCode;
  constructor(message: string, options?: MoelaErrorOptions) {
    super(message, (new.target as unknown as typeof CodedError).code, options);
  }
}

/** The work was cancelled by its caller. */
export class CancelledError extends CodedError {
  static override readonly code = Code.CANCELLED;
  constructor(message = "cancelled", options?: MoelaErrorOptions) {
    super(message, options);
  }
}

/** A failure of unknown kind (a status with no error code, say). */
export class UnknownError extends CodedError {
  static override readonly code = Code.UNKNOWN;
}

/** The caller sent something that can never succeed (bad request, absurd parameter). */
export class InvalidArgumentError extends CodedError {
  static override readonly code = Code.INVALID_ARGUMENT;
}

/** The work ran out of time: its deadline, or the time left for retries. */
export class DeadlineExceededError extends CodedError {
  static override readonly code = Code.DEADLINE_EXCEEDED;
}

/** What the call names does not exist (a model, a request). */
export class NotFoundError extends CodedError {
  static override readonly code = Code.NOT_FOUND;
}

/** What the call would create exists already (a request id taken on a decode instance). */
export class AlreadyExistsError extends CodedError {
  static override readonly code = Code.ALREADY_EXISTS;
}

/** The caller is known but may not do this. */
export class PermissionDeniedError extends CodedError {
  static override readonly code = Code.PERMISSION_DENIED;
}

/** A bounded resource (KV blocks, queue slots) is full; the caller may retry later. */
export class ResourceExhaustedError extends CodedError {
  static override readonly code = Code.RESOURCE_EXHAUSTED;
}

/** The system is not in the state the work needs (a wrong model, precision or setup); retrying as is fails again. */
export class FailedPreconditionError extends CodedError {
  static override readonly code = Code.FAILED_PRECONDITION;
}

/** The work was cut short by a conflict (a newer call took it over). */
export class AbortedError extends CodedError {
  static override readonly code = Code.ABORTED;
}

/** A value is past the range the receiver accepts. */
export class OutOfRangeError extends CodedError {
  static override readonly code = Code.OUT_OF_RANGE;
}

/** The receiver does not implement the call. */
export class UnimplementedError extends CodedError {
  static override readonly code = Code.UNIMPLEMENTED;
}

/** A bug or broken invariant on our side; its message is not the client's business. */
export class InternalError extends CodedError {
  static override readonly code = Code.INTERNAL;
}

/** A peer is gone or not ready; retrying elsewhere or later can succeed. */
export class UnavailableError extends CodedError {
  static override readonly code = Code.UNAVAILABLE;
}

/** Bytes arrived damaged or incomplete (checksum mismatch, truncated transfer). */
export class DataLossError extends CodedError {
  static override readonly code = Code.DATA_LOSS;
}

/** The call carried no credentials, or wrong ones (the router's API key). */
export class UnauthenticatedError extends CodedError {
  static override readonly code = Code.UNAUTHENTICATED;
}

/** A checkpoint file or folder is malformed; names the file and, where known, the tensor. */
export class CheckpointError extends FailedPreconditionError {
  readonly file: string;
  readonly tensor: string | undefined;
  constructor(file: string, message: string, tensor?: string, options?: MoelaErrorOptions) {
    super(`${file}${tensor === undefined ? "" : ` [${tensor}]`}: ${message}`, options);
    this.file = file;
    this.tensor = tensor;
  }
}

/** A config.json value is missing, of the wrong type or impossible. */
export class ConfigError extends FailedPreconditionError {}

/** A class of the error tree that fixes its code: `new C(message, options)`. */
export type MoelaErrorClass = (new (message: string, options?: MoelaErrorOptions) => MoelaError) & { readonly code: ErrorCode };

/**
 * The class of every error code: the one mapping from a status to the error tree, used by
 * @moela/rpc (fromStatus) and @moela/client alike. A code's class carries that code (`C.code`).
 */
export const ERROR_CLASS_BY_CODE: Readonly<Record<ErrorCode, MoelaErrorClass>> = {
  [Code.CANCELLED]: CancelledError,
  [Code.UNKNOWN]: UnknownError,
  [Code.INVALID_ARGUMENT]: InvalidArgumentError,
  [Code.DEADLINE_EXCEEDED]: DeadlineExceededError,
  [Code.NOT_FOUND]: NotFoundError,
  [Code.ALREADY_EXISTS]: AlreadyExistsError,
  [Code.PERMISSION_DENIED]: PermissionDeniedError,
  [Code.RESOURCE_EXHAUSTED]: ResourceExhaustedError,
  [Code.FAILED_PRECONDITION]: FailedPreconditionError,
  [Code.ABORTED]: AbortedError,
  [Code.OUT_OF_RANGE]: OutOfRangeError,
  [Code.UNIMPLEMENTED]: UnimplementedError,
  [Code.INTERNAL]: InternalError,
  [Code.UNAVAILABLE]: UnavailableError,
  [Code.DATA_LOSS]: DataLossError,
  [Code.UNAUTHENTICATED]: UnauthenticatedError,
};

/** Whether `code` is a gRPC status code that reports a failure (an integer from CANCELLED to UNAUTHENTICATED). */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === "number" && Number.isInteger(code) && code >= Code.CANCELLED && code <= Code.UNAUTHENTICATED;
}

/**
 * The error of a status `code` with `message`: an instance of the code's class. A non-error code (OK,
 * or out of range) is UNKNOWN, since a call that failed cannot have succeeded.
 */
export function errorForCode(code: number, message: string, options?: MoelaErrorOptions): MoelaError {
  return new ERROR_CLASS_BY_CODE[isErrorCode(code) ? code : Code.UNKNOWN](message, options);
}

const CODE_NAMES: ReadonlyMap<number, string> = new Map(Object.entries(Code).map(([name, code]) => [code, name]));

/** The name of a gRPC status code ("UNAVAILABLE"), or its number as text when unknown. */
export function codeName(code: number): string {
  return CODE_NAMES.get(code) ?? String(code);
}

/** The message of anything thrown: an Error's message, else the value as text. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
