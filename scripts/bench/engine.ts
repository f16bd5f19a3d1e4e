/**
 * Engine benchmark (a script, not a test): decode and prefill throughput of whole models per kernel backend,
 * next to what this machine measures in the same run with numpy (scripts/lib/yardsticks.ts).
 *
 *   npx tsx scripts/bench/engine.ts [--models models/tiny-v3,/tmp/moela-large-v3] [--backends fast,reference]
 *        [--threads N] [--batches 1,4,16] [--prompt-tokens 128] [--decode-tokens 32] [--reference-decode-tokens 8]
 *        [--speculation-tokens 256] [--speculation-models models/tiny-v3] [--rounds 3] [--no-yardsticks] [--out bench-results]
 *
 * Per model and backend, at --threads threads (default: all cores): decode tokens/s at each batch size
 * (speculation off; greedy, --decode-tokens per sequence after a --prompt-tokens prompt) and prefill tokens/s
 * (the batch's prompts in one prefill). The reference backend (float64, many times slower) runs batch 1 only,
 * with --reference-decode-tokens.
 *
 * What a decoded token reads is computed exactly from the loaded weights (weightBytes of each matrix, the
 * float32 norm vectors): the embedding row; per layer the norms and the attention weights (q_a + q_b or q,
 * kv_a, kv_b once, o), then the dense MLP or the MoE (router gate, shared expert, num_experts_per_tok routed
 * experts of the mean routed-expert size); the final norm and lm_head. The MTP block is not counted (speculation
 * is off). From it:
 *   decode GB/s = tok/s x bytes/token, against the single-thread read bandwidth (at batch 1 this is the
 *     bandwidth the step achieved; at larger batches the weights are shared, so it is an equivalent);
 *   GFLOP/s = tok/s x 2 x weight elements/token (a multiply-add per weight element a token reads; attention
 *     over the context is not counted), prefill's against numpy's GEMM.
 * Then the batch-16 / batch-1 decode throughput, the fast / reference speed-up, and on --speculation-models
 * (models with an MTP head, first backend, batch 1) decode tokens/s with speculation off, auto and on.
 *
 * With --rounds R (default 3) every measurement runs R times, backends (and speculation modes) interleaved round
 * by round, and medians are reported; most of a default run is the reference backend's large-v3 prefill.
 * The large-v3 preset is generated on first use into /tmp/moela-large-v3 (about 0.5 GB, a minute or two).
 * Prints tables to stdout (progress to stderr); writes bench-results/engine.json and bench-results/engine.html.
 */
import { existsSync } from "node:fs";
import { availableParallelism } from "node:os";
import { basename } from "node:path";
import { Command } from "commander";
import {
  DeepseekModel,
  Engine,
  fastKernelsAvailable,
  nativeKernelsAddon,
  weightBytes,
  type EngineOptions,
  type KernelsName,
  type Sequence,
  type WeightMatrix,
} from "@moela/engine";
import { generateCheckpoint } from "../lib/tiny-checkpoint.js";
import { commaList, fmt, fmtX, log, median, parseWithReportOptions, ratio, textTable, type Bar, type BarChart } from "../lib/bench-report.js";
import { gemmRef, measureSetting, readBandwidthRef, settingLines, writeBenchReport } from "../lib/bench-setting.js";

const program = new Command("bench-engine")
  .option("--models <dirs>", "comma-separated checkpoint folders", "models/tiny-v3,/tmp/moela-large-v3")
  .option("--backends <list>", "kernel backends (fast, portable, reference)", "fast,reference")
  .option("--threads <n>", "threads of every model", (v) => Number(v), availableParallelism())
  .option("--batches <list>", "decode batch sizes (the reference backend runs batch 1 only)", "1,4,16")
  .option("--prompt-tokens <n>", "prompt length", (v) => Number(v), 128)
  .option("--decode-tokens <n>", "tokens generated per sequence", (v) => Number(v), 32)
  .option("--reference-decode-tokens <n>", "tokens generated per sequence by the reference backend", (v) => Number(v), 8)
  .option("--speculation-tokens <n>", "tokens generated in the speculation off/auto/on comparison", (v) => Number(v), 256)
  .option("--speculation-models <dirs>", "models (with an MTP head) to compare speculation off/auto/on on ('' for none)", "models/tiny-v3")
  .option("--rounds <n>", "measurements per configuration (medians reported)", (v) => Number(v), 3);
