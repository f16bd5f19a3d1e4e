import { describe, expect, it } from "vitest";
import { InvalidArgumentError, MoelaError } from "@moela/core";
import {
  GREEDY_TEMPERATURE_EPS,
  Rng,
  Sampler,
  argmax,
  logSoftmax,
  sampleFromProbs,
  topLogprobs,
  validateSamplingParams,
  type SamplingParams,
} from "@moela/engine";
import { ALPHA, chiSquareQuantile, chiSquareTest } from "./chi-square.js";

const SAMPLES = 20_000;

function params(over: Partial<SamplingParams>): SamplingParams {
  return { temperature: 1, topP: 1, topK: 0, ...over };
}

function randomLogits(n: number, rng: Rng, scale = 3): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    // Box-Muller: roughly the shape of real logits.
    const r = Math.sqrt(-2 * Math.log(1 - rng.next()));
    const t = 2 * Math.PI * rng.next();
    out[i] = scale * r * Math.cos(t);
    if (i + 1 < n) out[i + 1] = scale * r * Math.sin(t);
  }
  return out;
}

/**
 * Independent reference for the processed distribution: full sort, float64, vLLM's order
 * (temperature, top-k, top-p on the renormalised top-k, renormalise). Ties rank lower id first.
 */
function referenceProbs(logits: Float32Array, p: SamplingParams): Float64Array {
  const n = logits.length;
  const out = new Float64Array(n);
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
  if (p.temperature < GREEDY_TEMPERATURE_EPS) {
    out[order[0]!] = 1;
    return out;
  }
  let kept = p.topK > 0 ? order.slice(0, Math.min(p.topK, n)) : order;
  const max = logits[kept[0]!]!;
  let weights = kept.map((i) => Math.exp((logits[i]! - max) / p.temperature));
  let total = weights.reduce((a, b) => a + b, 0);
  if (p.topP < 1) {
    let cum = 0;
    let m = 0;
    while (m < kept.length) {
      cum += weights[m]! / total;
      m++;
      if (cum >= p.topP) break;
    }
    kept = kept.slice(0, m);
    weights = weights.slice(0, m);
    total = weights.reduce((a, b) => a + b, 0);
  }
  kept.forEach((id, j) => (out[id] = weights[j]! / total));
  return out;
}

function sampleCounts(sampler: Sampler, logits: Float32Array, draws: number): Float64Array {
  const counts = new Float64Array(logits.length);
  for (let i = 0; i < draws; i++) counts[sampler.sample(logits)]!++;
  return counts;
}

function probsOf(sampler: Sampler, logits: Float32Array): Float32Array {
  const out = new Float32Array(logits.length);
  sampler.probs(logits, out);
  return out;
}

function nonZero(a: ArrayLike<number>): number[] {
  const ids: number[] = [];
  for (let i = 0; i < a.length; i++) if (a[i] !== 0) ids.push(i);
  return ids;
}

describe("chi-square helper", () => {
  it.each([
    [0.95, 1, 3.841458820694124],
    [0.95, 10, 18.307038053275146],
    [0.99, 5, 15.08627246938899],
    [1 - ALPHA, 1, 15.136705226623606],
  ])("quantile(%d, df=%d) = %d", (prob, df, expected) => {
    expect(chiSquareQuantile(prob, df)).toBeCloseTo(expected, 6);
  });
  it("rejects a clearly wrong distribution", () => {
    const r = chiSquareTest([600, 400], [0.5, 0.5]); // 6.3 sigma off
    expect(r.statistic).toBeGreaterThan(r.critical);
  });
});

