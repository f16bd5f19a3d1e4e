/** `moela codec-study`: @moela/moe-dispatch's codec study (codec-study.ts). */
import { type Command } from "commander";
import type { CodecStudyCliOptions } from "../codec-study.js";
import { collect, intArg, withOptions, type OptionRow } from "./options.js";

const CODEC_STUDY_OPTIONS: readonly OptionRow[] = [
  ["--model <dir>", "checkpoint to capture activations from and run teacher-forced (repeat for several)", collect, []],
  ["--sequences <n>", "teacher-forced sequences per model", intArg("--sequences"), 8],
  ["--context <n>", "context tokens prefilled per sequence", intArg("--context"), 32],
  ["--steps <n>", "teacher-forced decode steps per sequence (logits compared at each)", intArg("--steps"), 48],
  ["--synthetic-rows <n>", "rows (tokens) of each synthetic matrix", intArg("--synthetic-rows"), 64],
  ["--synthetic-cols <n>", "columns (hidden) of each synthetic matrix (7168 = DeepSeek-V3)", intArg("--synthetic-cols"), 7168],
  ["--seed <n>", "seed of the synthetic data (and of token ids for a model without a tokenizer)", intArg("--seed"), 0],
  ["--threads <n>", "threads per matmul (same bits for any count)", intArg("--threads"), 1],
  ["--kernels <name>", "fast | portable | reference", "fast"],
  ["--json", "print one JSON object instead of the tables"],
];

export function addCodecStudyCommand(program: Command): void {
  const cmd = program
    .command("codec-study")
    .description("every dispatch codec's bytes/value and error on MoE-input activations and synthetic data, its effect on logits, LogFMT-8 vs E4M3");
  withOptions(cmd, CODEC_STUDY_OPTIONS).action(async (opts: CodecStudyCliOptions) => {
    if (opts.model.length === 0) opts.model = ["models/tiny-v3"];
    const { runCodecStudy } = await import("../codec-study.js");
    process.exitCode = await runCodecStudy(opts);
  });
}
