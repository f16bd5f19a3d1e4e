/** `moela bench`: @moela/loadgen against OpenAI-compatible servers (bench.ts). */
import { type Command } from "commander";
import { DEFAULT_TOKEN_ID_RANGE, runBenchCli, type BenchCliOptions } from "../bench.js";
import { collect, floatArg, intArg, withOptions, type OptionRow } from "./options.js";

const BENCH_OPTIONS: readonly OptionRow[] = [
  ["--target <url>", "server base URL, e.g. http://127.0.0.1:8000 (repeat to compare; ratios are to the first)", collect, [] as string[]],
  ["--label <name>", "name for the matching --target in tables and the plot (repeatable)", collect, [] as string[]],
  ["--model <name>", "model to ask for (default: each target's first in GET /v1/models)"],
  ["--api <api>", "completions | chat", "completions"],
  ["--concurrency <list>", "closed loop at each concurrency in turn, e.g. 1,4,16 (default 1)"],
  ["--request-rate <list>", "open loop, Poisson arrivals at each rate in turn (req/s), e.g. 2,4,inf"],
  ["--num-prompts <n>", "measured requests per level and target", intArg("--num-prompts"), 64],
  ["--warmup <n>", "uncounted requests per level and target, run first at the level's load", intArg("--warmup"), 4],
  ["--rounds <r>", "with two targets: split each level into r rounds, alternating A B | B A ...", intArg("--rounds"), 1],
  ["--input-len <dist>", "prompt tokens: N | uniform:A,B | normal:MEAN,STD[,MIN,MAX] | file:PATH", "128"],
  ["--output-len <dist>", "max_tokens, same forms as --input-len", "64"],
  ["--prompt <kind>", "ids (random token ids, exact lengths) | words (random text)", "ids"],
  ["--token-id-range <lo:hi>", "prompt token ids are drawn from this inclusive range", DEFAULT_TOKEN_ID_RANGE],
  ["--seed <n>", "seed for prompts, lengths and arrivals (same for every target)", intArg("--seed"), 0],
  ["--temperature <t>", "sampling temperature", floatArg("--temperature"), 0],
  ["--no-ignore-eos", "do not send ignore_eos (for servers that reject it; output lengths then vary)"],
  ["--no-continuous-usage", "do not ask for per-chunk usage (stream_options.continuous_usage_stats)"],
  ["--timeout <s>", "per-request limit, seconds", floatArg("--timeout"), 600],
  ["--api-key <key>", "bearer token for the targets"],
  ["--json <file>", "report file (default bench-results/bench-<time>.json)"],
  ["--svg <file>", "latency-against-load plot (default bench-results/bench-<time>.svg)"],
  ["--no-progress", "no progress bar on stderr"],
];

export function addBenchCommand(program: Command): void {
  const cmd = program
    .command("bench")
    .description("load-test OpenAI-compatible servers: TTFT, ITL, TPOT, E2E at p50/p90/p99, req/s, tok/s; --target twice compares");
  withOptions(cmd, BENCH_OPTIONS).action(async (opts: BenchCliOptions) => {
    process.exitCode = await runBenchCli(opts);
  });
}
