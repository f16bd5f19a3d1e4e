/**
 * The arithmetic of cluster-ab.ts: a stream's token arrivals cut into intervals, each interval given to the side of
 * the A/B switch that was in force while it passed (@moela/core's ab-switch.ts: on in odd windows of the wall
 * clock), and the two sides summed up.
 */
import { abWindowOn } from "@moela/core";
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
}

function side(xs: readonly number[]): AbSide {
  return { intervals: xs.length, medianMs: median(xs), meanMs: xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length };
}

export function summarizeAb(c: AbIntervals): AbSummary {
  const off = side(c.off);
  const on = side(c.on);
  const ratios: number[] = [];
  for (const [w, xs] of c.byWindow) {
    if (w % 2 !== 1) continue;
    const before = c.byWindow.get(w - 1);
    const after = c.byWindow.get(w + 1);
    if (before === undefined || after === undefined) continue;
    ratios.push(median(xs) / ((median(before) + median(after)) / 2));
  }
  return { off, on, medianRatio: on.medianMs / off.medianMs, meanRatio: on.meanMs / off.meanMs, pairedRatio: median(ratios), pairs: ratios.length };
}
