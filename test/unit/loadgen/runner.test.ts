/**
 * The closed- and open-loop schedulers, warm-up, compare rounds and failures, run whole on a fake clock
 * against fake targets, with exact statistics.
 */
import { describe, expect, it } from "vitest";
import {
  FakeClock,
  buildReport,
  buildRequests,
  levelStats,
  parseLengthDist,
  poissonArrivals,
  roundOrder,
  runBench,
  splitRounds,
  type BenchPlan,
  type LoadLevel,
  type RequestSpec,
  type StreamEvent,
  type Target,
} from "@moela/loadgen";

interface Call {
  readonly target: string;
  readonly index: number;
  readonly maxTokens: number;
  readonly prompt: RequestSpec["prompt"];
  readonly at: number;
}

interface FakeOptions {
  /** ms to the first token. */
  ttft: (spec: RequestSpec) => number;
  /** ms between token chunks. */
  itl: number;
  /** tokens per chunk (default 1). */
  perChunk?: number;
  /** whether chunks say how many tokens they hold (default true). */
  exact?: boolean;
  /** send a usage event at the end (default true). */
  usage?: boolean;
  failIf?: (spec: RequestSpec) => boolean;
}

/** A server that streams spec.maxTokens tokens on the fake clock and logs each call. */
function fakeTarget(clock: FakeClock, name: string, calls: Call[], o: FakeOptions): Target {
  return {
    name,
    url: `fake://${name}`,
    async *generate(spec: RequestSpec, signal: AbortSignal): AsyncIterable<StreamEvent> {
      calls.push({ target: name, index: spec.index, maxTokens: spec.maxTokens, prompt: spec.prompt, at: clock.now() });
      await clock.sleep(o.ttft(spec));
      if (o.failIf?.(spec)) throw new Error(`HTTP 500: ${name} failed ${spec.index}`);
      const k = o.perChunk ?? 1;
      for (let sent = 0; sent < spec.maxTokens;) {
        if (signal.aborted) throw new Error("aborted");
        if (sent > 0) await clock.sleep(o.itl);
        const n = Math.min(k, spec.maxTokens - sent);
        sent += n;
        yield { kind: "tokens", tokens: o.exact === false ? 1 : n, exact: o.exact ?? true };
      }
      if (o.usage ?? true) yield { kind: "usage", promptTokens: spec.promptLen, completionTokens: spec.maxTokens };
    },
  };
}

/** One level per value, each at that many requests in flight. */
function atConcurrency(...values: number[]): LoadLevel[] {
  return values.map((value) => ({ kind: "concurrency", value }));
}

function plan(clock: FakeClock, targets: Target[], levels: LoadLevel[], over: Partial<BenchPlan> = {}): BenchPlan {
  const workload = { input: parseLengthDist("16"), output: parseLengthDist("5"), prompt: { kind: "ids", lo: 3, hi: 99 } } as const;
  return {
    targets,
    levels,
    numPrompts: 4,
    warmup: 0,
    rounds: 1,
    requests: (level, phase, count) => buildRequests(workload, count, level * 10 + (phase === "warmup" ? 1 : 0)),
    arrivalSeed: (level) => 100 + level,
    clock,
    ...over,
  };
}

describe("closed loop", () => {
  it("C=2: each worker sends its next request when its last one ends; exact percentiles and rates", async () => {
    const clock = new FakeClock();
    const calls: Call[] = [];
    const t = fakeTarget(clock, "a", calls, { ttft: (s) => 100 + 10 * s.index, itl: 10 });
    const [run] = await runBench(plan(clock, [t], atConcurrency(2)));
    const rs = run!.records[0]!;
    // request i: TTFT 100 + 10 i, then 4 more tokens 10 ms apart: E2E 140 + 10 i.
    expect(rs.map((r) => [r.sendAt, r.endAt])).toEqual([
      [0, 140],
      [0, 150],
      [140, 300],
      [150, 320],
    ]);
    const s = levelStats(rs);
    expect(s.completed).toBe(4);
    expect(s.durationS).toBe(0.32);
    expect(s.requestsPerS).toBeCloseTo(4 / 0.32, 12);
    expect(s.outputTokensPerS).toBeCloseTo(20 / 0.32, 12);
    expect(s.totalTokensPerS).toBeCloseTo((20 + 64) / 0.32, 12);
    expect(s.meanInFlight).toBeCloseTo(620 / 320, 12);
    expect(s.ttftMs).toEqual({ count: 4, mean: 115, p50: 115, p90: 127, p99: expect.closeTo(129.7, 10) as number });
    expect(s.e2eMs).toMatchObject({ p50: 155, p90: 167 });
    expect(s.e2eMs!.p99).toBeCloseTo(169.7, 10);
    expect(s.tpotMs).toEqual({ count: 4, mean: 10, p50: 10, p90: 10, p99: 10 });
    expect(s.itlMs).toMatchObject({ count: 16, p50: 10, p99: 10 });
    expect(clock.pending).toBe(0);
  });

  it("C larger than the requests: all start at once", async () => {
    const clock = new FakeClock();
    const t = fakeTarget(clock, "a", [], { ttft: () => 50, itl: 5 });
    const [run] = await runBench(plan(clock, [t], atConcurrency(64)));
    expect(run!.records[0]!.map((r) => r.sendAt)).toEqual([0, 0, 0, 0]);
    expect(levelStats(run!.records[0]!).meanInFlight).toBe(4);
  });

  it("levels run in turn, each with its own prompts", async () => {
    const clock = new FakeClock();
    const calls: Call[] = [];
    const t = fakeTarget(clock, "a", calls, { ttft: () => 100, itl: 10 });
    const runs = await runBench(plan(clock, [t], atConcurrency(1, 4)));
    expect(runs.map((r) => levelStats(r.records[0]!).durationS)).toEqual([0.56, 0.14]);
    expect(runs[1]!.records[0]![0]!.sendAt).toBe(560);
    expect(calls[0]!.prompt).not.toEqual(calls[4]!.prompt);
  });
});

