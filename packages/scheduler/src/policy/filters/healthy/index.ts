/** healthy: drops instances that are unreachable, whose last report is stale, or that are draining. */
import { z } from "zod";
import { parseParameters } from "../../params.js";
import type { Filter, FilterFactory } from "../../types.js";

const parameters = z.strictObject({});

export const healthyFilter = {
  type: "healthy",
  description: "drops instances that are unreachable, silent past their report's freshness, or draining",
  create(raw, name, path): Filter {
    parseParameters(parameters, raw, path);
    return {
      type: "healthy",
      name,
      filter: (_request, candidates) => ({
        verdicts: candidates.map((c) => {
          if (!c.healthy || c.load === undefined) return { kind: "unavailable", reason: `unhealthy (${c.error ?? "no report yet"})` };
          if (!c.load.accepting) return { kind: "unavailable", reason: "draining" };
          return undefined;
        }),
      }),
    };
  },
} satisfies FilterFactory;
