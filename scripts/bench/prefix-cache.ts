/**
 * Prefix-cache benchmark (a script, not a test): a workload with a shared prefix (one system prompt of a
 * few hundred tokens, many different questions) against a real local cluster (router, prefill, decode,
 * expert-hosts as processes, started through the launcher library), once with prefill's prefix cache on
 * and once with it off (a second cluster started with --no-prefix-cache).
 *
 *   npx tsx scripts/bench/prefix-cache.ts [--model models/tiny-v3] [--system-tokens 320] [--question-tokens 24]
 *        [--requests 24] [--concurrency 2] [--max-tokens 2] [--prefill 1] [--expert-hosts 2] [--out bench-results]
 *
 * Each run first sends one warm-up request (the system prompt with another question, not measured: it
 * warms the processes, and with the cache on it is what puts the system prompt in the cache, as the first
 * user of a deployment's system prompt does), then the questions, `concurrency` at a time, as streamed
 * /v1/completions with token-id prompts. Measured per run:
 *   - TTFT as the client sees it (request sent -> first token), P50 / P99 / mean;
 *   - the prefix-cache hit rate from prefill's metrics (hit tokens / looked-up tokens) over the measured
 *     requests, prompt tokens actually computed, and prefill's own estimate of the compute time saved;
 *   - the generated token ids, which must be the same with and without the cache (greedy).
 * Prints both runs and the ratios (off / on); writes bench-results/prefix-cache.json and
 * bench-results/prefix-cache.html (TTFT distributions as an SVG plot). Progress goes to stderr.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { randomUUID } from "node:crypto";
import { Command } from "commander";
import OpenAI from "openai";
import { readModelConfig } from "@moela/engine";
import { DEFAULT_MODEL, startCluster, type Cluster, type ClusterInfo, type InstanceInfo } from "../../services/cli/src/launcher.js";

const program = new Command("bench-prefix-cache")
  .option("--model <dir>", "checkpoint folder", DEFAULT_MODEL)
  .option("--system-tokens <n>", "tokens of the shared system prompt", (v) => Number(v), 320)
  .option("--question-tokens <n>", "tokens of each question after it", (v) => Number(v), 24)
  .option("--requests <n>", "measured requests (distinct questions)", (v) => Number(v), 24)
  .option("--concurrency <n>", "requests in flight at once", (v) => Number(v), 2)
  .option("--max-tokens <n>", "tokens generated per request", (v) => Number(v), 2)
  .option("--prefill <n>", "prefill instances", (v) => Number(v), 1)
  .option("--expert-hosts <n>", "expert-host shards", (v) => Number(v), 2)
  .option("--precision <p>", "exact | paper", "exact")
  .option("--out <dir>", "where the JSON and HTML go", "bench-results")
  .parse();
const opts = program.opts<{
  model: string;
  systemTokens: number;
  questionTokens: number;
  requests: number;
  concurrency: number;
  maxTokens: number;
  prefill: number;
  expertHosts: number;
  precision: "exact" | "paper";
  out: string;
}>();
for (const k of ["systemTokens", "questionTokens", "requests", "concurrency", "maxTokens", "prefill", "expertHosts"] as const) {
  if (!(Number.isInteger(opts[k]) && opts[k] >= 1))
    throw new Error(`--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} must be a positive integer, got ${opts[k]}`);
}

const log = (msg: string): void => void process.stderr.write(`${msg}\n`);
const cfg = readModelConfig(opts.model);

/** Deterministic token ids in [2, vocab) (0 and 1 are BOS/EOS in the bundled model). */
function ids(seed: number, n: number): number[] {
  let x = (seed * 2654435761 + 12345) >>> 0;
  return Array.from({ length: n }, () => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return 2 + (x % (cfg.vocabSize - 2));
  });
}
const SYSTEM = [0, ...ids(1, opts.systemTokens - 1)];
const WARMUP = [...SYSTEM, ...ids(999, opts.questionTokens)];
const QUESTIONS = Array.from({ length: opts.requests }, (_, i) => [...SYSTEM, ...ids(1000 + i, opts.questionTokens)]);

// ---- metrics -------------------------------------------------------------------------------------