describe("Rng", () => {
  it("matches the xoshiro128** reference outputs from state {1,2,3,4}", () => {
    const rng = Rng.fromState([1, 2, 3, 4]);
    const got = Array.from({ length: 10 }, () => rng.nextUint32());
    // Published with Rust rand_xoshiro, produced by Vigna's reference xoshiro128starstar.c.
    expect(got).toEqual([11520, 0, 5927040, 70819200, 2031721883, 1637235492, 1287239034, 3734860849, 3729100597, 4258142804]);
  });

  it("is reproducible for a seed and differs between seeds", () => {
    const draw = (seed: number) => {
      const r = new Rng(seed);
      return Array.from({ length: 16 }, () => r.next());
    };
    expect(draw(42)).toEqual(draw(42));
    expect(draw(42)).not.toEqual(draw(43));
    expect(draw(0)).not.toEqual(draw(1));
    expect(draw(-1)).not.toEqual(draw(1));
  });

  it("continues the same stream after a state snapshot and restore", () => {
    const a = new Rng(7);
    for (let i = 0; i < 5; i++) a.next();
    const snapshot = a.state();
    const b = Rng.fromState(snapshot);
    expect(Array.from({ length: 20 }, () => b.next())).toEqual(Array.from({ length: 20 }, () => a.next()));
    expect(snapshot).toHaveLength(4);
  });

  it("unseeded generators differ", () => {
    const a = new Rng();
    const b = new Rng();
    expect([a.next(), a.next()]).not.toEqual([b.next(), b.next()]);
  });

  it("yields values in [0, 1) that are uniform (chi-square over 20 bins)", () => {
    const rng = new Rng(2024);
    const bins = new Float64Array(20);
    for (let i = 0; i < SAMPLES; i++) {
      const u = rng.next();
      expect(u >= 0 && u < 1).toBe(true);
      bins[Math.floor(u * 20)]!++;
    }
    const r = chiSquareTest(bins, new Array(20).fill(1 / 20));
    expect(r.statistic).toBeLessThan(r.critical);
  });

  it.each([[[1, 2, 3]], [[0, 0, 0, 0]], [[1, 2, 3, -1]], [[1, 2, 3, 2 ** 32]], [[1, 2, 3, 0.5]]])("fromState rejects %j", (words) => {
    expect(() => Rng.fromState(words)).toThrow(InvalidArgumentError);
  });

  it.each([[1.5], [Number.NaN], [2 ** 60], [Infinity]])("rejects seed %d", (seed) => {
    expect(() => new Rng(seed)).toThrow(InvalidArgumentError);
  });
});

describe("validateSamplingParams", () => {
  it.each<[string, Partial<SamplingParams>]>([
    ["negative temperature", { temperature: -0.1 }],
    ["NaN temperature", { temperature: Number.NaN }],
    ["infinite temperature", { temperature: Infinity }],
    ["temperature above 100", { temperature: 100.5 }],
    ["top_p 0", { topP: 0 }],
    ["top_p above 1", { topP: 1.01 }],
    ["negative top_p", { topP: -0.5 }],
    ["NaN top_p", { topP: Number.NaN }],
    ["top_k -2", { topK: -2 }],
    ["fractional top_k", { topK: 2.5 }],
    ["NaN top_k", { topK: Number.NaN }],
    ["fractional seed", { seed: 1.5 }],
    ["huge seed", { seed: 2 ** 60 }],
  ])("rejects %s", (_name, over) => {
    expect(() => validateSamplingParams(params(over))).toThrow(InvalidArgumentError);
    expect(() => new Sampler(10, params(over))).toThrow(InvalidArgumentError);
  });

  it.each<[string, Partial<SamplingParams>]>([
    ["greedy", { temperature: 0 }],
    ["temperature 100", { temperature: 100 }],
    ["top_k -1", { topK: -1 }],
    ["top_k larger than vocab", { topK: 1_000_000 }],
    ["top_p 1", { topP: 1 }],
    ["tiny top_p", { topP: 1e-6 }],
    ["negative seed", { seed: -5 }],
  ])("accepts %s", (_name, over) => {
    expect(() => validateSamplingParams(params(over))).not.toThrow();
  });

  it("error names the field", () => {
    expect(() => validateSamplingParams(params({ topP: 2 }))).toThrow(/top_p/);
    expect(() => validateSamplingParams(params({ temperature: -1 }))).toThrow(/temperature/);
    expect(() => validateSamplingParams(params({ topK: -3 }))).toThrow(/top_k/);
  });
});

