/**
 * The measurements behind a trained model's card (a script, not a test):
 *
 *   npx tsx scripts/model-card.ts --model models/moela-v3-deep --corpus /tmp/corpus-out \
 *        [--train-log models/moela-v3-deep/training-log.jsonl] [--out models/moela-v3-deep]
 *
 * --corpus is the folder `npm run build:artifacts -w packages/corpus -- --out DIR` writes (test.bin,
 * corpus.json with the documents' offsets and the bigram baseline). In one process, on the fast kernels:
 *   - held-out perplexity of the main head on the test split, over the same positions the bigram baseline
 *     scores (every token of a document but its first), in 256-token windows with at least 128 tokens of
 *     context after a window's first;
 *   - expert load per MoE layer on the same text: the busiest expert's tokens over the mean (1 = even);
 *   - MTP: the share of drafts greedy decoding accepts (speculation on) on held-out prompts, and decode
 *     tokens/s with speculation off, on and auto at batch 1 and 8 (medians of --rounds runs, the three modes
 *     interleaved within each round: on a shared VM one run of each moved the on/off ratio by 15%);
 *   - greedy samples for plain English prompts, with the share of their words in /usr/share/dict/words;
 *   - the training curves as an SVG (main and MTP loss per step, held-out loss where evaluated).
 * Prints a table, writes <out>/card.json and <out>/training-curves.svg.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { Command } from "commander";
import { DeepseekModel, Engine, PagedLatentCache, type ExpertExecutor, type Sequence } from "@moela/engine";
import { createInProcessExperts } from "@moela/moe-dispatch";
import { Tokenizer } from "@moela/tokenizer";
import { median } from "./lib/bench-report.js";

const opts = new Command("model-card")
  .requiredOption("--model <dir>", "the trained checkpoint")
  .requiredOption("--corpus <dir>", "the corpus artifacts (test.bin, corpus.json)")
  .option("--train-log <file>", "moela train --json output (one JSON object per line)")
  .option("--out <dir>", "where card.json and training-curves.svg go (default: --model)")
  .option("--window <n>", "tokens per evaluation window", (v) => Number(v), 256)
  .option("--prompts <n>", "held-out prompts for MTP acceptance and speed", (v) => Number(v), 8)
  .option("--rounds <n>", "decode runs per speculation mode and batch (interleaved; medians)", (v) => Number(v), 5)
  .parse()
  .opts<{ model: string; corpus: string; trainLog?: string; out?: string; window: number; prompts: number; rounds: number }>();
if (!(Number.isInteger(opts.rounds) && opts.rounds >= 1)) throw new Error(`--rounds must be a positive integer, got ${opts.rounds}`);
const MODEL = resolve(opts.model);
const OUT = resolve(opts.out ?? opts.model);
const log = (s: string) => process.stderr.write(`${s}\n`);

interface CorpusManifest {
  documents: { test: Array<{ id: string; offset: number; length: number }> };
  bigram: { k: number; testPerplexity: number; testPredicted: number };
  source: { package: string; version: string; license: string };
}
const manifest = JSON.parse(readFileSync(join(opts.corpus, "corpus.json"), "utf8")) as CorpusManifest;
const testBytes = readFileSync(join(opts.corpus, "test.bin"));
const testIds = new Uint16Array(testBytes.buffer, testBytes.byteOffset, testBytes.byteLength / 2);
const docs = manifest.documents.test.map((d) => Array.from(testIds.subarray(d.offset, d.offset + d.length)));

// ---- perplexity and expert load -----------------------------------------------------------------

/** Counts each MoE layer's expert choices, then runs the experts as the model would in one process. */
class CountingExperts implements ExpertExecutor {
  readonly counts = new Map<number, Float64Array>();
  constructor(
    private readonly inner: ExpertExecutor,
    private readonly experts: number,
  ) {}
  async runRouted(layer: number, x: Float32Array, T: number, ids: Int32Array, weights: Float32Array, out: Float32Array): Promise<void> {
    let c = this.counts.get(layer);
    if (c === undefined) this.counts.set(layer, (c = new Float64Array(this.experts)));
    for (let i = 0; i < ids.length; i++) c[ids[i]!]!++;
    await this.inner.runRouted(layer, x, T, ids, weights, out);
  }
}

