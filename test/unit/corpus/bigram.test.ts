import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@moela/core";
import { BigramModel, bigramBaseline } from "@moela/corpus";

// Transitions: 0->1, 1->2, 2->1 (first sequence); 0->2, 2->1 (second). c(0)=2, c(1)=1, c(2)=2.
const train = [
  [0, 1, 2, 1],
  [0, 2, 1],
];

describe("BigramModel", () => {
  const model = new BigramModel(4, train);

  it.each([
    ["a seen pair, k=1", 0, 1, 1, (1 + 1) / (2 + 4)],
    ["an unseen pair, k=1", 0, 3, 1, (0 + 1) / (2 + 4)],
    ["a seen pair, k=0.5", 2, 1, 0.5, (2 + 0.5) / (2 + 2)],
    ["an unseen context is uniform", 3, 0, 0.1, 1 / 4],
  ])("P(b|a) for %s", (_name, a, b, k, p) => {
    expect(model.logProb(a, b, k)).toBeCloseTo(Math.log(p), 12);
  });

  it("scores every token after the first of each sequence (bos is never predicted)", () => {
    // P(1|0) = 2/6, P(2|1) = 2/5 -> perplexity sqrt(1 / (1/3 * 2/5)) = sqrt(7.5).
    const { perplexity, predicted } = model.perplexity([[0, 1, 2]], 1);
    expect(predicted).toBe(2);
    expect(perplexity).toBeCloseTo(Math.sqrt(7.5), 12);
  });

  it("a model that has seen nothing has perplexity V", () => {
    expect(new BigramModel(7, []).perplexity([[1, 2, 3, 4]], 0.01).perplexity).toBeCloseTo(7, 10);
  });

  it.each([
    ["an id outside the vocabulary", () => new BigramModel(4, [[0, 4]])],
    ["k = 0", () => model.perplexity([[0, 1]], 0)],
    ["nothing to score", () => model.perplexity([[0]], 1)],
  ])("rejects %s", (_name, f) => {
    expect(f).toThrow(InvalidArgumentError);
  });
});

describe("bigramBaseline", () => {
  it("picks the k with the lowest validation perplexity and reports test with it", () => {
    const validation = [[0, 1, 2, 1, 2]];
    const test = [[0, 2, 1, 3]];
    const grid = [1, 0.1, 0.01];
    const model = new BigramModel(4, train);
    const best = grid.reduce((a, b) => (model.perplexity(validation, b).perplexity < model.perplexity(validation, a).perplexity ? b : a));
    const result = bigramBaseline(4, { train, validation, test }, grid);
    expect(result.k).toBe(best);
    expect(result.validationPerplexity).toBe(model.perplexity(validation, best).perplexity);
    expect(result.testPerplexity).toBe(model.perplexity(test, best).perplexity);
    expect(result.testPredicted).toBe(3);
  });
});
