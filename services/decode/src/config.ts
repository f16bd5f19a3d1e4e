/**
 * decode settings: one flag and one environment twin each (MOELA_DECODE_<NAME>), the flag winning
 * when both are set, validated once with zod at start-up. An error names both spellings.
 */
import { z } from "zod";
import { boolSetting, intSetting, InvalidArgumentError, listenAddressSetting, OPTIONAL_REDIS_SCHEMA, parseSettings, usageLines } from "@moela/core";
import type { Settings } from "@moela/core";
import { MAX_SPECULATIVE_TOKENS } from "@moela/engine";
import { PRECISION_NAMES } from "@moela/moe-dispatch";
import { INTERNAL_SECURITY_SCHEMA, internalSecuritySettings, withInternalSecurity, type WithInternalSecurity } from "@moela/rpc";

/** Every setting: its flag, env twin, whether it is a boolean switch, and its help line. */
export const SETTINGS = {
  model: { flag: "--model", env: "MOELA_DECODE_MODEL", bool: false, help: "Hugging Face checkpoint folder (required)" },
  grpcAddress: {
    flag: "--grpc-address",
    env: "MOELA_DECODE_GRPC_ADDRESS",
    bool: false,
    help: "gRPC listen address host:port (default 127.0.0.1:0, any free port)",
  },
  metricsAddress: {
    flag: "--metrics-address",
    env: "MOELA_DECODE_METRICS_ADDRESS",
    bool: false,
    help: "/metrics listen address host:port (default 127.0.0.1:0)",
  },
  expertHosts: {
    flag: "--expert-hosts",
    env: "MOELA_DECODE_EXPERT_HOSTS",
    bool: false,
    help: "comma-separated host:port of the expert-hosts in shard order (default none: routed experts run in this process through one in-process host)",
  },
  precision: {
    flag: "--precision",
    env: "MOELA_DECODE_PRECISION",
    bool: false,
    help: "exact | paper | paper-logfmt8 (default exact): KV f32 or bf16, dispatch and combine per profile",
  },
  kvBlocks: { flag: "--kv-blocks", env: "MOELA_DECODE_KV_BLOCKS", bool: false, help: "latent KV cache capacity in blocks (default 2048)" },
  blockSize: { flag: "--block-size", env: "MOELA_DECODE_BLOCK_SIZE", bool: false, help: "tokens per KV block (default 16)" },
  maxBatch: { flag: "--max-batch", env: "MOELA_DECODE_MAX_BATCH", bool: false, help: "most sequences per decode step (default 32); more wait for a slot" },
  speculative: {
    flag: "--speculative",
    env: "MOELA_DECODE_SPECULATIVE",
    bool: false,
    help: "auto | on | off (default auto): draft with the MTP block while that pays for each sequence, at every step, or never",
  },
  noSpeculative: { flag: "--no-speculative", env: "MOELA_DECODE_NO_SPECULATIVE", bool: true, help: "the same as --speculative off" },
  streamGraceMs: {
    flag: "--stream-grace-ms",
    env: "MOELA_DECODE_STREAM_GRACE_MS",
    bool: false,
    help: "how long a sequence whose Stream went away (or was never opened) waits for one before it is freed (default 10000)",
  },
  kvWaitMs: { flag: "--kv-wait-ms", env: "MOELA_DECODE_KV_WAIT_MS", bool: false, help: "how long a Stream waits for its KV to arrive (default 120000)" },
  kvIdleMs: {
    flag: "--kv-idle-ms",
    env: "MOELA_DECODE_KV_IDLE_MS",
    bool: false,
    help: "a KV transfer with no frame for this long is failed and its blocks reclaimed as lost; 0 = never (default 30000)",
  },
  kvMaxTransfersPerPeer: {
    flag: "--kv-max-transfers-per-peer",
    env: "MOELA_DECODE_KV_MAX_TRANSFERS_PER_PEER",
    bool: false,
    help: "KV transfers one sender host may have open at once; one more is refused RESOURCE_EXHAUSTED; 0 = no bound (default 64)",
  },
  drainGraceMs: {
    flag: "--drain-grace-ms",
    env: "MOELA_DECODE_DRAIN_GRACE_MS",
    bool: false,
    help: "on SIGTERM, how long running sequences may finish before their streams end with UNAVAILABLE (default 30000)",
  },
  logLevel: { flag: "--log-level", env: "MOELA_DECODE_LOG_LEVEL", bool: false, help: "fatal | error | warn | info | debug | trace | silent (default info)" },
  kernels: {
    flag: "--kernels",
    env: "MOELA_DECODE_KERNELS",
    bool: false,
    help: "fast (native SIMD) | portable (TypeScript) | reference (float64) (default fast)",
  },
  threads: {
    flag: "--threads",
    env: "MOELA_DECODE_THREADS",
    bool: false,
    help: "kernel threads of this process, same bits for any count; while expert-hosts on this machine compute for it, its products keep to one (default 1; moela cluster: every core)",
  },
  draftVocab: {
    flag: "--draft-vocab",
    env: "MOELA_DECODE_DRAFT_VOCAB",
    bool: false,
    help: "drafts choose among the first N token ids, so drafting reads that part of the MTP head alone; outputs are the same (default all)",
  },
  speculativeTokens: {
    flag: "--speculative-tokens",
    env: "MOELA_DECODE_SPECULATIVE_TOKENS",
    bool: false,
    help: "tokens drafted per step with speculation on, the MTP layer chained on its own output; outputs are the same (default 1)",
  },
  microBatches: {
    flag: "--micro-batches",
    env: "MOELA_DECODE_MICRO_BATCHES",
    bool: false,
    help: "micro-batches of a decode step in flight together: one computes attention while another waits on the expert-hosts; same bits for any count (default 2)",
  },
  sharedMemory: {
    flag: "--shared-memory",
    env: "MOELA_DECODE_SHARED_MEMORY",
    bool: false,
    help: "on | off (default on): dispatch to expert-hosts on this machine through shared memory, below gRPC (others: gRPC)",
  },
  sharedExpert: {
    flag: "--shared-expert",
    env: "MOELA_DECODE_SHARED_EXPERT",
    bool: false,
    help: "local | hosts (default local): where the shared expert runs; hosts: on the expert-hosts with the routed ones, as DeepSeek-V3 decodes (same bits under exact)",
  },
  redisUrl: {
    flag: "--redis-url",
    env: "MOELA_DECODE_REDIS_URL",
    bool: false,
    help: "the instance registry: register there (load, free KV blocks) for the routers, and find expert-host replicas there (default: neither)",
  },
  queuePrefix: { flag: "--queue-prefix", env: "MOELA_DECODE_QUEUE_PREFIX", bool: false, help: "Redis key prefix of the deployment (default moela)" },
  advertiseAddress: {
    flag: "--advertise-address",
    env: "MOELA_DECODE_ADVERTISE_ADDRESS",
    bool: false,
    help: "host:port routers and prefill dial, as registered (default the bound address, a 0.0.0.0 host replaced by this machine's hostname)",
  },
  expertShards: {
    flag: "--expert-shards",
    env: "MOELA_DECODE_EXPERT_SHARDS",
    bool: false,
    help: "number of expert shards H; with --redis-url and no --expert-hosts the hosts are found in the registry (default: the count of --expert-hosts)",
  },
  // Internal gRPC security (@moela/rpc security.ts): --internal-secret, --internal-secret-file, --tls-cert, --tls-key, --tls-ca, --tls-client-auth.
  ...internalSecuritySettings("MOELA_DECODE_"),
} as const satisfies Settings;

