/** load: prefers the instance holding the fewest sequences (running + waiting + in transfer + sent since its report). */
import { z } from "zod";
import { inverseScores, parseParameters, sequencesOn } from "../../params.js";
import type { Scorer, ScorerFactory } from "../../types.js";

const parameters = z.strictObject({
  /** Sequences at which the score reaches 0; absent: relative to the busiest candidate. */
  saturation: z.number().positive().optional(),
});

export const loadScorer = {
  type: "load",
  description: "fewer sequences on the instance scores higher",
  create(raw, name, path): Scorer {
    const p = parseParameters(parameters, raw, path);
    return { type: "load", name, score: (_request, candidates) => inverseScores(candidates.map(sequencesOn), p.saturation) };
  },
} satisfies ScorerFactory;