describe("open loop", () => {
  it("sends at the Poisson arrival times whatever the server does", async () => {
    const clock = new FakeClock();
    const t = fakeTarget(clock, "a", [], { ttft: () => 900, itl: 100 });
    const p = plan(clock, [t], [{ kind: "rate", value: 10 }], { numPrompts: 6 });
    const [run] = await runBench(p);
    const want = poissonArrivals(6, 10, p.arrivalSeed(0));
    const rs = run!.records[0]!;
    rs.forEach((r, i) => expect(r.sendAt).toBeCloseTo(want[i]!, 9));
    // E2E is 1,300 ms each: far longer than the mean gap of 100 ms, so they overlap.
    rs.forEach((r) => expect(r.endAt - r.sendAt).toBeCloseTo(1300, 9));
    const s = levelStats(rs);
    expect(s.durationS).toBeCloseTo((want[5]! + 1300) / 1000, 12);
    expect(s.meanInFlight).toBeCloseTo((6 * 1300) / (want[5]! + 1300), 9);
    expect(s.ttftMs).toMatchObject({ p50: 900, p99: 900 });
  });

  it("an infinite rate sends everything at once", async () => {
    const clock = new FakeClock();
    const t = fakeTarget(clock, "a", [], { ttft: () => 10, itl: 1 });
    const [run] = await runBench(plan(clock, [t], [{ kind: "rate", value: Number.POSITIVE_INFINITY }]));
    expect(run!.records[0]!.map((r) => r.sendAt)).toEqual([0, 0, 0, 0]);
  });
});

describe("warm-up", () => {
  it("runs first at the level's load, with its own prompts, and is not counted", async () => {
    const clock = new FakeClock();
    const calls: Call[] = [];
    const t = fakeTarget(clock, "a", calls, { ttft: () => 100, itl: 10 });
    const [run] = await runBench(plan(clock, [t], atConcurrency(2), { warmup: 2 }));
    expect(calls).toHaveLength(6);
    expect(calls.slice(0, 2).map((c) => c.at)).toEqual([0, 0]);
    const rs = run!.records[0]!;
    expect(rs).toHaveLength(4);
    expect(rs[0]!.sendAt).toBe(140);
    expect(levelStats(rs).durationS).toBe(0.28);
    expect(calls[0]!.prompt).not.toEqual(calls[2]!.prompt);
  });
});