parseWithReportOptions(program);
const opts = program.opts<{
  models: string;
  backends: string;
  threads: number;
  batches: string;
  promptTokens: number;
  decodeTokens: number;
  referenceDecodeTokens: number;
  speculationTokens: number;
  speculationModels: string;
  rounds: number;
  yardsticks: boolean;
  out: string;
}>();
const flag = (k: string): string => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
for (const k of ["threads", "promptTokens", "rounds"] as const) {
  if (!(Number.isInteger(opts[k]) && opts[k] >= 1)) throw new Error(`${flag(k)} must be a positive integer, got ${opts[k]}`);
}
// Prefill emits each sequence's first token, so decode is timed over the other tokens-1.
for (const k of ["decodeTokens", "referenceDecodeTokens", "speculationTokens"] as const) {
  if (!(Number.isInteger(opts[k]) && opts[k] >= 2)) throw new Error(`${flag(k)} must be an integer >= 2 (the first token comes from prefill), got ${opts[k]}`);
}
const BACKENDS = commaList(opts.backends) as KernelsName[];
for (const b of BACKENDS) if (!["fast", "portable", "reference"].includes(b)) throw new Error(`--backends: '${b}' is not fast, portable or reference`);
if (BACKENDS.length === 0) throw new Error("--backends is empty");
const BATCHES = commaList(opts.batches).map(Number);
if (BATCHES.length === 0 || BATCHES.some((b) => !(Number.isInteger(b) && b >= 1))) throw new Error(`--batches must be positive integers, got ${opts.batches}`);
const MODELS = commaList(opts.models);
const SPEC_MODELS = new Set(commaList(opts.speculationModels));
const batchesOf = (b: KernelsName): number[] => (b === "reference" ? [Math.min(...BATCHES)] : BATCHES);
const decodeTokensOf = (b: KernelsName): number => (b === "reference" ? opts.referenceDecodeTokens : opts.decodeTokens);

function ensureModel(dir: string): void {
  if (existsSync(dir)) return;
  if (!dir.includes("large-v3")) throw new Error(`${dir} does not exist`);
  log(`generating the large-v3 preset into ${dir} ...`);
  let last = 0;
  generateCheckpoint(
    {
      preset: "large-v3",
      onProgress: (done, total) => {
        const pct = Math.floor((100 * done) / total);
        if (pct >= last + 10) {
          last = pct;
          log(`  ${pct}%`);
        }
      },
    },
    dir,
    1,
  );
}

// ---- what one decoded token reads ---------------------------------------------------------------------

interface TokenCost {
  /** Bytes of weights one decoded token reads (speculation off). */
  readonly bytes: number;
  /** Weight elements it reads: FLOPs per token = 2 x elements. */
  readonly elements: number;
  readonly parts: Record<string, { bytes: number; elements: number }>;
}

function tokenCost(model: DeepseekModel): TokenCost {
  const parts: Record<string, { bytes: number; elements: number }> = {};
  const add = (part: string, bytes: number, elements: number): void => {
    const p = (parts[part] ??= { bytes: 0, elements: 0 });
    p.bytes += bytes;
    p.elements += elements;
  };
  const mat = (part: string, w: WeightMatrix | null | undefined): void => {
    if (w) add(part, weightBytes(w), w.rows * w.cols);
  };
  const vec = (part: string, v: Float32Array | null | undefined): void => {
    if (v) add(part, v.byteLength, v.length);
  };
  const w = model.weights;
  const k = model.config.numExpertsPerTok;
  // One row of the embedding (its share of the scales too, for an FP8 embedding).
  add("embedding row", weightBytes(w.embed) / w.embed.rows, w.embed.cols);
  for (const layer of w.layers) {
    vec("norms", layer.inputNorm);
    vec("norms", layer.postNorm);
    const a = layer.attn;
    if (a.query.kind === "lora") {
      mat("attention", a.query.qA.w);
      vec("attention", a.query.qA.bias);
      vec("norms", a.query.qANorm);
      mat("attention", a.query.qB);
    } else {
      mat("attention", a.query.q.w);
      vec("attention", a.query.q.bias);
    }
    mat("attention", a.kvA.w);
    vec("attention", a.kvA.bias);
    vec("norms", a.kvANorm);
    mat("attention", a.kvB); // W_UK and W_UV, each row once
    mat("attention", a.o.w);
    vec("attention", a.o.bias);
    const ffn = layer.ffn;
    if (ffn.kind === "dense") for (const m of [ffn.mlp.gate, ffn.mlp.up, ffn.mlp.down]) mat("dense MLP", m);
    else {
      mat("MoE router", ffn.gate);
      vec("MoE router", ffn.bias);
      if (ffn.shared) for (const m of [ffn.shared.gate, ffn.shared.up, ffn.shared.down]) mat("shared experts", m);
      const loaded = ffn.experts.filter((e) => e !== null);
      if (loaded.length === 0) throw new Error(`layer ${layer.index}: no routed experts loaded`);
      let bytes = 0;
      let elements = 0;
      for (const e of loaded)
        for (const m of [e.gate, e.up, e.down]) {
          bytes += weightBytes(m);
          elements += m.rows * m.cols;
        }
      add(`routed experts (${k} per token)`, (k * bytes) / loaded.length, (k * elements) / loaded.length);
    }
  }
  vec("norms", w.norm);
  mat("lm_head", w.lmHead);
  const sum = (key: "bytes" | "elements"): number => Object.values(parts).reduce((s, p) => s + p[key], 0);
  return { bytes: sum("bytes"), elements: sum("elements"), parts };
}

