import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@moela/core";
import { Rng, Sampler, argmax, sampleFromProbs, verifyDraft, type RandomSource } from "@moela/engine";
import { chiSquareTest, normalCritical } from "./chi-square.js";

const TRIALS = 20_000;

const f32 = (values: number[]) => Float32Array.from(values);

function randomLogits(n: number, rng: Rng, scale = 2): Float32Array {
  return Float32Array.from({ length: n }, () => scale * (rng.next() * 2 - 1) * 2);
}

/** A RandomSource that replays fixed values, for deterministic edge cases. */
function fixed(...values: number[]): RandomSource {
  let i = 0;
  return { next: () => values[Math.min(i++, values.length - 1)]! };
}

/** Acceptance probability of one draft: sum_x min(p(x), q(x)) (clamped: float32 inputs may sum a hair over 1). */
function sumMin(p: Float32Array, q: Float32Array): number {
  let s = 0;
  for (let i = 0; i < p.length; i++) s += Math.min(p[i]!, q[i]!);
  return Math.min(1, s);
}

describe("greedy speculation equals greedy decoding", () => {
  it("on random cases (greedy and sampled drafts, k = 1..4)", () => {
    const rng = new Rng(31337);
    const vocab = 20;
    const greedy = new Sampler(vocab, { temperature: 0, topK: 0, topP: 1 });
    const warmDraft = new Sampler(vocab, { temperature: 1, topK: 0, topP: 1 }, new Rng(4));
    let acceptedSome = 0;
    let rejectedSome = 0;
    for (let trial = 0; trial < 400; trial++) {
      const k = 1 + (trial % 4);
      const targetLogits = Array.from({ length: k + 1 }, () => randomLogits(vocab, rng));
      const targetProbs = targetLogits.map((l) => {
        const out = new Float32Array(vocab);
        greedy.probs(l, out);
        return out;
      });
      const draftTokens: number[] = [];
      const draftProbs: Float32Array[] = [];
      for (let i = 0; i < k; i++) {
        // The draft is the target plus noise, so it agrees with the target argmax often but not always.
        const draftLogits = targetLogits[i]!.map((v) => v + (rng.next() - 0.5) * 3);
        const q = new Float32Array(vocab);
        if (trial % 2 === 0) {
          greedy.probs(draftLogits, q);
          draftTokens.push(argmax(draftLogits));
        } else {
          warmDraft.probs(draftLogits, q);
          draftTokens.push(sampleFromProbs(q, rng));
        }
        draftProbs.push(q);
      }
      // Reference: plain greedy decoding over the same target rows.
      let expectedAccepted = 0;
      while (expectedAccepted < k && draftTokens[expectedAccepted] === argmax(targetLogits[expectedAccepted]!)) {
        expectedAccepted++;
      }
      const expectedTokens = [...draftTokens.slice(0, expectedAccepted), argmax(targetLogits[expectedAccepted]!)];
      const result = verifyDraft({ draftTokens, draftProbs, targetProbs, rng: new Rng(trial) });
      expect(result).toEqual({ accepted: expectedAccepted, tokens: expectedTokens });
      if (expectedAccepted > 0) acceptedSome++;
      if (expectedAccepted < k) rejectedSome++;
    }
    // The random cases really exercise both branches.
    expect(acceptedSome).toBeGreaterThan(50);
    expect(rejectedSome).toBeGreaterThan(50);
  });
});

