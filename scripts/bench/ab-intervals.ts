/**
 * The arithmetic of cluster-ab.ts: a stream's token arrivals cut into intervals, each interval given to the side of
 * the A/B switch that was in force while it passed (@moela/core's ab-switch.ts: on in odd windows of the wall
 * clock), and the two sides summed up.
 */
import { abWindowOn } from "@moela/core";
import { Rng } from "@moela/engine";
import { median } from "../lib/bench-report.js";

export interface AbIntervals {
  /** Milliseconds between consecutive tokens while the switch was off. */
  readonly off: number[];
  readonly on: number[];
  /** Every counted interval by the index of its window (floor(epoch ms / window)); odd windows are on. */
  readonly byWindow: ReadonlyMap<number, number[]>;
  /** Intervals that crossed a window's edge, with the guard before them: neither side's. */
  readonly dropped: number;
}

/**
 * Intervals between consecutive arrivals of each stream (epoch milliseconds, ascending within a stream). An
 * interval counts for a side only when it and the `guardMs` before it lie inside one window: a token reaches the
 * client a little after the step that made it, and that step started a little before the previous token arrived.
 */
export function classifyIntervals(streams: ReadonlyArray<readonly number[]>, windowMs: number, guardMs: number): AbIntervals {
  const off: number[] = [];
  const on: number[] = [];
  const byWindow = new Map<number, number[]>();
  let dropped = 0;
  for (const arrivals of streams) {
    for (let i = 1; i < arrivals.length; i++) {
      const to = arrivals[i]!;
      const w = Math.floor(to / windowMs);
      if (Math.floor((arrivals[i - 1]! - guardMs) / windowMs) !== w) {
        dropped++;
        continue;
      }
      const ms = to - arrivals[i - 1]!;
      (abWindowOn(to, windowMs) ? on : off).push(ms);
      let list = byWindow.get(w);
      if (list === undefined) byWindow.set(w, (list = []));
      list.push(ms);
    }
  }
  return { off, on, byWindow, dropped };
}

export interface AbSide {
  readonly intervals: number;
  readonly medianMs: number;
  readonly meanMs: number;
}

export interface AbSummary {
  readonly off: AbSide;
  readonly on: AbSide;
  /** on / off: below 1 means the switch's side is faster. */
  readonly medianRatio: number;
  readonly meanRatio: number;
  /**
   * The median, over the "on" windows with an "off" window on both sides, of the on window's median interval over
   * the mean of its two neighbours' medians: a drift of the machine's speed that is linear over the three windows
   * cancels.
   */
  readonly pairedRatio: number;
  /** How many such trios there were. */
  readonly pairs: number;
  /** pairedRatio's 95% interval (pairedRatioInterval); NaN with fewer than two trios. */
  readonly pairedInterval: readonly [number, number];
}

function side(xs: readonly number[]): AbSide {
  return { intervals: xs.length, medianMs: median(xs), meanMs: xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length };
}

export function summarizeAb(c: AbIntervals): AbSummary {
  const off = side(c.off);
  const on = side(c.on);
  const ratios: number[] = [];
  // In window order: the interval's bootstrap resamples runs of neighbouring trios.
  for (const w of [...c.byWindow.keys()].sort((a, b) => a - b)) {
    const xs = c.byWindow.get(w)!;
    if (w % 2 !== 1) continue;
    const before = c.byWindow.get(w - 1);
    const after = c.byWindow.get(w + 1);
    if (before === undefined || after === undefined) continue;
    ratios.push(median(xs) / ((median(before) + median(after)) / 2));
  }
  return {
    off,
    on,
    medianRatio: on.medianMs / off.medianMs,
    meanRatio: on.meanMs / off.meanMs,
    pairedRatio: median(ratios),
    pairs: ratios.length,
    pairedInterval: pairedRatioInterval(ratios),
  };
}

/**
 * Trios per block of the bootstrap: a trio shares an off window with the next one only, so their ratios are not
 * independent, and runs of two keep that. Simulated runs of 20-130 trios without an effect (the unit test's model)
 * held the true ratio in 92-95% of the intervals; runs of four, 84-96%.
 */
const BOOTSTRAP_BLOCK = 2;
const BOOTSTRAP_RESAMPLES = 2000;

/**
 * A 95% interval for the median of `ratios` (the trios' ratios, in window order): a moving-block bootstrap, the
 * 2.5th and 97.5th percentiles of the medians of resamples made of runs of BOOTSTRAP_BLOCK neighbouring trios. An
 * interval that holds 1 means the run cannot tell the switch's effect from the noise. Seeded, so the same run
 * prints the same interval.
 */
export function pairedRatioInterval(ratios: readonly number[], resamples = BOOTSTRAP_RESAMPLES, seed = 1): [number, number] {
  const n = ratios.length;
  if (n < 2) return [NaN, NaN];
  const block = Math.min(BOOTSTRAP_BLOCK, n);
  const rng = new Rng(seed);
  const medians = new Float64Array(resamples);
  const sample: number[] = new Array<number>(n);
  for (let r = 0; r < resamples; r++) {
    for (let i = 0; i < n;) {
      const start = Math.floor(rng.next() * (n - block + 1));
      for (let j = 0; j < block && i < n; j++) sample[i++] = ratios[start + j]!;
    }
    medians[r] = median(sample);
  }
  medians.sort();
  const at = (q: number): number => medians[Math.min(resamples - 1, Math.max(0, Math.round(q * (resamples - 1))))]!;
  return [at(0.025), at(0.975)];
}
