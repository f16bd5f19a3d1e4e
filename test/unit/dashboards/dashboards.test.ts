import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { LABEL, METRICS } from "@moela/metrics";
import { SCHEMA_VERSION, buildDashboards, dashboardText } from "../../../scripts/lib/dashboards.js";
import { DASHBOARDS_PATH, allPanels, allTargets, loadDashboards, variableQuery } from "../../helpers/dashboards.js";
import { parseLabelValues, promqlNames, substituteGrafanaVariables } from "../../helpers/promql.js";

const dashboards = loadDashboards();
const targets = allTargets(dashboards);

/** Every series name a scrape can hold for names.ts: counters/gauges as is, histograms' three series. */
const SERIES = new Map<string, string>();
for (const def of Object.values(METRICS)) {
  if (def.kind === "histogram") for (const s of ["_bucket", "_sum", "_count"]) SERIES.set(def.name + s, def.name);
  else SERIES.set(def.name, def.name);
}
/** Labels a dashboard may use: names.ts's, histogram `le`, and what Prometheus / the deployments attach. */
const KNOWN_LABELS = new Set<string>([...Object.values(LABEL), "le", "instance", "job", "role"]);

describe("promqlNames", () => {
  it.each([
    ["rate(a_total[5m])", ["a_total"], []],
    ['sum by (outcome) (rate(moela_x_total{outcome!="ok", api=~"grpc|openai"}[$__rate_interval]))', ["moela_x_total"], ["outcome", "api"]],
    ["histogram_quantile(0.99, sum by (le, method) (rate(h_bucket[1m])))", ["h_bucket"], ["le", "method"]],
    ["sum(rate(s_sum[1m])) / sum(rate(s_count[1m]))", ["s_sum", "s_count"], []],
    ["(sum(a) or vector(0)) / on (instance) group_left (role) b", ["a", "b"], ["instance", "role"]],
    ["max without (expert) (c) > bool 2 unless d offset 5m", ["c", "d"], ["expert"]],
    ['sum(e{layer=~"$layer"}) + sum by(layer)(f)', ["e", "f"], ["layer"]],
    ['count_values("v", g) and topk(3, h)', ["g", "h"], []],
  ])("%s", (expr, metrics, labels) => {
    const got = promqlNames(expr);
    expect([...got.metrics].sort()).toEqual([...metrics].sort());
    expect([...got.labels].sort()).toEqual([...labels].sort());
  });

  it("substitutes Grafana variables and refuses unknown ones", () => {
    const sub = { interval: "1m", variables: { layer: ".*" } };
    expect(substituteGrafanaVariables('rate(x{layer=~"$layer"}[$__rate_interval])', sub)).toBe('rate(x{layer=~".*"}[1m])');
    expect(substituteGrafanaVariables('x{a=~"${layer}"}[$__interval]', sub)).toBe('x{a=~".*"}[1m]');
    expect(() => substituteGrafanaVariables('x{a=~"$nope"}', sub)).toThrow(/\$nope/);
  });
});