// ---- measuring -------------------------------------------------------------------------------------------

type SpecMode = "off" | "auto" | "on";

/**
 * Engine options for a speculation mode. The Engine takes `speculation: "auto" | "on" | "off"`; an older one only
 * the boolean `speculative`. Both are given (the current Engine reads `speculation` first, an older one ignores
 * it), and runOnce checks that the engine really runs the mode ("auto" is then reported as unsupported).
 */
function engineOptions(numBlocks: number, mode: SpecMode): EngineOptions {
  return { blockSize: 16, numBlocks, speculative: mode !== "off", speculation: mode } as EngineOptions;
}

interface Run {
  readonly prefillTokS: number;
  readonly decodeTokS: number;
  readonly drafted: number;
  readonly accepted: number;
}

/** One prefill of `batch` prompts, then decode until each has `decodeTokens` tokens; null: the engine lacks `mode`. */
async function runOnce(model: DeepseekModel, batch: number, promptTokens: number, decodeTokens: number, mode: SpecMode): Promise<Run | null> {
  const V = model.config.vocabSize;
  const numBlocks = Math.ceil(((promptTokens + decodeTokens + 4) * batch) / 16) + 2 * batch + 4;
  const engine = new Engine(model, engineOptions(numBlocks, mode));
  const actual = (engine as unknown as { speculation?: unknown }).speculation;
  if (mode === "auto" && actual !== "auto") return null;
  if (actual === undefined ? engine.speculative !== (mode !== "off") : actual !== mode) throw new Error(`the engine did not take speculation ${mode}`);
  const seqs: Sequence[] = [];
  for (let b = 0; b < batch; b++) {
    // Distinct deterministic prompts (ids 2.., not BOS/EOS), so batch rows do different work.
    const prompt = Array.from({ length: promptTokens }, (_, i) => 2 + ((7 + 31 * i + 101 * b) % (V - 2)));
    seqs.push(engine.newSequence(`b${b}`, prompt, { temperature: 0, topP: 1, topK: -1, maxTokens: decodeTokens, ignoreEos: true }));
  }
  const t0 = performance.now();
  await engine.prefill(seqs);
  const t1 = performance.now();
  // Prefill emits each sequence's first token; decode makes the rest.
  const before = seqs.reduce((n, s) => n + s.output.length, 0);
  while (seqs.some((s) => !s.finished)) await engine.step(seqs.filter((s) => !s.finished));
  const t2 = performance.now();
  const produced = seqs.reduce((n, s) => n + s.output.length, 0) - before;
  for (const s of seqs) engine.release(s);
  return {
    prefillTokS: (batch * promptTokens) / ((t1 - t0) / 1000),
    decodeTokS: produced / ((t2 - t1) / 1000),
    drafted: engine.drafted,
    accepted: engine.accepted,
  };
}

interface Row {
  /** "main": the decode/prefill table; "speculation": the off/auto/on comparison. */
  readonly set: "main" | "speculation";
  readonly model: string;
  readonly backend: KernelsName;
  /** What runs underneath (the native instruction set, or "typescript"). */
  readonly isa: string;
  readonly threads: number;
  readonly batch: number;
  readonly speculation: SpecMode;
  readonly promptTokens: number;
  readonly decodeTokens: number;
  readonly rounds: number;
  readonly prefillTokS: number;
  readonly decodeTokS: number;
  /** Accepted / drafted MTP tokens (null without drafts). */
  readonly acceptance: number | null;
  readonly bytesPerToken: number;
  readonly flopsPerToken: number;
  readonly decodeGBs: number;
  readonly decodeGBsOverRead: number | null;
  readonly decodeGFlops: number;
  readonly decodeGFlopsOverGemm: number | null;
  readonly prefillGFlops: number;
  readonly prefillGFlopsOverGemm: number | null;
}

