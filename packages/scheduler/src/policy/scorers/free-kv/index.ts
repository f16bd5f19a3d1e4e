/** free-kv: prefers the instance with the most free KV blocks now (reported free minus reserved). */
import { z } from "zod";
import { freeBlocksNow, parseParameters } from "../../params.js";
import type { Scorer, ScorerFactory } from "../../types.js";

const parameters = z.strictObject({
  /** max: free / the most free in the set (default); capacity: free / the instance's own total. */
  normalize: z.enum(["max", "capacity"]).default("max"),
});

export const freeKvScorer = {
  type: "free-kv",
  description: "more free KV blocks now scores higher",
  create(raw, name, path): Scorer {
    const p = parseParameters(parameters, raw, path);
    return {
      type: "free-kv",
      name,
      score: (_request, candidates) => {
        const free = candidates.map(freeBlocksNow);
        if (p.normalize === "capacity") {
          return candidates.map((c, i) => (c.load === undefined || c.load.totalKvBlocks === 0 ? 0 : Math.min(1, free[i]! / c.load.totalKvBlocks)));
        }
        const max = Math.max(0, ...free);
        return free.map((f) => (max === 0 ? 0 : f / max));
      },
    };
  },
} satisfies ScorerFactory;
