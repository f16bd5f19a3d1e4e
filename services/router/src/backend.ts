/**
 * The seam between the router's front doors (handlers.ts: the OpenAI HTTP API and gRPC Generate) and what
 * runs the generations. The handlers parse, validate, admit, format and stream; a GenerationBackend turns
 * one validated prompt into a stream of GenerateEvents. Two implementations:
 *   - the cluster (distributedBackend below): pipeline.ts over BullMQ prefill jobs and Decode.Stream;
 *   - one process (engine-backend.ts): the engine's own continuous-batching loop, no gRPC, no Redis
 *     (`moela serve --role all`, one-process.ts).
 * Both yield the same events (detokenized, stop strings applied, usage on the last one), so the HTTP
 * answers are formatted by the same code whichever runs behind them.
 */
import type { Decision, DecisionLog, DecodePool } from "@moela/scheduler";
import type { GenerateEvent, GenerateInput, Pipeline } from "./pipeline.js";

export type { GenerateEvent, GenerateInput } from "./pipeline.js";

export interface GenerationBackend {
  /**
   * Run one generation; the last event carries a finish reason and usage. Ending the iteration early, or
   * `signal` aborting, cancels it and frees what it holds. Throws MoelaErrors (their codes become HTTP
   * statuses: RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, INVALID_ARGUMENT 400, CANCELLED on the signal).
   */
  generate(input: GenerateInput, signal: AbortSignal): AsyncGenerator<GenerateEvent>;
  /** What GET /health reports beside its status (e.g. the decode instances, the batch). */
  health(): Record<string, unknown>;
  /** The routing decisions kept for a request (GET /v1/routing/:id); [] when none, or when nothing is routed. */
  routing(requestId: string): Promise<readonly Decision[]>;
}

/** The cluster: each generation goes through a prefill job and a decode instance's stream (pipeline.ts). */
export function distributedBackend(pipeline: Pipeline, pool: DecodePool, decisions: DecisionLog): GenerationBackend {
  return {
    generate: (input, signal) => pipeline.generate(input, signal),
    health: () => {
      const decode = pool.candidates();
      return { decode: { healthy: decode.filter((c) => c.healthy).length, total: decode.length } };
    },
    routing: async (requestId) => {
      // A migrated request's later attempts run as "<id>.m1", "<id>.m2", ... (pipeline.ts): theirs belong here too.
      const found = await decisions.lookup(requestId);
      for (let n = 1; found.length > 0 && n <= 16; n++) {
        const more = await decisions.lookup(`${requestId}.m${n}`);
        if (more.length === 0) break;
        found.push(...more);
      }
      return found;
    },
  };
}
