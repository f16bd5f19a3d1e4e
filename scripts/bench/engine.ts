/**
 * Engine benchmark (a script, not a test): prefill and decode tokens/s at batch 1 and 8, with and without
 * MTP speculation, and the resident weight bytes, on the bundled model and on a larger generated preset;
 * each configuration runs on one thread and on --threads threads (the model's MatmulPool), side by side.
 *
 *   npx tsx scripts/bench/engine.ts [--models models/tiny-v3,/tmp/moela-large-v3] [--decode-tokens 32] [--threads 2] [--rounds 1]
 *
 * With --rounds R each configuration runs R times per thread count, the order alternating round by round, and the
 * table shows medians (the ratio is the median of the per-round ratios): on a machine shared with other work,
 * one round of each says little.
 * The large preset is generated on first use into /tmp/moela-large-v3 (about 0.5 GB, a minute or two).
 * Prints a table; writes bench-results/engine.json.
 */
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { Command } from "commander";
import { DeepseekModel, Engine, type Sequence } from "@moela/engine";
import { generateCheckpoint } from "../lib/tiny-checkpoint.js";

const program = new Command("bench-engine")
  .option("--models <dirs>", "comma-separated checkpoint folders", "models/tiny-v3,/tmp/moela-large-v3")
  .option("--prompt-tokens <n>", "prompt length", (v) => Number(v), 128)
  .option("--decode-tokens <n>", "tokens generated per sequence", (v) => Number(v), 32)
  .option("--threads <n>", "threads compared with one thread (1: single-thread only)", (v) => Number(v), availableParallelism())
  .option("--rounds <n>", "measurements per configuration and thread count (medians reported)", (v) => Number(v), 1)
  .parse();
const opts = program.opts<{ models: string; promptTokens: number; decodeTokens: number; threads: number; rounds: number }>();
if (!(Number.isInteger(opts.rounds) && opts.rounds >= 1)) throw new Error(`--rounds must be a positive integer, got ${opts.rounds}`);
if (!(Number.isInteger(opts.threads) && opts.threads >= 1)) throw new Error(`--threads must be a positive integer, got ${opts.threads}`);

function ensureModel(dir: string): void {
  if (existsSync(dir)) return;
  if (!dir.includes("large-v3")) throw new Error(`${dir} does not exist`);
  process.stderr.write(`generating the large-v3 preset into ${dir} ...\n`);
  let last = 0;
  generateCheckpoint(
    {
      preset: "large-v3",
      onProgress: (done, total) => {
        const pct = Math.floor((100 * done) / total);
        if (pct >= last + 10) {
          last = pct;
          process.stderr.write(`  ${pct}%\n`);
        }
      },
    },
    dir,
    1,
  );
}

interface Row {
  model: string;
  threads: number;
  batch: number;
  speculative: boolean;
  prefillTokS: number;
  decodeTokS: number;
  acceptance: number | null;
  weightMiB: number;
  /** Per round (with --threads N > 1, on the N-thread rows): N-thread over 1-thread tokens/s. */
  prefillRatios?: number[];
  decodeRatios?: number[];
}

async function measure(model: DeepseekModel, name: string, batch: number, speculative: boolean): Promise<Row> {
  const V = model.config.vocabSize;
  const engine = new Engine(model, { speculative, blockSize: 16, numBlocks: Math.ceil(((opts.promptTokens + opts.decodeTokens + 4) * batch) / 16) + batch + 4 });
  const seqs: Sequence[] = [];
  for (let b = 0; b < batch; b++) {
    // Distinct deterministic prompts so batch rows do different work.
    const prompt = Array.from({ length: opts.promptTokens }, (_, i) => (7 + 31 * i + 101 * b) % V);
    seqs.push(engine.newSequence(`b${b}`, prompt, { temperature: 0, topP: 1, topK: -1, maxTokens: opts.decodeTokens, ignoreEos: true }));
  }
  const t0 = performance.now();
  await engine.prefill(seqs);
  const t1 = performance.now();
  let produced = 0;
  while (seqs.some((s) => !s.finished)) {
    const live = seqs.filter((s) => !s.finished);
    for (const r of await engine.step(live)) produced += r.tokens.length;
  }
  const t2 = performance.now();
  for (const s of seqs) engine.release(s);
  return {
    model: name,
    threads: model.threads,
    batch,
    speculative,
    prefillTokS: (batch * opts.promptTokens) / ((t1 - t0) / 1000),
    decodeTokS: produced / ((t2 - t1) / 1000),
    acceptance: engine.drafted > 0 ? engine.accepted / engine.drafted : null,
    weightMiB: model.weightBytes / 2 ** 20,
  };
}

async function useThreads(model: DeepseekModel, threads: number): Promise<void> {
  model.setThreads(threads);
  // Time the steady state, not the workers' start-up (they load the kernels, through tsx from sources).
  if (model.matmulPool !== null && !(await model.matmulPool.ready())) throw new Error(`matmul workers failed: ${model.matmulPool.error?.message}`);
}

