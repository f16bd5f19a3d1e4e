/**
 * The `moela` command line. `moela generate` runs the whole model in this process (the single-process
 * path that the disaggregated cluster must agree with).
 */
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { Command, CommanderError, InvalidArgumentError as CommanderArgError, Option } from "commander";
import { InternalError, MoelaError } from "@moela/core";
import { SPECULATION_MODES } from "@moela/engine";
import { runGenerate, type GenerateCliOptions } from "./generate.js";
import { runTrain, type TrainCliOptions } from "./train.js";
import { ALL_ROLE, oneProcessFromCluster, runServe } from "./serve.js";
import { runCluster, type ClusterCliOptions } from "./cluster.js";
import { DEFAULT_MODEL } from "./launcher.js";
import { DEFAULT_TOKEN_ID_RANGE, runBenchCli, type BenchCliOptions } from "./bench.js";
import { PLAN_DEFAULTS, runPlan, type PlanCliOptions } from "./plan.js";
import { runCodecStudy, type CodecStudyCliOptions } from "./codec-study.js";

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

/** `--role R` / `--role=R` given after a service flag (commander passed it through): take it out. */
function extractRole(flags: string[]): { role: string | undefined; serviceFlags: string[] } {
  const i = flags.findIndex((f) => f === "--role" || f.startsWith("--role="));
  if (i < 0) return { role: undefined, serviceFlags: flags };
  const f = flags[i]!;
  const role = f === "--role" ? flags[i + 1] : f.slice("--role=".length);
  return { role, serviceFlags: flags.filter((_, j) => j !== i && !(f === "--role" && j === i + 1)) };
}

/** The platform's version: the repository's package.json (services/cli/src -> the root). */
export function moelaVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version?: unknown };
  return typeof pkg.version === "string" ? pkg.version : "unknown";
}