describe("Sampler input checks", () => {
  it.each([[0], [-3], [1.5]])("rejects vocab size %d", (v) => {
    expect(() => new Sampler(v, params({}))).toThrow(InvalidArgumentError);
  });
  it("rejects logits of the wrong length", () => {
    const s = new Sampler(4, params({}), new Rng(1));
    expect(() => s.sample(new Float32Array(5))).toThrow(/length 5, expected vocab size 4/);
    expect(() => s.probs(new Float32Array(4), new Float32Array(3))).toThrow(InvalidArgumentError);
  });
  it.each<[string, Partial<SamplingParams>]>([
    ["greedy", { temperature: 0 }],
    ["plain", {}],
    ["top-k", { topK: 2 }],
    ["top-p", { topP: 0.5 }],
  ])("%s: NaN logits and all -Infinity logits throw instead of sampling garbage", (_n, over) => {
    const s = new Sampler(4, params(over), new Rng(1));
    expect(() => s.sample(Float32Array.from([0, Number.NaN, 1, 2]))).toThrow(/logits\[1\] is NaN/);
    expect(() => s.sample(Float32Array.from([0, 1, 2, Number.NaN]))).toThrow(MoelaError);
    expect(() => s.sample(new Float32Array(4).fill(-Infinity))).toThrow(/-Infinity/);
    expect(() => s.sample(Float32Array.from([0, Infinity, 1, 2]))).toThrow(/Infinity/);
  });
  it("never samples a -Infinity (masked) token", () => {
    const s = new Sampler(4, params({ temperature: 2 }), new Rng(3));
    const logits = Float32Array.from([-Infinity, 0, -Infinity, 0.5]);
    const counts = sampleCounts(s, logits, 2000);
    expect(counts[0]).toBe(0);
    expect(counts[2]).toBe(0);
    expect(counts[1]! + counts[3]!).toBe(2000);
  });
});

describe("greedy", () => {
  it.each<[string, number[], number]>([
    ["simple", [0.1, 2.5, -1, 2.4], 1],
    ["first", [9, 1, 2], 0],
    ["last", [-5, -4, -3], 2],
    ["ties pick lowest id", [1, 3, 3, 3, 0], 1],
    ["all equal", [7, 7, 7], 0],
    ["with -Infinity", [-Infinity, -2, -Infinity], 1],
    ["single token", [0], 0],
  ])("%s", (_name, values, expected) => {
    const logits = Float32Array.from(values);
    expect(argmax(logits)).toBe(expected);
    for (const temperature of [0, GREEDY_TEMPERATURE_EPS / 2]) {
      const rng = new Rng(5);
      const before = rng.state();
      const s = new Sampler(logits.length, params({ temperature, topK: 3, topP: 0.5 }), rng);
      expect(s.greedy).toBe(true);
      expect(s.sample(logits)).toBe(expected);
      const oneHot = new Float32Array(logits.length);
      oneHot[expected] = 1;
      expect(probsOf(s, logits)).toEqual(oneHot);
      expect(rng.state()).toEqual(before); // greedy draws nothing
    }
  });

  it("equals argmax on random large vocabularies", () => {
    const rng = new Rng(11);
    const s = new Sampler(50_000, params({ temperature: 0 }));
    for (let t = 0; t < 5; t++) {
      const logits = randomLogits(50_000, rng);
      let best = 0;
      for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
      expect(s.sample(logits)).toBe(best);
    }
  });

  it("top_k = 1 with temperature > 0 is the argmax too", () => {
    const s = new Sampler(5, params({ temperature: 1.5, topK: 1 }), new Rng(1));
    const logits = Float32Array.from([0, 4, 4, 1, 2]);
    for (let i = 0; i < 50; i++) expect(s.sample(logits)).toBe(1);
  });
});

