/**
 * The `moela` command line. `moela generate` runs the whole model in this process (the single-process
 * path that the disaggregated cluster must agree with).
 */
import { Command, CommanderError, InvalidArgumentError as CommanderArgError } from "commander";
import { MoelaError } from "@moela/core";
import { runGenerate, type GenerateCliOptions } from "./generate.js";

function intArg(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n)) throw new CommanderArgError(`${name} must be an integer`);
    return n;
  };
}

function floatArg(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n)) throw new CommanderArgError(`${name} must be a number`);
    return n;
  };
}

function idListArg(v: string): number[] {
  const ids = v.split(",").map((s) => s.trim()).filter((s) => s.length > 0).map(Number);
  if (ids.length === 0 || ids.some((n) => !Number.isInteger(n) || n < 0)) {
    throw new CommanderArgError("must be a comma-separated list of non-negative integers");
  }
  return ids;
}

function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

export function buildProgram(): Command {
  const program = new Command("moela")
    .description("Serve DeepSeek-V3-family models (MLA, DeepSeekMoE, MTP), disaggregated or in one process")
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s), writeOut: (s) => process.stdout.write(s) });

  program
    .command("generate")
    .description("run a checkpoint in this process and print the continuation")
    .requiredOption("--model <dir>", "Hugging Face checkpoint folder (config.json, safetensors, tokenizer)")
    .option("--prompt <text>", "prompt text (BOS added as tokenizer_config.json says)")
    .option("--prompt-ids <ids>", "prompt token ids, used exactly as given (no BOS added)", idListArg)
    .option("--chat <text>", "one user message, rendered with the chat template")
    .option("--messages <json>", 'chat messages as JSON, e.g. \'[{"role":"user","content":"Hi"}]\'')
    .option("--max-tokens <n>", "most tokens to generate", intArg("--max-tokens"), 64)
    .option("--temperature <t>", "sampling temperature (0 = greedy)", floatArg("--temperature"))
    .option("--top-p <p>", "nucleus sampling mass", floatArg("--top-p"))
    .option("--top-k <k>", "sample among the k most likely tokens (-1 = off)", intArg("--top-k"))
    .option("--seed <n>", "random seed (reproducible sampling)", intArg("--seed"))
    .option("--stop <text>", "stop string (repeatable)", collect, [] as string[])
    .option("--stop-token-ids <ids>", "extra token ids that end generation", idListArg)
    .option("--ignore-eos", "keep generating past the end-of-sequence token")
    .option("--top-logprobs <n>", "report the n best logprobs per generated token", intArg("--top-logprobs"))
    .option("--logits", "with --json: print all logits at the last prompt position")
    .option("--mtp-logits", "with --json: print the MTP head's logits at the last prompt position")
    .option("--no-speculative", "do not draft with the MTP head")
    .option("--prefill-chunk <n>", "prompt tokens per prefill step", intArg("--prefill-chunk"), 256)
    .option("--json", "print one JSON object (token ids, logprobs, ...) instead of streaming text")
    .action(async (opts: GenerateCliOptions) => {
      process.exitCode = await runGenerate(opts);
    });
  return program;
}

/** Entry point used by bin/moela.js; returns the process exit code. */
export async function run(argv: readonly string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync([...argv], { from: "user" });
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    if (err instanceof MoelaError) {
      process.stderr.write(`moela: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
}
