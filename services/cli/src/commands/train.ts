/** `moela train`: train a model in this process and save it in the HF layout (train.ts, @moela/train). */
import { availableParallelism } from "node:os";
import { type Command } from "commander";
import type { TrainCliOptions } from "../train.js";
import { floatArg, intArg, withOptions, type OptionRow } from "./options.js";

const TRAIN_OPTIONS: readonly OptionRow[] = [
  ["--config <preset|file>", "v3-tiny | v3-small | v3-deep | v3-medium, or a config.json path (default: v3-small, or --init's config.json)"],
  ["--init <dir>", "start from this saved model's weights (HF layout, FP8 or BF16) instead of random ones"],
  ["--tokenizer <dir>", "folder with tokenizer.json + tokenizer_config.json (copied next to the saved model)"],
  ["--vocab-size <n>", "vocabulary size without a tokenizer (default: largest id + 1)", intArg("--vocab-size")],
  ["--steps <n>", "optimizer steps", intArg("--steps"), 1000],
  ["--batch <n>", "sequences per step", intArg("--batch"), 8],
  ["--seq-len <n>", "tokens per sequence", intArg("--seq-len"), 256],
  ["--lr <lr>", "peak learning rate (AdamW)", floatArg("--lr"), 3e-3],
  ["--min-lr-ratio <r>", "final learning rate as a fraction of --lr (cosine)", floatArg("--min-lr-ratio"), 0.1],
  ["--warmup <n>", "linear warm-up steps", intArg("--warmup"), 50],
  ["--weight-decay <wd>", "AdamW decoupled weight decay (2-D weights only)", floatArg("--weight-decay"), 0.1],
  ["--clip <norm>", "global gradient-norm clip (0 = off)", floatArg("--clip"), 1],
  ["--mtp-lambda <l>", "weight of the MTP loss", floatArg("--mtp-lambda"), 0.3],
  [
    "--mtp-targets <t>",
    "what the MTP head learns: data (the token after next) | main (the main head's own top-1 there: self-distillation for speculation)",
    "data",
  ],
  ["--mtp-only", "train the MTP module only (the main model stays as it is; use with --init)"],
  [
    "--mtp-depths <n>",
    "depths of chained drafting the MTP module learns (2-4 need --mtp-only --mtp-targets main; serve with --speculative-tokens up to n)",
    intArg("--mtp-depths"),
    1,
  ],
  ["--balance-alpha <a>", "sequence-wise auxiliary balance loss weight (0 = off)", floatArg("--balance-alpha"), 0],
  ["--bias-update-speed <g>", "aux-loss-free balancing: bias += g * sign(mean load - load)", floatArg("--bias-update-speed"), 1e-2],
  ["--seed <n>", "seed of the initial weights and the batch sampler", intArg("--seed"), 0],
  ["--threads <n>", "threads (every core by default)", intArg("--threads"), availableParallelism()],
  [
    "--parallel <how>",
    "replicas (data-parallel, fastest; bits depend on the count) | kernels (products split over threads; same bits for any count)",
    "replicas",
  ],
  ["--precision <p>", "f32 (native kernels) | f64 (TypeScript, slow: the reference)", "f32"],
  ["--init-std <s>", "std of the initial weights", floatArg("--init-std"), 0.02],
  ["--val-data <file>", "held-out data (same formats as --data) for evaluations: loss and top-1 of both heads"],
  ["--eval-every <n>", "steps between evaluations (0 = after the last step only)", intArg("--eval-every"), 0],
  ["--eval-rows <n>", "held-out sequences per evaluation", intArg("--eval-rows"), 64],
  ["--checkpoint-dir <dir>", "where train-state checkpoints go"],
  ["--checkpoint-every <n>", "steps between checkpoints (0 = at the end only)", intArg("--checkpoint-every"), 0],
  ["--resume", "continue from --checkpoint-dir (same bits as an uninterrupted run)"],
  ["--out <dir>", "save the trained model here (HF layout)"],
  ["--no-fp8", "save BF16 weights instead of FP8 128x128 blocks"],
  ["--max-shard-bytes <n>", "save the weights as shards of at most n bytes + model.safetensors.index.json (0: one file)", intArg("--max-shard-bytes"), 0],
  ["--json", "one JSON line per step on stdout instead of the progress bar"],
];

export function addTrainCommand(program: Command): void {
  const cmd = program
    .command("train")
    .description("train a DeepSeek-V3-family model in this process (MLA, DeepSeekMoE, MTP) and save it in the HF layout")
    .requiredOption("--data <file>", "token ids (.bin/.u16 uint16, .u32, .json) or a UTF-8 text file with --tokenizer");
  withOptions(cmd, TRAIN_OPTIONS).action(async (opts: TrainCliOptions) => {
    const { runTrain } = await import("../train.js");
    process.exitCode = await runTrain(opts);
  });
}
