import type { ModelConfig } from "@moela/engine";

/** Deterministic pseudo-random floats in [-1, 1) (xorshift32), so kernel cases are reproducible. */
export function fillRandom(a: Float32Array, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  for (let i = 0; i < a.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    a[i] = s / 2 ** 31 - 1;
  }
  return a;
}

/** Deterministic pseudo-random numbers in [0, 1) (mulberry32), so every case is reproducible. */
export { mulberry32 as rng } from "../../scripts/lib/random.js";

/**
 * Seeded activations [T, hidden] in [-2, 2) and a top-k routing of T tokens over the model's routed
 * experts (distinct experts per token, weights in [0.2, 1.2)): a MoE layer's input for the expert-host tests.
 */
export function routedBatch(config: ModelConfig, T: number, seed: number) {
  let s = seed;
  const rand = () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;
  const hidden = config.hiddenSize;
  const k = config.numExpertsPerTok;
  const x = Float32Array.from({ length: T * hidden }, () => (rand() - 0.5) * 4);
  const ids = new Int32Array(T * k);
  const weights = new Float32Array(T * k);
  for (let t = 0; t < T; t++) {
    const chosen: number[] = [];
    while (chosen.length < k) {
      const e = Math.floor(rand() * config.nRoutedExperts);
      if (!chosen.includes(e)) chosen.push(e);
    }
    chosen.forEach((e, j) => {
      ids[t * k + j] = e;
      weights[t * k + j] = 0.2 + rand();
    });
  }
  return { x, ids, weights, T, hidden };
}