const model = DeepseekModel.load(MODEL, { threads: 2 });
const cfg = model.config;
const counting = new CountingExperts(createInProcessExperts(model, 1, "exact").executor, cfg.nRoutedExperts);
model.setExpertExecutor(counting);

function logSoftmaxAt(logits: Float32Array, row: number, V: number, target: number): number {
  let m = -Infinity;
  for (let v = 0; v < V; v++) m = Math.max(m, logits[row * V + v]!);
  let s = 0;
  for (let v = 0; v < V; v++) s += Math.exp(logits[row * V + v]! - m);
  return logits[row * V + target]! - m - Math.log(s);
}

async function perplexity(): Promise<{ perplexity: number; predicted: number; nll: number }> {
  const W = opts.window;
  const half = W >> 1;
  let nll = 0;
  let predicted = 0;
  const cache = new PagedLatentCache({ numLayers: model.cacheLayers, latentDim: cfg.latentDim, blockSize: 16, numBlocks: Math.ceil(W / 16) + 2 });
  const table: number[] = [];
  cache.ensureCapacity(table, W);
  for (const [di, doc] of docs.entries()) {
    // Windows at 0, W/2, W, ...: the first predicts positions 1..W-1, the others their last half.
    for (let s = 0; s === 0 || s + half < doc.length; s += half) {
      const win = doc.slice(s, s + W);
      if (win.length < 2) break;
      const r = await model.forward(cache, [{ blockTable: table, start: 0, tokens: win, logits: "all" }], { attention: "decompressed" });
      const from = s === 0 ? 1 : half;
      for (let p = from; p < win.length; p++) {
        nll -= logSoftmaxAt(r.logits, p - 1, cfg.vocabSize, win[p]!);
        predicted++;
      }
    }
    log(`  perplexity: document ${di + 1}/${docs.length}, ${predicted} tokens scored`);
  }
  return { perplexity: Math.exp(nll / predicted), predicted, nll: nll / predicted };
}

// ---- MTP and speed -----------------------------------------------------------------------------

async function decodeRun(
  mode: "off" | "on" | "auto",
  batch: number,
  prompts: number[][],
  tokens: number,
): Promise<{ tokS: number; drafted: number; accepted: number }> {
  const engine = new Engine(model, { speculation: mode, blockSize: 16, numBlocks: batch * Math.ceil((64 + tokens + 8) / 16) + 8 });
  let produced = 0;
  let seconds = 0;
  for (let i = 0; i + batch <= prompts.length; i += batch) {
    const seqs: Sequence[] = prompts
      .slice(i, i + batch)
      .map((p, j) => engine.newSequence(`s${i + j}`, p, { temperature: 0, topP: 1, topK: -1, maxTokens: tokens, ignoreEos: true }));
    await engine.prefill(seqs);
    const t0 = performance.now();
    while (seqs.some((s) => !s.finished)) for (const r of await engine.step(seqs.filter((s) => !s.finished))) produced += r.tokens.length;
    seconds += (performance.now() - t0) / 1000;
    for (const s of seqs) engine.release(s);
  }
  return { tokS: produced / seconds, drafted: engine.drafted, accepted: engine.accepted };
}

// ---- samples -----------------------------------------------------------------------------------

const WORDS = new Set(
  existsSync("/usr/share/dict/words")
    ? readFileSync("/usr/share/dict/words", "utf8")
        .split("\n")
        .map((w) => w.trim().toLowerCase())
        .filter((w) => w !== "")
    : [],
);

