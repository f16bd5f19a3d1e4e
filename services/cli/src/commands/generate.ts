/** `moela generate`: the whole model in this process (generate.ts). */
import { availableParallelism } from "node:os";
import { Option, type Command } from "commander";
import { applyHeapGrowth } from "@moela/core";
import { SPECULATION_MODES } from "@moela/engine/speculation-policy";
import type { GenerateCliOptions } from "../generate.js";
import { DEFAULT_MODEL } from "../paths.js";
import { collect, floatArg, idListArg, intArg, withOptions, type OptionRow } from "./options.js";

const GENERATE_OPTIONS: readonly OptionRow[] = [
  ["--model <dir>", "Hugging Face checkpoint folder (config.json, safetensors, tokenizer)", DEFAULT_MODEL],
  ["--prompt <text>", "prompt text (BOS added as tokenizer_config.json says)"],
  ["--prompt-ids <ids>", "prompt token ids, used exactly as given (no BOS added)", idListArg],
  ["--chat <text>", "one user message, rendered with the chat template"],
  ["--messages <json>", 'chat messages as JSON, e.g. \'[{"role":"user","content":"Hi"}]\''],
  ["--max-tokens <n>", "most tokens to generate", intArg("--max-tokens"), 64],
  ["--temperature <t>", "sampling temperature (0 = greedy)", floatArg("--temperature")],
  ["--top-p <p>", "nucleus sampling mass", floatArg("--top-p")],
  ["--top-k <k>", "sample among the k most likely tokens (-1 = off)", intArg("--top-k")],
  ["--seed <n>", "random seed (reproducible sampling)", intArg("--seed")],
  ["--stop <text>", "stop string (repeatable)", collect, [] as string[]],
  ["--stop-token-ids <ids>", "extra token ids that end generation", idListArg],
  ["--ignore-eos", "keep generating past the end-of-sequence token"],
  ["--top-logprobs <n>", "report the n best logprobs per generated token", intArg("--top-logprobs")],
  ["--logits", "with --json: print all logits at the last prompt position"],
  ["--mtp-logits", "with --json: print the MTP head's logits at the last prompt position"],
  new Option("--speculative <mode>", "draft with the MTP head: auto (while drafting pays), on (at every step), off").choices(SPECULATION_MODES).default("auto"),
  ["--no-speculative", "the same as --speculative off"],
  ["--draft-vocab <n>", "drafts choose among the first n token ids only (default: all; outputs are the same)", intArg("--draft-vocab")],
  [
    "--speculative-tokens <n>",
    "tokens drafted per step with --speculative on, the MTP layer chained on its own output (default: 1; outputs are the same)",
    intArg("--speculative-tokens"),
  ],
  ["--prefill-chunk <n>", "prompt tokens per prefill step", intArg("--prefill-chunk"), 256],
  ["--threads <n>", "threads sharing each large matmul (same output bits for any count)", intArg("--threads"), availableParallelism()],
  ["--kernels <name>", "fast (native SIMD) | portable (TypeScript) | reference (float64, the oracle)", "fast"],
  ["--json", "print one JSON object (token ids, logprobs, ...) instead of streaming text"],
  [
    "--precision <profile>",
    "exact (f32 KV, dispatch, combine) | paper (bf16 KV, fp8 dispatch, bf16 combine) | paper-logfmt8 (as paper, LogFMT-8 dispatch)",
    "exact",
  ],
  ["--expert-hosts <h>", "split the routed experts over h in-process expert-hosts, as the cluster does", intArg("--expert-hosts"), 1],
];

export function addGenerateCommand(program: Command): void {
  const cmd = program.command("generate").description("run a checkpoint in this process and print the continuation");
  withOptions(cmd, GENERATE_OPTIONS).action(async (opts: GenerateCliOptions) => {
    const { runGenerate } = await import("../generate.js");
    // The heap policy every service runs under (packages/core/src/heap-growth.ts), so one process is measured alike.
    applyHeapGrowth(process.env);
    process.exitCode = await runGenerate(opts);
  });
}