describe("the first emitted token is distributed as the target p_0 (chi-square, alpha 1e-4)", () => {
  it.each<[string, number[], number[]]>([
    ["q differs from p, q has mass where p has none", [0.3, 0.2, 0.25, 0.15, 0.1, 0], [0.05, 0.4, 0.05, 0.1, 0.2, 0.2]],
    ["p has mass where q has none", [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0, 0]],
    ["disjoint supports (every draft rejected)", [0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]],
    ["p one-hot, q spread", [0, 0, 1, 0], [0.4, 0.3, 0.2, 0.1]],
    ["q one-hot, p spread", [0.1, 0.6, 0.3], [1, 0, 0]],
    ["p equals q (every draft accepted)", [0.2, 0.3, 0.5], [0.2, 0.3, 0.5]],
  ])("%s", (_name, pValues, qValues) => {
    const p = f32(pValues);
    const q = f32(qValues);
    const bonus = f32(pValues.map((_, i) => (i === 0 ? 1 : 0)));
    const draftRng = new Rng(1001);
    const verifyRng = new Rng(2002);
    const counts = new Float64Array(p.length);
    let accepted = 0;
    let malformed = 0;
    for (let t = 0; t < TRIALS; t++) {
      const d = sampleFromProbs(q, draftRng);
      const r = verifyDraft({ draftTokens: [d], draftProbs: [q], targetProbs: [p, bonus], rng: verifyRng });
      if (r.tokens.length !== r.accepted + 1 || (r.accepted === 1 && r.tokens[0] !== d)) malformed++;
      counts[r.tokens[0]!]!++;
      accepted += r.accepted;
    }
    expect(malformed).toBe(0);
    const chi = chiSquareTest(counts, pValues);
    expect(chi.impossible).toBe(0);
    expect(chi.statistic).toBeLessThan(chi.critical);

    // Acceptance count: Binomial(TRIALS, alpha) with alpha = sum(min(p, q)).
    const alpha = sumMin(p, q);
    const sd = Math.sqrt(TRIALS * alpha * (1 - alpha));
    expect(Math.abs(accepted - TRIALS * alpha)).toBeLessThanOrEqual(normalCritical() * sd + 1e-9);
  });

  it("with processed distributions from Sampler (temperature, top-k, top-p on both sides)", () => {
    const vocab = 40;
    const rng = new Rng(5);
    const targetLogits = randomLogits(vocab, rng);
    const draftLogits = targetLogits.map((v) => v + (rng.next() - 0.5) * 4);
    const target = new Sampler(vocab, { temperature: 0.8, topK: 12, topP: 0.9 }, new Rng(1));
    const draft = new Sampler(vocab, { temperature: 0.8, topK: 12, topP: 0.9 }, new Rng(2));
    const p = new Float32Array(vocab);
    const q = new Float32Array(vocab);
    target.probs(targetLogits, p);
    draft.probs(draftLogits, q);
    const bonus = new Float32Array(vocab).fill(1 / vocab);
    const counts = new Float64Array(vocab);
    let accepted = 0;
    for (let t = 0; t < TRIALS; t++) {
      const d = draft.sample(draftLogits);
      const r = verifyDraft({ draftTokens: [d], draftProbs: [q], targetProbs: [p, bonus], rng });
      counts[r.tokens[0]!]!++;
      accepted += r.accepted;
    }
    const chi = chiSquareTest(counts, p);
    expect(chi.impossible).toBe(0);
    expect(chi.statistic).toBeLessThan(chi.critical);
    const alpha = sumMin(p, q);
    expect(alpha).toBeGreaterThan(0.05);
    expect(alpha).toBeLessThan(0.95);
    expect(Math.abs(accepted - TRIALS * alpha)).toBeLessThanOrEqual(normalCritical() * Math.sqrt(TRIALS * alpha * (1 - alpha)));
  });
});

