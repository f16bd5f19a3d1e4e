/**
 * weighted-random: draws a candidate with probability proportional to its weighted total (uniformly
 * when every total is 0). The draw is seeded from the configured seed and the request id, so the same
 * request against the same candidates always gets the same instance (decisions can be replayed).
 */
import { z } from "zod";
import { parseParameters } from "../../params.js";
import type { Picker, PickerFactory } from "../../types.js";

const parameters = z.strictObject({
  seed: z.number().int().min(0).max(0xffff_ffff).default(0),
});

/** FNV-1a over the seed and the request id: a 32-bit state for mulberry32. */
function hashSeed(seed: number, requestId: string): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < requestId.length; i++) {
    h ^= requestId.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** mulberry32: one uniform draw in [0, 1) from a 32-bit state. */
function mulberry32(state: number): number {
  let t = (state + 0x6d2b79f5) >>> 0;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}

export const weightedRandomPicker = {
  type: "weighted-random",
  description: "random draw weighted by score, seeded by (seed, request id)",
  create(raw, name, path): Picker {
    const p = parseParameters(parameters, raw, path);
    return {
      type: "weighted-random",
      name,
      pick: (request, scored) => {
        const weights = scored.map((s) => Math.max(0, s.total));
        const sum = weights.reduce((a, b) => a + b, 0);
        const w = sum > 0 ? weights : weights.map(() => 1);
        const total = sum > 0 ? sum : w.length;
        const r = mulberry32(hashSeed(p.seed, request.requestId)) * total;
        let acc = 0;
        let i = 0;
        for (; i < w.length - 1; i++) {
          acc += w[i]!;
          if (r < acc) break;
        }
        const chosen = scored[i]!;
        return { chosen, reason: `weighted draw (seed ${p.seed}): p=${(w[i]! / total).toFixed(3)} at score ${chosen.total.toFixed(3)}` };
      },
    };
  },
} satisfies PickerFactory;
