/**
 * Open-loop arrival times: a Poisson process at `rate` requests per second, i.e. independent exponential
 * gaps with mean 1 / rate (what vLLM's and SGLang's benches send with burstiness 1). The first request
 * goes at 0, as in both. An infinite rate sends everything at 0.
 */
import { Rng } from "./rng.js";

/** Send offsets in ms from the start of the level, non-decreasing, first one 0. */
export function poissonArrivals(count: number, ratePerS: number, seed: number): number[] {
  if (count <= 0) return [];
  if (!Number.isFinite(ratePerS)) return new Array<number>(count).fill(0);
  const rng = new Rng(seed);
  const out = [0];
  for (let i = 1; i < count; i++) out.push(out[i - 1]! + rng.exponential(ratePerS) * 1000);
  return out;
}
