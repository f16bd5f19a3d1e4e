/**
 * Cluster benchmark (a script, not a test): what disaggregation moves and costs, measured on a
 * running local cluster (real processes, real gRPC) and, for comparison, in this process.
 *
 *   npx tsx scripts/bench/cluster.ts [--model models/tiny-v3] [--expert-hosts 2] [--prompt-tokens 32]
 *        [--requests 4] [--decode-tokens 64] [--stream-prompt-tokens 8] [--departure-steps 320]
 *        [--profiles exact,paper] [--cluster-json .moela/cluster.json] [--one-process-server] [--warmup-tokens 512]
 *
 * The cluster-speed targets, first: decode tokens/s and time per output token of 1 and 16 streams
 * through the cluster beside one process as `moela generate` runs it (fast kernels, every core,
 * the model's own experts, speculation auto), and where a decode step's time goes, per layer: the
 * engine's phases (moela_engine_forward_phase_seconds_total), the dispatcher's encode and combine,
 * and the expert-hosts' handling and compute, against the same phases in one process at batch 1 and
 * at the largest batch. The cluster's breakdown and CPU cover the window its tokens/s cover: from the
 * moment every stream has its first token to the end, and the report says how full decode's batch was over it
 * (cluster-streams.ts). One process at batch 1 runs before the clusters and again after them; the ratios are to
 * the mean of the two, and the report prints both, with a warning when they differ by more than 10%.
 *
 * Per precision profile (exact, paper) it starts a cluster through the launcher library (or uses
 * the running one --cluster-json names, when its precision and expert-host count match) and reads
 * the services' /metrics before and after a known workload:
 *   - KV bytes moved per prompt token (prefill sent, decode received), against
 *     cache layers x (kv_lora_rank + qk_rope_head_dim) x the profile's KV dtype bytes;
 *   - hosts reached per token per MoE layer (mean, max; the max must not exceed topk_group);
 *   - dispatch and combine bytes per token per MoE layer, by codec;
 *   - decode tokens/s at batch 1 and 16 as a client sees it (streams, ignore_eos);
 *   - the wire alone: one-token dispatches to all hosts and to one, beside a round trip of the same
 *     size to a process that only echoes it over raw TCP and over grpc-js (transport-floors.ts).
 * In this process: the same decode loop (Engine over in-process expert-hosts, the dispatcher code
 * the services use) at batch 1 and 16, the dispatch bytes of every codec, and how far `paper`
 * departs from `exact` (teacher-forced top-1 agreement over the exact greedy path, largest logit
 * difference, and where free-running greedy first diverges).
 * Prints a table with ratios; writes bench-results/cluster.json and bench-results/cluster.html.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { randomUUID } from "node:crypto";
import { Command } from "commander";
import { applyHeapGrowth } from "@moela/core";
import OpenAI from "openai";
import { DeepseekModel, Engine, PhaseTimes, readModelConfig, type ModelConfig, type Sequence } from "@moela/engine";
import {
  PRECISION_PROFILES,
  createInProcessExperts,
  getDispatchCodec,
  type DispatchCodecName,
  type PrecisionName,
  type PrecisionProfile,
} from "@moela/moe-dispatch";
import { measureOneProcessServer } from "./one-process-server.js";
import { cpuWindow, delta, histogramMax, missingMetrics, snapshot, type CpuPerToken, type Snapshot } from "./cluster-metrics.js";
import { departure } from "./cluster-departure.js";
import { clientDecodeRate, meanTpotMs, streamOverlap, type StreamTiming } from "./cluster-streams.js";
import { BREAKDOWN_ROWS, breakdownFromPhases, clusterBreakdown, layersOf, moeLayers, type Breakdown } from "./cluster-breakdown.js";
import { loopbackGBps, wireRoundTrips, type WireRoundTrips } from "./cluster-wire.js";
import { epDecodeBound, type EpDecodeBound } from "@moela/planner";
import { DEFAULT_MODEL, LOCAL_DECODE_MICRO_BATCHES, startCluster, type Cluster, type ClusterInfo } from "../../services/cli/src/launcher.js";

// One process is measured under the heap policy `moela serve` and `moela generate` set (packages/core/src/heap-growth.ts).
applyHeapGrowth(process.env);

const program = new Command("bench-cluster")
  .option("--model <dir>", "checkpoint folder", DEFAULT_MODEL)
  .option("--expert-hosts <h>", "expert shards (cluster and in-process)", (v) => Number(v), 2)
  .option("--expert-replicas <r>", "expert-host processes per shard in the cluster (each dispatch goes to the least-loaded)", (v) => Number(v), 1)
  .option("--prompt-tokens <n>", "prompt length of the KV/dispatch workload", (v) => Number(v), 32)
  .option("--requests <n>", "requests in the KV/dispatch workload", (v) => Number(v), 4)
  .option("--decode-tokens <n>", "tokens per stream in the decode throughput runs", (v) => Number(v), 64)
  .option("--stream-prompt-tokens <n>", "prompt length of the decode throughput runs", (v) => Number(v), 8)
  .option("--profiles <list>", "precision profiles to run on clusters", "exact,paper")
  .option(
    "--service-arg <role=arg>",
    "extra flag for every instance of a role, as moela cluster takes it (repeatable)",
    (v: string, acc: string[]) => [...acc, v],
    [] as string[],
  )
  .option("--departure-steps <n>", "greedy steps compared between paper and exact", (v) => Number(v), 320)
  .option("--batches <list>", "decode batch sizes", "1,16")
  .option("--repeat <n>", "decode runs per batch size; the best is reported (CPU noise only slows runs down)", (v) => Number(v), 3)
  .option(
    "--warmup-tokens <n>",
    "tokens decoded, unmeasured, at each batch size before its measured runs: passes of that many streams until at least this many (0: none)",
    (v) => Number(v),
    512,
  )
  .option("--cluster-json <file>", "use this running cluster for its profile", ".moela/cluster.json")
  .option("--out <dir>", "where the JSON and HTML go", "bench-results")
  .option("--no-cluster", "in-process measurements only")
  .option("--one-process-server", "also run the decode streams against `moela serve --role all` (one-process-server.ts)")
  .parse();
const opts = program.opts<{
  model: string;
  expertHosts: number;
  promptTokens: number;
  requests: number;
  decodeTokens: number;
  streamPromptTokens: number;
  profiles: string;
  serviceArg: string[];
  departureSteps: number;
  batches: string;
  clusterJson: string;
  out: string;
  cluster: boolean;
  repeat: number;
  warmupTokens: number;
  expertReplicas: number;
  oneProcessServer?: boolean;
}>();
const MODEL = resolve(opts.model);
const H = opts.expertHosts;
const R = opts.expertReplicas;
if (!(Number.isInteger(R) && R >= 1)) throw new Error(`--expert-replicas must be a positive integer, got ${R}`);
const BATCHES = opts.batches.split(",").map(Number);
if (!(Number.isInteger(opts.warmupTokens) && opts.warmupTokens >= 0)) throw new Error(`--warmup-tokens must be a whole number, got ${opts.warmupTokens}`);
const PROFILES = opts.profiles.split(",").filter((p) => p !== "") as PrecisionName[];
for (const p of PROFILES) if (!(p in PRECISION_PROFILES)) throw new Error(`--profiles: unknown profile ${p}`);
const log = (s: string) => process.stderr.write(`${s}\n`);
const cfg: ModelConfig = readModelConfig(MODEL);

/** Deterministic prompt ids away from BOS/EOS (ids 0 and 1 in the tiny vocabularies). */
function promptIds(i: number, len: number): number[] {
  return Array.from({ length: len }, (_, j) => 2 + ((i * 7919 + j * 104729 + 13) % (cfg.vocabSize - 2)));
}

