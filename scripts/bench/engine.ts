/**
 * Engine benchmark (a script, not a test): prefill and decode tokens/s at batch 1 and 8, with and without
 * MTP speculation, and the resident weight bytes, on the bundled model and on a larger generated preset.
 *
 *   npx tsx scripts/bench/engine.ts [--models models/tiny-v3,/tmp/moela-large-v3] [--decode-tokens 32]
 *
 * The large preset is generated on first use into /tmp/moela-large-v3 (about 0.5 GB, a minute or two).
 * Prints a table; writes bench-results/engine.json.
 */
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { Command } from "commander";
import { DeepseekModel, Engine, type Sequence } from "@moela/engine";
import { generateCheckpoint } from "../lib/tiny-checkpoint.js";

const program = new Command("bench-engine")
  .option("--models <dirs>", "comma-separated checkpoint folders", "models/tiny-v3,/tmp/moela-large-v3")
  .option("--prompt-tokens <n>", "prompt length", (v) => Number(v), 128)
  .option("--decode-tokens <n>", "tokens generated per sequence", (v) => Number(v), 32)
  .parse();
const opts = program.opts<{ models: string; promptTokens: number; decodeTokens: number }>();

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
  batch: number;
  speculative: boolean;
  prefillTokS: number;
  decodeTokS: number;
  acceptance: number | null;
  weightMiB: number;
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
    batch,
    speculative,
    prefillTokS: (batch * opts.promptTokens) / ((t1 - t0) / 1000),
    decodeTokS: produced / ((t2 - t1) / 1000),
    acceptance: engine.drafted > 0 ? engine.accepted / engine.drafted : null,
    weightMiB: model.weightBytes / 2 ** 20,
  };
}

const rows: Row[] = [];
for (const dir of opts.models.split(",")) {
  ensureModel(dir);
  process.stderr.write(`loading ${dir} ...\n`);
  const model = DeepseekModel.load(dir);
  for (const batch of [1, 8]) {
    for (const speculative of model.hasMtp ? [false, true] : [false]) {
      process.stderr.write(`  batch ${batch}, speculative ${speculative} ...\n`);
      rows.push(await measure(model, dir, batch, speculative));
    }
  }
}

const fmt = (n: number) => n.toFixed(1).padStart(9);
console.log(`prompt ${opts.promptTokens} tokens, ${opts.decodeTokens} generated per sequence (greedy; random weights, so MTP acceptance is low)`);
console.log(`${"model".padEnd(28)} batch  spec  prefill tok/s  decode tok/s  MTP accept  weights MiB`);
for (const r of rows) {
  console.log(
    `${r.model.padEnd(28)} ${String(r.batch).padStart(5)}  ${(r.speculative ? "yes" : "no").padEnd(4)} ${fmt(r.prefillTokS)}      ${fmt(r.decodeTokS)}    ${r.acceptance === null ? "       -" : r.acceptance.toFixed(2).padStart(8)}  ${fmt(r.weightMiB)}`,
  );
}
for (const dir of new Set(rows.map((r) => r.model))) {
  const b1 = rows.find((r) => r.model === dir && r.batch === 1 && !r.speculative)!;
  const b8 = rows.find((r) => r.model === dir && r.batch === 8 && !r.speculative)!;
  console.log(`${dir}: decode batch 8 / batch 1 throughput ratio ${(b8.decodeTokS / b1.decodeTokS).toFixed(2)}x`);
}
mkdirSync("bench-results", { recursive: true });
writeFileSync("bench-results/engine.json", JSON.stringify(rows, null, 2));
