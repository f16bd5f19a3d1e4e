/**
 * best_of's choice among candidates (handlers.ts bestOfEach): per prompt, the n candidates with the highest
 * cumulative logprob, best first, ties to the earlier candidate.
 */
import { describe, expect, it } from "vitest";
import { bestOfEach } from "../../../services/router/src/handlers.js";

const cand = (name: string, ...logprobs: number[]) => ({ name, tokens: logprobs.map((logprob, id) => ({ id, logprob })) });

describe("bestOfEach", () => {
  it("keeps the n best of each prompt's candidates, best first", () => {
    const candidates = [
      // prompt 0: sums -3, -1, -2
      cand("a", -1, -2),
      cand("b", -0.5, -0.5),
      cand("c", -2),
      // prompt 1: sums -4, -0.25, -1
      cand("d", -4),
      cand("e", -0.25),
      cand("f", -0.5, -0.5),
    ];
    expect(bestOfEach(candidates, 3, 2).map((c) => c.name)).toEqual(["b", "c", "e", "f"]);
    expect(bestOfEach(candidates, 3, 1).map((c) => c.name)).toEqual(["b", "e"]);
  });

  it("ties go to the earlier candidate; a longer candidate is not preferred for its length", () => {
    const candidates = [cand("x", -1), cand("y", -0.5, -0.5), cand("z")];
    // z has no tokens (sum 0): the best; x and y tie at -1, x first.
    expect(bestOfEach(candidates, 3, 3).map((c) => c.name)).toEqual(["z", "x", "y"]);
  });
});
