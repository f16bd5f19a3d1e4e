/**
 * Generate a deterministic random-weight DeepSeek-V3-family checkpoint.
 *
 *   npx tsx scripts/gen-tiny-model.ts --preset tiny-v3 --out models/tiny-v3
 *   npx tsx scripts/gen-tiny-model.ts --preset large-v3 --out models/large-v3     (benchmarks; ~0.5 GB, git-ignored)
 *   npx tsx scripts/gen-tiny-model.ts --preset tiny-v3 --config '{"num_hidden_layers":2}' --out /tmp/m
 *
 * Same preset, options and seed give byte-identical files.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { Command, InvalidArgumentError as CommanderArgError } from "commander";
import cliProgress from "cli-progress";
import { errorMessage, MoelaError } from "@moela/core";
import { PRESETS, generateCheckpoint, isPresetName, type FloatDType } from "./lib/tiny-checkpoint.js";

function parseIntArg(v: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new CommanderArgError(`expected a non-negative integer, got '${v}'`);
  return n;
}

const program = new Command()
  .name("gen-tiny-model")
  .description("Write a random-weight DeepSeek-V3-family checkpoint folder (config, safetensors, tokenizer)")
  .option("--preset <name>", `one of: ${Object.keys(PRESETS).join(", ")}`, "tiny-v3")
  .option("--out <dir>", "output folder (default models/<preset>)")
  .option("--seed <n>", "PRNG seed", parseIntArg, 0)
  .option("--config <json>", "JSON object merged over the preset's config.json")
  .option("--weight-dtype <dtype>", "dtype of non-FP8 weights: BF16 or F32")
  .option("--max-shard-bytes <n>", "shard size limit (0: one model.safetensors)", parseIntArg)
  .option("--no-tokenizer", "do not write tokenizer.json / tokenizer_config.json")
  .option("--list", "list the presets and exit")
  .parse();

const o = program.opts<{
  preset: string;
  out?: string;
  seed: number;
  config?: string;
  weightDtype?: string;
  maxShardBytes?: number;
  tokenizer: boolean;
  list?: boolean;
}>();

function main(): void {
  if (o.list) {
    for (const [name, p] of Object.entries(PRESETS)) console.log(`${name.padEnd(14)} ${p.description}`);
    return;
  }
  const preset = o.preset;
  if (!isPresetName(preset)) {
    console.error(`gen-tiny-model: unknown preset '${preset}' (known: ${Object.keys(PRESETS).join(", ")})`);
    process.exit(1);
  }
  let config: Record<string, unknown> | undefined;
  if (o.config !== undefined) {
    try {
      config = JSON.parse(o.config) as Record<string, unknown>;
    } catch (e) {
      program.error(`--config is not valid JSON: ${errorMessage(e)}`);
    }
    if (typeof config !== "object" || config === null || Array.isArray(config)) program.error("--config must be a JSON object");
  }
  if (o.weightDtype !== undefined && o.weightDtype !== "BF16" && o.weightDtype !== "F32")
    program.error(`--weight-dtype must be BF16 or F32, got '${o.weightDtype}'`);
  const out = o.out ?? path.join("models", preset);

  const started = Date.now();
  const tty = process.stderr.isTTY === true;
  const bar = tty
    ? new cliProgress.SingleBar(
        { format: "{bar} {percentage}% | {value}/{total} tensors | {tensor}", stream: process.stderr, hideCursor: true },
        cliProgress.Presets.shades_classic,
      )
    : null;
  let lastDecile = -1;
  console.error(`generating ${preset} (seed ${o.seed}) into ${out}`);
  const res = generateCheckpoint(
    {
      preset,
      ...(config ? { config } : {}),
      ...(o.weightDtype ? { weightDtype: o.weightDtype as FloatDType } : {}),
      ...(o.maxShardBytes !== undefined ? { maxShardBytes: o.maxShardBytes === 0 ? null : o.maxShardBytes } : {}),
      tokenizer: o.tokenizer,
      onProgress: (done, total, name) => {
        if (bar) {
          if (done === 1) bar.start(total, 0, { tensor: name });
          bar.update(done, { tensor: name });
          if (done === total) bar.stop();
        } else {
          const decile = Math.floor((done * 10) / total);
          if (decile !== lastDecile) {
            lastDecile = decile;
            console.error(`  ${done}/${total} tensors (${name})`);
          }
        }
      },
    },
    out,
    o.seed,
  );
  let bytes = 0;
  for (const f of res.files) bytes += fs.statSync(path.join(out, f)).size;
  console.log(
    `wrote ${res.files.length} files, ${(bytes / 1e6).toFixed(2)} MB (${res.tensorCount} tensors, ${res.fp8 ? "FP8 block-quantized linears" : "no quantization"}) ` +
      `to ${out} in ${((Date.now() - started) / 1000).toFixed(1)} s`,
  );
  for (const f of res.files) console.log(`  ${f.padEnd(40)} ${fs.statSync(path.join(out, f)).size}`);
}

try {
  main();
} catch (e) {
  if (e instanceof MoelaError) {
    console.error(`gen-tiny-model: ${e.message}`);
    process.exit(1);
  }
  throw e;
}
