/**
 * Errors as the OpenAI API shapes them: `{"error": {"message", "type", "param", "code"}}` with an HTTP
 * status. The status follows the MoelaError's gRPC code; anything that is not a MoelaError is a 500 with a
 * fixed message (the details go to the server's log, never to the client).
 */
import { Code, InvalidArgumentError, MoelaError, NotFoundError } from "@moela/core";

export interface OpenAIErrorObject {
  message: string;
  type: string;
  param: string | null;
  code: string | null;
}

export interface OpenAIErrorBody {
  error: OpenAIErrorObject;
}

/** A 400 that names the request field at fault (OpenAI's `param`) and, optionally, an OpenAI error code. */
export class RequestValidationError extends InvalidArgumentError {
  readonly param: string | null;
  readonly openaiCode: string | null;
  constructor(message: string, param: string | null, openaiCode: string | null = null) {
    super(message);
    this.param = param;
    this.openaiCode = openaiCode;
  }
}

/** The model name is not the one served: 404 as OpenAI answers it. */
export class ModelNotFoundError extends NotFoundError {
  constructor(model: string) {
    super(`The model \`${model}\` does not exist.`);
  }
}

const HTTP_STATUS: Partial<Record<Code, number>> = {
  [Code.INVALID_ARGUMENT]: 400,
  [Code.OUT_OF_RANGE]: 400,
  [Code.FAILED_PRECONDITION]: 400,
  [Code.UNAUTHENTICATED]: 401,
  [Code.PERMISSION_DENIED]: 403,
  [Code.NOT_FOUND]: 404,
  [Code.RESOURCE_EXHAUSTED]: 429,
  [Code.CANCELLED]: 499,
  [Code.UNIMPLEMENTED]: 501,
  [Code.UNAVAILABLE]: 503,
  [Code.DEADLINE_EXCEEDED]: 504,
};

/** The message every non-MoelaError (a bug) shows to the client. */
export const INTERNAL_ERROR_MESSAGE = "internal error";

/** HTTP status and OpenAI error body for `err`. */
export function openAIError(err: unknown): { status: number; body: OpenAIErrorBody } {
  if (!(err instanceof MoelaError)) {
    return { status: 500, body: { error: { message: INTERNAL_ERROR_MESSAGE, type: "server_error", param: null, code: "internal_error" } } };
  }
  const status = HTTP_STATUS[err.code] ?? 500;
  // An INTERNAL MoelaError's message is ours, not the client's business either.
  const message = status === 500 ? INTERNAL_ERROR_MESSAGE : err.message;
  let type = "server_error";
  let code: string | null = status === 500 ? "internal_error" : null;
  let param: string | null = null;
  if (status === 400) type = "invalid_request_error";
  if (status === 401) {
    // OpenAI's answer to a missing or wrong key.
    type = "invalid_request_error";
    code = "invalid_api_key";
  }
  if (status === 403) {
    type = "invalid_request_error";
    code = "permission_denied";
  }
  if (status === 404) {
    type = "invalid_request_error";
    code = "model_not_found";
    param = "model";
  }
  if (status === 429) {
    type = "rate_limit_error";
    code = "rate_limit_exceeded";
  }
  if (status === 503) code = "service_unavailable";
  if (status === 504) code = "timeout";
  if (err instanceof RequestValidationError) {
    param = err.param;
    code = err.openaiCode;
  }
  return { status, body: { error: { message, type, param, code } } };
}