describe("seeded sampling", () => {
  const logits = Float32Array.from([1, 0.5, 0.2, 0, -0.3, 0.9, 1.1, 0.1]);
  const draw = (seed: number, n: number, over: Partial<SamplingParams> = {}) => {
    const s = new Sampler(logits.length, params({ seed, ...over }));
    return Array.from({ length: n }, () => s.sample(logits));
  };

  it.each<[string, Partial<SamplingParams>]>([
    ["plain", {}],
    ["top-k", { topK: 4 }],
    ["top-p", { topP: 0.8 }],
    ["top-k and top-p", { topK: 5, topP: 0.7, temperature: 0.6 }],
  ])("%s: same seed, same sequence; different seed, different sequence", (_n, over) => {
    expect(draw(1234, 200, over)).toEqual(draw(1234, 200, over));
    expect(draw(1234, 200, over)).not.toEqual(draw(1235, 200, over));
  });

  it.each<[string, Partial<SamplingParams>]>([
    ["plain", {}],
    ["top-k", { topK: 300 }],
    ["top-p", { topP: 0.9 }],
    ["top-k and top-p", { topK: 500, topP: 0.8 }],
  ])("%s: a migrated sampler (fresh buffers, rng state restored) continues the same sequence", (_n, over) => {
    // A vocabulary large enough that the nucleus search partitions rather than just sorting.
    const rng = new Rng(6);
    const rows = Array.from({ length: 40 }, () => randomLogits(2000, rng, 1));
    const a = new Sampler(2000, params({ seed: 99, ...over }));
    for (let i = 0; i < 37; i++) a.sample(rows[i % rows.length]!);
    const b = new Sampler(2000, params(over), Rng.fromState(a.rng.state()));
    const fromA = rows.map((row) => a.sample(row));
    const fromB = rows.map((row) => b.sample(row));
    expect(fromB).toEqual(fromA);
  });
});

describe("processed distribution matches an independent full-sort reference", () => {
  const combos: Array<Partial<SamplingParams>> = [];
  for (const temperature of [0.5, 1, 1.7])
    for (const topK of [0, -1, 1, 5, 50, 999, 1000, 5000]) for (const topP of [1, 0.9, 0.5, 0.01]) combos.push({ temperature, topK, topP });

  it.each([
    ["continuous logits", false],
    ["quantised logits with many ties", true],
  ])("%s, vocab 1000, all parameter combinations", (_name, quantise) => {
    const rng = new Rng(quantise ? 8 : 7);
    const logits = randomLogits(1000, rng);
    if (quantise) for (let i = 0; i < logits.length; i++) logits[i] = Math.round(logits[i]! * 2) / 2;
    for (const over of combos) {
      const p = params(over);
      const got = probsOf(new Sampler(1000, p, new Rng(1)), logits);
      const want = referenceProbs(logits, p);
      expect(nonZero(got), JSON.stringify(over)).toEqual(nonZero(want));
      for (let i = 0; i < 1000; i++) expect(got[i]).toBeCloseTo(want[i]!, 6);
      if (p.topK > 0) expect(nonZero(got).length).toBeLessThanOrEqual(p.topK);
    }
  });

  it.each<[string, Partial<SamplingParams>]>([
    ["top-k 50", { topK: 50, temperature: 0.8 }],
    ["top-p 0.9", { topP: 0.9, temperature: 0.8 }],
    ["top-k 1000 then top-p 0.95", { topK: 1000, topP: 0.95 }],
  ])("vocab 131072: %s", (_name, over) => {
    const vocab = 131_072;
    const logits = randomLogits(vocab, new Rng(3), 4);
    const p = params(over);
    const s = new Sampler(vocab, p, new Rng(1));
    const got = probsOf(s, logits);
    const want = referenceProbs(logits, p);
    expect(nonZero(got)).toEqual(nonZero(want));
    for (const id of nonZero(want)) expect(got[id]).toBeCloseTo(want[id]!, 6);
    // Reusing the sampler (its scratch buffers) gives the same answer.
    expect(probsOf(s, logits)).toEqual(got);
    expect(want[s.sample(logits)]).toBeGreaterThan(0);
  });
});

describe("top-k", () => {
  it.each<[number[], number, number[]]>([
    [[0.5, 2, 1, 3, -1, 2.5], 3, [1, 3, 5]],
    [[1, 3, 3, 3, 0], 2, [1, 2]], // ties at the boundary: exactly k, lowest ids win
    [[2, 2, 2, 2], 3, [0, 1, 2]],
    [[1, 2, 3], 3, [0, 1, 2]], // k = vocab is off
    [[1, 2, 3], 10, [0, 1, 2]], // k > vocab is off
    [[5, -Infinity, -Infinity, 1], 3, [0, 3]], // masked tokens keep zero probability
  ])("logits %j, k=%d keeps %j", (values, k, kept) => {
    const logits = Float32Array.from(values);
    const got = probsOf(new Sampler(logits.length, params({ topK: k }), new Rng(1)), logits);
    expect(nonZero(got)).toEqual(kept);
    let sum = 0;
    for (const v of got) sum += v;
    expect(sum).toBeCloseTo(1, 6);
  });
});

