/**
 * What the runner needs from a server: one streamed generation per call. The OpenAI client
 * (openai-client.ts) implements it over HTTP; the tests implement it on a fake clock.
 */
import type { RequestSpec } from "./workload.js";

export type StreamEvent =
  /** A chunk that carries `tokens` new tokens; `exact` is false when the count is a guess (1 per chunk). */
  | { readonly kind: "tokens"; readonly tokens: number; readonly exact: boolean }
  /** The request's usage, when the server sends it (the last one seen wins). */
  | { readonly kind: "usage"; readonly promptTokens: number; readonly completionTokens: number };

export interface Target {
  /** Short name for tables and the plot. */
  readonly name: string;
  /** Where it is (a URL for a real server). */
  readonly url: string;
  /** Streams one generation; throws (or the iterator throws) on failure; stops when `signal` aborts. */
  generate(spec: RequestSpec, signal: AbortSignal): AsyncIterable<StreamEvent>;
}
