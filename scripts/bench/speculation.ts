/**
 * What MTP speculation can buy in one process (a script, not a test): greedy decode tokens/s with speculation off
 * and on at each batch size, beside the ceiling that the bytes a decode step reads put on the speed-up.
 *
 *   npx tsx scripts/bench/speculation.ts [--model models/moela-v3-deep] [--batches 1,8] [--prompt-tokens 32]
 *        [--tokens 128] [--rounds 5] [--prompts N] [--threads N] [--draft-vocab full,1024] [--speculative-tokens 1,2]
 *        [--perfect-drafts] [--no-yardsticks] [--out bench-results]
 *
 * --draft-vocab and --speculative-tokens list the "on" settings: drafts among the whole vocabulary (full) or the
 * first N token ids (EngineOptions.draftVocab), and one or more chained drafts per step
 * (EngineOptions.speculativeTokens), every pair timed against "off" in the same rounds.
 *
 * --perfect-drafts adds "on, perfect drafts" for each --speculative-tokens count: the engine drafts as always (the
 * MTP layer runs, its row goes through the head and the argmax), but each draft it proposes is the token the plain
 * greedy run emitted there, so every draft lands. That is the most any drafter could buy with this verifying step:
 * if it stays under a target, no better MTP head reaches the target on this machine.
 *
 * Every batch size decodes the same prompts (--prompts, default the largest batch), `batch` at a time, so the
 * acceptance behind each speed-up comes from the same text.
 *
 * At small batches a decode step streams its weights (and the KV cache) through the cores, so what it reads bounds
 * what it costs. A step with speculation reads more than a plain one: the draft's row routes to routed experts of
 * its own (the row before it rarely shares them), and the MTP layer (eh_proj, one more block, the head again) runs
 * to draft the next token. The ceiling on the speed-up is therefore
 *   (bytes read per token with speculation off) / (bytes read per token with it on),
 * which the acceptance rate enters through the tokens a verifying step emits. Both are counted on the real run,
 * from the real routing: every weight matrix a step's kernel calls touch (once per step, however many rows use it),
 * plus the latent KV rows each attention call reads (once per call: MLA's heads and a sequence's rows share them).
 * One counting pass per setting, then --rounds timed passes with the two settings interleaved round by round
 * (medians). Prints a table; writes bench-results/speculation.json and .html (the two speed-ups as bars).
 *
 * Then whether drafting more than one token per step could pay: the MTP layer chained on its own output (vLLM's
 * and SGLang's way of drafting k > 1 tokens with DeepSeek's one MTP layer), teacher-forced over each prompt's
 * greedy output: at every position the first draft as the engine makes it, the second fed the first draft and the
 * MTP layer's own output row, and a third likewise. Their acceptance, and the bytes' ceiling of two drafts per
 * step beside one, with a second draft estimated to read what the first one adds (its routed experts, one more
 * pass through the MTP layer).
 */
import { existsSync } from "node:fs";
import { availableParallelism } from "node:os";
import { basename } from "node:path";
import { Command } from "commander";
import {
  argmax,
  DeepseekModel,
  Engine,
  kernelsByName,
  MAX_SPECULATIVE_TOKENS,
  PagedLatentCache,
  type AttendArgs,
  type EngineOptions,
  type GroupedLayout,
  type KernelBackend,
  type MlpWeights,
  type Sequence,
  type WeightMatrix,
} from "@moela/engine";
import { commaList, fmt, fmtX, log, median, parseWithReportOptions, textTable, type Bar } from "../lib/bench-report.js";
import { measureSetting, settingLines, writeBenchReport } from "../lib/bench-setting.js";
import { PerfectDraftEngine } from "../lib/perfect-drafts.js";