// ---- streams -----------------------------------------------------------------------------------

async function stream(client: OpenAI, model: string, prompt: number[], maxTokens: number, onFirstToken?: () => void): Promise<StreamTiming> {
  const body = {
    model,
    prompt,
    max_tokens: maxTokens,
    temperature: 0,
    stream: true as const,
    ignore_eos: true,
    logprobs: 0,
    return_tokens_as_token_ids: true,
  };
  const s = await client.completions.create(body as OpenAI.Completions.CompletionCreateParamsStreaming);
  const out: StreamTiming = { chunks: [] };
  for await (const chunk of s) {
    const n = chunk.choices[0]?.logprobs?.tokens?.length ?? 0;
    if (n > 0) {
      out.chunks.push({ t: performance.now(), tokens: n });
      if (out.chunks.length === 1) onFirstToken?.();
    }
  }
  return out;
}

/**
 * The planner's expert-parallel decode bound (issue 12 part 4) for the cluster as measured: the loopback as the link,
 * the profile's codec bytes, the hosts a token reached per MoE layer as its "experts per token" (the dispatcher sends
 * a token to a host once, however many of its experts live there), tokens per micro-batch and micro-batches as the
 * decode service ran them, and the MoE layers as the layers that pay.
 */
function boundFor(c: ClusterResult, batch: number, gbps: number): EpDecodeBound | undefined {
  if (c.hostsReachedMean === undefined) return undefined;
  const microbatches = Math.max(1, Math.min(DECODE_MICRO_BATCHES, batch));
  return epDecodeBound({
    bandwidthGBps: gbps,
    tokensPerMicrobatch: Math.ceil(batch / microbatches),
    // The bound takes whole experts; the mean is rounded up (the bound stays a bound).
    expertsPerToken: Math.ceil(c.hostsReachedMean),
    dispatchBytes: getDispatchCodec(c.dispatchCodec).bytesPerValue,
    combineBytes: getDispatchCodec(c.combineCodec).bytesPerValue,
    hidden: cfg.hiddenSize,
    microbatches,
    layers: MOE_LAYERS,
  });
}

// ---- results -----------------------------------------------------------------------------------

interface ClusterResult {
  profile: PrecisionName;
  reusedRunningCluster: boolean;
  promptTokens: number;
  kvSentBytesPerPromptToken: number | undefined;
  kvReceivedBytesPerPromptToken: number | undefined;
  kvExpectedMainLayers: number;
  kvExpectedCacheLayers: number;
  hostsReachedMean: number | undefined;
  hostsReachedMax: number | undefined;
  dispatchCodec: DispatchCodecName;
  combineCodec: DispatchCodecName;
  dispatchBytesPerTokenLayer: number | undefined;
  dispatchBytesPerTokenHost: number | undefined;
  combineBytesPerTokenLayer: number | undefined;
  decode: Array<{
    batch: number;
    clientTokS: number;
    tpotMs: number;
    decodeStepTokS: number | undefined;
    tokens: number;
    /** ms between the first stream's first token and the last one's. */
    firstTokenSpreadMs: number;
    /** Streams decoding on average over the measured window (the batch, less the tail of streams that ended first). */
    meanDecoding: number;
    breakdown: Breakdown | undefined;
    cpu: CpuPerToken | undefined;
  }>;
  wire: WireRoundTrips;
}

interface InProcessResult {
  profile: PrecisionName;
  decode: Array<{ batch: number; tokS: number; cpu: CpuPerToken | undefined }>;
}

// ---- in-process --------------------------------------------------------------------------------

function loadProfiled(profile: PrecisionProfile): DeepseekModel {
  const model = DeepseekModel.load(MODEL, { kvDtype: profile.kvDtype });
  model.setExpertExecutor(createInProcessExperts(model, H, profile).executor);
  return model;
}

async function inProcessDecode(model: DeepseekModel, batch: number): Promise<{ tokS: number; cpu: CpuPerToken | undefined }> {
  const window = cpuWindow();
  const run = await timedDecode(model, batch);
  return { tokS: run.tokS, cpu: window(run.tokens) };
}

