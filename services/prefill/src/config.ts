/**
 * Prefill configuration: every setting is a flag with an env twin MOELA_PREFILL_<NAME> (the flag wins),
 * validated once at startup; an error names both the flag and the env variable.
 *
 *   --model DIR              checkpoint folder (attention, dense layers, gate, shared experts)    (required)
 *   --redis-url URL          BullMQ's Redis                                       (redis://127.0.0.1:6379)
 *   --queue-prefix NAME      Redis key prefix of the queues                       (moela)
 *   --grpc-address H:P       health and Prefill.Status; port 0 picks a free one   (127.0.0.1:0)
 *   --metrics-address H:P    Prometheus /metrics                                  (127.0.0.1:0)
 *   --expert-hosts H:P,...   expert-hosts in shard order, replicas of a shard joined by | (a:1|b:1,c:1);
 *                            more replicas are found in the registry; empty and no --expert-shards: the
 *                            routed experts run in this process through one in-process expert-host  (empty)
 *   --expert-shards N        number of expert shards; without --expert-hosts the hosts are found in the
 *                            registry alone                        (the count of --expert-hosts)
 *   --precision P            exact | paper | paper-logfmt8 (@moela/moe-dispatch profile.ts)  (exact)
 *   --prefill-chunk N        prompt tokens per forward chunk                      (256)
 *   --max-batch-tokens N     prompt tokens batched into one engine.prefill call; also the longest prompt
 *                            this instance takes           (the model's max_position_embeddings, at most 32768)
 *   --concurrency N          jobs taken from each queue at once (the batching window)  (8)
 *   --instance-id ID         this instance's id: its own prefill queue and its published prefix keys
 *                            (letters, digits, _ . -)                  (prefill-<host>-<pid>-<6 hex>)
 *   --prefix-cache / --no-prefix-cache
 *                            reuse the latent KV of cached prompt prefixes; env true|false  (on)
 *   --prefix-cache-blocks N  KV blocks (16 tokens each) the prefix cache keeps beyond the working set  (1024)
 *   --kernels K              fast (native SIMD) | portable (TypeScript) | reference (float64)  (fast)
 *   --threads N              kernel threads of this process; same bits for any count  (1)
 *   --log-level L            pino level                                           (info)
 *   --internal-secret S, --internal-secret-file F, --tls-cert F, --tls-key F, --tls-ca F, --tls-client-auth
 *                            internal gRPC security (@moela/rpc security.ts; docs/SECURITY.md)  (none)
 */
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { checkpointFolderOf, ConfigError, configParsers, flagList, settingsFromKeys, usageLines } from "@moela/core";
import { commaListSetting, hostPortSetting, REDIS_SCHEMA } from "@moela/core";
import { PRECISION_NAMES, type PrecisionName } from "@moela/moe-dispatch";
import { INTERNAL_SECURITY_HELP, INTERNAL_SECURITY_SCHEMA, withInternalSecurity, type InternalSecurity } from "@moela/rpc";
import { z } from "zod";

/** Blocks the prefix cache keeps unless told otherwise (16k tokens at 16 tokens per block). */
export const DEFAULT_PREFIX_CACHE_BLOCKS = 1024;

const positiveInt = z.coerce.number().int("must be an integer").min(1, "must be at least 1");

const schema = z.strictObject({
  model: z.string({ error: "is required" }).min(1, "is required"),
  ...REDIS_SCHEMA,
  grpcAddress: hostPortSetting.default("127.0.0.1:0"),
  metricsAddress: hostPortSetting.default("127.0.0.1:0"),
  expertHosts: commaListSetting
    .pipe(
      z.array(
        z
          .string()
          .refine((entry) => entry.split("|").every((a) => hostPortSetting.safeParse(a.trim()).success), "must be host:port (replicas of a shard joined by |)"),
      ),
    )
    .default([]),
  expertShards: positiveInt.optional(),
  precision: z.enum(PRECISION_NAMES, { error: `must be one of ${PRECISION_NAMES.join(", ")}` }).default("exact"),
  prefillChunk: positiveInt.default(256),
  maxBatchTokens: positiveInt.optional(),
  concurrency: positiveInt.max(1024, "must be at most 1024").default(8),
  instanceId: z
    .string()
    .regex(/^[A-Za-z0-9_.-]{1,128}$/, "must be 1-128 letters, digits or _ . -")
    .optional(),
  prefixCache: z
    .enum(["true", "false", "1", "0", "on", "off"], { error: "must be true or false" })
    .default("true")
    .transform((v) => v === "true" || v === "1" || v === "on"),
  prefixCacheBlocks: z.coerce
    .number()
    .int("must be an integer")
    .min(0, "must be at least 0")
    .max(1 << 24, "must be at most 16777216")
    .default(DEFAULT_PREFIX_CACHE_BLOCKS),
  sharedMemory: z
    .enum(["true", "false", "1", "0", "on", "off"], { error: "must be true or false" })
    .default("false")
    .transform((v) => v === "true" || v === "1" || v === "on"),
  kernels: z.enum(["fast", "portable", "reference"]).default("fast"),
  threads: positiveInt.max(256, "must be at most 256").default(1),
  logLevel: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
  // Internal gRPC security (@moela/rpc security.ts), checked and read by parseInternalSecurity.
  ...INTERNAL_SECURITY_SCHEMA,
});