const program = new Command("bench-speculation")
  .option("--model <dir>", "a checkpoint with an MTP layer", "models/moela-v3-deep")
  .option("--batches <list>", "batch sizes", "1,8")
  .option("--prompt-tokens <n>", "prompt length per sequence", (v) => Number(v), 32)
  .option("--tokens <n>", "tokens generated per sequence", (v) => Number(v), 128)
  .option("--rounds <n>", "timed passes per setting (interleaved; medians)", (v) => Number(v), 5)
  .option("--prompts <n>", "prompts, run `batch` at a time at every batch size (default: the largest batch)", (v) => Number(v))
  .option("--threads <n>", "kernel threads", (v) => Number(v), availableParallelism())
  .option("--draft-vocab <list>", "speculation on with each of these draft vocabularies (first N token ids; 'full': all)", "full")
  .option("--speculative-tokens <list>", "speculation on with each of these numbers of drafts per step", "1")
  .option("--perfect-drafts", "also time speculation with drafts that always land (the plain run's own tokens)", false);
parseWithReportOptions(program);
const opts = program.opts<{
  model: string;
  batches: string;
  promptTokens: number;
  tokens: number;
  rounds: number;
  prompts?: number;
  threads: number;
  draftVocab: string;
  speculativeTokens: string;
  perfectDrafts: boolean;
  yardsticks: boolean;
  out: string;
}>();
for (const k of ["promptTokens", "rounds", "threads"] as const) {
  if (!(Number.isInteger(opts[k]) && opts[k] >= 1))
    throw new Error(`--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} must be a positive integer, got ${opts[k]}`);
}
if (!(Number.isInteger(opts.tokens) && opts.tokens >= 2)) throw new Error(`--tokens must be an integer >= 2, got ${opts.tokens}`);
const BATCHES = commaList(opts.batches).map(Number);
if (BATCHES.length === 0 || BATCHES.some((b) => !(Number.isInteger(b) && b >= 1))) throw new Error(`--batches must be positive integers, got ${opts.batches}`);
if (opts.prompts !== undefined && !(Number.isInteger(opts.prompts) && opts.prompts >= Math.max(...BATCHES)))
  throw new Error(`--prompts must be an integer of at least the largest batch, got ${opts.prompts}`);
if (!existsSync(opts.model)) throw new Error(`${opts.model} does not exist`);

/** Speculation off, or on with drafts among the first draftVocab token ids (null: the whole vocabulary). */
interface Mode {
  readonly label: string;
  readonly speculation: "off" | "on";
  readonly draftVocab: number | null;
  /** Drafts per step (EngineOptions.speculativeTokens). */
  readonly speculativeTokens: number;
  /** Every draft is the plain greedy run's token there (PerfectDraftEngine). */
  readonly perfect: boolean;
}

/** Bytes a decode step reads, counted through the fast backend's entry points while `counting` is set. */
class ReadCounter {
  /**
   * Per weight array: the most bytes of it one call touched (a call over part of its rows, such as a draft
   * vocabulary's rows of the head, counts that part; parts of two calls are not added, as the same rows may be read).
   */
  private readonly touched = new Map<ArrayBufferView, number>();
  private kv = 0;
  counting = false;

  weight(w: WeightMatrix, rows = w.rows): void {
    if (!this.counting) return;
    const part = Math.min(1, rows / w.rows);
    this.touch(w.data, part);
    if (w.kind === "fp8") this.touch(w.scaleInv, part);
  }

  private touch(a: ArrayBufferView, part: number): void {
    this.touched.set(a, Math.max(this.touched.get(a) ?? 0, Math.ceil(a.byteLength * part)));
  }

  mlps(group: readonly MlpWeights[], counts: ArrayLike<number>): void {
    group.forEach((m, e) => {
      if (counts[e]! > 0) for (const w of [m.gate, m.up, m.down]) this.weight(w);
    });
  }

  attend(a: AttendArgs): void {
    // Positions [0, start + n) of the latent (and rope-key) rows; the values are the latent rows again.
    if (this.counting) this.kv += (a.start + a.n) * (a.lenA + a.lenB) * 4;
  }

  /** The bytes since the last call, and a fresh count. */
  take(): number {
    let bytes = this.kv;
    for (const b of this.touched.values()) bytes += b;
    this.touched.clear();
    this.kv = 0;
    return bytes;
  }
}

const counter = new ReadCounter();

