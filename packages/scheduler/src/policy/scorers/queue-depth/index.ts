/** queue-depth: prefers the instance with the shortest queue (waiting + in transfer + sent since its report). */
import { z } from "zod";
import { inverseScores, parseParameters, queuedOn } from "../../params.js";
import type { Scorer, ScorerFactory } from "../../types.js";

const parameters = z.strictObject({
  /** Queue length at which the score reaches 0; absent: relative to the longest queue. */
  saturation: z.number().positive().optional(),
});

export const queueDepthScorer = {
  type: "queue-depth",
  description: "a shorter queue of waiting work scores higher",
  create(raw, name, path): Scorer {
    const p = parseParameters(parameters, raw, path);
    return { type: "queue-depth", name, score: (_request, candidates) => inverseScores(candidates.map(queuedOn), p.saturation) };
  },
} satisfies ScorerFactory;
