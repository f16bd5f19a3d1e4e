/**
 * expert-host settings: one flag and one environment twin each (MOELA_EXPERT_HOST_<NAME>), the flag
 * winning when both are set, validated once with zod at start-up. An error names both spellings.
 */
import { z } from "zod";
import { boolSetting, intSetting, InvalidArgumentError, listenAddressSetting, OPTIONAL_REDIS_SCHEMA, parseSettings, usageLines } from "@moela/core";
import type { Settings } from "@moela/core";
import { PRECISION_NAMES } from "@moela/moe-dispatch";
import { INTERNAL_SECURITY_SCHEMA, internalSecuritySettings, withInternalSecurity, type WithInternalSecurity } from "@moela/rpc";

/** Every setting: its flag, env twin, whether it is a boolean switch, and its help line. */
export const SETTINGS = {
  model: { flag: "--model", env: "MOELA_EXPERT_HOST_MODEL", bool: false, help: "Hugging Face checkpoint folder (required)" },
  shardIndex: {
    flag: "--shard-index",
    env: "MOELA_EXPERT_HOST_SHARD_INDEX",
    bool: false,
    help: "this host's shard, 0..shard-count-1 (required; the chart passes each shard's StatefulSet its index)",
  },
  shardCount: { flag: "--shard-count", env: "MOELA_EXPERT_HOST_SHARD_COUNT", bool: false, help: "number of expert-hosts H (required)" },
  grpcAddress: {
    flag: "--grpc-address",
    env: "MOELA_EXPERT_HOST_GRPC_ADDRESS",
    bool: false,
    help: "gRPC listen address host:port (default 127.0.0.1:0, any free port)",
  },
  metricsAddress: {
    flag: "--metrics-address",
    env: "MOELA_EXPERT_HOST_METRICS_ADDRESS",
    bool: false,
    help: "/metrics listen address host:port (default 127.0.0.1:0)",
  },
  precision: {
    flag: "--precision",
    env: "MOELA_EXPERT_HOST_PRECISION",
    bool: false,
    help: "exact | paper | paper-logfmt8 (default exact): dispatch/combine f32/f32, fp8-tile/bf16 or logfmt8/bf16",
  },
  logLevel: { flag: "--log-level", env: "MOELA_EXPERT_HOST_LOG_LEVEL", bool: false, help: "fatal | error | warn | info | debug | trace (default info)" },
  kernels: {
    flag: "--kernels",
    env: "MOELA_EXPERT_HOST_KERNELS",
    bool: false,
    help: "fast (native SIMD) | portable (TypeScript) | reference (float64) (default fast)",
  },
  threads: { flag: "--threads", env: "MOELA_EXPERT_HOST_THREADS", bool: false, help: "kernel threads of this process, same bits for any count (default 1)" },
  nice: {
    flag: "--nice",
    env: "MOELA_EXPERT_HOST_NICE",
    bool: false,
    help: "added to the niceness this process starts with, as nice -n does (0-19): above 0 the OS runs a caller on the same machine first when both want a core (default 0; moela cluster sets 5)",
  },
  perExpertMetrics: {
    flag: "--per-expert-metrics",
    env: "MOELA_EXPERT_HOST_PER_EXPERT_METRICS",
    bool: true,
    help: "also export tokens per (layer, expert) (high cardinality; default off)",
  },
  sharedExpert: {
    flag: "--shared-expert",
    env: "MOELA_EXPERT_HOST_SHARED_EXPERT",
    bool: true,
    help: "also hold every MoE layer's shared expert and compute it for the rows a caller names (decode --shared-expert hosts; default off)",
  },
  drainGraceMs: {
    flag: "--drain-grace-ms",
    env: "MOELA_EXPERT_HOST_DRAIN_GRACE_MS",
    bool: false,
    help: "on SIGTERM, how long running calls may finish (default 10000)",
  },
  redisUrl: {
    flag: "--redis-url",
    env: "MOELA_EXPERT_HOST_REDIS_URL",
    bool: false,
    help: "register in the instance registry there (shard, load, heartbeat), so prefill and decode find this replica (default: not registered)",
  },
  queuePrefix: { flag: "--queue-prefix", env: "MOELA_EXPERT_HOST_QUEUE_PREFIX", bool: false, help: "Redis key prefix of the deployment (default moela)" },
  advertiseAddress: {
    flag: "--advertise-address",
    env: "MOELA_EXPERT_HOST_ADVERTISE_ADDRESS",
    bool: false,
    help: "host:port others dial, as registered (default the bound address, a 0.0.0.0 host replaced by this machine's hostname)",
  },
  // Internal gRPC security (@moela/rpc security.ts): --internal-secret, --internal-secret-file, --tls-cert, --tls-key, --tls-ca, --tls-client-auth.
  ...internalSecuritySettings("MOELA_EXPERT_HOST_"),
} as const satisfies Settings;