/** Greedy decode of `batch` sequences of `--stream-prompt-tokens` prompts: tokens/s, steps and wall time of the decode steps. */
async function timedDecode(model: DeepseekModel, batch: number): Promise<{ tokS: number; steps: number; seconds: number; tokens: number }> {
  const promptLen = opts.streamPromptTokens;
  const engine = new Engine(model, { blockSize: 16, numBlocks: batch * Math.ceil((promptLen + opts.decodeTokens + 4) / 16) + batch + 4 });
  const seqs: Sequence[] = Array.from({ length: batch }, (_, b) =>
    engine.newSequence(`b${b}`, promptIds(100 + b, promptLen), { temperature: 0, topP: 1, topK: -1, maxTokens: opts.decodeTokens, ignoreEos: true }),
  );
  await engine.prefill(seqs);
  model.phaseTimes?.drain(); // the prompt's forward is not a decode step
  const t0 = performance.now();
  let produced = 0;
  let steps = 0;
  while (seqs.some((s) => !s.finished)) {
    for (const r of await engine.step(seqs.filter((s) => !s.finished))) produced += r.tokens.length;
    steps++;
  }
  const t1 = performance.now();
  for (const s of seqs) engine.release(s);
  return { tokS: produced / ((t1 - t0) / 1000), steps, seconds: (t1 - t0) / 1000, tokens: produced };
}

/** --service-arg role=flag, grouped by role as startCluster takes them. */
function serviceArgs(): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const a of opts.serviceArg) {
    const eq = a.indexOf("=");
    if (eq < 1) throw new Error(`--service-arg ${a}: expected role=flag`);
    (out[a.slice(0, eq)] ??= []).push(a.slice(eq + 1));
  }
  return out;
}

// ---- decode's layers and micro-batches, and one process's breakdown ----------------------------

const MOE_LAYERS = moeLayers(cfg);
/** Decode's micro-batches as the launcher starts it: --service-arg decode=--micro-batches=N, else the variable, else the launcher's. */
const DECODE_MICRO_BATCHES = (() => {
  const arg = opts.serviceArg.map((a) => /^decode=--micro-batches[= ](\d+)$/.exec(a)).find((m) => m !== null);
  if (arg) return Number(arg[1]);
  const env = process.env["MOELA_DECODE_MICRO_BATCHES"];
  return env !== undefined ? Number(env) : LOCAL_DECODE_MICRO_BATCHES;
})();

/** One process as `moela generate` runs it: fast kernels, every core, the model's own experts, speculation auto. */
async function inProcessAsGenerate(batch: number): Promise<{ tokS: number; breakdown: Breakdown; cpu: CpuPerToken | undefined }> {
  const model = DeepseekModel.load(MODEL, { threads: availableParallelism() });
  model.phaseTimes = new PhaseTimes();
  let best: { tokS: number; breakdown: Breakdown; cpu: CpuPerToken | undefined } | undefined;
  for (let r = 0; r < opts.repeat; r++) {
    const window = cpuWindow();
    const run = await timedDecode(model, batch);
    const cpu = window(run.tokens);
    const b = breakdownFromPhases(model.phaseTimes.drain(), run.steps, run.seconds);
    if (best === undefined || run.tokS > best.tokS) best = { tokS: run.tokS, breakdown: b, cpu };
  }
  await model.close();
  return best!;
}

// ---- on the cluster ----------------------------------------------------------------------------

function runningCluster(profile: PrecisionName): ClusterInfo | undefined {
  if (!existsSync(opts.clusterJson)) return undefined;
  const info = JSON.parse(readFileSync(opts.clusterJson, "utf8")) as ClusterInfo;
  try {
    process.kill(info.launcher_pid, 0);
  } catch {
    return undefined; // stale file
  }
  const hosts = info.instances.filter((i) => i.role === "expert-host").length;
  return info.precision === profile && hosts === H * R && resolve(info.model) === MODEL ? info : undefined;
}

