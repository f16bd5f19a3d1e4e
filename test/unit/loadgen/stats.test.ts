// Percentiles and per-request metrics from timestamps (vLLM's / SGLang's definitions), as tables.
import { describe, expect, it } from "vitest";
import { levelStats, percentile, poissonArrivals, requestMetrics, summarize, type RequestRecord } from "@moela/loadgen";

describe("percentile (numpy's linear interpolation)", () => {
  it.each<[number[], number, number]>([
    [[1, 2, 3, 4], 50, 2.5],
    [[4, 1, 3, 2], 50, 2.5],
    [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90, 9.1],
    [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 99, 9.91],
    [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0, 1],
    [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 100, 10],
    [[7], 99, 7],
    [[100, 110, 120, 130], 90, 127],
  ])("%j p%d = %d", (xs, p, want) => {
    expect(percentile(xs, p)).toBeCloseTo(want, 12);
  });

  it("is NaN for no samples, and summarize is null", () => {
    expect(percentile([], 50)).toBeNaN();
    expect(summarize([])).toBeNull();
    expect(summarize([2, 4])).toEqual({ count: 2, mean: 3, p50: 3, p90: 3.8, p99: 3.98 });
  });
});

function rec(over: Partial<RequestRecord>): RequestRecord {
  return { target: 0, index: 0, sendAt: 0, endAt: 0, chunks: [], promptTokens: 10, outputTokens: 0, countsExact: true, ...over };
}

/** Chunks arriving at the times `at`, each carrying one token unless `tokens` says otherwise. */
function chunksAt(at: number[], tokens: number[] = at.map(() => 1)): RequestRecord["chunks"] {
  return at.map((t, i) => ({ at: t, tokens: tokens[i]! }));
}

describe("requestMetrics", () => {
  it("one token per chunk: TTFT, ITL gaps, TPOT, E2E", () => {
    const r = rec({ sendAt: 1000, endAt: 1075, chunks: chunksAt([1040, 1050, 1070]), outputTokens: 3 });
    expect(requestMetrics(r)).toEqual({ ttft: 40, tpot: 15, e2e: 75, itl: [10, 20] });
  });

  it("a chunk of k tokens with exact counts is k gaps of gap / k (SGLang)", () => {
    const r = rec({ sendAt: 0, endAt: 60, chunks: chunksAt([20, 40, 60], [1, 2, 1]), outputTokens: 4 });
    expect(requestMetrics(r)).toEqual({ ttft: 20, tpot: 40 / 3, e2e: 60, itl: [10, 10, 20] });
  });

  it("without per-chunk counts each chunk is one gap (vLLM), TPOT still uses usage's token count", () => {
    const r = rec({ sendAt: 0, endAt: 60, chunks: chunksAt([20, 40]), outputTokens: 5, countsExact: false });
    expect(requestMetrics(r)).toEqual({ ttft: 20, tpot: 5, e2e: 60, itl: [20] });
  });

  it("one output token: no TPOT, no ITL; no token at all: no TTFT", () => {
    expect(requestMetrics(rec({ endAt: 9, chunks: [{ at: 5, tokens: 1 }], outputTokens: 1 }))).toEqual({ ttft: 5, tpot: null, e2e: 9, itl: [] });
    expect(requestMetrics(rec({ endAt: 9 }))).toEqual({ ttft: null, tpot: null, e2e: 9, itl: [] });
  });
});

describe("levelStats", () => {
  it("rates over the window from the first send to the last end; failures counted apart", () => {
    const rs = [
      rec({ index: 0, sendAt: 0, endAt: 100, chunks: chunksAt([50, 100]), outputTokens: 2, promptTokens: 8 }),
      rec({ index: 1, sendAt: 100, endAt: 400, chunks: chunksAt([200, 300, 400]), outputTokens: 3, promptTokens: 8 }),
      rec({ index: 2, sendAt: 200, endAt: 500, error: "HTTP 500: boom" }),
    ];
    const s = levelStats(rs);
    expect(s).toMatchObject({
      completed: 2,
      failed: 1,
      durationS: 0.5,
      requestsPerS: 4,
      outputTokensPerS: 10,
      totalTokensPerS: 42,
      promptTokens: 16,
      outputTokens: 5,
      meanInFlight: 1.4,
      tokensPerChunk: 1,
      itlPerToken: true,
      firstError: "HTTP 500: boom",
    });
    expect(s.ttftMs).toEqual({ count: 2, mean: 75, p50: 75, p90: 95, p99: 99.5 });
    expect(s.itlMs).toEqual({ count: 3, mean: 250 / 3, p50: 100, p90: 100, p99: 100 });
    expect(s.tpotMs).toEqual({ count: 2, mean: 75, p50: 75, p90: 95, p99: 99.5 });
    expect(s.e2eMs?.p50).toBe(200);
  });

  it("no records: zeros, no summaries", () => {
    expect(levelStats([])).toMatchObject({ completed: 0, failed: 0, durationS: 0, requestsPerS: 0, ttftMs: null, e2eMs: null });
  });
});

describe("poissonArrivals", () => {
  it("starts at 0, never goes back, and has mean gap 1 / rate", () => {
    const a = poissonArrivals(20001, 8, 3);
    expect(a[0]).toBe(0);
    expect(a.every((x, i) => i === 0 || x >= a[i - 1]!)).toBe(true);
    const meanGapMs = a[a.length - 1]! / (a.length - 1);
    expect(Math.abs(meanGapMs - 125) / 125).toBeLessThan(0.02);
    // Exponential gaps: the coefficient of variation is 1.
    const gaps = a.slice(1).map((x, i) => x - a[i]!);
    const sd = Math.sqrt(gaps.reduce((n, g) => n + (g - meanGapMs) ** 2, 0) / gaps.length);
    expect(Math.abs(sd / meanGapMs - 1)).toBeLessThan(0.03);
  });

  it("is a function of the seed; an infinite rate sends everything at 0", () => {
    expect(poissonArrivals(5, 2, 1)).toEqual(poissonArrivals(5, 2, 1));
    expect(poissonArrivals(5, 2, 2)).not.toEqual(poissonArrivals(5, 2, 1));
    expect(poissonArrivals(3, Number.POSITIVE_INFINITY, 1)).toEqual([0, 0, 0]);
    expect(poissonArrivals(0, 1, 1)).toEqual([]);
  });
});