describe("two targets", () => {
  it("rounds alternate the order (A B | B A), same prompts and lengths for both, ratios exact", async () => {
    const clock = new FakeClock();
    const calls: Call[] = [];
    const a = fakeTarget(clock, "a", calls, { ttft: () => 100, itl: 10 });
    const b = fakeTarget(clock, "b", calls, { ttft: () => 200, itl: 20 });
    const p = plan(clock, [a, b], atConcurrency(2), { rounds: 2, warmup: 1 });
    const runs = await runBench(p);
    const order = calls.map((c) => `${c.target}${c.index}`);
    // warm-up a, round 1 on a (0, 1), warm-up b, round 1 on b; round 2: b (2, 3) then a (2, 3).
    expect(order).toEqual(["a0", "a0", "a1", "b0", "b0", "b1", "b2", "b3", "a2", "a3"]);
    const byTarget = (n: string) => calls.filter((c) => c.target === n).slice(1);
    expect(byTarget("a").map((c) => c.prompt)).toEqual(byTarget("b").map((c) => c.prompt));
    const report = buildReport(
      runs,
      [
        { name: "a", url: "fake://a", model: "m" },
        { name: "b", url: "fake://b", model: "m" },
      ],
      {},
      new Date(0),
    );
    const [level] = report.levels;
    // Each round is 2 requests at C=2: a takes 140 ms a round, b 280 ms. A target's window is its own rounds
    // only, not the other's rounds between them, so its throughput is too.
    expect(level!.stats.map((st) => st.durationS)).toEqual([0.28, 0.56]);
    expect(level!.ratios[0]!.outputTokensPerS).toBe(0.5);
    expect(level!.stats.map((st) => st.meanInFlight)).toEqual([2, 2]);
    expect(level!.stats[0]!.ttftMs!.p50).toBe(100);
    expect(level!.stats[1]!.ttftMs!.p50).toBe(200);
    expect(level!.ratios[0]!.ttftMs).toEqual({ mean: 2, p50: 2, p90: 2, p99: 2 });
    expect(level!.ratios[0]!.tpotMs.p50).toBe(2);
    expect(level!.ratios[0]!.e2eMs.p99).toBe(2);
    expect(report.requests).toHaveLength(8);
  });

  it("with one round per level the order flips from level to level", async () => {
    const clock = new FakeClock();
    const calls: Call[] = [];
    const a = fakeTarget(clock, "a", calls, { ttft: () => 100, itl: 10 });
    const b = fakeTarget(clock, "b", calls, { ttft: () => 100, itl: 10 });
    await runBench(plan(clock, [a, b], atConcurrency(4, 4, 4)));
    const firsts = calls.filter((c) => c.index === 0).map((c) => c.target);
    expect(firsts).toEqual(["a", "b", "b", "a", "a", "b"]);
  });

  it("splitRounds and roundOrder", () => {
    expect(splitRounds(10, 3)).toEqual([
      [0, 3],
      [3, 6],
      [6, 10],
    ]);
    expect(splitRounds(2, 5)).toEqual([
      [0, 1],
      [1, 2],
    ]);
    expect(splitRounds(4, 1)).toEqual([[0, 4]]);
    expect(roundOrder(2, 0)).toEqual([0, 1]);
    expect(roundOrder(2, 1)).toEqual([1, 0]);
    expect(roundOrder(1, 1)).toEqual([0]);
  });
});

describe("failures and token counting", () => {
  it("a failed request is recorded, kept out of the latencies, and the others go on", async () => {
    const clock = new FakeClock();
    const t = fakeTarget(clock, "a", [], { ttft: () => 100, itl: 10, failIf: (s) => s.index === 1 });
    const [run] = await runBench(plan(clock, [t], atConcurrency(1)));
    const rs = run!.records[0]!;
    expect(rs[1]).toMatchObject({ error: "HTTP 500: a failed 1", sendAt: 140, endAt: 240 });
    const s = levelStats(rs);
    expect(s).toMatchObject({ completed: 3, failed: 1, firstError: "HTTP 500: a failed 1", outputTokens: 15 });
    expect(s.ttftMs!.count).toBe(3);
    expect(s.durationS).toBe(0.52);
  });

  it("chunks of 2 tokens: ITL split per token when counted, per chunk when not", async () => {
    const clock = new FakeClock();
    const exact = fakeTarget(clock, "a", [], { ttft: () => 100, itl: 20, perChunk: 2 });
    const guessed = fakeTarget(clock, "b", [], { ttft: () => 100, itl: 20, perChunk: 2, exact: false });
    const [run] = await runBench(plan(clock, [exact, guessed], atConcurrency(1)));
    // 5 tokens in chunks of 2, 2, 1: chunk gaps 20, 20; TPOT (140 - 100) / 4 = 10.
    const [sa, sb] = run!.records.map((rs) => levelStats(rs));
    expect(sa!.itlMs).toMatchObject({ count: 4 * 3, p50: 10, p99: 20 });
    expect(sa!.itlPerToken).toBe(true);
    expect(sa!.tpotMs!.p50).toBe(10);
    expect(sb!.itlMs).toMatchObject({ count: 4 * 2, p50: 20 });
    expect(sb!.itlPerToken).toBe(false);
    expect(sb!.tokensPerChunk).toBeCloseTo(5 / 3, 12);
    expect(sb!.tpotMs!.p50).toBe(10);
  });

  it("without usage the output tokens are the counted ones", async () => {
    const clock = new FakeClock();
    const t = fakeTarget(clock, "a", [], { ttft: () => 1, itl: 1, usage: false });
    const [run] = await runBench(plan(clock, [t], atConcurrency(1)));
    expect(run!.records[0]!.map((r) => [r.outputTokens, r.promptTokens])).toEqual([
      [5, 16],
      [5, 16],
      [5, 16],
      [5, 16],
    ]);
  });

  it("aborting stops new sends, fails those in flight, and returns what was measured", async () => {
    const clock = new FakeClock();
    const ac = new AbortController();
    const t = fakeTarget(clock, "a", [], { ttft: () => 100, itl: 10 });
    void clock.sleep(200).then(() => ac.abort(new Error("interrupted")));
    const runs = await runBench(plan(clock, [t], atConcurrency(1, 1), { signal: ac.signal }));
    expect(runs).toHaveLength(1);
    const rs = runs[0]!.records[0]!;
    expect(rs.map((r) => r.error ?? "ok")).toEqual(["ok", "aborted"]);
  });
});