async function measureCluster(profile: PrecisionName): Promise<ClusterResult> {
  const prof = PRECISION_PROFILES[profile];
  let info = runningCluster(profile);
  let cluster: Cluster | undefined;
  let stateDir: string | undefined;
  if (info !== undefined) log(`${profile}: using the running cluster at ${info.url} (${opts.clusterJson})`);
  else {
    log(`${profile}: starting a cluster (${H} expert shards x ${R} replicas, 1 decode, 1 prefill, router) ...`);
    stateDir = mkdtempSync(join(tmpdir(), "moela-bench-"));
    cluster = await startCluster({
      model: MODEL,
      precision: profile,
      expertHosts: H,
      expertReplicas: R,
      port: 0,
      stateDir,
      queuePrefix: `bench-${randomUUID().slice(0, 8)}`,
      logLevel: "warn",
      serviceArgs: serviceArgs(),
      onProgress: (e) => {
        if (e.kind === "healthy") log(`  up ${e.label} [${e.up}/${e.total}]`);
        if (e.kind === "redis") log(`  redis ${e.url} (${e.source})`);
      },
    });
    info = cluster.info;
  }
  try {
    const client = new OpenAI({ baseURL: info.openai_base_url, apiKey: "bench", maxRetries: 0, timeout: 600_000 });
    const model = info.served_model_name;

    // Workload 1: prompts only (max_tokens 1: prefill samples the only token; decode steps nothing).
    log(`  ${profile}: ${opts.requests} prompts of ${opts.promptTokens} tokens (KV transfer, dispatch) ...`);
    const a = await snapshot(info);
    for (let r = 0; r < opts.requests; r++) {
      await client.completions.create({ model, prompt: promptIds(r, opts.promptTokens), max_tokens: 1, temperature: 0 });
    }
    const b = await snapshot(info);
    const promptTokens = opts.requests * opts.promptTokens;
    const kvSent = delta(a, b, info, ["prefill"], "moela_prefill_kv_transfer_bytes_total");
    const kvRecv = delta(a, b, info, ["decode"], "moela_decode_kv_received_bytes_total");
    const side = ["prefill", "decode"];
    const hostsCount = delta(a, b, info, side, "moela_moe_dispatch_hosts_reached_count");
    const hostsSum = delta(a, b, info, side, "moela_moe_dispatch_hosts_reached_sum");
    const sent = delta(a, b, info, side, "moela_moe_dispatch_sent_bytes_total", (l) => l.includes(`codec="${prof.dispatch}"`));
    const combined = delta(a, b, info, side, "moela_moe_combine_received_bytes_total", (l) => l.includes(`codec="${prof.combine}"`));
    const per = (x: number | undefined, n: number | undefined) => (x === undefined || n === undefined || n === 0 ? undefined : x / n);
    const kvBytes = prof.kvDtype === "f32" ? 4 : 2;

    // Workload 2: decode throughput at each batch size, each after unmeasured passes at that size. The one-process
    // figures come from a process whose code the JIT has already compiled (the in-process runs before them); a
    // cluster fresh from its start, or fresh to a batch size, would otherwise pay its services' compilation inside
    // the measured runs. One pass at the largest batch did not warm one stream's path: after it, one stream measured
    // 13.2 ms per output token, and 8.0 once the same cluster had served a few thousand tokens; from a cold start, one
    // stream took 12.9 ms over its first 640 tokens, 9.5 over the next 640, then 7.5-8.1 (docs/PERFORMANCE.md,
    // "A cold benchmark, a warm cluster, ...", a Zen 5 VM).
    const decode: ClusterResult["decode"] = [];
    for (const batch of BATCHES) {
      const passes = Math.ceil(opts.warmupTokens / (batch * opts.decodeTokens));
      if (passes > 0) log(`  ${profile}: warm-up, ${passes} pass(es) of ${batch} concurrent stream(s) x ${opts.decodeTokens} tokens, not measured ...`);
      for (let p = 0; p < passes; p++) {
        await Promise.all(
          Array.from({ length: batch }, (_, i) => stream(client, model, promptIds(200 + p * batch + i, opts.streamPromptTokens), opts.decodeTokens)),
        );
      }
      log(`  ${profile}: decode, ${batch} concurrent stream(s) x ${opts.decodeTokens} tokens (best of ${opts.repeat}) ...`);
      let best: ClusterResult["decode"][number] | undefined;
      for (let r = 0; r < opts.repeat; r++) {
        // The step breakdown and the CPU per token cover the window the client's rate covers: from the moment every
        // stream has its first token (all of them in decode's batch, no prompt left in prefill) to the end. Measured
        // from the start instead, they would mix in the smaller, cheaper steps of the batch filling up.
        const c = await snapshot(info);
        const window = cpuWindow();
        let firstTokens = 0;
        let allDecoding: Promise<{ from: Snapshot; window: ReturnType<typeof cpuWindow> }> | undefined;
        const onFirstToken = () => {
          if (++firstTokens !== batch) return;
          const w = cpuWindow();
          allDecoding = snapshot(info).then((from) => ({ from, window: w }));
        };
        const streams = await Promise.all(
          Array.from({ length: batch }, (_, i) => stream(client, model, promptIds(100 + i, opts.streamPromptTokens), opts.decodeTokens, onFirstToken)),
        );
        const d = await snapshot(info);
        const steady = await allDecoding;
        const from = steady?.from ?? c;
        const { rate, tokens } = clientDecodeRate(streams);
        const stepSeconds = delta(from, d, info, ["decode"], "moela_decode_step_seconds_sum");
        const generated = delta(from, d, info, ["decode"], "moela_decode_generated_tokens_total");
        const cpu = (steady?.window ?? window)(generated ?? 0, { a: from, b: d, info });
        const run = {
          batch,
          clientTokS: rate,
          tpotMs: meanTpotMs(streams),
          decodeStepTokS: per(generated, stepSeconds),
          tokens,
          ...streamOverlap(streams),
          breakdown: clusterBreakdown(from, d, info, cfg),
          cpu,
        };
        if (best === undefined || run.clientTokS > best.clientTokS) best = run;
      }
      decode.push(best!);
    }
    log(`  ${profile}: the wire alone, one-token dispatches to every host: stream over gRPC, through shared memory, unary ...`);
    const wire = await wireRoundTrips(info, prof, cfg, H);
    return {
      profile,
      wire,
      reusedRunningCluster: cluster === undefined,
      promptTokens,
      kvSentBytesPerPromptToken: per(kvSent, promptTokens),
      kvReceivedBytesPerPromptToken: per(kvRecv, promptTokens),
      kvExpectedMainLayers: cfg.numHiddenLayers * (cfg.kvLoraRank + cfg.qkRopeHeadDim) * kvBytes,
      kvExpectedCacheLayers: (cfg.numHiddenLayers + Math.min(1, cfg.numNextnPredictLayers)) * (cfg.kvLoraRank + cfg.qkRopeHeadDim) * kvBytes,
      hostsReachedMean: per(hostsSum, hostsCount),
      hostsReachedMax: histogramMax(a, b, info, side, "moela_moe_dispatch_hosts_reached"),
      dispatchCodec: prof.dispatch,
      combineCodec: prof.combine,
      dispatchBytesPerTokenLayer: per(sent, hostsCount),
      dispatchBytesPerTokenHost: per(sent, hostsSum),
      combineBytesPerTokenLayer: per(combined, hostsCount),
      decode,
    };
  } finally {
    if (cluster !== undefined) {
      log(`  ${profile}: stopping the cluster ...`);
      await cluster.stop();
      rmSync(stateDir!, { recursive: true, force: true });
    }
  }
}

// ---- report ------------------------------------------------------------------------------------

const f = (x: number | undefined, d = 1) => (x === undefined || !Number.isFinite(x) ? "n/a" : x.toFixed(d));
const ratio = (x: number | undefined, y: number | undefined) => (x === undefined || y === undefined || y === 0 ? "n/a" : `${(x / y).toFixed(2)}x`);

function table(rows: string[][]): string {
  const w = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length)));
  return rows.map((r) => r.map((x, c) => (c === 0 ? x.padEnd(w[c]!) : x.padStart(w[c]!))).join("  ")).join("\n");
}

