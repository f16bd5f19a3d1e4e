import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@moela/core";
import { MAX_SPECULATIVE_TOKENS } from "@moela/engine";
import {
  LATENCY_BUCKETS_SECONDS,
  METRICS,
  MOELA_VERSION,
  SERVICE_METRICS,
  DRAFT_POSITION_VALUES,
  countDraftPositions,
  createServiceMetrics,
  startMetricsServer,
  type ServiceMetrics,
  type ServiceName,
} from "@moela/metrics";
import { parseRouterConfig } from "../../../services/router/src/config.js";
import { exercise, metricsServersPerTest, SERVICES } from "../../helpers/metrics.js";

interface Family {
  type: string;
  help: string;
  samples: Array<{ name: string; labels: Record<string, string>; value: number }>;
}

/** Parses the Prometheus text format strictly enough to catch malformed output. */
function parseExposition(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const sampleRe = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;
  const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)/gy;
  expect(text.endsWith("\n")).toBe(true);
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (meta) {
      const [, what, name, rest] = meta as unknown as [string, string, string, string];
      const fam = families.get(name) ?? { type: "", help: "", samples: [] };
      if (what === "TYPE") {
        expect(["counter", "gauge", "histogram", "summary", "untyped"]).toContain(rest);
        fam.type = rest;
      } else fam.help = rest;
      families.set(name, fam);
      continue;
    }
    const m = sampleRe.exec(line);
    if (!m) throw new Error(`unparseable line: ${line}`);
    const [, name, labelText, valueText] = m as unknown as [string, string, string | undefined, string];
    const labels: Record<string, string> = {};
    if (labelText) {
      labelRe.lastIndex = 0;
      let consumed = 0;
      for (let lm = labelRe.exec(labelText); lm; lm = labelRe.exec(labelText)) {
        labels[lm[1]!] = lm[2]!;
        consumed = labelRe.lastIndex;
      }
      if (consumed !== labelText.length) throw new Error(`bad labels in: ${line}`);
    }
    // Prometheus parses values with Go's ParseFloat, which takes NaN in any case (prom-client writes "Nan").
    const value = valueText === "+Inf" ? Infinity : valueText === "-Inf" ? -Infinity : /^nan$/i.test(valueText) ? NaN : Number(valueText);
    if (Number.isNaN(value) && !/^nan$/i.test(valueText)) throw new Error(`bad value in: ${line}`);
    const base = [name, name.replace(/_(bucket|sum|count)$/, "")].find((n) => families.has(n));
    if (base === undefined) throw new Error(`sample without # TYPE: ${line}`);
    families.get(base)!.samples.push({ name, labels, value });
  }
  return families;
}

const serveMetrics = metricsServersPerTest();

