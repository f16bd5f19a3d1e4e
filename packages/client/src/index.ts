/**
 * @moela/client: a typed client for moela's gRPC Generate API (the router). See README.md.
 * Errors are @moela/core's classes, re-exported here so applications need only this package.
 */
export {
  MoelaClient,
  GenerateStream,
  toWireRequest,
  toEvent,
  retryAfterMs,
  DEFAULT_GENERATE_DEADLINE_MS,
  DEFAULT_UNARY_DEADLINE_MS,
  type CallOpts,
  type ChatMessage,
  type Completion,
  type FinishReason,
  type GenerateEvent,
  type GenerateInput,
  type GenerateOptions,
  type GenerateParams,
  type GenerateRequest,
  type ModelInfo,
  type MoelaClientOptions,
  type ResponseFormat,
  type Tool,
  type ToolCall,
  type TokenLogprob,
  type TopLogprob,
  type Usage,
} from "./client.js";
export { Stream, type StreamSource } from "./stream.js";
export { codeName, errorFromStatus, toMoelaError } from "./errors.js";
export {
  AbortedError,
  AlreadyExistsError,
  CancelledError,
  Code,
  DataLossError,
  DeadlineExceededError,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  MoelaError,
  NotFoundError,
  OutOfRangeError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnauthenticatedError,
  UnavailableError,
  UnimplementedError,
  UnknownError,
} from "@moela/core";