describe("Grafana dashboards", () => {
  it("the committed JSON is what scripts/gen-dashboards.ts writes (edit scripts/lib/dashboards.ts, then regenerate)", () => {
    const built = buildDashboards();
    expect([...dashboards.keys()].sort()).toEqual(Object.keys(built).sort());
    for (const [file, d] of Object.entries(built)) {
      expect(readFileSync(join(DASHBOARDS_PATH, file), "utf8"), file).toBe(dashboardText(d));
    }
  });

  it("cover overview, disaggregation, MoE and MTP, with unique uids", () => {
    const uids = [...dashboards.values()].map((d) => d.uid);
    expect(new Set(uids).size).toBe(uids.length);
    expect(uids.sort()).toEqual(["moela-disaggregation", "moela-moe", "moela-mtp", "moela-overview"]);
  });

  it.each([...dashboards])("%s: recent schema, data source by uid variable, laid out on the 24-column grid", (_, d) => {
    expect(d.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(d.schemaVersion).toBe(SCHEMA_VERSION);
    const dsVar = d.templating.list.find((v) => v.type === "datasource");
    expect(dsVar?.name).toBe("datasource");
    expect(variableQuery(dsVar!)).toBe("prometheus");
    const ids = new Set<number>();
    for (const p of allPanels(d)) {
      expect(ids.has(p.id), `duplicate panel id ${p.id}`).toBe(false);
      ids.add(p.id);
      expect(p.gridPos.x + p.gridPos.w, p.title).toBeLessThanOrEqual(24);
      if (p.type === "row") continue;
      expect(p.datasource, p.title).toEqual({ type: "prometheus", uid: "${datasource}" });
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
      for (const t of p.targets ?? []) expect(t.datasource, `${p.title} ${t.refId}`).toEqual({ type: "prometheus", uid: "${datasource}" });
    }
    // Panels never overlap.
    const boxes = allPanels(d).map((p) => p.gridPos);
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i]!;
        const b = boxes[j]!;
        const overlap = a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
        expect(overlap, `${JSON.stringify(a)} overlaps ${JSON.stringify(b)}`).toBe(false);
      }
    }
  });

  it("every panel's description says what a high value means", () => {
    const missing = [...dashboards].flatMap(([file, d]) =>
      allPanels(d)
        .filter((p) => p.type !== "row" && !/\bhigh\b/i.test(p.description ?? ""))
        .map((p) => `${file} / ${p.title}`),
    );
    expect(missing).toEqual([]);
  });

  it("every expression uses only metric names of packages/metrics/src/names.ts and known labels", () => {
    expect(targets.length).toBeGreaterThan(40);
    const problems: string[] = [];
    for (const { target, where } of targets) {
      const { metrics, labels } = promqlNames(target.expr);
      if (metrics.size === 0) problems.push(`${where}: no metric in ${target.expr}`);
      for (const m of metrics) if (!SERIES.has(m)) problems.push(`${where}: unknown metric ${m}`);
      for (const l of labels) if (!KNOWN_LABELS.has(l)) problems.push(`${where}: unknown label ${l}`);
    }
    for (const [file, d] of dashboards) {
      for (const v of d.templating.list.filter((x) => x.type === "query")) {
        const lv = parseLabelValues(variableQuery(v));
        if (lv === undefined) problems.push(`${file} variable ${v.name}: not label_values(metric, label)`);
        else {
          if (!SERIES.has(lv.metric)) problems.push(`${file} variable ${v.name}: unknown metric ${lv.metric}`);
          if (!KNOWN_LABELS.has(lv.label)) problems.push(`${file} variable ${v.name}: unknown label ${lv.label}`);
        }
      }
    }
    expect(problems).toEqual([]);
  });

  it("every variable an expression uses is defined on its dashboard", () => {
    for (const { file, target, where } of targets) {
      const d = dashboards.get(file)!;
      const vars = Object.fromEntries(d.templating.list.map((v) => [v.name, ".*"]));
      expect(() => substituteGrafanaVariables(target.expr, { interval: "1m", variables: vars }), where).not.toThrow();
    }
  });

  it("the overview shows P50 and P99 of TTFT, inter-token and end-to-end latency via histogram_quantile", () => {
    const exprs = targets.filter((t) => t.file === "moela-overview.json").map((t) => t.target.expr);
    for (const key of ["routerTimeToFirstToken", "routerInterTokenLatency", "routerE2eLatency"] as const) {
      for (const q of ["0.5", "0.99"]) {
        expect(
          exprs.some((e) => e.startsWith(`histogram_quantile(${q},`) && e.includes(`${METRICS[key].name}_bucket`)),
          `${key} P${q}`,
        ).toBe(true);
      }
    }
  });

  it("every dashboard has role, instance and model variables, and every selector keeps to them", () => {
    const modelled = new Set<string>(
      Object.values(METRICS)
        .filter((d) => (d.labels as readonly string[]).includes("model"))
        .map((d) => d.name),
    );
    for (const [file, d] of dashboards) {
      const vars = d.templating.list.filter((v) => v.type === "query").map((v) => [v.name, variableQuery(v)]);
      expect(vars.slice(0, 3), file).toEqual([
        ["role", "label_values(moela_build_info, role)"],
        ["instance", "label_values(moela_build_info, instance)"],
        ["model", "label_values(moela_build_info, model)"],
      ]);
    }
    const unscoped: string[] = [];
    for (const { target, where } of targets) {
      // Every selector: name{...instance=~"$instance", role=~"$role"[, model=~"$model"]...}.
      for (const sel of target.expr.matchAll(/\b(moela_[a-z0-9_]+?)(_bucket|_sum|_count)?\{([^}]*)\}/g)) {
        const [, base, , matchers] = sel as unknown as [string, string, string | undefined, string];
        const want = ['instance=~"$instance"', 'role=~"$role"', ...(modelled.has(base) ? ['model=~"$model"'] : [])];
        for (const w of want) if (!matchers.includes(w)) unscoped.push(`${where}: ${base} lacks ${w}`);
      }
      // No bare selector (a name not followed by its matchers).
      if (/\bmoela_[a-z0-9_]+(?![a-z0-9_{])/.test(target.expr.replace(/label_values\([^)]*\)/g, "")))
        unscoped.push(`${where}: bare selector in ${target.expr}`);
    }
    expect(unscoped).toEqual([]);
  });

  it("the failure ratio counts server failures (error, timeout), not client 4xx (rejected) or cancellations", () => {
    const ratio = targets.find((t) => t.panel.title === "Server failure ratio");
    expect(ratio?.target.expr).toMatch(
      /^sum\(rate\(moela_router_requests_total\{[^}]*outcome=~"error\|timeout"\}\[\$__rate_interval\]\)\) \/ sum\(rate\(moela_router_requests_total\{[^}]*\}\[\$__rate_interval\]\)\)$/,
    );
    expect(ratio!.target.expr).not.toMatch(/rejected|cancelled|outcome!=/);
  });

  it("panels show the request-level metrics at vLLM parity", () => {
    const exprs = targets.map((t) => t.target.expr).join("\n");
    for (const key of [
      "routerGenerations",
      "routerRequestPromptTokens",
      "routerRequestGenerationTokens",
      "routerRequestPrefill",
      "routerRequestDecode",
      "routerQueueWait",
      "decodeKvUsage",
      "buildInfo",
    ] as const) {
      expect(exprs, key).toContain(METRICS[key].name);
    }
    expect(exprs).toMatch(/sum by \(finish_reason\)/);
    expect(exprs).toMatch(/sum by \(position\) \(rate\(moela_decode_mtp_accepted_tokens_total/);
  });

  it("the MoE dashboard has the per-layer and per-expert heatmaps, imbalance and hosts per token", () => {
    const moe = dashboards.get("moela-moe.json")!;
    const panels = allPanels(moe);
    const heatmaps = panels.filter((p) => p.type === "heatmap");
    expect(heatmaps.map((p) => p.targets![0]!.expr).join("\n")).toMatch(/moela_expert_host_layer_tokens_total[\s\S]*moela_expert_host_expert_tokens_total/);
    expect(heatmaps.some((p) => p.repeat === "layer")).toBe(true);
    const exprs = panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));
    expect(exprs.some((e) => /^max by \(layer\).*\/ avg by \(layer\)/.test(e))).toBe(true);
    expect(exprs.some((e) => e.includes("moela_moe_dispatch_hosts_reached_bucket"))).toBe(true);
  });
});
