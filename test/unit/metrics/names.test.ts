import { describe, expect, it } from "vitest";
import { LABEL, METRICS, SERVICE_METRICS, type MetricDef, type MetricKey } from "@moela/metrics";

const defs = Object.entries(METRICS) as Array<[MetricKey, MetricDef]>;
const COMPONENTS = ["build", "rpc", "router", "prefill", "decode", "engine", "moe", "expert_host"];

describe("metric and label names", () => {
  it.each(defs)("%s: shaped moela_<component>_<what>_<unit>", (_, def) => {
    expect(def.name).toMatch(/^moela_[a-z0-9_]+$/);
    expect(def.name).not.toMatch(/__|_$/);
    expect(COMPONENTS.some((c) => def.name.startsWith(`moela_${c}_`))).toBe(true);
    // _total means counter and only counter (promtool flags a gauge called _total).
    expect(def.name.endsWith("_total")).toBe(def.kind === "counter");
    const stem = def.name.replace(/_total$/, "");
    // Times in seconds and sizes in bytes, base units only, and the unit is in the name.
    expect(stem.endsWith("_seconds")).toBe(def.unit === "seconds");
    expect(stem.endsWith("_bytes")).toBe(def.unit === "bytes");
    expect(def.name).not.toMatch(/_(ms|milliseconds|microseconds|us|ns|minutes|hours|kb|mb|gb|kib|mib|gib|percent)(_|$)/);
    // Histogram series get _bucket/_sum/_count appended; none of those may be in the base name.
    expect(def.name).not.toMatch(/_(bucket|sum|count|created)$/);
    // An info metric (always 1, labels as data) is a gauge named _info, and only it.
    expect(def.name.endsWith("_info")).toBe(def.unit === "info");
    if (def.unit === "info") expect(def.kind).toBe("gauge");
    expect(stem.endsWith("_ratio")).toBe(def.unit === "ratio");
    expect(def.help.length).toBeGreaterThan(10);
    expect(def.help).toMatch(/\.$/);
    if (def.kind === "histogram") expect(def.buckets).toBeDefined();
    else expect(def.buckets).toBeUndefined();
  });

  it("metric names are unique", () => {
    const names = defs.map(([, d]) => d.name);
    expect(new Set(names).size).toBe(names.length);
  });

  it("label names are valid, not reserved, and declared in LABEL", () => {
    const declared = new Set<string>(Object.values(LABEL));
    for (const [key, value] of Object.entries(LABEL)) expect(value).toBe(key);
    for (const name of declared) {
      expect(name).toMatch(/^[a-z][a-z0-9_]*$/);
      // Prometheus's own, `role` (deploy/prometheus and the chart attach it) and the Prometheus Operator's target labels.
      expect(["le", "quantile", "job", "instance", "role", "service", "namespace", "pod", "container", "endpoint"]).not.toContain(name);
    }
    for (const [, def] of defs) for (const l of def.labels) expect(declared.has(l)).toBe(true);
  });

  it("every metric is exported by at least one service, and every label is used", () => {
    const used = new Set<string>(Object.values(SERVICE_METRICS).flat());
    expect(defs.map(([k]) => k).filter((k) => !used.has(k))).toEqual([]);
    const usedLabels = new Set(defs.flatMap(([, d]) => d.labels));
    expect(Object.values(LABEL).filter((l) => !usedLabels.has(l))).toEqual([]);
  });
});