const dialable = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):(\d{1,5})$/, "must be host:port")
  .refine((s) => {
    const port = Number(s.slice(s.lastIndexOf(":") + 1));
    return port >= 1 && port <= 65535;
  }, "port must be in [1, 65535]");

/** Comma-separated shards, each "host:port" or replicas "host:port|host:port". */
const addressList = z
  .string()
  .transform((s) =>
    s
      .split(",")
      .map((x) => x.trim())
      .filter((x) => x.length > 0),
  )
  .pipe(
    z.array(
      z.string().superRefine((entry, ctx) => {
        for (const a of entry.split("|")) {
          const r = dialable.safeParse(a.trim());
          if (!r.success) ctx.addIssue({ code: "custom", message: r.error.issues[0]!.message });
        }
      }),
      { message: "must be a comma-separated list of host:port" },
    ),
  );

/** Every setting as given (validated); `schema` resolves the speculation alias. */
const settingsSchema = z.object({
  model: z.string({ message: "is required" }).min(1, "is required"),
  grpcAddress: listenAddressSetting.default("127.0.0.1:0"),
  metricsAddress: listenAddressSetting.default("127.0.0.1:0"),
  expertHosts: addressList.default([]),
  precision: z.enum(PRECISION_NAMES, { message: `must be one of ${PRECISION_NAMES.join(", ")}` }).default("exact"),
  kvBlocks: intSetting(1).default(2048),
  blockSize: intSetting(1).default(16),
  maxBatch: intSetting(1).default(32),
  speculative: z.enum(["auto", "on", "off"], { message: "must be auto, on or off" }).optional(),
  noSpeculative: boolSetting.default(false),
  streamGraceMs: intSetting(0).default(10_000),
  kvWaitMs: intSetting(1).default(120_000),
  kvIdleMs: intSetting(0).default(30_000),
  kvMaxTransfersPerPeer: intSetting(0).default(64),
  drainGraceMs: intSetting(0).default(30_000),
  logLevel: z
    .enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"], { message: "must be fatal, error, warn, info, debug, trace or silent" })
    .default("info"),
  kernels: z.enum(["fast", "portable", "reference"], { message: "must be fast, portable or reference" }).default("fast"),
  threads: intSetting(1).pipe(z.number().max(256, "must be <= 256")).default(1),
  draftVocab: intSetting(1).optional(),
  speculativeTokens: intSetting(1)
    .pipe(z.number().max(MAX_SPECULATIVE_TOKENS, `must be <= ${MAX_SPECULATIVE_TOKENS}`))
    .default(1),
  microBatches: intSetting(1).pipe(z.number().max(8, "must be <= 8")).default(2),
  sharedExpert: z.enum(["local", "hosts"], { message: "must be local or hosts" }).default("local"),
  sharedMemory: z
    .enum(["on", "off"], { message: "must be on or off" })
    .default("on")
    .transform((v) => v === "on"),
  ...OPTIONAL_REDIS_SCHEMA,
  advertiseAddress: dialable.optional(),
  expertShards: intSetting(1).optional(),
  // Checked (and the files read) by parseInternalSecurity, whose errors never repeat a secret.
  ...INTERNAL_SECURITY_SCHEMA,
});

