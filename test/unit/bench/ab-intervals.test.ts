import { describe, expect, it } from "vitest";
import { Rng } from "@moela/engine";
import { classifyIntervals, pairedRatioInterval, summarizeAb } from "../../../scripts/bench/ab-intervals.js";

describe("sorting a stream's token intervals by the A/B switch's window (scripts/bench/ab-intervals.ts)", () => {
  it("gives each interval to the window it lies in, odd windows on, and drops one that crosses an edge with its guard", () => {
    // 100 ms windows: [0, 100) off, [100, 200) on, [200, 300) off.
    const c = classifyIntervals([[10, 20, 40, 99, 150, 160, 199, 205, 230]], 100, 2);
    expect(c.off).toEqual([10, 20, 59, 25]); // 10->20, 20->40, 40->99; 205->230
    expect(c.on).toEqual([10, 39]); // 150->160, 160->199
    // 99->150 and 199->205 cross an edge; 150 - 2 ms of guard is still in [100, 200), so 150->160 counts.
    expect(c.dropped).toBe(2);
    expect([...c.byWindow.keys()]).toEqual([0, 1, 2]);
  });

  it("drops an interval whose guard reaches back over an edge though both arrivals lie in one window", () => {
    const c = classifyIntervals([[101, 110]], 100, 2);
    expect(c.on).toEqual([]);
    expect(c.dropped).toBe(1);
    expect(classifyIntervals([[103, 110]], 100, 2).on).toEqual([7]);
  });

  it("keeps streams apart: no interval spans the end of one stream and the start of the next", () => {
    const c = classifyIntervals(
      [
        [10, 20],
        [30, 45],
      ],
      100,
      0,
    );
    expect(c.off).toEqual([10, 15]);
  });

  it("sums up each side and compares every on window with its two off neighbours", () => {
    // The machine slows down steadily (intervals of 10, 20 and 30 ms in successive windows) and the switch does
    // nothing: the pooled sides see the drift, the neighbours' ratio does not.
    const arrivals: number[] = [];
    for (let t = 3; t < 100; t += 10) arrivals.push(t);
    for (let t = 103; t < 200; t += 20) arrivals.push(t);
    for (let t = 203; t < 300; t += 30) arrivals.push(t);
    const s = summarizeAb(classifyIntervals([arrivals], 100, 2));
    expect(s.on.medianMs).toBe(20);
    expect(s.off.intervals).toBe(9 + 3);
    expect(s.pairs).toBe(1);
    // The on window's median (20) over the mean of its neighbours' (10 and 30).
    expect(s.pairedRatio).toBe(1);
    // Pooled, the off side is mostly the fast first window's: 9 tens and 3 thirties.
    expect(s.medianRatio).toBe(2);
    expect(s.meanRatio).toBeCloseTo(20 / ((9 * 10 + 3 * 30) / 12), 12);
  });

  describe("the neighbours' ratio's 95% interval (a moving-block bootstrap)", () => {
    /**
     * The trio ratios of a simulated run: window medians of 1 +- `noise` (uniform), the on (odd) windows' times
     * `effect`, each on window over the mean of its two neighbours, as summarizeAb forms them: neighbouring trios
     * share an off window, as they do in a real run.
     */
    function ratios(trios: number, effect: number, noise: number, seed: number): number[] {
      const rng = new Rng(seed);
      const m = Array.from({ length: 2 * trios + 1 }, (_, w) => (w % 2 === 1 ? effect : 1) * (1 + noise * (2 * rng.next() - 1)));
      return Array.from({ length: trios }, (_, i) => m[2 * i + 1]! / ((m[2 * i]! + m[2 * i + 2]!) / 2));
    }

    it("holds the switch's true effect in about 95% of runs, narrows with more windows, and is the same for the same run", () => {
      let held = 0;
      const runs = 100;
      for (let seed = 1; seed <= runs; seed++) {
        const [low, high] = pairedRatioInterval(ratios(60, 1, 0.05, seed));
        if (low <= 1 && 1 <= high) held++;
      }
      expect(held).toBeGreaterThanOrEqual(85);
      const few = ratios(20, 1, 0.05, 3);
      const [lowFew, highFew] = pairedRatioInterval(few);
      const [lowMany, highMany] = pairedRatioInterval(ratios(400, 1, 0.05, 3));
      expect(highMany - lowMany).toBeLessThan((highFew - lowFew) / 2);
      expect(pairedRatioInterval(few)).toEqual([lowFew, highFew]);
    });

    it("tells an effect of 3% from noise of +-5% over a few hundred windows", () => {
      const [low, high] = pairedRatioInterval(ratios(300, 0.97, 0.05, 7));
      expect(high).toBeLessThan(1);
      expect(low).toBeGreaterThan(0.94);
    });

    it("is a point when every trio agrees, and NaN with fewer than two trios; summarizeAb carries it", () => {
      expect(pairedRatioInterval([1.1, 1.1, 1.1, 1.1, 1.1])).toEqual([1.1, 1.1]);
      expect(pairedRatioInterval([0.9])).toEqual([NaN, NaN]);
      // Windows of 10 ms intervals, the on ones (odd) at 11: every trio's ratio is 1.1.
      const arrivals: number[] = [];
      for (let w = 0; w < 9; w++) for (let t = w * 100 + 3; t < (w + 1) * 100; t += w % 2 === 1 ? 11 : 10) arrivals.push(t);
      const s = summarizeAb(classifyIntervals([arrivals], 100, 2));
      expect(s.pairs).toBe(4);
      expect(s.pairedRatio).toBeCloseTo(1.1, 12);
      expect(s.pairedInterval[0]).toBeCloseTo(1.1, 12);
      expect(s.pairedInterval[1]).toBeCloseTo(1.1, 12);
    });
  });
});
