/** max-score: the highest weighted total wins; ties go to the earlier candidate (configured order first). */
import { z } from "zod";
import { parseParameters } from "../../params.js";
import type { Picker, PickerFactory, ScoredCandidate } from "../../types.js";

const parameters = z.strictObject({});

/** Totals closer than this are a tie (floating-point sums of the same scores in another order). */
const TIE = 1e-9;

export const maxScorePicker = {
  type: "max-score",
  description: "highest weighted score; ties to the earlier candidate",
  create(raw, name, path): Picker {
    parseParameters(parameters, raw, path);
    return {
      type: "max-score",
      name,
      pick: (_request, scored) => {
        const ranked = [...scored].sort((a, b) => (Math.abs(b.total - a.total) > TIE ? b.total - a.total : a.order - b.order));
        const best = ranked[0]!;
        const next: ScoredCandidate | undefined = ranked[1];
        let reason: string;
        if (next === undefined) reason = `only candidate left (score ${best.total.toFixed(3)})`;
        else if (Math.abs(best.total - next.total) <= TIE) reason = `tied at ${best.total.toFixed(3)} with ${next.candidate.id}: earlier in order`;
        else reason = `highest score ${best.total.toFixed(3)} of ${scored.length} (next: ${next.candidate.id} at ${next.total.toFixed(3)})`;
        return { chosen: best, reason };
      },
    };
  },
} satisfies PickerFactory;
