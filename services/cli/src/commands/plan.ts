/** `moela plan`: size a model from its config.json (plan.ts, @moela/planner). */
import { type Command } from "commander";
import { PLAN_DEFAULTS } from "@moela/planner";
import type { PlanCliOptions } from "../plan.js";
import { floatArg, intArg, withOptions, type OptionRow } from "./options.js";

const PLAN_OPTIONS: readonly OptionRow[] = [
  ["--json", "print one JSON object instead of the table"],
  ["--kv-bytes <n>", "bytes per cached KV value (2 = bf16, 1 = fp8)", floatArg("--kv-bytes"), PLAN_DEFAULTS.kvBytes],
  ["--context <n>", "tokens in context, for the attention part of FLOPs per token", intArg("--context"), PLAN_DEFAULTS.context],
  ["--bandwidth-gbps <GB/s>", "EP link bandwidth per device, GB/s (10^9 bytes/s)", floatArg("--bandwidth-gbps"), PLAN_DEFAULTS.bandwidthGBps],
  ["--tokens-per-microbatch <n>", "tokens per device per micro-batch", intArg("--tokens-per-microbatch"), PLAN_DEFAULTS.tokensPerMicrobatch],
  ["--microbatches <n>", "micro-batches overlapped per step", intArg("--microbatches"), PLAN_DEFAULTS.microbatches],
  ["--dispatch-bytes <n>", "bytes per value sent to the experts (1 = fp8)", floatArg("--dispatch-bytes"), PLAN_DEFAULTS.dispatchBytes],
  ["--combine-bytes <n>", "bytes per value sent back (2 = bf16)", floatArg("--combine-bytes"), PLAN_DEFAULTS.combineBytes],
  ["--hidden <n>", "values per token per message (default: the config's hidden_size)", intArg("--hidden")],
  ["--experts-per-token <n>", "experts per token, shared included (default: the config's)", intArg("--experts-per-token")],
  ["--layers <n>", "layers that pay the bound (default: num_hidden_layers, as the paper)", intArg("--layers")],
];

export function addPlanCommand(program: Command): void {
  const cmd = program
    .command("plan")
    .description("size a model from its config.json: parameters, KV cache, FLOPs per token, the paper's EP decode bound")
    .argument("<config>", "a Hugging Face config.json, or a folder holding one");
  withOptions(cmd, PLAN_OPTIONS).action(async (config: string, opts: PlanCliOptions) => {
    const { runPlan } = await import("../plan.js");
    process.exitCode = await runPlan(config, opts);
  });
}
