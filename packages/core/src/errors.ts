/**
 * One error tree for the whole platform. Every error carries a gRPC status code so the
 * server edge can pass known errors through unchanged and clients can map them back.
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

export class MoelaError extends Error {
  readonly code: Code;
  constructor(message: string, code: Code = Code.INTERNAL, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** The caller sent something that can never succeed (bad request, absurd parameter). */
export class InvalidArgumentError extends MoelaError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, Code.INVALID_ARGUMENT, options);
  }
}

/** A checkpoint file or folder is malformed; names the file and, where known, the tensor. */
export class CheckpointError extends MoelaError {
  readonly file: string;
  readonly tensor: string | undefined;
  constructor(file: string, message: string, tensor?: string, options?: { cause?: unknown }) {
    super(`${file}${tensor === undefined ? "" : ` [${tensor}]`}: ${message}`, Code.FAILED_PRECONDITION, options);
    this.file = file;
    this.tensor = tensor;
  }
}

/** A config.json value is missing, of the wrong type or impossible. */
export class ConfigError extends MoelaError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, Code.FAILED_PRECONDITION, options);
  }
}

/** A bounded resource (KV blocks, queue slots) is full; the caller may retry later. */
export class ResourceExhaustedError extends MoelaError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, Code.RESOURCE_EXHAUSTED, options);
  }
}

/** A peer is gone or not ready; retrying elsewhere or later can succeed. */
export class UnavailableError extends MoelaError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, Code.UNAVAILABLE, options);
  }
}

/** The work was cancelled by its caller. */
export class CancelledError extends MoelaError {
  constructor(message = "cancelled", options?: { cause?: unknown }) {
    super(message, Code.CANCELLED, options);
  }
}

/** Bytes arrived damaged or incomplete (checksum mismatch, truncated transfer). */
export class DataLossError extends MoelaError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, Code.DATA_LOSS, options);
  }
}
