/**
 * The router's two front doors over one pipeline: the OpenAI-compatible HTTP API (fastify) and the gRPC
 * Generate API. Request validation and response formatting are @moela/openai-api's; the front doors are
 * glue: parse, admit, run the pipeline per prompt, format, stream, and turn errors into OpenAI error
 * objects (HTTP) or statuses (gRPC). The modules: http-handlers.ts (the routes), sse.ts (streamed
 * answers), grpc-handlers.ts (Generate), api-common.ts (the context, request ids, API keys, errors for
 * clients). This file is their one entry point.
 *
 * Streaming (SSE) answers only start once the first event of the generation is in, so a request the
 * cluster refuses at once (no decode instance: 503; Redis down: 503) still gets a plain HTTP error. An
 * error after that is sent as one `data: {"error": {...}}` event before `data: [DONE]`, as vLLM does.
 * A client that disconnects cancels its generations (Decode.Cancel frees their KV blocks).
 *
 * Request ids: a client may choose its request's id with an `x-request-id` header (1-128 of
 * A-Z a-z 0-9 . _ -) or GenerateRequest.request_id; otherwise the router makes one (`req-<uuid>`). Every
 * answer carries the client's own id back (`x-request-id`, GenerateResponse.request_id). Inside the
 * cluster a client-chosen id is namespaced: the request runs as `<client id>-<12 random hex>` (as vLLM
 * makes external ids unique), so two clients that send the same id never touch each other's requests,
 * and an id may be reused as soon as (or before) its request ends. That internal id is the one in every
 * service's logs (it starts with the client's id, so a grep finds it), in HTTP answers' `x-moela-request-id`,
 * and the key of GET /v1/routing/<id>, which returns how the router placed each generation (candidates,
 * scores, choice, reason). A request with n prompts runs generations `<id>`, `<id>.1`, ..., `<id>.<n-1>`.
 *
 * Authentication (with --api-key, as vLLM's): every HTTP route but GET /health needs `Authorization:
 * Bearer <key>`, and Generate the same as gRPC metadata; otherwise 401 / UNAUTHENTICATED. Keys are
 * compared in constant time. /metrics (its own port) and gRPC health stay open.
 *
 * Errors: what a client is told names no internal address, host or instance id (publicError: the
 * router's own wording for its refusals, everything else scrubbed; details go to the log). Bodies deeper
 * than MAX_JSON_DEPTH are refused before parsing, bodies over --max-body-bytes with 413, and prompts are
 * tokenized through the TokenizerPool (long ones off the event loop).
 */
export {
  ApiKeys,
  bearerToken,
  INTERNAL_ID_HEADER,
  IGNORED_FIELDS_HEADER,
  MOELA_VERSION,
  namespacedRequestId,
  publicError,
  redactInternal,
  type RouterContext,
} from "./api-common.js";
export { generateService, LENIENT_GENERATE_SERVICE } from "./grpc-handlers.js";
export { bestOfEach, buildHttpApp } from "./http-handlers.js";