describe("top-p", () => {
  // Integer logits at temperature 1/ln 2 give probabilities proportional to 2^logit: dyadic, so
  // the boundaries below are exact up to float64 rounding (float32 logs of 0.5, 0.25... would not be).
  const logits = Float32Array.from([0, -1, -2, -3, -3]);
  const temperature = 1 / Math.LN2;
  it.each<[number, number[]]>([
    [1, [0.5, 0.25, 0.125, 0.0625, 0.0625]],
    [0.96, [0.5, 0.25, 0.125, 0.0625, 0.0625]],
    [0.9375, [0.5 / 0.9375, 0.25 / 0.9375, 0.125 / 0.9375, 0.0625 / 0.9375, 0]],
    [0.76, [0.5 / 0.875, 0.25 / 0.875, 0.125 / 0.875, 0, 0]],
    [0.75, [2 / 3, 1 / 3, 0, 0, 0]], // cumulative exactly top_p: stop there
    [0.5000001, [2 / 3, 1 / 3, 0, 0, 0]],
    [0.5, [1, 0, 0, 0, 0]],
    [0.2, [1, 0, 0, 0, 0]], // always at least one token
    [1e-6, [1, 0, 0, 0, 0]],
  ])("top_p=%d gives %j", (topP, expected) => {
    const got = probsOf(new Sampler(logits.length, params({ topP, temperature }), new Rng(1)), logits);
    expect(nonZero(got)).toEqual(nonZero(expected));
    expected.forEach((v, i) => expect(got[i]).toBeCloseTo(v, 6));
  });

  it("applies after top-k, on the renormalised top-k distribution (vLLM order)", () => {
    // Full distribution [0.4, 0.3, 0.2, 0.1]. top-k 2 renormalises to [4/7, 3/7]; 4/7 >= 0.55
    // keeps one token. Applying top-p first on the full distribution would have kept two.
    const l = Float32Array.from([0.4, 0.3, 0.2, 0.1].map(Math.log));
    const got = probsOf(new Sampler(4, params({ topK: 2, topP: 0.55 }), new Rng(1)), l);
    expect(Array.from(got)).toEqual([1, 0, 0, 0]);
  });

  it("applies after temperature", () => {
    // [0.6, 0.4]: at T=1, 0.6 >= 0.55 keeps one token; at T=5 it flattens to [0.520, 0.480]: two.
    const l = Float32Array.from([0.6, 0.4].map(Math.log));
    expect(nonZero(probsOf(new Sampler(2, params({ topP: 0.55 }), new Rng(1)), l))).toEqual([0]);
    const hot = probsOf(new Sampler(2, params({ topP: 0.55, temperature: 5 }), new Rng(1)), l);
    expect(hot[0]).toBeCloseTo(0.6 ** 0.2 / (0.6 ** 0.2 + 0.4 ** 0.2), 6);
    expect(hot[1]).toBeGreaterThan(0);
  });
});

describe("sampled frequencies match the analytic distribution (chi-square, alpha 1e-4)", () => {
  const logits = Float32Array.from([2.1, 1.3, 0.4, 1.9, -0.7, 0.0, 1.1, -2.0, 0.8, 1.6, -Infinity, 0.2]);
  it.each<[string, Partial<SamplingParams>]>([
    ["temperature 1", {}],
    ["temperature 0.7", { temperature: 0.7 }],
    ["temperature 2.5", { temperature: 2.5 }],
    ["top-k 4, temperature 1.3", { topK: 4, temperature: 1.3 }],
    ["top-p 0.8", { topP: 0.8 }],
    ["top-k 6, top-p 0.7, temperature 0.9", { topK: 6, topP: 0.7, temperature: 0.9 }],
  ])("%s", (_name, over) => {
    const p = params({ seed: 20240601, ...over });
    const expected = referenceProbs(logits, p);
    const sampler = new Sampler(logits.length, p);
    const counts = sampleCounts(sampler, logits, SAMPLES);
    const r = chiSquareTest(counts, expected);
    expect(r.impossible).toBe(0);
    expect(r.df).toBeGreaterThanOrEqual(2);
    expect(r.statistic).toBeLessThan(r.critical);
  });

  it("sampleFromProbs follows an explicit (unnormalised float32) distribution", () => {
    const probs = Float32Array.from([0.1, 0, 0.3, 0.2, 0.4].map((v) => v * 3));
    const rng = new Rng(77);
    const counts = new Float64Array(5);
    for (let i = 0; i < SAMPLES; i++) counts[sampleFromProbs(probs, rng)]!++;
    const r = chiSquareTest(counts, [0.1, 0, 0.3, 0.2, 0.4]);
    expect(r.impossible).toBe(0);
    expect(r.statistic).toBeLessThan(r.critical);
  });

  it.each([[[0, 0, 0]], [[0.5, -0.1, 0.6]], [[0.5, Number.NaN]]])("sampleFromProbs rejects %j", (values) => {
    expect(() => sampleFromProbs(Float32Array.from(values), new Rng(1))).toThrow(InvalidArgumentError);
  });
});

