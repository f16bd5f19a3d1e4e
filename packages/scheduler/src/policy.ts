/**
 * Choosing the decode instance for a request, from the instances' last reported load.
 *
 * Filters drop instances that cannot take the request (unreachable, draining, too small for it ever);
 * the remaining candidates are ranked by a fixed order of preferences:
 *   1. room now: free KV blocks (minus what this router sent since the last report) cover the request;
 *   2. most free KV blocks;
 *   3. least load (running + waiting sequences + pending transfers + sent since the last report);
 *   4. the configured order of addresses (deterministic ties).
 * "Sent since the last report" keeps a burst of requests that arrives between two status polls from
 * all landing on the instance that looked emptiest at the last poll.
 *
 * Every decision comes back with the candidates and why each was or was not chosen, so it can be logged
 * and explained.
 */
import { InvalidArgumentError, UnavailableError } from "@moela/core";

/** What Decode.Status reports (decode.proto DecodeStatusResponse), as the policy needs it. */
export interface DecodeLoad {
  readonly freeKvBlocks: number;
  readonly totalKvBlocks: number;
  /** Tokens per KV block. */
  readonly blockSize: number;
  readonly runningSequences: number;
  readonly waitingSequences: number;
  readonly pendingTransfers: number;
  /** False while draining. */
  readonly accepting: boolean;
}

export interface DecodeCandidate {
  /** gRPC host:port. */
  readonly address: string;
  /** Last successful report; undefined before the first. */
  readonly load: DecodeLoad | undefined;
  /** The last poll succeeded recently and nothing has failed since. */
  readonly healthy: boolean;
  /** Why it is unhealthy, when it is. */
  readonly error?: string;
  /** KV blocks and sequences this router sent there since `load` was measured. */
  readonly reservedBlocks: number;
  readonly reservedSequences: number;
}

export interface DecodeNeed {
  readonly promptTokens: number;
  readonly maxTokens: number;
}

export interface CandidateVerdict {
  readonly address: string;
  /** Why it was filtered out; undefined when it was ranked. */
  readonly rejected?: string;
  readonly freeBlocks?: number;
  readonly load?: number;
  readonly roomNow?: boolean;
}

export interface DecodeChoice {
  readonly address: string;
  /** KV blocks the request will hold there at most. */
  readonly blocks: number;
  readonly reason: string;
  readonly candidates: readonly CandidateVerdict[];
}

/** KV blocks a request holds at most on decode: prompt + generated tokens + one speculative row. */
export function blocksNeeded(need: DecodeNeed, blockSize: number): number {
  return Math.ceil((need.promptTokens + need.maxTokens + 1) / Math.max(1, blockSize));
}

/** A filter returns why `c` cannot take the request, or undefined when it can. */
export type DecodeFilter = (c: DecodeCandidate, need: DecodeNeed) => string | undefined;

export const DECODE_FILTERS: Readonly<Record<string, DecodeFilter>> = {
  healthy: (c) => (c.healthy && c.load !== undefined ? undefined : `unhealthy (${c.error ?? "no status yet"})`),
  accepting: (c) => (c.load?.accepting === false ? "draining" : undefined),
  fitsEver: (c, need) => {
    const blocks = blocksNeeded(need, c.load!.blockSize);
    return blocks > c.load!.totalKvBlocks ? `needs ${blocks} KV blocks, holds ${c.load!.totalKvBlocks} in all` : undefined;
  },
};

/** Pick a decode instance for `need` among `candidates` (in configured order). */
export function chooseDecode(candidates: readonly DecodeCandidate[], need: DecodeNeed): DecodeChoice {
  const verdicts: CandidateVerdict[] = [];
  const ranked: { c: DecodeCandidate; free: number; load: number; roomNow: boolean; blocks: number; order: number }[] = [];
  candidates.forEach((c, order) => {
    for (const [name, filter] of Object.entries(DECODE_FILTERS)) {
      const why = filter(c, need);
      if (why !== undefined) {
        verdicts.push({ address: c.address, rejected: `${name}: ${why}` });
        return;
      }
    }
    const l = c.load!;
    const blocks = blocksNeeded(need, l.blockSize);
    const free = l.freeKvBlocks - c.reservedBlocks;
    const load = l.runningSequences + l.waitingSequences + l.pendingTransfers + c.reservedSequences;
    const roomNow = free >= blocks;
    verdicts.push({ address: c.address, freeBlocks: free, load, roomNow });
    ranked.push({ c, free, load, roomNow, blocks, order });
  });
  if (ranked.length === 0) {
    const healthy = verdicts.filter((v) => !v.rejected?.startsWith("healthy") && !v.rejected?.startsWith("accepting"));
    const detail = verdicts.map((v) => `${v.address}: ${v.rejected}`).join("; ");
    if (healthy.length > 0) {
      throw new InvalidArgumentError(
        `the request (${need.promptTokens} prompt tokens + max_tokens ${need.maxTokens}) does not fit any decode instance's KV cache (${detail})`,
      );
    }
    throw new UnavailableError(candidates.length === 0 ? "no decode instance is configured" : `no decode instance is available (${detail})`);
  }
  ranked.sort(
    (a, b) => Number(b.roomNow) - Number(a.roomNow) || b.free - a.free || a.load - b.load || a.order - b.order,
  );
  const best = ranked[0]!;
  const reason =
    ranked.length === 1
      ? "only eligible instance"
      : `${best.roomNow ? "room now, " : "no instance has room now, "}most free KV blocks (${best.free}), load ${best.load}`;
  return { address: best.c.address, blocks: best.blocks, reason, candidates: verdicts };
}