/** Wraps the fast backend's product entry points so each call reports what it reads (a no-op unless counting). */
function instrument(k: KernelBackend): void {
  const m = k as { -readonly [K in keyof KernelBackend]: KernelBackend[K] };
  const { matmul, matmulT, attend, mlpGroup, matmulAsync, matmulTAsync, attendAsync, mlpGroupAsync } = k;
  const rowsOf = (w: WeightMatrix, l?: GroupedLayout) => (l?.nRows ?? w.rows) * (l?.groups ?? 1);
  m.matmul = (w, x, T, y, l) => (counter.weight(w, rowsOf(w, l)), matmul(w, x, T, y, l));
  m.matmulT = (w, ...rest) => (counter.weight(w), matmulT(w, ...rest));
  m.attend = (a) => (counter.attend(a), attend(a));
  if (mlpGroup) m.mlpGroup = (g, c, ...rest) => (counter.mlps(g, c), mlpGroup(g, c, ...rest));
  if (matmulAsync) m.matmulAsync = (w, x, T, y, l) => (counter.weight(w, rowsOf(w, l)), matmulAsync(w, x, T, y, l));
  if (matmulTAsync) m.matmulTAsync = (w, ...rest) => (counter.weight(w), matmulTAsync(w, ...rest));
  if (attendAsync) m.attendAsync = (a) => (counter.attend(a), attendAsync(a));
  if (mlpGroupAsync) m.mlpGroupAsync = (g, c, ...rest) => (counter.mlps(g, c), mlpGroupAsync(g, c, ...rest));
}

interface Pass {
  readonly tokS: number;
  readonly tokens: number;
  readonly steps: number;
  readonly bytes: number;
  readonly drafted: number;
  readonly accepted: number;
}

const fast = kernelsByName("fast");
if (fast.name !== "fast" || fast.isa === "typescript") throw new Error("the native kernels did not load: this benchmark measures them");
instrument(fast);
log(`loading ${opts.model} ...`);
const model = DeepseekModel.load(opts.model, { kernels: "fast" });
if (!model.hasMtp) throw new Error(`${opts.model} has no MTP layer`);
model.setThreads(opts.threads);
const V = model.config.vocabSize;

/** --prompts prompts (default: the largest batch), the same for every batch size. */
const PROMPTS = Array.from({ length: opts.prompts ?? Math.max(...BATCHES) }, (_, b) =>
  Array.from({ length: opts.promptTokens }, (_, i) => 2 + ((7 + 31 * i + 101 * b) % (V - 2))),
);

/** Every prompt, `batch` at a time: one prefill per group, then greedy decode to --tokens each; counts reads when `count`. */
async function pass(batch: number, mode: Mode, count: boolean): Promise<Pass> {
  const numBlocks = Math.ceil(((opts.promptTokens + opts.tokens + 4) * batch) / 16) + 2 * batch + 4;
  const options: EngineOptions = {
    blockSize: 16,
    numBlocks,
    speculation: mode.speculation,
    draftVocab: mode.draftVocab ?? V,
    speculativeTokens: mode.speculativeTokens,
  };
  const engine = mode.perfect ? new PerfectDraftEngine(model, options, plainOutputs!) : new Engine(model, options);
  let steps = 0;
  let bytes = 0;
  let tokens = 0;
  let ms = 0;
  for (let g = 0; g + batch <= PROMPTS.length; g += batch) {
    const seqs: Sequence[] = PROMPTS.slice(g, g + batch).map((prompt, b) =>
      engine.newSequence(`b${g + b}`, prompt, { temperature: 0, topP: 1, topK: -1, maxTokens: opts.tokens, ignoreEos: true }),
    );
    await engine.prefill(seqs);
    const before = seqs.reduce((n, s) => n + s.output.length, 0);
    const t0 = performance.now();
    while (seqs.some((s) => !s.finished)) {
      counter.counting = count;
      await engine.step(seqs.filter((s) => !s.finished));
      counter.counting = false;
      bytes += counter.take();
      steps++;
    }
    ms += performance.now() - t0;
    tokens += seqs.reduce((n, s) => n + s.output.length, 0) - before;
    for (const s of seqs) {
      // Verifying keeps greedy decoding's tokens whatever the drafts: a check that this run measured the same text.
      const plain = plainOutputs?.get(s.id);
      if (plain !== undefined && s.output.some((t, i) => t.id !== plain[i])) throw new Error(`${mode.label}: sequence ${s.id} left greedy decoding's tokens`);
      engine.release(s);
    }
  }
  return { tokS: tokens / (ms / 1000), tokens, steps, bytes, drafted: engine.drafted, accepted: engine.accepted };
}