function bars(title: string, items: Array<{ label: string; value: number | undefined }>, unit: string): string {
  const valid = items.filter((i) => i.value !== undefined && Number.isFinite(i.value));
  const max = Math.max(1e-9, ...valid.map((i) => i.value!));
  const rowH = 26;
  const width = 720;
  const labelW = 260;
  const h = 34 + items.length * rowH;
  const rows = items
    .map((it, k) => {
      const y = 30 + k * rowH;
      const v = it.value !== undefined && Number.isFinite(it.value) ? it.value : 0;
      const w = ((width - labelW - 90) * v) / max;
      return `<text x="4" y="${y + 15}" font-size="13">${it.label}</text><rect x="${labelW}" y="${y}" width="${w.toFixed(1)}" height="18" fill="#4a7bd0"/><text x="${labelW + w + 6}" y="${y + 14}" font-size="12">${f(it.value, 1)} ${unit}</text>`;
    })
    .join("");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${h}"><text x="4" y="18" font-size="15" font-weight="bold">${title}</text>${rows}</svg>`;
}

// ---- main --------------------------------------------------------------------------------------

const started = Date.now();
const loadAtStart = loadavg();
log(
  `model ${MODEL}: ${cfg.numHiddenLayers} layers (+${cfg.numNextnPredictLayers} MTP), hidden ${cfg.hiddenSize}, kv_lora_rank ${cfg.kvLoraRank} + rope ${cfg.qkRopeHeadDim}, ${cfg.nRoutedExperts} experts in ${cfg.nGroup} groups, topk_group ${cfg.topkGroup}; ${H} expert-hosts`,
);

log("in-process: loading exact and paper models with in-process expert-hosts ...");
const exactModel = loadProfiled(PRECISION_PROFILES.exact);
const paperModel = loadProfiled(PRECISION_PROFILES.paper);
log(`in-process: paper vs exact over ${opts.departureSteps} greedy steps ...`);
const dep = opts.departureSteps > 0 ? await departure(exactModel, paperModel, { steps: opts.departureSteps, promptIds, log }) : undefined;
const inProcess: InProcessResult[] = [];
for (const [profile, model] of [
  ["exact", exactModel],
  ["paper", paperModel],
] as const) {
  const rows: InProcessResult["decode"] = [];
  for (const batch of BATCHES) {
    log(`in-process: ${profile} decode at batch ${batch} (best of ${opts.repeat}) ...`);
    let best: { tokS: number; cpu: CpuPerToken | undefined } | undefined;
    for (let r = 0; r < opts.repeat; r++) {
      const run = await inProcessDecode(model, batch);
      if (best === undefined || run.tokS > best.tokS) best = run;
    }
    rows.push({ batch, ...best! });
  }
  inProcess.push({ profile, decode: rows });
}
log(`in-process as moela generate runs it (${availableParallelism()} threads): decode at batch 1 (best of ${opts.repeat}) ...`);
const generate1 = await inProcessAsGenerate(1);
// The same step at the largest batch, part by part: what the cluster's busiest step is measured against.
const largestBatch = Math.max(...BATCHES);
let generateLargest: Awaited<ReturnType<typeof inProcessAsGenerate>> | undefined;
if (largestBatch > 1) {
  log(`in-process as moela generate runs it (${availableParallelism()} threads): decode at batch ${largestBatch} (best of ${opts.repeat}) ...`);
  generateLargest = await inProcessAsGenerate(largestBatch);
}
const codecBytes = (["f32", "bf16", "fp8-tile", "logfmt8"] as const).map((name) => ({
  codec: name,
  bytesPerRow: getDispatchCodec(name).encodedBytes(1, cfg.hiddenSize),
}));

const clusters: ClusterResult[] = [];
if (opts.cluster) for (const profile of PROFILES) clusters.push(await measureCluster(profile));
// The yardstick again once the clusters are gone. These VMs' speed drifts by tens of percent within a minute, so the
// cluster's ratios are to the mean of the runs before and after it, and the report says how far the two moved.
let generate1After: Awaited<ReturnType<typeof inProcessAsGenerate>> | undefined;
/** How far one process's rate may move between its runs before and after the clusters before the report warns. */
const BASELINE_DRIFT = 0.1;
if (clusters.length > 0) {
  log(`in-process as moela generate runs it, again after the cluster: decode at batch 1 (best of ${opts.repeat}) ...`);
  generate1After = await inProcessAsGenerate(1);
}
const yardstickTokS = generate1After === undefined ? generate1.tokS : (generate1.tokS + generate1After.tokS) / 2;
log("loopback bandwidth (256 MiB through 127.0.0.1) ...");
const loopback = await loopbackGBps();
// --one-process-server: the same decode streams against `moela serve --role all`, under the first profile.
const oneProcessServer = opts.oneProcessServer
  ? await measureOneProcessServer({
      model: MODEL,
      precision: PROFILES[0] ?? "exact",
      batches: BATCHES,
      repeat: opts.repeat,
      log,
      measure: async (client, model, batch) => {
        const streams = await Promise.all(
          Array.from({ length: batch }, (_, i) => stream(client, model, promptIds(100 + i, opts.streamPromptTokens), opts.decodeTokens)),
        );
        return { clientTokS: clientDecodeRate(streams).rate, tpotMs: meanTpotMs(streams) };
      },
    })
  : undefined;

