import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { metricSum, parseMetrics } from "../../../scripts/lib/metrics-text.js";

describe("parseMetrics and metricSum (scripts/lib/metrics-text.ts)", () => {
  it("read what prom-client writes: labelled counters, histograms and special values", async () => {
    const registry = new Registry();
    const calls = new Counter({ name: "t_calls_total", help: "calls", labelNames: ["role", "note"], registers: [registry] });
    calls.inc({ role: "decode", note: "a b, c" }, 3);
    calls.inc({ role: "prefill", note: "x" }, 4.5);
    const seconds = new Histogram({ name: "t_seconds", help: "s", buckets: [0.1, 1], registers: [registry] });
    seconds.observe(0.05);
    seconds.observe(0.5);
    seconds.observe(5);
    const inf = new Gauge({ name: "t_inf", help: "inf", registers: [registry] });
    inf.set(Infinity);
    const nan = new Gauge({ name: "t_nan", help: "nan", registers: [registry] });
    nan.set(NaN);

    const s = parseMetrics(await registry.metrics());
    expect(s.get('t_calls_total{role="decode",note="a b, c"}')).toBe(3);
    expect(metricSum(s, "t_calls_total")).toBe(7.5);
    expect(metricSum(s, "t_calls_total", (l) => l.includes('role="prefill"'))).toBe(4.5);
    // A histogram's series are names of their own.
    expect(metricSum(s, "t_seconds_count")).toBe(3);
    expect(metricSum(s, "t_seconds_sum")).toBeCloseTo(5.55, 12);
    expect(s.get('t_seconds_bucket{le="+Inf"}')).toBe(3);
    expect(s.get('t_seconds_bucket{le="0.1"}')).toBe(1);
    expect(metricSum(s, "t_seconds")).toBeUndefined();
    expect(s.get("t_inf")).toBe(Infinity);
    expect(Number.isNaN(s.get("t_nan"))).toBe(true);
    expect(metricSum(s, "t_absent")).toBeUndefined();
  });

  it("skips comments and takes a sample's optional timestamp off its value", () => {
    const s = parseMetrics("# HELP x_total x\n# TYPE x_total counter\nx_total 12 1700000000000\ny -Inf\n\nnot a sample line at all\n");
    expect(s.get("x_total")).toBe(12);
    expect(s.get("y")).toBe(-Infinity);
    expect(s.size).toBe(2);
  });
});
