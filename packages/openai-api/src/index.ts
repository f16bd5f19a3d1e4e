/**
 * @moela/openai-api: the OpenAI-compatible HTTP protocol as pure functions, with no I/O: request
 * validation (requests.ts), response and SSE chunk formatting with both logprobs formats (format.ts), and
 * error objects with their HTTP status (errors.ts), the bounds every request is held to (limits.ts), and
 * vLLM's /tokenize and /detokenize requests (tokenize.ts).
 * services/router wires it to fastify and the cluster.
 */
export * from "./errors.js";
export * from "./requests.js";
export * from "./format.js";
export * from "./limits.js";
export * from "./tokenize.js";
export * from "./structured.js";
