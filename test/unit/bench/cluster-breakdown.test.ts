import { afterEach, describe, expect, it } from "vitest";
import { Counter, Histogram, Registry } from "prom-client";
import { readModelConfig, FORWARD_PHASES, type ForwardPhase } from "@moela/engine";
import { startMetricsServer, type MetricsServer } from "@moela/metrics";
import { BREAKDOWN_ROWS, breakdownFromPhases, clusterBreakdown, layersOf, moeLayers } from "../../../scripts/bench/cluster-breakdown.js";
import { snapshot, type Instances } from "../../../scripts/bench/cluster-metrics.js";

// The random-weight test model: its first layer dense, the rest MoE.
const cfg = readModelConfig("models/tiny-v3");

const phases = (p: Partial<Record<ForwardPhase, number>>): Record<ForwardPhase, number> =>
  Object.fromEntries(FORWARD_PHASES.map((name) => [name, p[name] ?? 0])) as Record<ForwardPhase, number>;

const servers: MetricsServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
});

describe("the cluster benchmark's time breakdown (scripts/bench/cluster-breakdown.ts)", () => {
  it("spreads each row over the layers it belongs to", () => {
    // tiny-v3: 4 layers, the first dense.
    expect(moeLayers(cfg)).toBe(3);
    expect(layersOf("layer", cfg)).toBe(4);
    expect(layersOf("moe", cfg)).toBe(3);
    expect(layersOf("dense", cfg)).toBe(1);
    expect(layersOf("step", cfg)).toBe(1);
    // Every row once, in the table's order: the "of which" rows right under the wait they are part of.
    const rows = BREAKDOWN_ROWS.map((r) => r.row);
    expect(new Set(rows).size).toBe(rows.length);
    expect(rows.indexOf("host_request_wait")).toBe(rows.indexOf("waiting_on_hosts") + 1);
  });

  it("in one process: per step, the shared expert inside the routed experts, nothing on the wire", () => {
    const b = breakdownFromPhases(phases({ attention: 0.6, gate: 0.1, routed_experts: 1.2, dense_mlp: 0.3, lm_head: 0.2 }), 10, 2.8);
    expect(b.perStep.attention).toBeCloseTo(0.06);
    expect(b.perStep.routed_experts_here).toBeCloseTo(0.12);
    expect(b.perStep.shared_expert).toBeUndefined();
    expect(b.perStep.dispatch_encode).toBeUndefined();
    expect(b.perStep.waiting_on_hosts).toBeUndefined();
    expect(b.perStep.host_handling).toBeUndefined();
    // What the phases do not cover: 2.8 s of steps less 2.4 s of phases, over 10 steps.
    expect(b.perStep.outside_phases).toBeCloseTo(0.04);
  });

  it("in decode: the encode taken out of the shared expert's interval and the combine out of the wait", () => {
    const b = breakdownFromPhases(phases({ shared_expert: 0.5, routed_wait: 2.0 }), 4, 3, { encode: 0.1, combine: 0.2 }, { handling: 0.3 });
    expect(b.perStep.shared_expert).toBeCloseTo(0.1);
    expect(b.perStep.dispatch_encode).toBeCloseTo(0.025);
    expect(b.perStep.waiting_on_hosts).toBeCloseTo(0.45);
    expect(b.perStep.combine).toBeCloseTo(0.05);
    expect(b.perStep.host_handling).toBe(0.3);
  });

  it("reads decode's phases and the hosts' means per call from a cluster's /metrics", async () => {
    const serve = async (role: "decode" | "expert-host", index: number) => {
      const registry = new Registry();
      const server = await startMetricsServer(registry);
      servers.push(server);
      return { registry, info: { role, index, pid: process.pid, grpc: "127.0.0.1:1", metrics: server.url, log: "/dev/null" } };
    };
    const d = await serve("decode", 0);
    const h = await serve("expert-host", 0);
    const info: Instances = { instances: [d.info, h.info] };
    const step = new Histogram({ name: "moela_decode_step_seconds", help: "s", buckets: [1], registers: [d.registry] });
    const forward = new Counter({ name: "moela_engine_forward_phase_seconds_total", help: "s", labelNames: ["phase"], registers: [d.registry] });
    const dispatch = new Counter({ name: "moela_moe_dispatch_phase_seconds_total", help: "s", labelNames: ["phase"], registers: [d.registry] });
    const handling = new Histogram({ name: "moela_expert_host_dispatch_seconds", help: "s", buckets: [1], registers: [h.registry] });

    const a = await snapshot(info);
    expect(clusterBreakdown(a, a, info, cfg)).toBeUndefined(); // no step in between
    step.observe(0.02);
    step.observe(0.03);
    forward.inc({ phase: "attention" }, 0.01);
    forward.inc({ phase: "routed_wait" }, 0.02);
    dispatch.inc({ phase: "combine" }, 0.004);
    handling.observe(0.001);
    handling.observe(0.003);
    const b = await snapshot(info);

    const br = clusterBreakdown(a, b, info, cfg)!;
    expect(br.steps).toBe(2);
    expect(br.stepSeconds).toBeCloseTo(0.05);
    expect(br.perStep.attention).toBeCloseTo(0.005);
    expect(br.perStep.waiting_on_hosts).toBeCloseTo(0.008);
    expect(br.perStep.combine).toBeCloseTo(0.002);
    // A host's mean handling per call (2 ms), once per MoE layer of a step.
    expect(br.perStep.host_handling).toBeCloseTo(0.002 * moeLayers(cfg));
    // The hosts answered nothing through shared memory: no figure rather than zero.
    expect(br.perStep.host_request_wait).toBeUndefined();
  });
});