const setting = measureSetting(opts.yardsticks);
const DRAFT_VOCABS = commaList(opts.draftVocab).map((v) => (v === "full" ? null : Number(v)));
if (DRAFT_VOCABS.length === 0 || DRAFT_VOCABS.some((v) => v !== null && !(Number.isInteger(v) && v >= 1 && v <= V)))
  throw new Error(`--draft-vocab must list 'full' or integers from 1 to ${V}, got ${opts.draftVocab}`);
const SPECULATIVE_TOKENS = commaList(opts.speculativeTokens).map(Number);
if (SPECULATIVE_TOKENS.length === 0 || SPECULATIVE_TOKENS.some((k) => !(Number.isInteger(k) && k >= 1 && k <= MAX_SPECULATIVE_TOKENS)))
  throw new Error(`--speculative-tokens must list integers from 1 to ${MAX_SPECULATIVE_TOKENS}, got ${opts.speculativeTokens}`);
const OFF: Mode = { label: "off", speculation: "off", draftVocab: null, speculativeTokens: 1, perfect: false };
const ONS: readonly Mode[] = [
  ...DRAFT_VOCABS.flatMap((v) =>
    SPECULATIVE_TOKENS.map((k) => ({
      label: ["on", ...(v === null ? [] : [`draft vocab ${v}`]), ...(k === 1 ? [] : [`${k} tokens`])].join(", "),
      speculation: "on" as const,
      draftVocab: v,
      speculativeTokens: k,
      perfect: false,
    })),
  ),
  ...(opts.perfectDrafts
    ? SPECULATIVE_TOKENS.map((k) => ({
        label: ["on, perfect drafts", ...(k === 1 ? [] : [`${k} tokens`])].join(", "),
        speculation: "on" as const,
        draftVocab: null,
        speculativeTokens: k,
        perfect: true,
      }))
    : []),
];
const MODES: readonly Mode[] = [OFF, ...ONS];

interface Result {
  readonly batch: number;
  readonly mode: Mode;
  readonly tokS: number;
  readonly tokSRounds: readonly number[];
  readonly bytesPerToken: number;
  readonly tokensPerStep: number;
  readonly acceptance: number | null;
}
/** With --perfect-drafts, each prompt's plain greedy output, by the id its sequence gets in pass() (b<prompt index>). */
let plainOutputs: Map<string, number[]> | undefined;
if (opts.perfectDrafts) {
  log("perfect drafts: the plain greedy output of every prompt ...");
  plainOutputs = new Map();
  for (const [i, prompt] of PROMPTS.entries()) plainOutputs.set(`b${i}`, (await greedyTokens(prompt)).slice(prompt.length));
}

const results: Result[] = [];
for (const batch of BATCHES) {
  const counted = new Map<Mode, Pass>();
  for (const mode of MODES) {
    log(`batch ${batch}, speculation ${mode.label}: counting what each step reads ...`);
    counted.set(mode, await pass(batch, mode, true));
  }
  const timed = new Map<Mode, number[]>(MODES.map((m) => [m, []]));
  for (let r = 0; r < opts.rounds; r++) {
    for (const mode of MODES) {
      log(`batch ${batch}, speculation ${mode.label}: round ${r + 1}/${opts.rounds} ...`);
      timed.get(mode)!.push((await pass(batch, mode, false)).tokS);
    }
  }
  for (const mode of MODES) {
    const c = counted.get(mode)!;
    const rounds = timed.get(mode)!;
    results.push({
      batch,
      mode,
      tokS: median(rounds),
      tokSRounds: rounds,
      bytesPerToken: c.bytes / c.tokens,
      tokensPerStep: c.tokens / c.steps,
      acceptance: c.drafted > 0 ? c.accepted / c.drafted : null,
    });
  }
}