const setting = measureSetting(opts.yardsticks);
const { readGBs, gemmGFlops } = setting;

const notes: string[] = [];
if (BACKENDS.includes("fast") && !fastKernelsAvailable()) notes.push("NOTE: the native kernels did not load: `fast` is the portable TypeScript backend here");
const rows: Row[] = [];
const specUnsupported: string[] = [];
const costs = new Map<string, TokenCost>();
const started = performance.now();

function row(
  set: Row["set"],
  name: string,
  backend: KernelsName,
  model: DeepseekModel,
  cost: TokenCost,
  batch: number,
  mode: SpecMode,
  decodeTokens: number,
  runs: Run[],
): Row {
  const prefillTokS = median(runs.map((r) => r.prefillTokS));
  const decodeTokS = median(runs.map((r) => r.decodeTokS));
  const acc = runs.filter((r) => r.drafted > 0).map((r) => r.accepted / r.drafted);
  const flopsPerToken = 2 * cost.elements;
  const decodeGBs = (decodeTokS * cost.bytes) / 1e9;
  const decodeGFlops = (decodeTokS * flopsPerToken) / 1e9;
  const prefillGFlops = (prefillTokS * flopsPerToken) / 1e9;
  return {
    set,
    model: name,
    backend,
    isa: model.kernels.isa,
    threads: model.threads,
    batch,
    speculation: mode,
    promptTokens: opts.promptTokens,
    decodeTokens,
    rounds: runs.length,
    prefillTokS,
    decodeTokS,
    acceptance: acc.length > 0 ? median(acc) : null,
    bytesPerToken: cost.bytes,
    flopsPerToken,
    decodeGBs,
    decodeGBsOverRead: ratio(decodeGBs, readGBs),
    decodeGFlops,
    decodeGFlopsOverGemm: ratio(decodeGFlops, gemmGFlops),
    prefillGFlops,
    prefillGFlopsOverGemm: ratio(prefillGFlops, gemmGFlops),
  };
}

for (const dir of MODELS) {
  ensureModel(dir);
  const name = basename(dir);
  const models = new Map<KernelsName, DeepseekModel>();
  for (const b of BACKENDS) {
    log(`loading ${dir} (${b}) ...`);
    const m = DeepseekModel.load(dir, { kernels: b });
    m.setThreads(opts.threads);
    // Time the steady state, not the workers' start-up (TypeScript backends' pools load the kernels through tsx).
    if (m.matmulPool !== null && !(await m.matmulPool.ready())) throw new Error(`matmul workers failed: ${m.matmulPool.error?.message}`);
    models.set(b, m);
  }
  const first = models.get(BACKENDS[0]!)!;
  const cost = tokenCost(first);
  costs.set(name, cost);
  const use = (m: DeepseekModel): void => {
    // The fast backend's pool is the process's (a no-op when unchanged); a TypeScript backend's pool is the model's
    // own, and setThreads would restart it.
    if (m.kernels.threadsAreProcessWide) m.setThreads(opts.threads);
  };
  // Warm-up (not measured): every batch size's code paths once, with short prompts, so the JIT has settled.
  for (const [b, m] of models) {
    log(`  warm-up (${b}) ...`);
    use(m);
    for (const batch of batchesOf(b)) await runOnce(m, batch, Math.min(16, opts.promptTokens), 4, "off");
  }
  const runs = new Map<string, Run[]>();
  const push = (key: string, r: Run): void => void (runs.get(key) ?? runs.set(key, []).get(key)!).push(r);
  for (let round = 0; round < opts.rounds; round++) {
    for (const b of round % 2 === 0 ? BACKENDS : [...BACKENDS].reverse()) {
      const m = models.get(b)!;
      for (const batch of batchesOf(b)) {
        log(`  ${name} ${b}: batch ${batch}, ${opts.promptTokens}-token prompts, ${decodeTokensOf(b)} tokens each, round ${round + 1}/${opts.rounds} ...`);
        use(m);
        push(`${b}|${batch}`, (await runOnce(m, batch, opts.promptTokens, decodeTokensOf(b), "off"))!);
      }
    }
  }
  for (const [b, m] of models)
    for (const batch of batchesOf(b)) rows.push(row("main", name, b, m, cost, batch, "off", decodeTokensOf(b), runs.get(`${b}|${batch}`)!));

  if (SPEC_MODELS.has(dir)) {
    if (!first.hasMtp) notes.push(`${dir} has no MTP head: no speculation comparison`);
    else {
      const modes: SpecMode[] = ["off", "auto", "on"];
      const spec = new Map<SpecMode, Run[]>(modes.map((md) => [md, []]));
      use(first);
      await runOnce(first, 1, Math.min(16, opts.promptTokens), 8, "on"); // warm-up of the MTP paths
      for (let round = 0; round < opts.rounds; round++) {
        for (const mode of round % 2 === 0 ? modes : [...modes].reverse()) {
          if (specUnsupported.includes(mode)) continue;
          log(`  ${name} ${BACKENDS[0]}: batch 1, speculation ${mode}, ${opts.speculationTokens} tokens, round ${round + 1}/${opts.rounds} ...`);
          use(first);
          const r = await runOnce(first, 1, opts.promptTokens, opts.speculationTokens, mode);
          if (r === null) specUnsupported.push(mode);
          else spec.get(mode)!.push(r);
        }
      }
      for (const mode of modes) {
        const rs = spec.get(mode)!;
        if (rs.length > 0) rows.push(row("speculation", name, BACKENDS[0]!, first, cost, 1, mode, opts.speculationTokens, rs));
      }
    }
  }
  for (const m of models.values()) await m.close();
}
if (specUnsupported.length > 0) notes.push(`this Engine has no speculation "${specUnsupported.join('", "')}" (EngineOptions.speculation): not measured`);
const elapsedS = (performance.now() - started) / 1000;
log(`done in ${fmt(elapsedS, 0)} s`);