// ---- print -------------------------------------------------------------------------------------
const out: string[] = [];
out.push(
  `moela cluster benchmark: ${MODEL}, ${H} expert-hosts, ${new Date().toISOString()}; ${cpus().length} CPUs, load average at start ${loadAtStart.map((x) => x.toFixed(2)).join(" ")}`,
);
out.push("");
const speedCluster = clusters[0];
if (speedCluster !== undefined) {
  const ipTpot = 1000 / yardstickTokS;
  const one = speedCluster.decode.find((d) => d.batch === 1);
  const many = speedCluster.decode.at(-1);
  out.push(
    `Cluster against one process (${speedCluster.profile}; ${opts.decodeTokens} greedy tokens per stream after a ${opts.streamPromptTokens}-token prompt, ignore_eos; one process = moela generate's defaults, ${availableParallelism()} threads, the mean of its runs before and after the cluster)`,
  );
  out.push(
    table([
      ["", "tokens/s", "ms per output token", "vs one process"],
      [
        "one process, batch 1",
        f(yardstickTokS),
        ipTpot.toFixed(2),
        generate1After === undefined
          ? "1.00x"
          : `1.00x (before ${f(generate1.tokS)}, after ${f(generate1After.tokS)}: ${ratio(generate1After.tokS, generate1.tokS)})`,
      ],
      ...(one ? [["cluster, 1 stream", f(one.clientTokS), one.tpotMs.toFixed(2), `TPOT ${(one.tpotMs / ipTpot).toFixed(2)}x (target <= 1.5x)`]] : []),
      ...(many && many !== one
        ? [
            [
              `cluster, ${many.batch} streams (aggregate)`,
              f(many.clientTokS),
              many.tpotMs.toFixed(2),
              `tokens/s ${(many.clientTokS / yardstickTokS).toFixed(2)}x (target >= 1.5x)`,
            ],
          ]
        : []),
    ]),
  );
  // The ratios stand on one process's rate; when it moved between its two runs, the machine moved under the
  // clusters too (a busy neighbour on a shared host), and a target met or missed in that run says little.
  const drift = generate1After === undefined ? 0 : Math.abs(generate1After.tokS / generate1.tokS - 1);
  if (drift > BASELINE_DRIFT) {
    out.push(
      `WARNING: one process ran ${(drift * 100).toFixed(0)}% ${generate1After!.tokS > generate1.tokS ? "faster" : "slower"} after the cluster than before it: this machine was not quiet, and the ratios above are unreliable; run again`,
    );
  }
  if (many && many !== one) {
    out.push(
      `${many.batch} streams: their first tokens came over ${many.firstTokenSpreadMs.toFixed(0)} ms, and ${many.meanDecoding.toFixed(1)} of them decoded on average over the measured window (from the last stream's first token to the end; the streams that started first end first)`,
    );
  }
  out.push("");
  const cols: Array<[string, Breakdown | undefined]> = [
    ["one process b1", generate1.breakdown],
    ...(generateLargest === undefined ? [] : [[`one process b${largestBatch}`, generateLargest.breakdown] as [string, Breakdown]]),
    ...speedCluster.decode.map((d): [string, Breakdown | undefined] => [`cluster b${d.batch}`, d.breakdown]),
  ];
  const w = speedCluster.wire.all;
  const oneHost = speedCluster.wire.oneHost;
  const floors = speedCluster.wire.floors;
  const lessHost = (t: { medianUs: number; hostUs: number | undefined }): string =>
    t.hostUs === undefined
      ? "n/a"
      : `${(t.medianUs - t.hostUs).toFixed(0)} us (${((t.medianUs - t.hostUs) / floors.grpcUs).toFixed(2)}x the bare grpc-js stream)`;
  out.push(
    `The wire alone (one-token dispatches to all ${H} hosts at once, median of 400): DispatchStream ${w.stream.medianUs.toFixed(0)} us over gRPC, ${w.shm.medianUs.toFixed(0)} us through shared memory (${(w.stream.medianUs / w.shm.medianUs).toFixed(2)}x faster), unary Dispatch ${w.unary.medianUs.toFixed(0)} us per layer (unary/stream ${(w.unary.medianUs / w.stream.medianUs).toFixed(2)}x); a host's own handling ${f(w.stream.hostUs, 0)} us of it`,
    `To one host alone: DispatchStream ${oneHost.stream.medianUs.toFixed(0)} us over gRPC, ${oneHost.shm.medianUs.toFixed(0)} us through shared memory, of which the host's own handling ${f(oneHost.stream.hostUs, 0)} and ${f(oneHost.shm.hostUs, 0)} us; a ${floors.bytes}-byte round trip to a process that only echoes it (median of ${floors.rounds}): raw TCP ${floors.tcpUs.toFixed(0)} us, a bare grpc-js stream ${floors.grpcUs.toFixed(0)} us (${(floors.grpcUs / floors.tcpUs).toFixed(2)}x raw TCP); less the host's handling, DispatchStream ${lessHost(oneHost.stream)} over gRPC and ${lessHost(oneHost.shm)} through shared memory`,
  );
  out.push("");
  const us = (x: number | undefined, n: number) => (x === undefined ? "" : ((1e6 * x) / n).toFixed(0));
  out.push(
    `Where a decode step goes: microseconds per step and per layer of its kind (${cfg.numHiddenLayers} layers: ${cfg.firstKDenseReplace} dense, ${MOE_LAYERS} MoE; the cluster's from the moment every stream has its first token to the end, the window its tokens/s cover; a host's figures are per call, hosts run in parallel; where micro-batches overlap, each one's phases are counted, so they add up to more than the step)`,
  );
  out.push(
    table([
      ["per layer (us)", ...cols.map(([n]) => n)],
      ...BREAKDOWN_ROWS.filter((r) => r.per !== "step").map(({ row, label, per }) => [
        `${label}${per === "moe" ? " /MoE layer" : per === "dense" ? " /dense layer" : ""}`,
        ...cols.map(([, b]) => us(b?.perStep[row], layersOf(per, cfg))),
      ]),
      ["per step (us)", ...cols.map(() => "")],
      ...BREAKDOWN_ROWS.filter((r) => r.per === "step").map(({ row, label }) => [
        label,
        // Micro-batches in flight together: one's wait holds the other's work, so the phases add up to more than the step.
        ...cols.map(([, b]) => (row === "outside_phases" && (b?.perStep[row] ?? 0) < 0 ? "(overlap)" : us(b?.perStep[row], 1))),
      ]),
      ["whole decode step", ...cols.map(([, b]) => (b === undefined ? "" : ((1e6 * b.stepSeconds) / b.steps).toFixed(0)))],
    ]),
  );
  out.push("");
  const sameWork = inProcess.find((x) => x.profile === speedCluster.profile)?.decode ?? [];
  const cpuCols: Array<[string, CpuPerToken | undefined]> = [
    ["one process b1", generate1.cpu],
    ...sameWork.map((d): [string, CpuPerToken | undefined] => [`in-process b${d.batch}, 1 thread`, d.cpu]),
    ...speedCluster.decode.map((d): [string, CpuPerToken | undefined] => [`cluster b${d.batch}`, d.cpu]),
  ];
  const cpuRows = ["one process", "decode", "expert-hosts", "prefill", "router", "benchmark client"] as const;
  out.push(
    `CPU per output token, core-milliseconds by process (all threads; the services' process_cpu_seconds_total, this process's own for the rest; the cluster's over the same window as its step breakdown). Machine busy: the share of all ${availableParallelism()} cores' time that was not idle`,
  );
  out.push(
    table([
      ["core-ms per token", ...cpuCols.map(([n]) => n)],
      ...cpuRows.map((r) => [r, ...cpuCols.map(([, c]) => f(c?.byProcess[r], 2))]),
      ["total", ...cpuCols.map(([, c]) => f(c?.total, 2))],
      ["machine busy", ...cpuCols.map(([, c]) => (c === undefined ? "" : `${(100 * c.machineBusy).toFixed(0)}%`))],
      ["full GCs per 1,000 tokens", ...cpuCols.map(() => "")],
      ...cpuRows.map((r) => [`  ${r}`, ...cpuCols.map(([, c]) => f(c?.fullGcs[r], 1))]),
    ]),
  );
  // The cluster's own work, with no wire, no services and no client: in-process at the same batch, one kernel thread
  // and the same expert-hosts. Its CPU per token caps what any layout of these processes can reach on these cores.
  for (const d of sameWork) {
    const floor = d.cpu?.total;
    if (floor === undefined || d.batch === 1) continue;
    const cap = (1000 * availableParallelism()) / floor;
    out.push(
      `The same work in one process at batch ${d.batch} costs ${floor.toFixed(2)} core-ms per token: on ${availableParallelism()} fully busy cores no cluster of these processes can exceed ${f(cap)} tok/s, ${(cap / yardstickTokS).toFixed(2)}x one process at batch 1, before any message, service or client costs a cycle.`,
    );
  }
  out.push("");
  const gbps = loopback;
  out.push(
    `Against the planner's bound (moela plan's expert-parallel decode bound with the loopback as the link: ${gbps.toFixed(2)} GB/s measured; ${speedCluster.dispatchCodec}/${speedCluster.combineCodec} bytes, ${f(speedCluster.hostsReachedMean, 2)} hosts per token rounded up as "experts per token", ${MOE_LAYERS} MoE layers, decode's ${DECODE_MICRO_BATCHES} micro-batches)`,
  );
  const boundRows = speedCluster.decode.map((d) => ({ d, b: boundFor(speedCluster, d.batch, gbps) }));
  const measuredWire = (d: ClusterResult["decode"][number]): number | undefined => {
    const p = d.breakdown?.perStep;
    if (p === undefined) return undefined;
    // What the dispatch costs the attention side per MoE layer: encode + send, the wait, and the combine, less the hosts' own handling.
    return (1e6 * ((p.dispatch_encode ?? 0) + (p.waiting_on_hosts ?? 0) + (p.combine ?? 0) - (p.host_handling ?? 0))) / MOE_LAYERS;
  };
  out.push(
    table([
      [
        "",
        "bound: comm us per layer and micro-batch",
        "bound: us per MoE layer",
        "bound: ms per step (MoE layers)",
        "measured: dispatch + wait + combine - host handling, us per MoE layer",
        "measured / bound",
      ],
      ...boundRows.map(({ d, b }) => {
        const m = measuredWire(d);
        return [
          `cluster b${d.batch}`,
          f(b?.commUsPerLayerMicrobatch, 2),
          f(b?.usPerLayer, 2),
          f(b?.tpotMs, 3),
          f(m, 0),
          b && m !== undefined ? `${(m / b.usPerLayer).toFixed(0)}x` : "n/a",
        ];
      }),
    ]),
  );
  out.push(
    "The bound counts bytes over the link only. On loopback it is microseconds per layer, so what the cluster pays beyond it is per-message work (protobuf, gRPC, HTTP/2, the event loops) and waking processes on shared cores, not bandwidth.",
  );
  out.push("");
}
out.push(
  `KV transfer (prefill -> decode), bytes per prompt token; expected = cache layers (${cfg.numHiddenLayers} main${cfg.numNextnPredictLayers > 0 ? " + 1 MTP" : ""}) x (${cfg.kvLoraRank} + ${cfg.qkRopeHeadDim}) x KV dtype bytes`,
);
out.push(
  table([
    ["profile", "sent", "received", "expected (cache layers)", "sent/expected", "main layers only"],
    ...clusters.map((c) => [
      c.profile,
      f(c.kvSentBytesPerPromptToken),
      f(c.kvReceivedBytesPerPromptToken),
      `${c.kvExpectedCacheLayers}`,
      ratio(c.kvSentBytesPerPromptToken, c.kvExpectedCacheLayers),
      `${c.kvExpectedMainLayers}`,
    ]),
  ]),
);
const [ce, cp] = [clusters.find((c) => c.profile === "exact"), clusters.find((c) => c.profile === "paper")];
out.push(`paper/exact KV bytes: ${ratio(cp?.kvSentBytesPerPromptToken, ce?.kvSentBytesPerPromptToken)}`);
out.push("");
out.push(`MoE dispatch, per token per MoE layer (topk_group = ${cfg.topkGroup})`);
out.push(
  table([
    ["profile", "hosts mean", "hosts max", "<= topk_group", "dispatch codec", "dispatch B", "B per host", "combine codec", "combine B"],
    ...clusters.map((c) => [
      c.profile,
      f(c.hostsReachedMean, 2),
      f(c.hostsReachedMax, 0),
      c.hostsReachedMax === undefined ? "n/a" : c.hostsReachedMax <= cfg.topkGroup ? "yes" : "NO",
      c.dispatchCodec,
      f(c.dispatchBytesPerTokenLayer),
      f(c.dispatchBytesPerTokenHost),
      c.combineCodec,
      f(c.combineBytesPerTokenLayer),
    ]),
  ]),
);
out.push(
  `exact/paper dispatch bytes (F32 vs FP8): ${ratio(ce?.dispatchBytesPerTokenLayer, cp?.dispatchBytesPerTokenLayer)}; combine (F32 vs BF16): ${ratio(ce?.combineBytesPerTokenLayer, cp?.combineBytesPerTokenLayer)}`,
);
out.push(
  `codec sizes per activation row of ${cfg.hiddenSize} values: ${codecBytes.map((c) => `${c.codec} ${c.bytesPerRow} B`).join(", ")} (BF16/FP8 = ${(codecBytes[1]!.bytesPerRow / codecBytes[2]!.bytesPerRow).toFixed(2)}x)`,
);
out.push("");
out.push(
  `Decode tokens/s, best of ${opts.repeat} (${opts.decodeTokens} tokens per stream, prompt ${opts.promptTokens}, greedy, ignore_eos, MTP on where the model has it)`,
);
out.push(
  table([
    ["profile", "batch", "in-process", "cluster (client)", "cluster (decode steps)", "cluster/in-process"],
    ...inProcess.flatMap((p) =>
      p.decode.map(({ batch, tokS: ip }) => {
        const d = clusters.find((c) => c.profile === p.profile)?.decode.find((x) => x.batch === batch);
        return [p.profile, String(batch), f(ip), f(d?.clientTokS), f(d?.decodeStepTokS), ratio(d?.clientTokS, ip)];
      }),
    ),
  ]),
);
for (const c of clusters) {
  const [b1, bN] = [c.decode[0], c.decode.at(-1)];
  if (b1 && bN && bN !== b1) out.push(`${c.profile}: cluster batch ${bN.batch} / batch ${b1.batch}: ${ratio(bN.clientTokS, b1.clientTokS)}`);
}
out.push("");
if (dep !== undefined) {
  out.push(`paper vs exact (in-process, ${dep.steps} greedy steps over 4 prompts, teacher-forced on the exact path)`);
  out.push(
    table([
      [
        "top-1 agreement",
        "largest |logit diff|",
        "mean |logit diff|",
        "rms logit",
        "largest |logprob diff|",
        "exact argmax = its own greedy",
        "free-run first divergence per prompt",
      ],
      [
        `${(100 * dep.top1Agreement).toFixed(1)}%`,
        dep.maxLogitDiff.toExponential(3),
        dep.meanLogitDiff.toExponential(3),
        dep.rmsLogit.toFixed(3),
        dep.maxLogprobDiff.toExponential(3),
        `${(100 * dep.exactSelfConsistency).toFixed(1)}%`,
        dep.freeRunFirstDivergence.map((d) => (d === null ? "none" : `step ${d}`)).join(", "),
      ],
    ]),
  );
}
if (oneProcessServer !== undefined) {
  const c = clusters.find((x) => x.profile === oneProcessServer.precision);
  out.push(`Cluster against the one-process server (moela serve --role all, ${oneProcessServer.precision}, its defaults; the same streams)`);
  out.push(
    table([
      ["streams", "one-process tokens/s", "ms per output token", "cluster tokens/s", "cluster/one-process tokens/s"],
      ...oneProcessServer.decode.map((d) => {
        const cd = c?.decode.find((x) => x.batch === d.batch);
        return [String(d.batch), f(d.clientTokS), d.tpotMs.toFixed(2), f(cd?.clientTokS), ratio(cd?.clientTokS, d.clientTokS)];
      }),
    ]),
  );
  out.push("");
}
if (missingMetrics.size > 0) {
  out.push("");
  out.push(`metrics not exported by the services (shown as n/a): ${[...missingMetrics].join("; ")}`);
}
out.push(`(${((Date.now() - started) / 1000).toFixed(0)} s)`);
console.log(out.join("\n"));