/** A prompt's greedy continuation of --tokens tokens (speculation off): prompt and output, one list. */
async function greedyTokens(prompt: readonly number[]): Promise<number[]> {
  const engine = new Engine(model, { blockSize: 16, numBlocks: Math.ceil((prompt.length + opts.tokens + 4) / 16) + 2, speculation: "off" });
  const seq = engine.newSequence("chain", [...prompt], { temperature: 0, topP: 1, topK: -1, maxTokens: opts.tokens, ignoreEos: true });
  for await (const _ of engine.generate(seq)) {
    // the sequence keeps its output
  }
  return [...prompt, ...seq.output.map((t) => t.id)];
}

/** Drafts accepted at chain depth 1, 2, 3 (each counted where the one before it was right), and the positions. */
interface ChainCounts {
  positions: number;
  accepted: [number, number, number];
}

/**
 * Teacher-forced over x (a greedy output): the main model's rows of every position, then per position p the MTP
 * layer fed x[p + 1] and the main row of p (the draft for p + 2, as the engine drafts), then fed that draft and the
 * MTP layer's own output row (for p + 3), then once more (p + 4). Each chained row is written at the position after
 * the last and overwritten by the true one at the next p, as a rejected draft's row is.
 */
async function chainCounts(x: readonly number[], promptLength: number, into: ChainCounts): Promise<void> {
  const hd = model.config.hiddenSize;
  const N = x.length;
  const cache = new PagedLatentCache({
    numLayers: model.cacheLayers,
    latentDim: model.config.latentDim,
    blockSize: 16,
    numBlocks: Math.ceil((N + 4) / 16) + 1,
  });
  const blockTable: number[] = [];
  cache.ensureCapacity(blockTable, N + 4);
  const main = await model.forward(cache, [{ blockTable, start: 0, tokens: [...x], logits: "none" }], { attention: "absorbed" });
  const mainRows = main.hidden.slice(0, N * hd);
  for (let p = 0; p + 2 < N; p++) {
    let hidden = mainRows;
    let hiddenOff = p * hd;
    let fed = x[p + 1]!;
    for (let depth = 0; depth < 3; depth++) {
      const r = await model.forwardMtp(cache, [{ blockTable, start: p + depth, tokens: [fed], logits: "last", hidden, hiddenOff }], {
        attention: "absorbed",
        headRows: CHAIN_VOCAB,
      });
      const draft = argmax(r.logits.subarray(0, V));
      const target = p + 2 + depth;
      // Positions whose first draft lands in the prompt are skipped; a chain ends at the output's end.
      if (p + 2 < promptLength || target >= N) break;
      if (depth === 0) into.positions++;
      if (draft !== x[target]) break;
      into.accepted[depth] = into.accepted[depth]! + 1;
      hidden = r.hidden.slice(0, hd);
      hiddenOff = 0;
      fed = draft;
    }
  }
}

/** The chained drafts choose among the first --draft-vocab entry's ids. */
const CHAIN_VOCAB = ONS[0]!.draftVocab ?? V;
log(`chained drafts: ${PROMPTS.length} prompts, teacher-forced ...`);
const chain: ChainCounts = { positions: 0, accepted: [0, 0, 0] };
for (const prompt of PROMPTS) await chainCounts(await greedyTokens(prompt), prompt.length, chain);
const [c1, c2, c3] = chain.accepted;
const chainRates = { first: c1 / chain.positions, second: c2 / c1, third: c3 / c2 };

