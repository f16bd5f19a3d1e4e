/** `moela cluster`: the whole platform as child processes (cluster.ts, launcher.ts), or `--role all` in one process. */
import { type Command } from "commander";
import { InternalError } from "@moela/core";
import type { ClusterCliOptions } from "../cluster.js";
import { ALL_ROLE, oneProcessFromCluster, runServe } from "../serve.js";
import { collect, intArg, withOptions, type OptionRow } from "./options.js";

const CLUSTER_OPTIONS: readonly OptionRow[] = [
  ["--model <dir>", "checkpoint folder (default: the bundled models/moela-v3-deep)"],
  ["--prefill <n>", "prefill instances", intArg("--prefill"), 1],
  ["--decode <n>", "decode instances", intArg("--decode"), 1],
  ["--expert-hosts <h>", "expert-host shards", intArg("--expert-hosts"), 2],
  ["--expert-replicas <r>", "expert-host processes per shard (a dispatch fails over between them)", intArg("--expert-replicas"), 1],
  ["--precision <p>", "exact | paper | paper-logfmt8", "exact"],
  ["--host <host>", "interface every service binds", "127.0.0.1"],
  ["--port <port>", "router HTTP port (0 = any free one)", intArg("--port"), 8000],
  ["--redis-url <url>", "Redis to use (default: REDIS_URL, else 127.0.0.1:6379, else a private redis-server)"],
  ["--private-redis", "always start a private redis-server (persistent, in the state dir), even if a Redis answers"],
  ["--queue-prefix <prefix>", "BullMQ queue prefix", "moela"],
  ["--served-model-name <name>", "model name the API reports (default: the router's)"],
  ["--api-key <key>", "clients must send it as 'Authorization: Bearer <key>' (the router's --api-key; default env MOELA_ROUTER_API_KEY, else none)"],
  [
    "--internal-secret <secret>",
    "shared secret every internal gRPC call carries (shows in ps: prefer --internal-secret-file; default: a random one in <state-dir>/internal-secret)",
  ],
  ["--no-internal-secret", "internal gRPC without a secret (anyone who reaches a service's port may call it)"],
  ["--internal-secret-file <file>", "file holding the internal secret (e.g. a mounted Secret)"],
  ["--tls-cert <file>", "PEM certificate every service serves internal gRPC with (and presents as client under mTLS)"],
  ["--tls-key <file>", "PEM private key of --tls-cert"],
  ["--tls-ca <file>", "PEM CA bundle the services verify each other against"],
  ["--tls-client-auth", "mTLS: services require client certificates signed by --tls-ca"],
  ["--state-dir <dir>", "where cluster.json and logs/ go", ".moela"],
  ["--log-level <level>", "services' log level", "info"],
  ["--startup-timeout <s>", "seconds to wait for everything to be up", intArg("--startup-timeout"), 180],
  ["--service-arg <role=arg>", "extra flag for every instance of a role, e.g. decode=--kv-blocks=64 (repeatable)", collect, [] as string[]],
  ["--json", "when up, print cluster.json as one line on stdout instead of the summary"],
  [
    "--role <role>",
    "all: everything in ONE process instead (moela serve --role all; takes --model, --precision, --host, --port, --served-model-name, --api-key, --log-level)",
  ],
];

export function addClusterCommand(program: Command): void {
  const command = program
    .command("cluster")
    .description(
      "start the whole platform on this machine (what `npm start` runs); Ctrl-C stops it. Everything in one process instead: moela serve --role all",
    );
  withOptions(command, CLUSTER_OPTIONS).action(async (opts: ClusterCliOptions & { role?: string }, cmd: Command) => {
    if (opts.role !== undefined) {
      if (opts.role !== ALL_ROLE) throw new InternalError(`moela cluster --role takes only "${ALL_ROLE}" (one role alone: moela serve --role ${opts.role})`);
      const one = oneProcessFromCluster(opts as unknown as Record<string, unknown>, (key) => cmd.getOptionValueSource(key) === "cli", process.env);
      process.exitCode = await runServe(ALL_ROLE, one.argv, one.env);
      return;
    }
    const { runCluster } = await import("../cluster.js");
    process.exitCode = await runCluster(opts);
  });
}
