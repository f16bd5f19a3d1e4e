/**
 * The Grafana dashboards against the real thing: a local cluster (expert-hosts with per-expert
 * series) under a little load of every kind (HTTP and gRPC, streamed and not, a rejected request,
 * a stream the client abandons), scraped every second by a real Prometheus on 127.0.0.1. Every
 * panel's every expression, with Grafana's variables replaced, must return data, and every
 * service's /metrics must pass `promtool check metrics`.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { METRICS } from "@moela/metrics";
import { InvalidArgumentError, MoelaClient } from "@moela/client";
import { mapLimit, startTestCluster, type TestCluster } from "../helpers/cluster.js";
import { allTargets, loadDashboards, variableQuery } from "../helpers/dashboards.js";
import { havePrometheus, promtoolProblems, startPrometheus, type Prometheus } from "../helpers/prometheus.js";
import { parseLabelValues, promqlNames, substituteGrafanaVariables } from "../helpers/promql.js";

/** Stands for $__rate_interval: long enough to hold the whole load, however slow the machine. */
const RATE_WINDOW = "3m";

const dashboards = loadDashboards();
let cluster: TestCluster;
let prom: Prometheus;
let client: MoelaClient;
/** Requests the router saw finish, whatever their outcome. */
let finished = 0;

async function completion(body: Record<string, unknown>): Promise<Response> {
  return fetch(`${cluster.baseURL}/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: cluster.model, temperature: 0, ...body }),
  });
}

/** A dozen short generations of every kind, plus failures of the kinds the Errors panels show. */
async function sendLoad(): Promise<void> {
  const prompts = ["The capital of France is", "Once upon a time", "1, 2, 3,", "Hello", "moela serves", "The sky is"];
  const work: Array<() => Promise<void>> = [
    // HTTP, non-streamed and streamed.
    ...prompts.slice(0, 3).map((prompt) => async () => {
      const res = await completion({ prompt, max_tokens: 6 });
      expect(res.status).toBe(200);
      await res.json();
    }),
    ...prompts.slice(3, 6).map((prompt) => async () => {
      const res = await completion({ prompt, max_tokens: 6, stream: true });
      expect(res.status).toBe(200);
      expect(await res.text()).toContain("[DONE]");
    }),
    // gRPC Generate through the SDK, collected and streamed.
    ...prompts.slice(0, 3).map((prompt) => async () => {
      const done = await client.complete({ prompt, maxTokens: 6, temperature: 0 }, { deadlineMs: 120_000 });
      expect(done.tokenIds.length).toBeGreaterThan(0);
    }),
    ...prompts.slice(3, 6).map((prompt) => async () => {
      let tokens = 0;
      for await (const ev of client.generate({ prompt: [0, 17, 42, 99 + prompt.length], maxTokens: 6, temperature: 0 }, { deadlineMs: 120_000 })) {
        tokens += ev.tokenIds.length;
      }
      expect(tokens).toBeGreaterThan(0);
    }),
    // Rejected by validation: HTTP 400 and gRPC INVALID_ARGUMENT.
    async () => {
      const res = await completion({ prompt: "x", max_tokens: -1 });
      expect(res.status).toBe(400);
      await res.text();
    },
    async () => {
      const err = await client.complete({ prompt: "x", model: "no-such-model" }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidArgumentError);
    },
    // Abandoned after the first event: cancelled at the router and on decode.
    async () => {
      for await (const _ of client.generate({ prompt: "A long story:", maxTokens: 64, ignoreEos: true, temperature: 0 })) break;
    },
  ];
  finished = work.length;
  await mapLimit(work, 4, (w) => w());
}

beforeAll(async () => {
  if (!havePrometheus()) throw new Error("this test needs Debian's prometheus and promtool (apt-get install -y prometheus; .ci/run does it)");
  cluster = await startTestCluster({ serviceArgs: { "expert-host": ["--per-expert-metrics"] } });
  prom = await startPrometheus(cluster.info.instances.map((i) => ({ url: i.metrics, labels: { role: i.role } })));
  const router = cluster.instances("router")[0]!;
  client = new MoelaClient({ address: router.grpc, maxRetries: 0 });
  // Scraped before the load, so every counter's increase lies inside the rate window.
  await prom.waitForScrapes(Date.now());
  await sendLoad();
  // Until the router's counters show every request, then one more scrape of every target.
  const total = METRICS.routerRequests.name;
  await vi.waitFor(
    async () => {
      const r = await prom.query(`sum(${total})`);
      expect(Number(r.result[0]?.value[1] ?? 0), `Prometheus to see ${finished} finished requests (last: ${JSON.stringify(r.result)})`).toBeGreaterThanOrEqual(
        finished,
      );
    },
    { timeout: 30_000, interval: 250 },
  );
  await prom.waitForScrapes(Date.now());
}, 240_000);

afterAll(async () => {
  client?.close();
  await prom?.stop();
  await cluster?.stop();
}, 120_000);

describe("Grafana dashboards against a live cluster and a real Prometheus", () => {
  it("Prometheus scrapes every instance of every role", async () => {
    const targets = await prom.targets();
    expect(targets.map((t) => t.health)).toEqual(cluster.info.instances.map(() => "up"));
    expect(new Set(targets.map((t) => t.labels["role"]))).toEqual(new Set(["router", "prefill", "decode", "expert-host"]));
  });

  it("every panel expression of every dashboard returns data", async () => {
    const targets = allTargets(dashboards);
    expect(targets.length).toBeGreaterThan(40);
    const empty: string[] = [];
    for (const { file, target, where } of targets) {
      const vars = Object.fromEntries(dashboards.get(file)!.templating.list.map((v) => [v.name, ".*"]));
      const expr = substituteGrafanaVariables(target.expr, { interval: RATE_WINDOW, variables: vars });
      const data = await prom.query(expr);
      if (data.result.length === 0) empty.push(`${where}: ${expr}`);
    }
    expect(empty).toEqual([]);
  });

  it("the load shows up in the numbers, not only as series", async () => {
    const value = async (expr: string) => Number((await prom.query(expr)).result[0]?.value[1]);
    expect(await value(`sum(increase(${METRICS.routerGenerationTokens.name}[${RATE_WINDOW}]))`)).toBeGreaterThan(0);
    expect(await value(`sum(${METRICS.routerRequests.name}{outcome="rejected"})`)).toBe(2);
    expect(await value(`sum(${METRICS.routerRequests.name}{outcome="cancelled"})`)).toBe(1);
    // The first failure of each kind is an increase (its series existed at 0), so rate panels show it.
    for (const outcome of ["rejected", "cancelled"]) {
      expect(await value(`sum(increase(${METRICS.routerRequests.name}{outcome="${outcome}"}[${RATE_WINDOW}]))`), outcome).toBeGreaterThan(0);
    }
    expect(await value(`sum(${METRICS.expertHostExpertTokens.name})`)).toBe(await value(`sum(${METRICS.expertHostLayerTokens.name})`));
    const ttftP99 = await value(`histogram_quantile(0.99, sum by (le) (rate(${METRICS.routerTimeToFirstToken.name}_bucket[${RATE_WINDOW}])))`);
    expect(ttftP99).toBeGreaterThan(0);
  });

  it("request-level metrics at vLLM parity: finish reasons, lengths, per-request times, model, build info, KV ratio", async () => {
    const value = async (expr: string) => Number((await prom.query(expr)).result[0]?.value[1]);
    const gens = METRICS.routerGenerations.name;
    // 12 generations ran to their end, one was abandoned; the two refusals never became generations.
    expect(await value(`sum(${gens}{finish_reason=~"stop|length"})`)).toBe(12);
    expect(await value(`sum(${gens}{finish_reason="abort"})`)).toBe(1);
    expect(await value(`sum(${gens}{finish_reason=~"error|timeout"})`)).toBe(0);
    expect(await value(`sum(increase(${gens}{finish_reason="abort"}[${RATE_WINDOW}]))`)).toBeGreaterThan(0);
    // One prompt and one output length per generation; the outputs add up to the tokens streamed.
    expect(await value(`sum(${METRICS.routerRequestPromptTokens.name}_count)`)).toBe(13);
    expect(await value(`sum(${METRICS.routerRequestGenerationTokens.name}_count)`)).toBe(13);
    expect(await value(`sum(${METRICS.routerRequestGenerationTokens.name}_sum)`)).toBe(await value(`sum(${METRICS.routerGenerationTokens.name})`));
    // Every generation got a first token (the abandoned one too), so each has a decode time, and a prefill
    // time unless the queue's "active" event reached the router after that token.
    expect(await value(`sum(${METRICS.routerRequestDecode.name}_count)`)).toBe(13);
    const prefills = await value(`sum(${METRICS.routerRequestPrefill.name}_count)`);
    expect(prefills).toBeGreaterThan(0);
    expect(prefills).toBeLessThanOrEqual(13);
    expect(await value(`sum(${METRICS.routerQueueWait.name}_count)`)).toBeGreaterThanOrEqual(13);
    // The request metrics carry the served model's name, as clients send it.
    expect(await value(`sum(${METRICS.routerRequests.name}{model="${cluster.model}"})`)).toBe(finished);
    expect(await value(`sum(${METRICS.decodeGeneratedTokens.name}{model="${cluster.model}"})`)).toBeGreaterThan(0);
    expect(await value(`sum(${METRICS.prefillTokens.name}{model="${cluster.model}"})`)).toBeGreaterThan(0);
    // moela_build_info: one series per process, its component the scrape target's role.
    const info = (await prom.query(METRICS.buildInfo.name)).result;
    expect(info.length).toBe(cluster.info.instances.length);
    for (const s of info) {
      expect(s.value[1]).toBe("1");
      expect(s.metric["component"]).toBe(s.metric["role"]);
      expect(s.metric["version"]).toMatch(/^\d+\.\d+\.\d+/);
      expect(s.metric["model"]).toBe(cluster.model);
    }
    // The KV usage ratio of every decode instance, in [0, 1] and equal to used / capacity.
    const ratios = (
      await prom.query(`${METRICS.decodeKvUsage.name} - on (instance) (${METRICS.decodeKvBlocksUsed.name} / ${METRICS.decodeKvBlocksCapacity.name})`)
    ).result;
    expect(ratios.length).toBe(cluster.instances("decode").length);
    for (const r of ratios) expect(Math.abs(Number(r.value[1]))).toBeLessThan(1e-9);
  });

  it("every metric a dashboard uses is exported by some instance (Prometheus has its metadata)", async () => {
    const used = new Set<string>();
    for (const { target } of allTargets(dashboards)) for (const m of promqlNames(target.expr).metrics) used.add(m.replace(/_(bucket|sum|count)$/, ""));
    const metadata = await prom.api<Record<string, unknown[]>>("/api/v1/metadata");
    const missing = [...used].filter((m) => metadata[m] === undefined);
    expect(missing).toEqual([]);
  });

  it("every template variable query finds values", async () => {
    for (const [file, d] of dashboards) {
      for (const v of d.templating.list.filter((x) => x.type === "query")) {
        const lv = parseLabelValues(variableQuery(v))!;
        const values = await prom.api<string[]>(`/api/v1/label/${lv.label}/values?match[]=${encodeURIComponent(lv.metric)}`);
        expect(values.length, `${file} $${v.name}`).toBeGreaterThan(0);
      }
    }
  });

  it("promtool check metrics passes on every service's /metrics (but prom-client's nodejs_active_*_total gauges)", async () => {
    for (const i of cluster.info.instances) {
      const res = await fetch(i.metrics);
      expect(res.status).toBe(200);
      expect(promtoolProblems(await res.text()), `${i.role} ${i.index} ${i.metrics}`).toEqual([]);
    }
  });
});