describe("k = 3 drafts", () => {
  // Per-position target and draft distributions (independent of context, as a test device).
  const P = [f32([0.5, 0.3, 0.2, 0]), f32([0.1, 0.1, 0.4, 0.4]), f32([0.25, 0.25, 0.25, 0.25])];
  const Q = [f32([0.4, 0.4, 0.1, 0.1]), f32([0.1, 0.2, 0.5, 0.2]), f32([0.7, 0.1, 0.1, 0.1])];
  const BONUS = f32([0, 0.2, 0.3, 0.5]);

  function run(seed: number) {
    const draftRng = new Rng(seed);
    const verifyRng = new Rng(seed + 1);
    const acceptedHist = new Float64Array(4);
    const first = new Float64Array(4);
    const secondGivenFirstAccepted = new Float64Array(4);
    const bonusGivenAllAccepted = new Float64Array(4);
    let malformed = 0;
    for (let t = 0; t < TRIALS; t++) {
      const draftTokens = Q.map((q) => sampleFromProbs(q, draftRng));
      const r = verifyDraft({ draftTokens, draftProbs: Q, targetProbs: [...P, BONUS], rng: verifyRng });
      if (r.tokens.length !== r.accepted + 1) malformed++;
      for (let i = 0; i < r.accepted; i++) if (r.tokens[i] !== draftTokens[i]) malformed++;
      acceptedHist[r.accepted]!++;
      first[r.tokens[0]!]!++;
      if (r.accepted >= 1) secondGivenFirstAccepted[r.tokens[1]!]!++;
      if (r.accepted === 3) bonusGivenAllAccepted[r.tokens[3]!]!++;
    }
    expect(malformed).toBe(0);
    return { acceptedHist, first, secondGivenFirstAccepted, bonusGivenAllAccepted };
  }

  it("accepted-count histogram matches the chain of acceptance rates", () => {
    const a = Q.map((q, i) => sumMin(P[i]!, q));
    const expected = [1 - a[0]!, a[0]! * (1 - a[1]!), a[0]! * a[1]! * (1 - a[2]!), a[0]! * a[1]! * a[2]!];
    const { acceptedHist } = run(77);
    const chi = chiSquareTest(acceptedHist, expected);
    expect(chi.statistic).toBeLessThan(chi.critical);
    // Mean accepted = a0 + a0 a1 + a0 a1 a2, within the critical multiple of its standard error.
    let mean = 0;
    let meanSq = 0;
    expected.forEach((pr, j) => {
      mean += pr * j;
      meanSq += pr * j * j;
    });
    const observedMean = acceptedHist.reduce((s, c, j) => s + c * j, 0) / TRIALS;
    const se = Math.sqrt((meanSq - mean * mean) / TRIALS);
    expect(Math.abs(observedMean - mean)).toBeLessThanOrEqual(normalCritical() * se);
  });

  it("every emitted position follows its target distribution", () => {
    const { first, secondGivenFirstAccepted, bonusGivenAllAccepted } = run(91);
    for (const [counts, expected] of [
      [first, P[0]!],
      [secondGivenFirstAccepted, P[1]!],
      [bonusGivenAllAccepted, BONUS],
    ] as const) {
      const chi = chiSquareTest(counts, expected);
      expect(chi.impossible).toBe(0);
      expect(chi.statistic).toBeLessThan(chi.critical);
    }
  });
});

