/**
 * Counters and histograms whose label values are all known (names.ts `values`, the served model) exist
 * at 0 from the start, so the first error, retry, reclaim or latency is an increase Prometheus's rate() can see. A series that appears
 * already at 1 has no earlier sample, and rate() over it is 0: the dashboards would miss the event.
 */
import { describe, expect, it } from "vitest";
import { METRICS, SERVICE_METRICS, createServiceMetrics, knownLabelSets, type MetricDef, type MetricKey, type ServiceName } from "@moela/metrics";

const defs = Object.entries(METRICS) as Array<[MetricKey, MetricDef]>;
const withValues = defs.filter(([, d]) => d.values !== undefined);

describe("names.ts values", () => {
  it("are given for the outcome, reason and phase counters", () => {
    expect(withValues.map(([k]) => k).sort()).toEqual(
      [
        "decodeKvReclaimedBlocks",
        "decodeKvReclaims",
        "decodeMtpAcceptedTokens",
        "decodeMtpDraftedTokens",
        "forwardPhase",
        "moeDispatchPhase",
        "prefillJobs",
        "prefillKvReclaimedBlocks",
        "prefillKvReclaims",
        "prefillKvTransferFailures",
        "routerGenerations",
        "routerQueueRemoved",
        "routerRequests",
        "routerRetries",
      ].sort(),
    );
  });

  it.each(withValues)("%s: only counters, one list per label (but model), short lowercase values without repeats", (_, def) => {
    expect(def.kind).toBe("counter");
    // The served model is known at start-up only (createServiceMetrics' model option).
    expect(Object.keys(def.values!).sort()).toEqual(def.labels.filter((l) => l !== "model").sort());
    for (const values of Object.values(def.values!)) {
      expect(values.length).toBeGreaterThan(0);
      expect(values.length).toBeLessThanOrEqual(8);
      expect(new Set(values).size).toBe(values.length);
      for (const v of values) expect(v).toMatch(/^([a-z][a-z_]*|[0-9]+)$/);
    }
  });

  it("knownLabelSets is the cartesian product, and empty when a label has no list", () => {
    expect(knownLabelSets(METRICS.routerRequests, { model: ["m"] })).toHaveLength(2 * 5);
    expect(knownLabelSets(METRICS.routerRequests, { model: ["m"] })).toContainEqual({ model: "m", api: "grpc", outcome: "cancelled" });
    // Without the served model's name, a model-labelled counter has no known series.
    expect(knownLabelSets(METRICS.routerRequests)).toEqual([]);
    expect(knownLabelSets(METRICS.decodeMtpAcceptedTokens)).toEqual([{ position: "0" }, { position: "1" }, { position: "2" }, { position: "3" }]);
    expect(knownLabelSets(METRICS.rpcServerHandled)).toEqual([]);
    expect(knownLabelSets(METRICS.routerTimeToFirstToken)).toEqual([]);
    expect(knownLabelSets(METRICS.routerTimeToFirstToken, { model: ["m"] })).toEqual([{ model: "m" }]);
    expect(knownLabelSets({ ...METRICS.routerRequests, values: { api: ["grpc"] } })).toEqual([]);
  });
});

describe("a fresh service registry", () => {
  it.each(Object.keys(SERVICE_METRICS) as ServiceName[])("%s: exports every known series at 0", async (service) => {
    const sm = createServiceMetrics(service, { defaultMetrics: false, model: "m" });
    const text = await sm.registry.metrics();
    for (const key of SERVICE_METRICS[service] as readonly MetricKey[]) {
      const def = METRICS[key];
      for (const labels of knownLabelSets(def, { model: ["m"] })) {
        const rendered = def.labels.map((l) => `${l}="${labels[l]}"`).join(",");
        const series = def.kind === "histogram" ? `${def.name}_count{${rendered}}` : `${def.name}{${rendered}}`;
        expect(text, series).toContain(`${series} 0\n`);
      }
    }
  });

  it("model-labelled histograms exist at 0, so the first observation is an increase", async () => {
    const sm = createServiceMetrics("router", { defaultMetrics: false, model: "m" });
    const name = METRICS.routerTimeToFirstToken.name;
    expect(await sm.registry.metrics()).toContain(`${name}_count{model="m"} 0\n`);
    sm.m.routerTimeToFirstToken.observe({ model: "m" }, 0.2);
    const text = await sm.registry.metrics();
    expect(text).toContain(`${name}_count{model="m"} 1\n`);
    expect(text).toContain(`${name}_bucket{le="+Inf",model="m"} 1\n`);
  });

  it("counts from 0 when the event comes", async () => {
    const sm = createServiceMetrics("router", { defaultMetrics: false, model: "m" });
    sm.m.routerRequests.inc({ model: "m", api: "grpc", outcome: "timeout" });
    sm.m.routerGenerations.inc({ model: "m", finish_reason: "abort" });
    const text = await sm.registry.metrics();
    expect(text).toContain('moela_router_requests_total{model="m",api="grpc",outcome="timeout"} 1\n');
    expect(text).toContain('moela_router_requests_total{model="m",api="grpc",outcome="ok"} 0\n');
    expect(text).toContain('moela_router_generations_total{model="m",finish_reason="abort"} 1\n');
    expect(text).toContain('moela_router_generations_total{model="m",finish_reason="error"} 0\n');
  });
});