// ---- report ----------------------------------------------------------------------------------------------

const mib = (b: number): string => fmt(b / 2 ** 20, 2);
const lines: string[] = [
  ...settingLines(setting),
  `backends: ${BACKENDS.map((b) => `${b}${b === "fast" ? ` (${nativeKernelsAddon?.isa() ?? "typescript"})` : ""}`).join(", ")}; ${opts.threads} thread${opts.threads === 1 ? "" : "s"}; ` +
    `greedy, random weights; ${opts.promptTokens}-token prompts; ${opts.rounds === 1 ? "one round" : `medians of ${opts.rounds} rounds, backends interleaved`}`,
  ...notes,
  "",
  "what one decoded token reads (speculation off):",
];
for (const [name, c] of costs) {
  const parts = Object.entries(c.parts)
    .map(([k, p]) => `${k} ${mib(p.bytes)}`)
    .join(", ");
  lines.push(
    `  ${name}: ${mib(c.bytes)} MiB of weights (${parts}); ${fmt(c.elements / 1e6, 2)} M weight elements = ${fmt((2 * c.elements) / 1e6, 1)} MFLOP/token`,
  );
}
lines.push("");
const mainRows = rows.filter((r) => r.set === "main");
const specRows = rows.filter((r) => r.set === "speculation");
lines.push(
  `decode (speculation off) and prefill; GB/s = tok/s x bytes/token${readGBs === null ? "" : `, x read = / the read bandwidth (${fmt(readGBs)} GB/s, 1 thread)`}; GFLOP/s = tok/s x 2 x weight elements/token${gemmGFlops === null ? "" : `, x GEMM = / ${fmt(gemmGFlops)} GFLOP/s`}`,
);
lines.push(
  ...textTable(
    ["model", "backend", "thr", "batch", "decode tok/s", "GB/s", "x read", "GFLOP/s", "x GEMM", "prefill tok/s", "GFLOP/s", "x GEMM"],
    mainRows.map((r) => [
      r.model,
      r.backend,
      String(r.threads),
      String(r.batch),
      fmt(r.decodeTokS),
      fmt(r.decodeGBs, 2),
      fmtX(r.decodeGBsOverRead),
      fmt(r.decodeGFlops, 2),
      fmtX(r.decodeGFlopsOverGemm),
      fmt(r.prefillTokS),
      fmt(r.prefillGFlops, 2),
      fmtX(r.prefillGFlopsOverGemm),
    ]),
  ),
  "",
);
const find = (model: string, backend: string, batch: number): Row | undefined =>
  mainRows.find((r) => r.model === model && r.backend === backend && r.batch === batch);