describe("createServiceMetrics", () => {
  it.each(SERVICES)("%s: registers exactly its metrics plus the defaults", async (service) => {
    const sm = createServiceMetrics(service, { perExpertSeries: true });
    const names = (await sm.registry.getMetricsAsJSON()).map((m) => m.name);
    const own = names.filter((n) => n.startsWith("moela_")).sort();
    expect(own).toEqual(SERVICE_METRICS[service].map((k) => METRICS[k].name).sort());
    expect(names).toContain("process_cpu_user_seconds_total");
    expect(names).toContain("nodejs_eventloop_lag_seconds");
  });

  it("typed accessors record into the service's own registry only", async () => {
    const a = createServiceMetrics("router", { defaultMetrics: false, model: "m1" });
    const b = createServiceMetrics("router", { defaultMetrics: false, model: "m1" });
    a.m.routerRequests.inc({ model: "m1", api: "openai", outcome: "ok" });
    a.m.routerRequests.inc({ model: "m1", api: "openai", outcome: "ok" });
    a.m.routerTimeToFirstToken.observe({ model: "m1" }, 0.3);
    const textA = await a.registry.metrics();
    expect(textA).toContain('moela_router_requests_total{model="m1",api="openai",outcome="ok"} 2');
    expect(textA).toContain('moela_router_time_to_first_token_seconds_bucket{le="0.5",model="m1"} 1');
    // b has the series (born at 0, names.ts `values`, for its model) but none of a's events.
    expect(await b.registry.metrics()).toContain('moela_router_requests_total{model="m1",api="openai",outcome="ok"} 0');
  });

  it("counts a step's drafts by position, one series per position the engine can draft", async () => {
    expect(DRAFT_POSITION_VALUES).toHaveLength(MAX_SPECULATIVE_TOKENS);
    const sm = createServiceMetrics("decode", { defaultMetrics: false });
    countDraftPositions(sm.m, [5, 4, 2, 0], [4, 3, 0, 0]);
    countDraftPositions(sm.m, [1, 0, 0, 0], [1, 0, 0, 0]);
    const text = await sm.registry.metrics();
    expect(text).toContain('moela_decode_mtp_drafted_tokens_total{position="0"} 6\n');
    expect(text).toContain('moela_decode_mtp_drafted_tokens_total{position="1"} 4\n');
    expect(text).toContain('moela_decode_mtp_drafted_tokens_total{position="2"} 2\n');
    expect(text).toContain('moela_decode_mtp_drafted_tokens_total{position="3"} 0\n');
    expect(text).toContain('moela_decode_mtp_accepted_tokens_total{position="0"} 5\n');
    expect(text).toContain('moela_decode_mtp_accepted_tokens_total{position="1"} 3\n');
    expect(text).toContain('moela_decode_mtp_accepted_tokens_total{position="2"} 0\n');
  });

  it("moela_build_info is 1 with the version, component, model and configuration; off in a second registry", async () => {
    const version = (JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version: string }).version;
    const sm = createServiceMetrics("decode", { defaultMetrics: false, model: "tiny", buildInfo: { precision: "paper", kernels: "portable" } });
    expect(MOELA_VERSION).toBe(version);
    expect(await sm.registry.metrics()).toContain(
      `moela_build_info{version="${version}",component="decode",model="tiny",precision="paper",kernels="portable"} 1\n`,
    );
    const router = createServiceMetrics("router", { defaultMetrics: false });
    expect(await router.registry.metrics()).toContain(`moela_build_info{version="${version}",component="router",model="",precision="none",kernels="none"} 1\n`);
    const second = createServiceMetrics("decode", { defaultMetrics: false, buildInfo: false });
    expect(second.m.buildInfo).toBeUndefined();
    expect(await second.registry.metrics()).not.toContain("moela_build_info");
  });

  it("the KV usage ratio is read at scrape time, beside used and capacity", async () => {
    let used = 3;
    const sm = createServiceMetrics("decode", { defaultMetrics: false, collect: { decodeKvUsage: () => used / 8, decodeKvBlocksUsed: () => used } });
    expect(await sm.registry.metrics()).toContain("moela_decode_kv_usage_ratio 0.375\n");
    used = 8;
    expect(await sm.registry.metrics()).toContain("moela_decode_kv_usage_ratio 1\n");
  });

  it("per-expert series exist only when switched on", async () => {
    const off = createServiceMetrics("expert-host", { defaultMetrics: false });
    expect(off.m.expertHostExpertTokens).toBeUndefined();
    expect(await off.registry.metrics()).not.toContain("moela_expert_host_expert_tokens_total");
    const on = createServiceMetrics("expert-host", { defaultMetrics: false, perExpertSeries: true });
    on.m.expertHostExpertTokens?.inc({ layer: 3, expert: 17 }, 5);
    expect(await on.registry.metrics()).toContain('moela_expert_host_expert_tokens_total{layer="3",expert="17"} 5');
  });

  it("gauges with a collect callback are read at scrape time", async () => {
    let depth = 4;
    const sm = createServiceMetrics("router", { defaultMetrics: false, collect: { routerQueueDepth: async () => depth } });
    expect(await sm.registry.metrics()).toContain("moela_router_queue_depth 4");
    depth = 9;
    expect(await sm.registry.metrics()).toContain("moela_router_queue_depth 9");
  });

  it("rejects a collect callback for something that is not a label-less gauge of the service", () => {
    const bad = { collect: { routerRequests: () => 1 } } as unknown as Parameters<typeof createServiceMetrics<"router">>[1];
    expect(() => createServiceMetrics("router", bad)).toThrow(InvalidArgumentError);
    expect(() => createServiceMetrics("nope" as ServiceName)).toThrow(/known: router, prefill, decode, expert-host/);
  });

  it("latency histograms use the 1 ms .. 600 s buckets, up to the router's default request timeout", async () => {
    const sm = createServiceMetrics("decode", { defaultMetrics: false });
    sm.m.decodeStep.observe(0.004);
    const les = [...(await sm.registry.metrics()).matchAll(/moela_decode_step_seconds_bucket\{le="([^"]+)"\}/g)].map((x) => x[1]);
    expect(les).toEqual([...LATENCY_BUCKETS_SECONDS.map(String), "+Inf"]);
    expect(LATENCY_BUCKETS_SECONDS[0]).toBe(0.001);
    expect(LATENCY_BUCKETS_SECONDS.at(-1)).toBe(600);
    // A request that runs until the router's default deadline lands in a finite bucket.
    const router = parseRouterConfig(["--model", "models/tiny-v3"], {});
    expect(LATENCY_BUCKETS_SECONDS.at(-1)).toBeGreaterThanOrEqual(router.requestTimeoutMs / 1000);
    sm.m.decodeStep.observe(450);
    expect(await sm.registry.metrics()).toContain('moela_decode_step_seconds_bucket{le="600"} 2\n');
    expect(await sm.registry.metrics()).toContain('moela_decode_step_seconds_bucket{le="300"} 1\n');
  });
});