const schema = z.object({
  model: z.string({ message: "is required" }).min(1, "is required"),
  shardIndex: intSetting(0),
  shardCount: intSetting(1),
  grpcAddress: listenAddressSetting.default("127.0.0.1:0"),
  metricsAddress: listenAddressSetting.default("127.0.0.1:0"),
  precision: z.enum(PRECISION_NAMES, { message: `must be one of ${PRECISION_NAMES.join(", ")}` }).default("exact"),
  logLevel: z
    .enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"], { message: "must be fatal, error, warn, info, debug, trace or silent" })
    .default("info"),
  kernels: z.enum(["fast", "portable", "reference"], { message: "must be fast, portable or reference" }).default("fast"),
  threads: intSetting(1).pipe(z.number().max(256, "must be <= 256")).default(1),
  // Only upward: lowering niceness needs a privilege a service should not ask for.
  nice: intSetting(0).pipe(z.number().max(19, "must be <= 19")).default(0),
  perExpertMetrics: boolSetting.default(false),
  sharedExpert: boolSetting.default(false),
  drainGraceMs: intSetting(0).default(10_000),
  ...OPTIONAL_REDIS_SCHEMA,
  advertiseAddress: z
    .string()
    .regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):(\d{1,5})$/, "must be host:port")
    .optional(),
  // Checked (and the files read) by parseInternalSecurity, whose errors never repeat a secret.
  ...INTERNAL_SECURITY_SCHEMA,
});

/** The validated settings; `security`: internal gRPC security: the secret callers (prefill, decode) must present, TLS/mTLS. */
export type ExpertHostConfig = Readonly<WithInternalSecurity<z.output<typeof schema>>>;

export const USAGE = ["usage: expert-host --model DIR --shard-index I --shard-count H [options]", "", ...usageLines(SETTINGS)].join("\n");

/**
 * Flags (argv) over environment (env) over defaults. Returns null when --help was asked for.
 * Throws InvalidArgumentError naming the flag and its env twin.
 */
export function parseConfig(argv: readonly string[], env: NodeJS.ProcessEnv): ExpertHostConfig | null {
  const cfg = parseSettings(SETTINGS, argv, env, schema, {
    name: "expert-host",
    error: InvalidArgumentError,
    help: true,
    argvErrorSuffix: `\n${USAGE}`,
    report: "all",
  });
  if (cfg === null) return null;
  if (cfg.shardIndex >= cfg.shardCount) {
    throw new InvalidArgumentError(
      `expert-host: ${SETTINGS.shardIndex.flag} / ${SETTINGS.shardIndex.env} is ${cfg.shardIndex}, must be below ${SETTINGS.shardCount.flag} / ${SETTINGS.shardCount.env} (${cfg.shardCount})`,
    );
  }
  return Object.freeze(withInternalSecurity(cfg, "MOELA_EXPERT_HOST_", "expert-host"));
}
