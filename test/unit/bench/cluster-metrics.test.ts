import { Counter, Histogram, Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import { startMetricsServer, type MetricsServer } from "@moela/metrics";
import { delta, histogramMax, missingMetrics, snapshot, type Instances } from "../../../scripts/bench/cluster-metrics.js";

const servers: MetricsServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
});

/** A registry served over HTTP like a service's /metrics, as an instance of `role`. */
async function instance(role: "decode" | "expert-host", index: number): Promise<{ registry: Registry; info: Instances["instances"][number] }> {
  const registry = new Registry();
  const server = await startMetricsServer(registry);
  servers.push(server);
  return { registry, info: { role, index, pid: process.pid, grpc: "127.0.0.1:1", metrics: server.url, log: "/dev/null" } };
}

describe("the cluster benchmark's readings (scripts/bench/cluster-metrics.ts)", () => {
  it("takes a metric's increase between two scrapes, summed over the instances of the roles asked for", async () => {
    const d = await instance("decode", 0);
    const h0 = await instance("expert-host", 0);
    const h1 = await instance("expert-host", 1);
    const info: Instances = { instances: [d.info, h0.info, h1.info] };
    const calls = [d, h0, h1].map((x) => new Counter({ name: "calls_total", help: "c", labelNames: ["phase"], registers: [x.registry] }));
    const seconds = [h0, h1].map((x) => new Histogram({ name: "call_seconds", help: "s", buckets: [0.001, 0.01, 0.1], registers: [x.registry] }));
    calls[0]!.inc({ phase: "encode" }, 100);
    calls[1]!.inc({ phase: "encode" }, 7);
    seconds[0]!.observe(0.5);
    const a = await snapshot(info);
    calls[0]!.inc({ phase: "encode" }, 2);
    calls[0]!.inc({ phase: "combine" }, 3);
    calls[1]!.inc({ phase: "encode" }, 10);
    calls[2]!.inc({ phase: "encode" }, 20);
    seconds[0]!.observe(0.0005);
    seconds[1]!.observe(0.05);
    const b = await snapshot(info);

    expect(delta(a, b, info, ["decode"], "calls_total")).toBe(5);
    expect(delta(a, b, info, ["decode"], "calls_total", (l) => l.includes('phase="combine"'))).toBe(3);
    expect(delta(a, b, info, ["expert-host"], "calls_total")).toBe(30);
    expect(delta(a, b, info, ["decode", "expert-host"], "calls_total")).toBe(35);
    // The largest observation between the two scrapes, to the bucket: 0.05 s, in the bucket up to 0.1 (the 0.5 s one came before).
    expect(histogramMax(a, b, info, ["expert-host"], "call_seconds")).toBe(0.1);
    expect(histogramMax(a, b, info, ["decode"], "call_seconds")).toBeUndefined();

    missingMetrics.clear();
    expect(delta(a, b, info, ["expert-host"], "absent_total")).toBeUndefined();
    expect(delta(a, b, info, ["expert-host"], "maybe_total", undefined, true)).toBeUndefined();
    expect([...missingMetrics]).toEqual(["absent_total (expert-host)"]);
  });

  it("names the instance whose /metrics cannot be read", async () => {
    const d = await instance("decode", 3);
    await servers.pop()!.close();
    await expect(snapshot({ instances: [d.info] })).rejects.toThrow(/^decode 3: /);
  });
});