export interface PrefillConfig {
  /** Absolute checkpoint folder. */
  readonly model: string;
  readonly redisUrl: string;
  readonly queuePrefix: string;
  readonly grpcAddress: string;
  readonly metricsAddress: string;
  /** Shard order, each "a:1" or replicas "a:1|b:1"; empty (and no expertShards) = routed experts in this process. */
  readonly expertHosts: readonly string[];
  /** Expert shards to find (static and in the registry); absent: expertHosts.length. */
  readonly expertShards?: number;
  readonly precision: PrecisionName;
  readonly prefillChunk: number;
  /** undefined = from the model (resolved at startup). */
  readonly maxBatchTokens: number | undefined;
  readonly concurrency: number;
  /** Names this instance's own queue and its published prefix keys (absent: defaultInstanceId()). */
  readonly instanceId?: string;
  /** Absent: on. */
  readonly prefixCache?: boolean;
  /** Dispatch to expert-hosts on this machine through shared memory (absent: off). */
  readonly sharedMemory?: boolean;
  /** Blocks the prefix cache may keep on top of the blocks in-flight prompts need (absent: DEFAULT_PREFIX_CACHE_BLOCKS). */
  readonly prefixCacheBlocks?: number;
  /** Kernel backend (absent: fast). */
  readonly kernels?: "fast" | "portable" | "reference";
  /** Kernel threads (absent: 1). */
  readonly threads?: number;
  readonly logLevel: string;
  /** Internal gRPC security towards decode (KvTransfer) and the expert-hosts, and of its own Prefill server (absent: none). */
  readonly security?: InternalSecurity;
}

/** `prefill-<host>-<pid>-<6 hex>`: unique per process, readable in Redis. */
export function defaultInstanceId(): string {
  const host =
    hostname()
      .replace(/[^A-Za-z0-9.-]/g, "-")
      .slice(0, 63) || "host";
  return `prefill-${host}-${process.pid}-${randomBytes(3).toString("hex")}`;
}

/** --help lines (the table above, one line each). */
const HELP = {
  model: "checkpoint folder (attention, dense layers, gate, shared experts) (required)",
  redisUrl: "BullMQ's Redis (default redis://127.0.0.1:6379)",
  queuePrefix: "Redis key prefix of the queues and the registry (default moela)",
  grpcAddress: "health and Prefill.Status host:port; port 0 picks a free one (default 127.0.0.1:0)",
  metricsAddress: "Prometheus /metrics host:port (default 127.0.0.1:0)",
  expertHosts: "expert-hosts in shard order, replicas of a shard joined by | (a:1|b:1,c:1); empty: in-process experts (default empty)",
  expertShards: "number of expert shards; without --expert-hosts found in the registry (default the count of --expert-hosts)",
  precision: "exact | paper | paper-logfmt8 (default exact)",
  prefillChunk: "prompt tokens per forward chunk (default 256)",
  maxBatchTokens: "prompt tokens per engine.prefill call, also the longest prompt taken (default max_position_embeddings, at most 32768)",
  concurrency: "jobs taken from each queue at once, the batching window (default 8)",
  instanceId: "this instance's id: its own queue and its published prefix keys (default prefill-<host>-<pid>-<6 hex>)",
  prefixCache: "reuse the latent KV of cached prompt prefixes; env true|false (default on)",
  prefixCacheBlocks: "KV blocks (16 tokens each) the prefix cache keeps beyond the working set (default 1024)",
  sharedMemory:
    "dispatch to expert-hosts on this machine through shared memory, below gRPC; off by default: prefill's messages are few and large, and waiting on them would hold up its products off the event loop; env true|false (default off)",
  kernels: "fast (native SIMD) | portable (TypeScript) | reference (float64) (default fast)",
  threads: "kernel threads of this process; same bits for any count (default 1)",
  logLevel: "pino level (default info)",
  ...INTERNAL_SECURITY_HELP,
} as const satisfies Record<keyof typeof schema.shape, string>;

/** Every schema key is a flag with its env twin; prefixCache, sharedMemory and tlsClientAuth are on/off switches (--x, --no-x). */
const SETTINGS = settingsFromKeys(
  Object.keys(schema.shape) as (keyof typeof schema.shape)[],
  "MOELA_PREFILL_",
  ["prefixCache", "sharedMemory", "tlsClientAuth"],
  HELP,
);

/** How settings errors read: the first bad setting, with the flag list after an unknown flag. */
const PARSE = { name: "prefill", error: ConfigError, argvErrorSuffix: `; flags: ${flagList(SETTINGS)}`, report: "first" } as const;

/** The validated settings with the checkpoint folder checked and the instance id and internal security resolved. */
function prefillConfigOf(settings: z.output<typeof schema>): PrefillConfig {
  const model = checkpointFolderOf(settings.model, SETTINGS.model, PARSE);
  const { expertHosts, expertShards, maxBatchTokens, instanceId, ...rest } = withInternalSecurity(settings, "MOELA_PREFILL_", "prefill", ConfigError);
  return Object.freeze({
    ...rest,
    model,
    expertHosts: Object.freeze([...expertHosts]),
    ...(expertShards !== undefined ? { expertShards } : {}),
    maxBatchTokens,
    instanceId: instanceId ?? defaultInstanceId(),
  });
}

export const USAGE = ["usage: prefill --model DIR [--expert-hosts H0,H1,...] [options]", "", ...usageLines(SETTINGS)].join("\n");

const PARSERS = configParsers(SETTINGS, schema, PARSE, prefillConfigOf);

/** parsePrefillConfig, or null when --help was asked for (main() then prints USAGE). */
export const parsePrefillArgs = PARSERS.parseArgs;

/** Parse and validate flags (argv) over env twins; throws ConfigError naming the flag and its env twin. */
export const parsePrefillConfig = PARSERS.parseConfig;