/** Share of the text's words (letters and apostrophes) found in the word list, and the count. */
export function englishShare(text: string): { share: number; words: number } {
  const words = text.toLowerCase().match(/[a-z]+(?:'[a-z]+)*/g) ?? [];
  const known = words.filter((w) => WORDS.has(w) || WORDS.has(w.replace(/'s$/, ""))).length;
  return { share: words.length === 0 ? 0 : known / words.length, words: words.length };
}

const SAMPLE_PROMPTS = [
  "The capital of France is",
  "Once upon a time",
  "The president said that",
  "In the morning, the children",
  "Scientists have found that",
];

async function samples(tok: Tokenizer): Promise<Array<{ prompt: string; completion: string; englishShare: number }>> {
  const engine = new Engine(model, { speculation: "off", blockSize: 16, numBlocks: 64 });
  const out = [];
  for (const prompt of SAMPLE_PROMPTS) {
    const seq = engine.newSequence(prompt, tok.encode(prompt), { temperature: 0, topP: 1, topK: -1, maxTokens: 40 });
    const ids: number[] = [];
    for await (const t of engine.generate(seq)) ids.push(t.id);
    engine.release(seq);
    const completion = tok.decode(ids, { skipSpecialTokens: true });
    out.push({ prompt, completion, englishShare: englishShare(completion).share });
  }
  return out;
}

// ---- training curves ---------------------------------------------------------------------------

/** A step line ({step, mainLoss, mtpLoss, ...}) or an evaluation line ({eval: step, mainLoss, ...}). */
interface LogLine {
  step?: number;
  eval?: number;
  mainLoss?: number;
  mtpLoss?: number;
  [k: string]: unknown;
}

function curvesSvg(lines: LogLine[]): string {
  const steps = lines.filter((l) => typeof l.step === "number" && typeof l.mainLoss === "number");
  const evals = lines.filter((l) => typeof l.eval === "number" && typeof l.mainLoss === "number");
  const ema = (key: "mainLoss" | "mtpLoss") => {
    let e: number | undefined;
    return steps.map((l) => (e = e === undefined ? (l[key] as number) : 0.9 * e + 0.1 * (l[key] as number)));
  };
  const main = ema("mainLoss");
  const mtp = ema("mtpLoss");
  const maxStep = Math.max(1, ...steps.map((l) => l.step!));
  const ys = [...main, ...mtp];
  const [lo, hi] = [Math.min(...ys), Math.max(...ys)];
  const [W, H, L, B] = [720, 360, 50, 30];
  const x = (s: number) => L + ((W - L - 10) * s) / maxStep;
  const y = (v: number) => 10 + ((H - B - 10) * (hi - v)) / (hi - lo || 1);
  const path = (vals: number[]) => vals.map((v, i) => `${i === 0 ? "M" : "L"}${x(steps[i]!.step!).toFixed(1)},${y(v).toFixed(1)}`).join("");
  const dots = evals.map((l) => `<circle cx="${x(l.eval!).toFixed(1)}" cy="${y(l.mainLoss!).toFixed(1)}" r="4" fill="#d04a4a"/>`).join("");
  const ticks = [lo, (lo + hi) / 2, hi].map((v) => `<text x="4" y="${y(v) + 4}" font-size="11">${v.toFixed(2)}</text>`).join("");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif"><rect width="${W}" height="${H}" fill="white"/>${ticks}<path d="${path(main)}" fill="none" stroke="#4a7bd0" stroke-width="2"/><path d="${path(mtp)}" fill="none" stroke="#6cb36c" stroke-width="2"/>${dots}<text x="${L}" y="${H - 8}" font-size="12">step (0 .. ${maxStep}); blue: main loss, green: MTP loss (EMA 0.9, nats per token); red: held-out main loss</text></svg>\n`;
}

// ---- main --------------------------------------------------------------------------------------

const tok = Tokenizer.fromDir(MODEL);
log("samples ...");
const sampleRows = await samples(tok);
log("held-out perplexity and expert load ...");
const ppl = await perplexity();
const load = [...counting.counts.entries()]
  .sort((a, b) => a[0] - b[0])
  .map(([layer, c]) => {
    const total = c.reduce((a, b) => a + b, 0);
    return { layer, maxOverMean: Math.max(...c) / (total / c.length), idle: c.filter((v) => v === 0).length };
  });
log("MTP acceptance and decode speed ...");
const prompts = docs.slice(0, opts.prompts).map((d) => d.slice(0, 32));
const speed: Array<{ mode: string; batch: number; tokS: number; tokSRounds: number[]; acceptance: number | null }> = [];
const MODES = ["off", "on", "auto"] as const;
for (const batch of [1, 8]) {
  const runs = new Map(MODES.map((m) => [m, { tokS: [] as number[], drafted: 0, accepted: 0 }]));
  for (let round = 0; round < opts.rounds; round++) {
    // each round starts with another mode, so that none always runs first (or always after the same one)
    for (let k = 0; k < MODES.length; k++) {
      const mode = MODES[(round + k) % MODES.length]!;
      log(`  batch ${batch}, speculation ${mode}: round ${round + 1}/${opts.rounds}`);
      const r = await decodeRun(mode, batch, prompts, 64);
      const acc = runs.get(mode)!;
      acc.tokS.push(r.tokS);
      acc.drafted += r.drafted;
      acc.accepted += r.accepted;
    }
  }
  for (const mode of MODES) {
    const r = runs.get(mode)!;
    speed.push({ mode, batch, tokS: median(r.tokS), tokSRounds: r.tokS, acceptance: r.drafted > 0 ? r.accepted / r.drafted : null });
  }
}
const lines: LogLine[] =
  opts.trainLog && existsSync(opts.trainLog)
    ? readFileSync(opts.trainLog, "utf8")
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as LogLine)
    : [];
if (lines.length > 0) writeFileSync(join(OUT, "training-curves.svg"), curvesSvg(lines));

const card = {
  model: relative(process.cwd(), MODEL),
  corpus: manifest.source,
  heldOut: {
    perplexity: ppl.perplexity,
    nllPerToken: ppl.nll,
    predicted: ppl.predicted,
    bigramPerplexity: manifest.bigram.testPerplexity,
    bigramPredicted: manifest.bigram.testPredicted,
  },
  expertLoad: load,
  speed,
  samples: sampleRows,
};
writeFileSync(join(OUT, "card.json"), `${JSON.stringify(card, null, 2)}\n`);
const f = (x: number, d = 2) => x.toFixed(d);
console.log(
  `held-out perplexity (test split, ${ppl.predicted} tokens): ${f(ppl.perplexity)} (bigram baseline ${f(manifest.bigram.testPerplexity)} over ${manifest.bigram.testPredicted})`,
);
console.log(
  `expert load, busiest over mean per MoE layer: ${load.map((l) => `layer ${l.layer} ${f(l.maxOverMean)}${l.idle > 0 ? ` (${l.idle} idle)` : ""}`).join(", ")}`,
);
console.log(`decode tokens/s (greedy, 32-token held-out prompts, 64 tokens; medians of ${opts.rounds} rounds):`);
for (const s of speed)
  console.log(
    `  batch ${s.batch} speculation ${s.mode.padEnd(4)} ${f(s.tokS, 1).padStart(7)} tok/s${s.acceptance === null ? "" : `, MTP acceptance ${(100 * s.acceptance).toFixed(1)}%`}`,
  );
for (const b of [1, 8]) {
  const off = speed.find((s) => s.batch === b && s.mode === "off")!;
  const on = speed.find((s) => s.batch === b && s.mode === "on")!;
  console.log(`  batch ${b}: on/off ${f(on.tokS / off.tokS)}x`);
}
console.log("samples (greedy, 40 tokens):");
for (const s of sampleRows)
  console.log(`  ${JSON.stringify(s.prompt)} -> ${JSON.stringify(s.completion)} (${(100 * s.englishShare).toFixed(0)}% English words)`);
await model.close();