export function buildProgram(): Command {
  const program = new Command("moela")
    .description("Serve DeepSeek-V3-family models (MLA, DeepSeekMoE, MTP), disaggregated or in one process")
    .version(moelaVersion(), "-V, --version", "print the moela version")
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s), writeOut: (s) => process.stdout.write(s) })
    // lets `serve` hand every flag after --role to the service untouched
    .enablePositionalOptions();

  program
    .command("generate")
    .description("run a checkpoint in this process and print the continuation")
    .option("--model <dir>", "Hugging Face checkpoint folder (config.json, safetensors, tokenizer)", DEFAULT_MODEL)
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
    .addOption(
      new Option("--speculative <mode>", "draft with the MTP head: auto (while drafting pays), on (at every step), off")
        .choices(SPECULATION_MODES)
        .default("auto"),
    )
    .option("--no-speculative", "the same as --speculative off")
    .option("--prefill-chunk <n>", "prompt tokens per prefill step", intArg("--prefill-chunk"), 256)
    .option("--threads <n>", "threads sharing each large matmul (same output bits for any count)", intArg("--threads"), availableParallelism())
    .option("--kernels <name>", "fast (native SIMD) | portable (TypeScript) | reference (float64, the oracle)", "fast")
    .option("--json", "print one JSON object (token ids, logprobs, ...) instead of streaming text")
    .option(
      "--precision <profile>",
      "exact (f32 KV, dispatch, combine) | paper (bf16 KV, fp8 dispatch, bf16 combine) | paper-logfmt8 (as paper, LogFMT-8 dispatch)",
      "exact",
    )
    .option("--expert-hosts <h>", "split the routed experts over h in-process expert-hosts, as the cluster does", intArg("--expert-hosts"), 1)
    .action(async (opts: GenerateCliOptions) => {
      process.exitCode = await runGenerate(opts);
    });
  program
    .command("serve")
    .description("run one service in this process; flags after --role go to the service (see its --help)")
    .option("--role <role>", "router | prefill | decode | expert-host | all (everything in this process, OpenAI API on --port) (required)")
    .argument("[service-flags...]", "the service's own flags, e.g. --model DIR --grpc-address 127.0.0.1:0")
    // --help after --role is the service's; without a role it is this command's
    .helpOption(false)
    .passThroughOptions()
    .allowUnknownOption()
    .action(async (flags: string[], opts: { role?: string }, cmd: Command) => {
      const { role, serviceFlags } = opts.role !== undefined ? { role: opts.role, serviceFlags: flags } : extractRole(flags);
      if (role === undefined) {
        const asked = serviceFlags.some((f) => f === "--help" || f === "-h");
        if (!asked) process.stderr.write("error: --role is required (moela serve --role ROLE [service flags...])\n\n");
        (asked ? process.stdout : process.stderr).write(cmd.helpInformation());
        process.exitCode = asked ? 0 : 2;
        return;
      }
      process.exitCode = await runServe(role, serviceFlags);
    });

  program
    .command("cluster")
    .description("start the whole platform on this machine (what `npm start` runs); Ctrl-C stops it. Everything in one process instead: moela serve --role all")
    .option("--model <dir>", "checkpoint folder (default: the bundled models/moela-v3-brown)")
    .option("--prefill <n>", "prefill instances", intArg("--prefill"), 1)
    .option("--decode <n>", "decode instances", intArg("--decode"), 1)
    .option("--expert-hosts <h>", "expert-host shards", intArg("--expert-hosts"), 2)
    .option("--expert-replicas <r>", "expert-host processes per shard (a dispatch fails over between them)", intArg("--expert-replicas"), 1)
    .option("--precision <p>", "exact | paper | paper-logfmt8", "exact")
    .option("--host <host>", "interface every service binds", "127.0.0.1")
    .option("--port <port>", "router HTTP port (0 = any free one)", intArg("--port"), 8000)
    .option("--redis-url <url>", "Redis to use (default: REDIS_URL, else 127.0.0.1:6379, else a private redis-server)")
    .option("--private-redis", "always start a private redis-server (persistent, in the state dir), even if a Redis answers")
    .option("--queue-prefix <prefix>", "BullMQ queue prefix", "moela")
    .option("--served-model-name <name>", "model name the API reports (default: the router's)")
    .option("--api-key <key>", "clients must send it as 'Authorization: Bearer <key>' (the router's --api-key; default env MOELA_ROUTER_API_KEY, else none)")
    .option("--internal-secret <secret>", "shared secret every internal gRPC call carries (shows in ps: prefer --internal-secret-file; default: a random one in <state-dir>/internal-secret)")
    .option("--no-internal-secret", "internal gRPC without a secret (anyone who reaches a service's port may call it)")
    .option("--internal-secret-file <file>", "file holding the internal secret (e.g. a mounted Secret)")
    .option("--tls-cert <file>", "PEM certificate every service serves internal gRPC with (and presents as client under mTLS)")
    .option("--tls-key <file>", "PEM private key of --tls-cert")
    .option("--tls-ca <file>", "PEM CA bundle the services verify each other against")
    .option("--tls-client-auth", "mTLS: services require client certificates signed by --tls-ca")
    .option("--state-dir <dir>", "where cluster.json and logs/ go", ".moela")
    .option("--log-level <level>", "services' log level", "info")
    .option("--startup-timeout <s>", "seconds to wait for everything to be up", intArg("--startup-timeout"), 180)
    .option("--service-arg <role=arg>", "extra flag for every instance of a role, e.g. decode=--kv-blocks=64 (repeatable)", collect, [] as string[])
    .option("--json", "when up, print cluster.json as one line on stdout instead of the summary")
    .option("--role <role>", "all: everything in ONE process instead (moela serve --role all; takes --model, --precision, --host, --port, --served-model-name, --api-key, --log-level)")
    .action(async (opts: ClusterCliOptions & { role?: string }, cmd: Command) => {
      if (opts.role !== undefined) {
        if (opts.role !== ALL_ROLE) throw new InternalError(`moela cluster --role takes only "${ALL_ROLE}" (one role alone: moela serve --role ${opts.role})`);
        const one = oneProcessFromCluster(opts as unknown as Record<string, unknown>, (key) => cmd.getOptionValueSource(key) === "cli", process.env);
        process.exitCode = await runServe(ALL_ROLE, one.argv, one.env);
        return;
      }
      process.exitCode = await runCluster(opts);
    });
  program
    .command("bench")
    .description("load-test OpenAI-compatible servers: TTFT, ITL, TPOT, E2E at p50/p90/p99, req/s, tok/s; --target twice compares")
    .option("--target <url>", "server base URL, e.g. http://127.0.0.1:8000 (repeat to compare; ratios are to the first)", collect, [] as string[])
    .option("--label <name>", "name for the matching --target in tables and the plot (repeatable)", collect, [] as string[])
    .option("--model <name>", "model to ask for (default: each target's first in GET /v1/models)")
    .option("--api <api>", "completions | chat", "completions")
    .option("--concurrency <list>", "closed loop at each concurrency in turn, e.g. 1,4,16 (default 1)")
    .option("--request-rate <list>", "open loop, Poisson arrivals at each rate in turn (req/s), e.g. 2,4,inf")
    .option("--num-prompts <n>", "measured requests per level and target", intArg("--num-prompts"), 64)
    .option("--warmup <n>", "uncounted requests per level and target, run first at the level's load", intArg("--warmup"), 4)
    .option("--rounds <r>", "with two targets: split each level into r rounds, alternating A B | B A ...", intArg("--rounds"), 1)
    .option("--input-len <dist>", "prompt tokens: N | uniform:A,B | normal:MEAN,STD[,MIN,MAX] | file:PATH", "128")
    .option("--output-len <dist>", "max_tokens, same forms as --input-len", "64")
    .option("--prompt <kind>", "ids (random token ids, exact lengths) | words (random text)", "ids")
    .option("--token-id-range <lo:hi>", "prompt token ids are drawn from this inclusive range", DEFAULT_TOKEN_ID_RANGE)
    .option("--seed <n>", "seed for prompts, lengths and arrivals (same for every target)", intArg("--seed"), 0)
    .option("--temperature <t>", "sampling temperature", floatArg("--temperature"), 0)
    .option("--no-ignore-eos", "do not send ignore_eos (for servers that reject it; output lengths then vary)")
    .option("--no-continuous-usage", "do not ask for per-chunk usage (stream_options.continuous_usage_stats)")
    .option("--timeout <s>", "per-request limit, seconds", floatArg("--timeout"), 600)
    .option("--api-key <key>", "bearer token for the targets")
    .option("--json <file>", "report file (default bench-results/bench-<time>.json)")
    .option("--svg <file>", "latency-against-load plot (default bench-results/bench-<time>.svg)")
    .option("--no-progress", "no progress bar on stderr")
    .action(async (opts: BenchCliOptions) => {
      process.exitCode = await runBenchCli(opts);
    });
  program
    .command("plan")
    .description("size a model from its config.json: parameters, KV cache, FLOPs per token, the paper's EP decode bound")
    .argument("<config>", "a Hugging Face config.json, or a folder holding one")
    .option("--json", "print one JSON object instead of the table")
    .option("--kv-bytes <n>", "bytes per cached KV value (2 = bf16, 1 = fp8)", floatArg("--kv-bytes"), PLAN_DEFAULTS.kvBytes)
    .option("--context <n>", "tokens in context, for the attention part of FLOPs per token", intArg("--context"), PLAN_DEFAULTS.context)
    .option("--bandwidth-gbps <GB/s>", "EP link bandwidth per device, GB/s (10^9 bytes/s)", floatArg("--bandwidth-gbps"), PLAN_DEFAULTS.bandwidthGBps)
    .option("--tokens-per-microbatch <n>", "tokens per device per micro-batch", intArg("--tokens-per-microbatch"), PLAN_DEFAULTS.tokensPerMicrobatch)
    .option("--microbatches <n>", "micro-batches overlapped per step", intArg("--microbatches"), PLAN_DEFAULTS.microbatches)
    .option("--dispatch-bytes <n>", "bytes per value sent to the experts (1 = fp8)", floatArg("--dispatch-bytes"), PLAN_DEFAULTS.dispatchBytes)
    .option("--combine-bytes <n>", "bytes per value sent back (2 = bf16)", floatArg("--combine-bytes"), PLAN_DEFAULTS.combineBytes)
    .option("--hidden <n>", "values per token per message (default: the config's hidden_size)", intArg("--hidden"))
    .option("--experts-per-token <n>", "experts per token, shared included (default: the config's)", intArg("--experts-per-token"))
    .option("--layers <n>", "layers that pay the bound (default: num_hidden_layers, as the paper)", intArg("--layers"))
    .action(async (config: string, opts: PlanCliOptions) => {
      process.exitCode = await runPlan(config, opts);
    });
  program
    .command("train")
    .description("train a DeepSeek-V3-family model in this process (MLA, DeepSeekMoE, MTP) and save it in the HF layout")
    .requiredOption("--data <file>", "token ids (.bin/.u16 uint16, .u32, .json) or a UTF-8 text file with --tokenizer")
    .option("--config <preset|file>", "v3-tiny | v3-small | v3-medium, or a config.json path", "v3-small")
    .option("--tokenizer <dir>", "folder with tokenizer.json + tokenizer_config.json (copied next to the saved model)")
    .option("--vocab-size <n>", "vocabulary size without a tokenizer (default: largest id + 1)", intArg("--vocab-size"))
    .option("--steps <n>", "optimizer steps", intArg("--steps"), 1000)
    .option("--batch <n>", "sequences per step", intArg("--batch"), 8)
    .option("--seq-len <n>", "tokens per sequence", intArg("--seq-len"), 256)
    .option("--lr <lr>", "peak learning rate (AdamW)", floatArg("--lr"), 3e-3)
    .option("--min-lr-ratio <r>", "final learning rate as a fraction of --lr (cosine)", floatArg("--min-lr-ratio"), 0.1)
    .option("--warmup <n>", "linear warm-up steps", intArg("--warmup"), 50)
    .option("--weight-decay <wd>", "AdamW decoupled weight decay (2-D weights only)", floatArg("--weight-decay"), 0.1)
    .option("--clip <norm>", "global gradient-norm clip (0 = off)", floatArg("--clip"), 1)
    .option("--mtp-lambda <l>", "weight of the MTP loss", floatArg("--mtp-lambda"), 0.3)
    .option("--balance-alpha <a>", "sequence-wise auxiliary balance loss weight (0 = off)", floatArg("--balance-alpha"), 0)
    .option("--bias-update-speed <g>", "aux-loss-free balancing: bias += g * sign(mean load - load)", floatArg("--bias-update-speed"), 1e-2)
    .option("--seed <n>", "seed of the initial weights and the batch sampler", intArg("--seed"), 0)
    .option("--threads <n>", "threads (every core by default)", intArg("--threads"), availableParallelism())
    .option("--parallel <how>", "replicas (data-parallel, fastest; bits depend on the count) | kernels (products split over threads; same bits for any count)", "replicas")
    .option("--precision <p>", "f32 (native kernels) | f64 (TypeScript, slow: the reference)", "f32")
    .option("--init-std <s>", "std of the initial weights", floatArg("--init-std"), 0.02)
    .option("--val-data <file>", "held-out data (same formats as --data) for evaluations: loss and top-1 of both heads")
    .option("--eval-every <n>", "steps between evaluations (0 = after the last step only)", intArg("--eval-every"), 0)
    .option("--eval-rows <n>", "held-out sequences per evaluation", intArg("--eval-rows"), 64)
    .option("--checkpoint-dir <dir>", "where train-state checkpoints go")
    .option("--checkpoint-every <n>", "steps between checkpoints (0 = at the end only)", intArg("--checkpoint-every"), 0)
    .option("--resume", "continue from --checkpoint-dir (same bits as an uninterrupted run)")
    .option("--out <dir>", "save the trained model here (HF layout)")
    .option("--no-fp8", "save BF16 weights instead of FP8 128x128 blocks")
    .option("--json", "one JSON line per step on stdout instead of the progress bar")
    .action(async (opts: TrainCliOptions) => {
      process.exitCode = await runTrain(opts);
    });
  program
    .command("codec-study")
    .description("every dispatch codec's bytes/value and error on MoE-input activations and synthetic data, its effect on logits, LogFMT-8 vs E4M3")
    .option("--model <dir>", "checkpoint to capture activations from and run teacher-forced (repeat for several)", collect, [])
    .option("--sequences <n>", "teacher-forced sequences per model", intArg("--sequences"), 8)
    .option("--context <n>", "context tokens prefilled per sequence", intArg("--context"), 32)
    .option("--steps <n>", "teacher-forced decode steps per sequence (logits compared at each)", intArg("--steps"), 48)
    .option("--synthetic-rows <n>", "rows (tokens) of each synthetic matrix", intArg("--synthetic-rows"), 64)
    .option("--synthetic-cols <n>", "columns (hidden) of each synthetic matrix (7168 = DeepSeek-V3)", intArg("--synthetic-cols"), 7168)
    .option("--seed <n>", "seed of the synthetic data (and of token ids for a model without a tokenizer)", intArg("--seed"), 0)
    .option("--threads <n>", "threads per matmul (same bits for any count)", intArg("--threads"), 1)
    .option("--kernels <name>", "fast | portable | reference", "fast")
    .option("--json", "print one JSON object instead of the tables")
    .action(async (opts: CodecStudyCliOptions) => {
      if (opts.model.length === 0) opts.model = ["models/tiny-v3"];
      process.exitCode = await runCodecStudy(opts);
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