const minB = Math.min(...BATCHES);
const maxB = Math.max(...BATCHES);
const summary: Record<string, unknown>[] = [];
for (const name of costs.keys()) {
  for (const b of BACKENDS) {
    const lo = find(name, b, minB);
    const hi = find(name, b, maxB);
    if (lo && hi && maxB !== minB) {
      lines.push(`${name} ${b}: decode batch ${maxB} / batch ${minB} throughput ${fmtX(hi.decodeTokS / lo.decodeTokS)}`);
      summary.push({ model: name, backend: b, what: `decode batch ${maxB} / batch ${minB}`, ratio: hi.decodeTokS / lo.decodeTokS });
    }
  }
  const fast = find(name, "fast", minB);
  const ref = find(name, "reference", minB);
  if (fast && ref) {
    lines.push(
      `${name}: fast / reference at batch ${minB}: decode ${fmtX(fast.decodeTokS / ref.decodeTokS)}, prefill ${fmtX(fast.prefillTokS / ref.prefillTokS)}`,
    );
    summary.push({ model: name, what: `fast / reference decode, batch ${minB}`, ratio: fast.decodeTokS / ref.decodeTokS });
    summary.push({ model: name, what: `fast / reference prefill, batch ${minB}`, ratio: fast.prefillTokS / ref.prefillTokS });
  }
}
if (specRows.length > 0) {
  lines.push("");
  lines.push(`speculation (MTP drafts) at batch 1, ${opts.speculationTokens} tokens (random weights, so drafts are rarely accepted):`);
  lines.push(
    ...textTable(
      ["model", "backend", "speculation", "decode tok/s", "accepted/drafted"],
      specRows.map((r) => [r.model, r.backend, r.speculation, fmt(r.decodeTokS), r.acceptance === null ? "-" : fmt(r.acceptance, 2)]),
    ),
  );
  for (const name of new Set(specRows.map((r) => r.model))) {
    const by = (md: SpecMode): Row | undefined => specRows.find((r) => r.model === name && r.speculation === md);
    const off = by("off");
    for (const md of ["auto", "on"] as const) {
      const x = by(md);
      if (off && x) {
        lines.push(`${name}: decode speculation ${md} / off ${fmtX(x.decodeTokS / off.decodeTokS)}`);
        summary.push({ model: name, what: `decode speculation ${md} / off, batch 1`, ratio: x.decodeTokS / off.decodeTokS });
      }
    }
  }
}
lines.push("", `total ${fmt(elapsedS, 0)} s`);
process.stdout.write(`${lines.join("\n")}\n`);

const bar = (r: Row, value: number, rel: number | null, label: string): Bar => ({
  group: `${r.model} ${r.backend}`,
  label,
  value,
  ...(rel === null ? {} : { note: fmtX(rel) }),
});
const charts: BarChart[] = [
  {
    title: "decode: GB/s = tok/s x weight bytes per token (dashed: the single-thread read bandwidth)",
    unit: "GB/s",
    bars: mainRows.map((r) => bar(r, r.decodeGBs, r.decodeGBsOverRead, `batch ${r.batch}: ${fmt(r.decodeTokS)} tok/s`)),
    ...readBandwidthRef(setting),
  },
  {
    title: `prefill (${opts.promptTokens}-token prompts): GFLOP/s = tok/s x 2 x weight elements per token (dashed: numpy's GEMM)`,
    unit: "GFLOP/s",
    bars: mainRows.map((r) => bar(r, r.prefillGFlops, r.prefillGFlopsOverGemm, `batch ${r.batch}: ${fmt(r.prefillTokS)} tok/s`)),
    ...gemmRef(setting),
  },
];
if (specRows.length > 0) {
  charts.push({
    title: "decode tok/s at batch 1 by speculation mode",
    unit: "tokens/s",
    bars: specRows.map((r) => ({
      group: `${r.model} ${r.backend}`,
      label: `speculation ${r.speculation}`,
      value: r.decodeTokS,
      ...(r.acceptance === null ? {} : { note: `accepted ${fmt(r.acceptance, 2)}` }),
    })),
  });
}
const [jsonPath, htmlPath] = writeBenchReport(setting, opts.out, "engine", "moela engine benchmark", lines, charts, 2, {
  options: opts,
  tokenCosts: Object.fromEntries(costs),
  elapsedS,
  rows: mainRows,
  speculation: specRows,
  summary,
});
log(`wrote ${jsonPath} and ${htmlPath}`);