const name = basename(opts.model);
const MiB = 1024 * 1024;
const lines = [
  ...settingLines(setting),
  `model ${name}, ${opts.threads} kernel threads, greedy, ${PROMPTS.length} ${opts.promptTokens}-token prompts run batch at a time, ${opts.tokens} tokens per sequence, medians of ${opts.rounds} rounds`,
  "",
  ...textTable(
    ["batch", "speculation", "decode tok/s", "accepted/drafted", "tokens per step", "MiB read per token", "rounds (tok/s)"],
    results.map((r) => [
      String(r.batch),
      r.mode.label,
      fmt(r.tokS),
      r.acceptance === null ? "-" : fmt(r.acceptance, 3),
      fmt(r.tokensPerStep, 2),
      fmt(r.bytesPerToken / MiB, 2),
      r.tokSRounds.map((x) => fmt(x, 0)).join(" "),
    ]),
  ),
  "",
];
const bars: Bar[] = [];
const summary: { batch: number; mode: string; measured: number; ceiling: number; acceptance: number | null }[] = [];
for (const batch of BATCHES) {
  const off = results.find((r) => r.batch === batch && r.mode === OFF)!;
  for (const mode of ONS) {
    const on = results.find((r) => r.batch === batch && r.mode === mode)!;
    const measured = on.tokS / off.tokS;
    const ceiling = off.bytesPerToken / on.bytesPerToken;
    summary.push({ batch, mode: mode.label, measured, ceiling, acceptance: on.acceptance });
    lines.push(
      `batch ${batch}: speculation ${mode.label} / off ${fmtX(measured)} measured, ${fmtX(ceiling)} the bytes' ceiling (off ${fmt(off.bytesPerToken / MiB, 2)} MiB per token, on ${fmt(on.bytesPerToken / MiB, 2)} at ${fmt(on.tokensPerStep, 2)} tokens per step, acceptance ${on.acceptance === null ? "-" : fmt(on.acceptance, 3)}); measured / ceiling ${fmtX(measured / ceiling)}`,
    );
    const what = `batch ${batch}${ONS.length > 1 ? `, ${mode.label}` : ""}`;
    bars.push({ label: `${what}: measured`, value: measured, note: fmtX(measured), group: "measured" });
    bars.push({ label: `${what}: bytes' ceiling`, value: ceiling, note: fmtX(ceiling), group: "ceiling" });
  }
}
const off1 = results.find((r) => r.batch === 1 && r.mode === OFF);
const on1 = results.find((r) => r.batch === 1 && r.mode === ONS[0]);
lines.push(
  "",
  `chained drafts (${ONS[0]!.label}), teacher-forced on the greedy output of the ${PROMPTS.length} prompts, ${chain.positions} positions: first draft accepted ${fmt(chainRates.first, 3)}, the second given the first ${fmt(chainRates.second, 3)}, the third given the second ${fmt(chainRates.third, 3)}`,
);
if (off1 !== undefined && on1 !== undefined) {
  // The bytes' ceiling of one and of two drafts per step at batch 1, at the chained drafts' own acceptance.
  const plain = off1.bytesPerToken; // bytes of a plain step
  const oneDraft = on1.bytesPerToken * on1.tokensPerStep; // bytes of a step verifying one draft
  const twoDrafts = 2 * oneDraft - plain; // estimate: what the second draft adds is what the first added
  const tokens1 = 1 + chainRates.first;
  const tokens2 = 1 + chainRates.first + chainRates.first * chainRates.second;
  lines.push(
    `batch 1 bytes' ceiling at these rates: one draft ${fmtX((tokens1 * plain) / oneDraft)} (${fmt(tokens1, 2)} tokens per step), two chained drafts about ${fmtX((tokens2 * plain) / twoDrafts)} (${fmt(tokens2, 2)} tokens per step, reading an estimated ${fmt(twoDrafts / plain, 2)}x a plain step's bytes)`,
  );
}
console.log(lines.join("\n"));
const [json, html] = writeBenchReport(
  setting,
  opts.out,
  "speculation",
  `MTP speculation on ${name}: measured speed-up against the bytes' ceiling`,
  lines,
  [{ title: "speculation on / off, decode tokens/s", unit: "x", bars, refs: [{ value: 1, label: "no gain" }] }],
  1,
  {
    model: opts.model,
    threads: opts.threads,
    promptTokens: opts.promptTokens,
    tokens: opts.tokens,
    rounds: opts.rounds,
    results,
    summary,
    chain: { ...chain, rates: chainRates },
  },
);
log(`wrote ${json} and ${html}`);