const median = (a: number[]) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length % 2 === 1 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
/** The median row of several rounds of one configuration and thread count. */
function medianRow(rs: Row[]): Row {
  const acc = rs.map((r) => r.acceptance).filter((a): a is number => a !== null);
  return { ...rs[0]!, prefillTokS: median(rs.map((r) => r.prefillTokS)), decodeTokS: median(rs.map((r) => r.decodeTokS)), acceptance: acc.length > 0 ? median(acc) : null };
}

const threadCounts = opts.threads === 1 ? [1] : [1, opts.threads];
const rows: Row[] = [];
for (const dir of opts.models.split(",")) {
  ensureModel(dir);
  process.stderr.write(`loading ${dir} ...\n`);
  const model = DeepseekModel.load(dir);
  for (const batch of [1, 8]) {
    for (const speculative of model.hasMtp ? [false, true] : [false]) {
      // The thread counts run right after each other, first one then the other, so background load drifts
      // as little as possible between the two sides of a ratio.
      const runs = new Map<number, Row[]>(threadCounts.map((t) => [t, []]));
      for (let round = 0; round < opts.rounds; round++) {
        for (const threads of round % 2 === 0 ? threadCounts : [...threadCounts].reverse()) {
          process.stderr.write(`  batch ${batch}, speculative ${speculative}, threads ${threads}, round ${round + 1}/${opts.rounds} ...\n`);
          await useThreads(model, threads);
          runs.get(threads)!.push(await measure(model, dir, batch, speculative));
        }
      }
      const one = runs.get(1)!;
      rows.push(medianRow(one));
      if (opts.threads > 1) {
        const many = runs.get(opts.threads)!;
        rows.push({
          ...medianRow(many),
          prefillRatios: many.map((r, i) => r.prefillTokS / one[i]!.prefillTokS),
          decodeRatios: many.map((r, i) => r.decodeTokS / one[i]!.decodeTokS),
        });
      }
    }
  }
  await model.close();
}

const N = opts.threads;
const f1 = (n: number) => n.toFixed(1);
const cell = (v: string, w: number) => v.padStart(w);
/** One table line: model left-aligned, every other column right-aligned to its header's width. */
const line = (model: string, cells: string[], widths: number[]) => `${model.padEnd(28)}${cells.map((c, i) => cell(c, widths[i]!)).join("")}`;
const headers =
  N === 1
    ? ["batch", "spec", "prefill tok/s", "decode tok/s", "MTP accept", "weights MiB"]
    : ["batch", "spec", "prefill 1 thr", `prefill ${N} thr`, "ratio", "decode 1 thr", `decode ${N} thr`, "ratio", "MTP accept", "weights MiB"];
const widths = headers.map((h) => h.length + 3);
console.log(`prompt ${opts.promptTokens} tokens, ${opts.decodeTokens} generated per sequence (greedy; random weights, so MTP acceptance is low)`);
if (N > 1 && opts.rounds > 1) console.log(`tok/s: medians of ${opts.rounds} rounds; ratio: median of the per-round ratios (${N} threads / 1 thread)`);
console.log(line("model", headers, widths));
for (const r of rows.filter((x) => x.threads === 1)) {
  const m = rows.find((x) => x.threads === N && x.model === r.model && x.batch === r.batch && x.speculative === r.speculative);
  const accept = r.acceptance === null ? "-" : r.acceptance.toFixed(2);
  const lead = [String(r.batch), r.speculative ? "yes" : "no"];
  const ratio = (rs: number[]) => `${median(rs).toFixed(2)}x`;
  const cells =
    N === 1 || m === undefined
      ? [...lead, f1(r.prefillTokS), f1(r.decodeTokS), accept, f1(r.weightMiB)]
      : [...lead, f1(r.prefillTokS), f1(m.prefillTokS), ratio(m.prefillRatios!), f1(r.decodeTokS), f1(m.decodeTokS), ratio(m.decodeRatios!), accept, f1(r.weightMiB)];
  console.log(line(r.model, cells, widths));
}
for (const dir of new Set(rows.map((r) => r.model))) {
  for (const threads of threadCounts) {
    const b1 = rows.find((r) => r.model === dir && r.threads === threads && r.batch === 1 && !r.speculative)!;
    const b8 = rows.find((r) => r.model === dir && r.threads === threads && r.batch === 8 && !r.speculative)!;
    console.log(`${dir}: ${threads} thread${threads === 1 ? "" : "s"}: decode batch 8 / batch 1 throughput ratio ${(b8.decodeTokS / b1.decodeTokS).toFixed(2)}x`);
  }
}
mkdirSync("bench-results", { recursive: true });
writeFileSync("bench-results/engine.json", JSON.stringify(rows, null, 2));