const schema = settingsSchema
  .superRefine((c, ctx) => {
    if (c.noSpeculative && c.speculative !== undefined && c.speculative !== "off") {
      ctx.addIssue({ code: "custom", path: ["speculative"], message: `is ${c.speculative}, but --no-speculative / MOELA_DECODE_NO_SPECULATIVE says off` });
    }
  })
  // One setting once validated: --no-speculative is --speculative off.
  .transform(({ noSpeculative, speculative, ...rest }) => ({ ...rest, speculative: noSpeculative ? ("off" as const) : (speculative ?? "auto") }));

/** The validated settings; `security`: internal gRPC security: the secret its callers must present, TLS/mTLS; also used towards the expert-hosts. */
export type DecodeConfig = Readonly<WithInternalSecurity<z.output<typeof schema>>>;

export const USAGE = ["usage: decode --model DIR [--expert-hosts H0,H1,...] [options]", "", ...usageLines(SETTINGS)].join("\n");

/** decode's settings, or null when --help was asked for; throws InvalidArgumentError naming the flag and its env twin. */
export function parseConfig(argv: readonly string[], env: NodeJS.ProcessEnv): DecodeConfig | null {
  const o = { name: "decode", error: InvalidArgumentError, help: true, argvErrorSuffix: `\n${USAGE}`, report: "all" } as const;
  const validated = parseSettings(SETTINGS, argv, env, schema, o);
  if (validated === null) return null;
  const parsed = withInternalSecurity(validated, "MOELA_DECODE_", "decode");
  return Object.freeze({ ...parsed, expertHosts: Object.freeze([...parsed.expertHosts]) as string[] });
}