describe("edge cases", () => {
  it("q(d) = 0 with p(d) > 0 is always accepted", () => {
    const r = verifyDraft({
      draftTokens: [2],
      draftProbs: [f32([0.5, 0.5, 0])],
      targetProbs: [f32([0.1, 0.1, 0.8]), f32([0, 1, 0])],
      rng: fixed(0.999999, 0.5),
    });
    expect(r).toEqual({ accepted: 1, tokens: [2, 1] });
  });

  it("q(d) = 0 and p(d) = 0 is rejected even for u = 0", () => {
    const r = verifyDraft({
      draftTokens: [2],
      draftProbs: [f32([0.5, 0.5, 0])],
      targetProbs: [f32([0, 1, 0]), f32([1, 0, 0])],
      rng: fixed(0, 0),
    });
    expect(r).toEqual({ accepted: 0, tokens: [1] });
  });

  it("max(0, p - q) all zero falls back to p", () => {
    // p = q, and the draft (not from q) hits a token both give probability 0.
    const p = f32([0.5, 0.5, 0]);
    const counts = new Float64Array(3);
    const rng = new Rng(12);
    let accepted = 0;
    for (let t = 0; t < 4000; t++) {
      const r = verifyDraft({ draftTokens: [2], draftProbs: [p], targetProbs: [p, p], rng });
      accepted += r.accepted;
      counts[r.tokens[0]!]!++;
    }
    expect(accepted).toBe(0);
    expect(counts[2]).toBe(0);
    const chi = chiSquareTest(counts, [0.5, 0.5, 0]);
    expect(chi.statistic).toBeLessThan(chi.critical);
  });

  it("the residual excludes the rejected draft and follows norm(max(0, p - q))", () => {
    // p(d=0) < q(0); u chosen above p/q so the draft is rejected every time.
    const p = f32([0.2, 0.5, 0.3]);
    const q = f32([0.8, 0.1, 0.1]);
    const counts = new Float64Array(3);
    const uniform = new Rng(8);
    const rng: RandomSource = {
      next: (() => {
        let first = true;
        return () => {
          const u = first ? 0.5 : uniform.next(); // 0.5 > p/q = 0.25: reject
          first = !first;
          return u;
        };
      })(),
    };
    let accepted = 0;
    for (let t = 0; t < 10_000; t++) {
      const r = verifyDraft({ draftTokens: [0], draftProbs: [q], targetProbs: [p, p], rng });
      accepted += r.accepted;
      counts[r.tokens[0]!]!++;
    }
    expect(accepted).toBe(0);
    // max(0, p - q) = [0, 0.4, 0.2] -> [0, 2/3, 1/3].
    const chi = chiSquareTest(counts, [0, 2 / 3, 1 / 3]);
    expect(chi.impossible).toBe(0);
    expect(chi.statistic).toBeLessThan(chi.critical);
  });

  it("k = 0 just samples the bonus token from p_0", () => {
    const r = verifyDraft({ draftTokens: [], draftProbs: [], targetProbs: [f32([0, 0, 1])], rng: new Rng(1) });
    expect(r).toEqual({ accepted: 0, tokens: [2] });
  });

  it("is reproducible with a seeded rng", () => {
    const p = [f32([0.3, 0.3, 0.4]), f32([0.5, 0.25, 0.25])];
    const q = [f32([0.6, 0.2, 0.2])];
    const go = (seed: number) => {
      const rng = new Rng(seed);
      return Array.from({ length: 50 }, () => verifyDraft({ draftTokens: [0], draftProbs: q, targetProbs: p, rng }));
    };
    expect(go(3)).toEqual(go(3));
    expect(go(3)).not.toEqual(go(4));
  });
});

describe("input validation", () => {
  const p = f32([0.5, 0.5]);
  it.each<[string, () => unknown, RegExp]>([
    [
      "draftProbs count",
      () => verifyDraft({ draftTokens: [0], draftProbs: [], targetProbs: [p, p], rng: new Rng(1) }),
      /draftProbs has 0 distributions for 1 draft tokens/,
    ],
    [
      "targetProbs count",
      () => verifyDraft({ draftTokens: [0], draftProbs: [p], targetProbs: [p], rng: new Rng(1) }),
      /targetProbs has 1 distributions, expected 2/,
    ],
    [
      "vocab mismatch in targets",
      () => verifyDraft({ draftTokens: [0], draftProbs: [p], targetProbs: [p, f32([1])], rng: new Rng(1) }),
      /targetProbs\[1\] has length 1, expected 2/,
    ],
    [
      "vocab mismatch in drafts",
      () => verifyDraft({ draftTokens: [0], draftProbs: [f32([1, 0, 0])], targetProbs: [p, p], rng: new Rng(1) }),
      /draftProbs\[0\] has length 3, expected 2/,
    ],
    ["token out of range", () => verifyDraft({ draftTokens: [2], draftProbs: [p], targetProbs: [p, p], rng: new Rng(1) }), /draftTokens\[0\] = 2/],
    ["fractional token", () => verifyDraft({ draftTokens: [0.5], draftProbs: [p], targetProbs: [p, p], rng: new Rng(1) }), /draftTokens\[0\]/],
    [
      "bonus distribution without mass",
      () => verifyDraft({ draftTokens: [0], draftProbs: [p], targetProbs: [p, f32([0, 0])], rng: new Rng(1) }),
      /targetProbs\[1\] has no mass/,
    ],
    [
      "negative probability",
      () => verifyDraft({ draftTokens: [], draftProbs: [], targetProbs: [f32([-0.5, 1.5])], rng: new Rng(1) }),
      /targetProbs\[0\]\[0\] is -0.5/,
    ],
  ])("%s", (_name, call, message) => {
    expect(call).toThrow(InvalidArgumentError);
    expect(call).toThrow(message);
  });
});