mkdirSync(opts.out, { recursive: true });
const result = {
  model: MODEL,
  expertHosts: H,
  config: cfg,
  options: opts,
  loopbackGBps: loopback,
  inProcessAsGenerate: generate1,
  inProcessAsGenerateAfterCluster: generate1After,
  yardstickTokS,
  inProcessAsGenerateLargestBatch: generateLargest,
  clusters,
  oneProcessServer,
  inProcess,
  departure: dep,
  codecBytes,
  missingMetrics: [...missingMetrics],
};
writeFileSync(join(opts.out, "cluster.json"), `${JSON.stringify(result, null, 2)}\n`);
const svg = [
  bars(
    "Decode tokens/s",
    clusters.flatMap((c) =>
      c.decode.flatMap((d) => [
        { label: `${c.profile} b${d.batch} in-process`, value: inProcess.find((x) => x.profile === c.profile)!.decode.find((x) => x.batch === d.batch)!.tokS },
        { label: `${c.profile} b${d.batch} cluster`, value: d.clientTokS },
      ]),
    ),
    "tok/s",
  ),
  bars(
    "KV bytes per prompt token (sent)",
    clusters.map((c) => ({ label: c.profile, value: c.kvSentBytesPerPromptToken })),
    "B",
  ),
  bars(
    "Dispatch bytes per token per MoE layer",
    clusters.map((c) => ({ label: `${c.profile} (${c.dispatchCodec})`, value: c.dispatchBytesPerTokenLayer })),
    "B",
  ),
];
writeFileSync(
  join(opts.out, "cluster.html"),
  `<!doctype html><meta charset="utf-8"><title>moela cluster benchmark</title><body style="font-family:sans-serif"><h1>moela cluster benchmark</h1><pre>${out.join("\n").replace(/</g, "&lt;")}</pre>${svg.join("<br>")}</body>\n`,
);
log(`wrote ${join(opts.out, "cluster.json")} and ${join(opts.out, "cluster.html")}`);
