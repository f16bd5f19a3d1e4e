/**
 * same-precision: drops instances that run another precision profile than the request's (a decode
 * instance in "paper" cannot take KV computed in "exact"). With no precision on the request, keeps all.
 */
import { z } from "zod";
import { parseParameters } from "../../params.js";
import type { Filter, FilterFactory } from "../../types.js";

const parameters = z.strictObject({
  /** What to do with an instance whose precision is not known: keep it (default) or drop it. */
  unknown: z.enum(["keep", "drop"]).default("keep"),
});

export const samePrecisionFilter = {
  type: "same-precision",
  description: "drops instances running another precision profile than the request's",
  create(raw, name, path): Filter {
    const p = parseParameters(parameters, raw, path);
    return {
      type: "same-precision",
      name,
      filter: (request, candidates) => ({
        verdicts: candidates.map((c) => {
          if (request.precision === undefined) return undefined;
          if (c.precision === undefined) return p.unknown === "keep" ? undefined : { kind: "unavailable", reason: "precision unknown" };
          return c.precision === request.precision ? undefined : { kind: "unavailable", reason: `runs ${c.precision}, the request needs ${request.precision}` };
        }),
      }),
    };
  },
} satisfies FilterFactory;
