/**
 * expert-host settings: one flag and one environment twin each (MOELA_EXPERT_HOST_<NAME>), the flag
 * winning when both are set, validated once with zod at start-up. An error names both spellings.
 */
import { parseArgs } from "node:util";
import { z } from "zod";
import { InvalidArgumentError } from "@moela/core";

/** Every setting: its flag, env twin, whether it is a boolean switch, and its help line. */
export const SETTINGS = {
  model: { flag: "--model", env: "MOELA_EXPERT_HOST_MODEL", bool: false, help: "Hugging Face checkpoint folder (required)" },
  shardIndex: { flag: "--shard-index", env: "MOELA_EXPERT_HOST_SHARD_INDEX", bool: false, help: "this host's shard, 0..shard-count-1 (required; the StatefulSet ordinal)" },
  shardCount: { flag: "--shard-count", env: "MOELA_EXPERT_HOST_SHARD_COUNT", bool: false, help: "number of expert-hosts H (required)" },
  grpcAddress: { flag: "--grpc-address", env: "MOELA_EXPERT_HOST_GRPC_ADDRESS", bool: false, help: "gRPC listen address host:port (default 127.0.0.1:0, any free port)" },
  metricsAddress: { flag: "--metrics-address", env: "MOELA_EXPERT_HOST_METRICS_ADDRESS", bool: false, help: "/metrics listen address host:port (default 127.0.0.1:0)" },
  precision: { flag: "--precision", env: "MOELA_EXPERT_HOST_PRECISION", bool: false, help: "exact | paper (default exact): dispatch f32/combine f32, or fp8-tile/bf16" },
  logLevel: { flag: "--log-level", env: "MOELA_EXPERT_HOST_LOG_LEVEL", bool: false, help: "fatal | error | warn | info | debug | trace (default info)" },
  perExpertMetrics: { flag: "--per-expert-metrics", env: "MOELA_EXPERT_HOST_PER_EXPERT_METRICS", bool: true, help: "also export tokens per (layer, expert) (high cardinality; default off)" },
  drainGraceMs: { flag: "--drain-grace-ms", env: "MOELA_EXPERT_HOST_DRAIN_GRACE_MS", bool: false, help: "on SIGTERM, how long running calls may finish (default 10000)" },
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
} as const;

type Key = keyof typeof SETTINGS;

const address = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):(\d{1,5})$/, "must be host:port, e.g. 127.0.0.1:50051 or 0.0.0.0:0")
  .refine((s) => Number(s.slice(s.lastIndexOf(":") + 1)) <= 65535, "port must be in [0, 65535]");

const intString = (min: number) =>
  z
    .string()
    .regex(/^\d+$/, "must be a non-negative integer")
    .transform(Number)
    .pipe(z.number().int().min(min, `must be >= ${min}`).max(Number.MAX_SAFE_INTEGER));

const boolString = z.enum(["true", "false", "1", "0", ""], { message: "must be true or false" }).transform((s) => s === "true" || s === "1");

const schema = z.object({
  model: z.string({ message: "is required" }).min(1, "is required"),
  shardIndex: intString(0),
  shardCount: intString(1),
  grpcAddress: address.default("127.0.0.1:0"),
  metricsAddress: address.default("127.0.0.1:0"),
  precision: z.enum(["exact", "paper"], { message: "must be exact or paper" }).default("exact"),
  logLevel: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"], { message: "must be fatal, error, warn, info, debug, trace or silent" }).default("info"),
  perExpertMetrics: boolString.default(false),
  drainGraceMs: intString(0).default(10_000),
  redisUrl: z.string().regex(/^rediss?:\/\/.+/, "must be a redis:// or rediss:// URL").optional(),
  queuePrefix: z.string().regex(/^[A-Za-z0-9_.{}-]+$/, "may only hold letters, digits and _ . - { }").optional(),
  advertiseAddress: z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):(\d{1,5})$/, "must be host:port").optional(),
});

export type ExpertHostConfig = Readonly<z.output<typeof schema>>;

export const USAGE = [
  "usage: expert-host --model DIR --shard-index I --shard-count H [options]",
  "",
  ...Object.values(SETTINGS).map((s) => `  ${(s.flag + (s.bool ? "" : " <v>")).padEnd(26)} ${s.help} [env ${s.env}]`),
].join("\n");

/** Splits "host:port" (host may be [ipv6]). */
export function splitAddress(a: string): { host: string; port: number } {
  const i = a.lastIndexOf(":");
  const host = a.slice(0, i);
  return { host: host.startsWith("[") ? host.slice(1, -1) : host, port: Number(a.slice(i + 1)) };
}

/**
 * Flags (argv) over environment (env) over defaults. Returns null when --help was asked for.
 * Throws InvalidArgumentError naming the flag and its env twin.
 */
export function parseConfig(argv: readonly string[], env: NodeJS.ProcessEnv): ExpertHostConfig | null {
  const options: Record<string, { type: "string" | "boolean" }> = { help: { type: "boolean" } };
  for (const s of Object.values(SETTINGS)) options[s.flag.slice(2)] = { type: s.bool ? "boolean" : "string" };
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new InvalidArgumentError(`expert-host: ${(err as Error).message}\n${USAGE}`);
  }
  if (values.help === true) return null;
  const raw: Partial<Record<Key, string>> = {};
  for (const [key, s] of Object.entries(SETTINGS) as [Key, (typeof SETTINGS)[Key]][]) {
    const flag = values[s.flag.slice(2)];
    const v = flag !== undefined ? String(flag) : env[s.env];
    if (v !== undefined) raw[key] = v;
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((issue) => {
      const key = issue.path[0] as Key;
      const s = SETTINGS[key];
      const got = raw[key] === undefined ? "" : ` (got "${raw[key]}")`;
      return `${s.flag} / ${s.env}: ${issue.message}${got}`;
    });
    throw new InvalidArgumentError(`expert-host: invalid configuration:\n  ${lines.join("\n  ")}`);
  }
  const cfg = parsed.data;
  if (cfg.shardIndex >= cfg.shardCount) {
    throw new InvalidArgumentError(
      `expert-host: ${SETTINGS.shardIndex.flag} / ${SETTINGS.shardIndex.env} is ${cfg.shardIndex}, must be below ${SETTINGS.shardCount.flag} / ${SETTINGS.shardCount.env} (${cfg.shardCount})`,
    );
  }
  return Object.freeze(cfg);
}