describe("startMetricsServer", () => {
  it.each(SERVICES)("%s: /metrics over a real socket parses, with HELP and TYPE for every family", async (service) => {
    const sm = createServiceMetrics(service, { perExpertSeries: true });
    exercise(sm as ServiceMetrics<ServiceName>);
    const server = await serveMetrics(sm.registry, { host: "127.0.0.1", port: 0 });
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:[1-9][0-9]*\/metrics$/);
    const res = await fetch(server.url);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
    const families = parseExposition(await res.text());
    for (const key of SERVICE_METRICS[service]) {
      const def = METRICS[key];
      const fam = families.get(def.name);
      expect(fam, def.name).toBeDefined();
      expect(fam!.type).toBe(def.kind);
      expect(fam!.help).toBe(def.help);
      expect(fam!.samples.length).toBeGreaterThan(0);
    }
  });

  it("answers 404 off /metrics and stops listening on close", async () => {
    const sm = createServiceMetrics("router", { defaultMetrics: false });
    const s = await startMetricsServer(sm.registry);
    expect((await fetch(s.url.replace("/metrics", "/other"))).status).toBe(404);
    expect((await fetch(s.url + "?x=1")).status).toBe(200);
    await s.close();
    await expect(fetch(s.url)).rejects.toThrow();
  });

  it("answers 500 with the message when a collector throws", async () => {
    const sm = createServiceMetrics("decode", {
      defaultMetrics: false,
      collect: {
        decodeKvBlocksUsed: () => {
          throw new Error("kv cache gone");
        },
      },
    });
    const server = await serveMetrics(sm.registry);
    const res = await fetch(server.url);
    expect(res.status).toBe(500);
    expect(await res.text()).toContain("kv cache gone");
  });

  it("rejects an impossible port", async () => {
    await expect(startMetricsServer(createServiceMetrics("router").registry, { port: 70000 })).rejects.toThrow(InvalidArgumentError);
  });
});
