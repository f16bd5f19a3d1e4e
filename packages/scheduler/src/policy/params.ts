/** Shared helpers of the policy plugins: parameter validation and the KV arithmetic they agree on. */
import { ConfigError } from "@moela/core";
import type { z } from "zod";
import type { Candidate, SchedulingRequest } from "./types.js";

/**
 * `raw` (a config entry's `parameters`, undefined when absent) validated by `schema`; a ConfigError
 * naming `path` and the bad field otherwise.
 */
export function parseParameters<S extends z.ZodType>(schema: S, raw: unknown, path: string): z.output<S> {
  const r = schema.safeParse(raw ?? {});
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const where = issue.path.length === 0 ? path : `${path}.${issue.path.join(".")}`;
  throw new ConfigError(`${where}: ${issue.message}`);
}

/** KV blocks a request holds at most on decode: prompt + generated tokens + one speculative row. */
export function blocksNeeded(need: Pick<SchedulingRequest, "promptTokens" | "maxTokens">, blockSize: number): number {
  return Math.ceil((need.promptTokens + need.maxTokens + 1) / Math.max(1, blockSize));
}

/** Free KV blocks now: the last report minus what this router sent since (never below 0). */
export function freeBlocksNow(c: Candidate): number {
  return c.load === undefined ? 0 : Math.max(0, c.load.freeKvBlocks - c.reservedBlocks);
}

/** Everything the instance holds or is about to hold: running + waiting + in transfer + sent since the report. */
export function sequencesOn(c: Candidate): number {
  const l = c.load;
  return (l === undefined ? 0 : l.runningSequences + l.waitingSequences + l.pendingTransfers) + c.reservedSequences;
}

/** Work waiting for a slot there: waiting + in transfer + sent since the report. */
export function queuedOn(c: Candidate): number {
  const l = c.load;
  return (l === undefined ? 0 : l.waitingSequences + l.pendingTransfers) + c.reservedSequences;
}

/**
 * "Less is better" counts as scores in [0, 1]: 1 - n / saturation (clamped) when a saturation is
 * configured, else relative to the largest count in the set (all 1 when every count is 0).
 */
export function inverseScores(counts: readonly number[], saturation: number | undefined): number[] {
  if (saturation !== undefined) return counts.map((n) => Math.max(0, 1 - n / saturation));
  const max = Math.max(0, ...counts);
  return counts.map((n) => (max === 0 ? 1 : 1 - n / max));
}