describe("logSoftmax and topLogprobs", () => {
  function directLogSoftmax(logits: Float32Array): Float64Array {
    // Straightforward float64 definition (no max trick): fine for moderate logits.
    let sum = 0;
    for (const v of logits) sum += Math.exp(v);
    const lse = Math.log(sum);
    return Float64Array.from(logits, (v) => v - lse);
  }

  it("logSoftmax equals the direct float64 computation", () => {
    const logits = randomLogits(5000, new Rng(21), 5);
    const out = new Float64Array(logits.length);
    logSoftmax(logits, out);
    const want = directLogSoftmax(logits);
    let total = 0;
    for (let i = 0; i < out.length; i++) {
      expect(Math.abs(out[i]! - want[i]!)).toBeLessThan(1e-12);
      total += Math.exp(out[i]!);
    }
    expect(total).toBeCloseTo(1, 12);
  });

  it("logSoftmax is stable for large logits and keeps -Infinity", () => {
    const out = new Float64Array(3);
    logSoftmax(Float32Array.from([1000, 999, -Infinity]), out);
    expect(out[0]).toBeCloseTo(-Math.log1p(Math.exp(-1)), 14);
    expect(out[1]).toBeCloseTo(-1 - Math.log1p(Math.exp(-1)), 14);
    expect(out[2]).toBe(-Infinity);
    expect(() => logSoftmax(new Float32Array(3), new Float64Array(2))).toThrow(InvalidArgumentError);
  });

  it("topLogprobs: best first, values of log_softmax on the raw logits", () => {
    const logits = randomLogits(3000, new Rng(5), 4);
    const want = directLogSoftmax(logits);
    const order = Array.from({ length: logits.length }, (_, i) => i).sort((a, b) => want[b]! - want[a]! || a - b);
    const got = topLogprobs(logits, 20);
    expect(got.map(([id]) => id)).toEqual(order.slice(0, 20));
    for (const [id, lp] of got) expect(Math.abs(lp - want[id]!)).toBeLessThan(1e-12);
    for (let j = 1; j < got.length; j++) expect(got[j]![1]).toBeLessThanOrEqual(got[j - 1]![1]);
  });

  it.each<[number[], number, number[]]>([
    [[1, 3, 3, 0, 3], 2, [1, 2]], // ties: lower id first
    [[1, 3, 3, 0, 3], 4, [1, 2, 4, 0]],
    [[0.5, -1], 5, [0, 1]], // n clamps to vocab
    [[0.5, -1], 0, []],
  ])("topLogprobs(%j, %d) ids %j", (values, n, ids) => {
    expect(topLogprobs(Float32Array.from(values), n).map(([id]) => id)).toEqual(ids);
  });

  it("topLogprobs ignores sampling parameters: a top-1 of [0, ln 3] is ln 0.75", () => {
    const [[id, lp]] = topLogprobs(Float32Array.from([0, Math.log(3)]), 1) as [[number, number]];
    expect(id).toBe(1);
    expect(lp).toBeCloseTo(Math.log(0.75), 6);
  });

  it.each([[-1], [1.5], [Number.NaN]])("topLogprobs rejects n=%d", (n) => {
    expect(() => topLogprobs(new Float32Array(3), n)).toThrow(InvalidArgumentError);
  });
});