async function scrape(i: InstanceInfo): Promise<Map<string, number>> {
  const res = await fetch(i.metrics);
  if (!res.ok) throw new Error(`${i.role} ${i.index}: GET ${i.metrics} -> HTTP ${res.status}`);
  const out = new Map<string, number>();
  for (const line of (await res.text()).split("\n")) {
    const m = /^([a-z_]+)(?:\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (m) out.set(m[1]!, (out.get(m[1]!) ?? 0) + Number(m[2]));
  }
  return out;
}

/** Sum of `names` over the prefill instances. */
async function prefillTotals(info: ClusterInfo, names: readonly string[]): Promise<Record<string, number>> {
  const out: Record<string, number> = Object.fromEntries(names.map((n) => [n, 0]));
  for (const i of info.instances.filter((x) => x.role === "prefill")) {
    const s = await scrape(i);
    for (const n of names) out[n] = out[n]! + (s.get(n) ?? 0);
  }
  return out;
}

const PREFILL_METRICS = [
  "moela_prefill_prefix_cache_queries_total",
  "moela_prefill_prefix_cache_hits_total",
  "moela_prefill_tokens_total",
  "moela_prefill_prefix_cache_saved_seconds_total",
  "moela_prefill_forward_seconds_sum",
] as const;

// ---- one run -------------------------------------------------------------------------------------

interface Run {
  readonly cache: "on" | "off";
  /** Per request, ms from send to first token, in request order. */
  readonly ttftMs: number[];
  readonly tokens: number[][];
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly meanMs: number;
  readonly wallS: number;
  readonly lookedUpTokens: number;
  readonly hitTokens: number;
  readonly hitRate: number;
  /** Sum of usage.prompt_tokens_details.cached_tokens the API reported for the measured requests. */
  readonly reportedCachedTokens: number;
  readonly computedTokens: number;
  readonly prefillForwardS: number;
  readonly estimatedSavedS: number;
}

function percentile(xs: readonly number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  // Nearest rank: the smallest value with at least p of the samples at or below it.
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
}

async function request(client: OpenAI, model: string, prompt: number[]): Promise<{ ttftMs: number; tokens: number[]; cachedTokens: number }> {
  const body = {
    model,
    prompt,
    max_tokens: opts.maxTokens,
    temperature: 0,
    stream: true as const,
    stream_options: { include_usage: true },
    ignore_eos: true,
    logprobs: 0,
    return_tokens_as_token_ids: true,
  };
  const t0 = performance.now();
  const s = await client.completions.create(body as OpenAI.Completions.CompletionCreateParamsStreaming);
  let first = NaN;
  const tokens: number[] = [];
  let cachedTokens = 0;
  for await (const chunk of s) {
    // The usage chunk: prompt tokens whose KV came from prefill's prefix cache, as the API reports them.
    const details = (chunk.usage as { prompt_tokens_details?: { cached_tokens?: number } } | null | undefined)?.prompt_tokens_details;
    cachedTokens += details?.cached_tokens ?? 0;
    const toks = chunk.choices[0]?.logprobs?.tokens ?? [];
    if (toks.length > 0 && Number.isNaN(first)) first = performance.now() - t0;
    for (const t of toks) tokens.push(Number(String(t).replace(/^token_id:/, "")));
  }
  if (Number.isNaN(first)) throw new Error("a stream ended without a token");
  return { ttftMs: first, tokens, cachedTokens };
}

async function runOnce(cache: "on" | "off"): Promise<Run> {
  const stateDir = mkdtempSync(join(tmpdir(), "moela-bench-prefix-"));
  log(`[${cache}] starting a cluster (router, ${opts.prefill} prefill, 1 decode, ${opts.expertHosts} expert-hosts; prefix cache ${cache}) ...`);
  let cluster: Cluster | undefined;
  try {
    cluster = await startCluster({
      model: opts.model,
      precision: opts.precision,
      prefill: opts.prefill,
      expertHosts: opts.expertHosts,
      port: 0,
      stateDir,
      queuePrefix: `bench-prefix-${randomUUID().slice(0, 8)}`,
      logLevel: "warn",
      ...(cache === "off" ? { serviceArgs: { prefill: ["--no-prefix-cache"] } } : {}),
      onProgress: (e) => {
        if (e.kind === "healthy") log(`[${cache}]   up ${e.label} [${e.up}/${e.total}]`);
      },
    });
    const info = cluster.info;
    const client = new OpenAI({ baseURL: info.openai_base_url, apiKey: "bench", maxRetries: 0, timeout: 600_000 });
    const model = info.served_model_name;
    log(`[${cache}] warm-up request (${WARMUP.length} tokens) ...`);
    const w = await request(client, model, WARMUP);
    log(`[${cache}]   warm-up TTFT ${w.ttftMs.toFixed(0)} ms`);

    const before = await prefillTotals(info, PREFILL_METRICS);
    const ttftMs: number[] = new Array(QUESTIONS.length);
    const tokens: number[][] = new Array(QUESTIONS.length);
    let next = 0;
    let done = 0;
    let reported = 0;
    const t0 = performance.now();
    const worker = async (): Promise<void> => {
      while (next < QUESTIONS.length) {
        const i = next++;
        const r = await request(client, model, QUESTIONS[i]!);
        ttftMs[i] = r.ttftMs;
        tokens[i] = r.tokens;
        reported += r.cachedTokens;
        done++;
        log(`[${cache}]   ${String(done).padStart(String(QUESTIONS.length).length)}/${QUESTIONS.length}  question ${i}: TTFT ${r.ttftMs.toFixed(0)} ms`);
      }
    };
    await Promise.all(Array.from({ length: opts.concurrency }, worker));
    const wallS = (performance.now() - t0) / 1000;
    const after = await prefillTotals(info, PREFILL_METRICS);
    const d = (n: (typeof PREFILL_METRICS)[number]): number => after[n]! - before[n]!;
    const lookedUp = d("moela_prefill_prefix_cache_queries_total");
    const hits = d("moela_prefill_prefix_cache_hits_total");
    return {
      cache,
      ttftMs,
      tokens,
      p50Ms: percentile(ttftMs, 0.5),
      p99Ms: percentile(ttftMs, 0.99),
      meanMs: ttftMs.reduce((a, b) => a + b, 0) / ttftMs.length,
      wallS,
      lookedUpTokens: lookedUp,
      hitTokens: hits,
      hitRate: lookedUp > 0 ? hits / lookedUp : 0,
      reportedCachedTokens: reported,
      computedTokens: d("moela_prefill_tokens_total"),
      prefillForwardS: d("moela_prefill_forward_seconds_sum"),
      estimatedSavedS: d("moela_prefill_prefix_cache_saved_seconds_total"),
    };
  } finally {
    if (cluster !== undefined) {
      log(`[${cache}] stopping the cluster ...`);
      await cluster.stop();
    }
    rmSync(stateDir, { recursive: true, force: true });
  }
}

// ---- main ----------------------------------------------------------------------------------------

log(
  `prefix-cache benchmark: ${opts.model}, system prompt ${SYSTEM.length} tokens + questions of ${opts.questionTokens}, ` +
    `${opts.requests} requests, ${opts.concurrency} at a time, ${opts.maxTokens} tokens each; ${cpus().length} CPUs, load ${loadavg()[0]!.toFixed(2)}`,
);
const on = await runOnce("on");
const off = await runOnce("off");
const sameTokens = on.tokens.every((t, i) => JSON.stringify(t) === JSON.stringify(off.tokens[i]));
const promptTokens = QUESTIONS.reduce((n, q) => n + q.length, 0);

const fmt = (x: number, d = 0): string => x.toFixed(d);
const lines = [
  "",
  `prefix cache, ${opts.requests} requests (${SYSTEM.length}-token system prompt + ${opts.questionTokens}-token question, ${promptTokens} prompt tokens), ${opts.concurrency} in flight, ${opts.prefill} prefill instance(s), ${opts.precision}`,
  `machine: ${cpus().length} CPUs, load average ${loadavg()
    .map((x) => x.toFixed(2))
    .join(" ")} (shared: timings are noisy)`,
  "",
  "              cache on    cache off   off/on",
  `TTFT P50 ms   ${fmt(on.p50Ms).padStart(8)}    ${fmt(off.p50Ms).padStart(8)}   ${fmt(off.p50Ms / on.p50Ms, 2).padStart(6)}x`,
  `TTFT P99 ms   ${fmt(on.p99Ms).padStart(8)}    ${fmt(off.p99Ms).padStart(8)}   ${fmt(off.p99Ms / on.p99Ms, 2).padStart(6)}x`,
  `TTFT mean ms  ${fmt(on.meanMs).padStart(8)}    ${fmt(off.meanMs).padStart(8)}   ${fmt(off.meanMs / on.meanMs, 2).padStart(6)}x`,
  `wall s        ${fmt(on.wallS, 1).padStart(8)}    ${fmt(off.wallS, 1).padStart(8)}   ${fmt(off.wallS / on.wallS, 2).padStart(6)}x`,
  `hit rate      ${fmt(on.hitRate * 100, 1).padStart(7)}%    ${fmt(off.hitRate * 100, 1).padStart(7)}%   (prompt tokens found in the cache / looked up)`,
  `cached tok    ${String(on.reportedCachedTokens).padStart(8)}    ${String(off.reportedCachedTokens).padStart(8)}   (usage.prompt_tokens_details.cached_tokens summed over the requests)`,
  `computed tok  ${String(on.computedTokens).padStart(8)}    ${String(off.computedTokens).padStart(8)}   ${fmt(off.computedTokens / Math.max(1, on.computedTokens), 2).padStart(6)}x`,
  `prefill fwd s ${fmt(on.prefillForwardS, 2).padStart(8)}    ${fmt(off.prefillForwardS, 2).padStart(8)}   ${fmt(off.prefillForwardS / on.prefillForwardS, 2).padStart(6)}x`,
  `prefill time saved, measured: ${fmt(off.prefillForwardS - on.prefillForwardS, 2)} s of forward passes (${fmt((1 - on.prefillForwardS / off.prefillForwardS) * 100, 0)}%)`,
  `saved s (est) ${fmt(on.estimatedSavedS, 2).padStart(8)}    ${fmt(off.estimatedSavedS, 2).padStart(8)}   (prefill's estimate: cached tokens at the s/token of batches without hits)`,
  `same tokens with and without the cache: ${sameTokens ? "yes" : "NO"}`,
];
process.stdout.write(`${lines.join("\n")}\n`);
if (!sameTokens) process.exitCode = 1;

mkdirSync(opts.out, { recursive: true });
const result = {
  version: 1,
  at: new Date().toISOString(),
  machine: { cpus: cpus().length, loadavg: loadavg() },
  workload: {
    model: opts.model,
    precision: opts.precision,
    systemTokens: SYSTEM.length,
    questionTokens: opts.questionTokens,
    requests: opts.requests,
    concurrency: opts.concurrency,
    maxTokens: opts.maxTokens,
    prefillInstances: opts.prefill,
    expertHosts: opts.expertHosts,
    promptTokens,
  },
  on: { ...on, tokens: undefined },
  off: { ...off, tokens: undefined },
  ratios: {
    ttftP50OffOverOn: off.p50Ms / on.p50Ms,
    ttftP99OffOverOn: off.p99Ms / on.p99Ms,
    ttftMeanOffOverOn: off.meanMs / on.meanMs,
    computedTokensOffOverOn: off.computedTokens / Math.max(1, on.computedTokens),
    prefillForwardOffOverOn: off.prefillForwardS / on.prefillForwardS,
  },
  sameTokens,
};
writeFileSync(join(opts.out, "prefix-cache.json"), `${JSON.stringify(result, null, 2)}\n`);

/** TTFT of every request, sorted, per run: an empirical CDF as SVG. */
function cdfSvg(): string {
  const W = 640;
  const H = 320;
  const m = { l: 56, r: 16, t: 24, b: 40 };
  const max = Math.max(...on.ttftMs, ...off.ttftMs) * 1.05;
  const x = (ms: number): number => m.l + (ms / max) * (W - m.l - m.r);
  const y = (f: number): number => H - m.b - f * (H - m.t - m.b);
  const path = (xs: number[]): string => {
    const s = [...xs].sort((a, b) => a - b);
    let d = `M ${x(0)} ${y(0)}`;
    s.forEach((v, i) => (d += ` H ${x(v).toFixed(1)} V ${y((i + 1) / s.length).toFixed(1)}`));
    return d;
  };
  const ticks = Array.from({ length: 6 }, (_, i) => (max / 5) * i);
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">`,
    `<text x="${m.l}" y="14">TTFT distribution (fraction of requests at or below)</text>`,
    `<line x1="${m.l}" y1="${y(0)}" x2="${W - m.r}" y2="${y(0)}" stroke="#444"/><line x1="${m.l}" y1="${y(0)}" x2="${m.l}" y2="${y(1)}" stroke="#444"/>`,
    ...ticks.map((t) => `<text x="${x(t).toFixed(1)}" y="${H - m.b + 14}" text-anchor="middle">${t.toFixed(0)}</text>`),
    `<text x="${(W + m.l) / 2}" y="${H - 6}" text-anchor="middle">ms to first token</text>`,
    ...[0, 0.5, 1].map((f) => `<text x="${m.l - 6}" y="${y(f) + 4}" text-anchor="end">${f}</text>`),
    `<path d="${path(on.ttftMs)}" fill="none" stroke="#1f77b4" stroke-width="2"/>`,
    `<path d="${path(off.ttftMs)}" fill="none" stroke="#d62728" stroke-width="2"/>`,
    `<text x="${W - m.r - 150}" y="${y(0.2)}" fill="#1f77b4">prefix cache on</text>`,
    `<text x="${W - m.r - 150}" y="${y(0.1)}" fill="#d62728">prefix cache off</text>`,
    `</svg>`,
  ].join("\n");
}
writeFileSync(
  join(opts.out, "prefix-cache.html"),
  `<!doctype html><meta charset="utf-8"><title>moela prefix-cache benchmark</title><body style="font-family:sans-serif"><h1>moela prefix-cache benchmark</h1><pre>${lines.join("\n").replace(/</g, "&lt;")}</pre>${cdfSvg()}</body>\n`,
);
log(`wrote ${join(opts.out, "prefix-cache.json")} and ${join(opts.out, "prefix-cache.html")}`);
