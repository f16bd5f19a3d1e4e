/** What startCluster takes, and the settings it derives from that before it claims or starts anything. */
import { existsSync, mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { InvalidArgumentError, type ReadyLine } from "@moela/core";
import type { InternalSecurityOptions } from "./internal-security.js";
import { DEFAULT_MODEL } from "./paths.js";
import type { RedisSource } from "./redis-local.js";
import type { ExitInfo, ServiceCommand } from "./service-process.js";
import { clusterCounts, PRECISIONS, type ClusterCounts, type Precision, type Role } from "./topology.js";

export type ProgressEvent =
  | { readonly kind: "redis"; readonly url: string; readonly source: RedisSource }
  | { readonly kind: "note"; readonly message: string }
  | { readonly kind: "starting"; readonly label: string; readonly pid: number | undefined; readonly logPath: string }
  | { readonly kind: "ready"; readonly label: string; readonly ready: ReadyLine }
  | { readonly kind: "healthy"; readonly label: string; readonly up: number; readonly total: number }
  | { readonly kind: "stopping"; readonly label: string }
  | { readonly kind: "stopped"; readonly label: string; readonly exit: ExitInfo };

export interface ClusterOptions extends InternalSecurityOptions {
  /** Checkpoint folder (default: the bundled models/moela-v3-deep). */
  readonly model?: string;
  readonly prefill?: number;
  readonly decode?: number;
  /** Expert shards (default 2). */
  readonly expertHosts?: number;
  /** Expert-host processes per shard (default 1); a dispatch fails over between a shard's replicas. */
  readonly expertReplicas?: number;
  readonly precision?: Precision;
  /** Router HTTP host and port (port 0: a free one). Default 127.0.0.1:8000. */
  readonly host?: string;
  readonly port?: number;
  /** --redis-url; falls back to env REDIS_URL, then 127.0.0.1:6379, then a private redis-server. */
  readonly redisUrl?: string;
  /** --private-redis: a private redis-server in <stateDir>/redis whatever answers elsewhere. */
  readonly privateRedis?: boolean;
  readonly queuePrefix?: string;
  readonly servedModelName?: string;
  /**
   * The router's API key (its --api-key); default env MOELA_ROUTER_API_KEY, else none. Passed to the router
   * as MOELA_ROUTER_API_KEY (argv would show it in `ps`); never written to cluster.json.
   */
  readonly apiKey?: string;
  /** Folder for cluster.json and logs/ (default <cwd>/.moela). */
  readonly stateDir?: string;
  readonly logLevel?: string;
  /** Extra flags per role, appended after the launcher's own. */
  readonly serviceArgs?: Partial<Record<Role, readonly string[]>>;
  /** Whole start-up, every phase included (default 180 s). */
  readonly startupTimeoutMs?: number;
  /** Per process: SIGTERM, then this long, then SIGKILL (default 10 s). */
  readonly stopGraceMs?: number;
  readonly env?: NodeJS.ProcessEnv;
  readonly command?: ServiceCommand;
  /** Aborting stops whatever started and rejects with CancelledError. */
  readonly signal?: AbortSignal;
  readonly onProgress?: (e: ProgressEvent) => void;
  /** Tests: override redis-server lookup (null = none installed) and the well-known local URL. */
  readonly redisServerBinary?: string | null;
  readonly localRedisUrl?: string;
}

/** The options resolved and checked, with the paths and the start-up deadline derived from them. */
export interface ClusterSettings {
  readonly model: string;
  readonly counts: ClusterCounts;
  readonly precision: Precision;
  readonly host: string;
  readonly port: number;
  readonly stateDir: string;
  readonly logDir: string;
  readonly clusterFile: string;
  /** Where a generated internal secret goes. */
  readonly secretFile: string;
  readonly queuePrefix: string;
  readonly logLevel: string;
  readonly graceMs: number;
  readonly env: NodeJS.ProcessEnv;
  readonly apiKey: string | undefined;
  readonly progress: (e: ProgressEvent) => void;
  /** Date.now() by which the whole start-up must be done. */
  readonly deadline: number;
  readonly hasTokenizer: boolean;
}

/** Checks the options (each error names its flag) and creates <stateDir>/logs. */
export function resolveClusterSettings(o: ClusterOptions): ClusterSettings {
  const model = resolve(o.model ?? DEFAULT_MODEL);
  if (!existsSync(join(model, "config.json"))) {
    throw new InvalidArgumentError(`--model ${model}: no config.json there (expected a Hugging Face checkpoint folder)`);
  }
  const counts = clusterCounts(o);
  const precision = o.precision ?? "exact";
  if (!(PRECISIONS as readonly string[]).includes(precision)) {
    throw new InvalidArgumentError(`--precision must be one of ${PRECISIONS.join(", ")}, got ${precision}`);
  }
  const host = o.host ?? "127.0.0.1";
  const port = o.port ?? 8000;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new InvalidArgumentError(`--port must be in [0, 65535], got ${port}`);
  const stateDir = resolve(o.stateDir ?? ".moela");
  const logDir = join(stateDir, "logs");
  mkdirSync(logDir, { recursive: true });
  const env = o.env ?? process.env;
  const settings: ClusterSettings = {
    model,
    counts,
    precision,
    host,
    port,
    stateDir,
    logDir,
    clusterFile: join(stateDir, "cluster.json"),
    secretFile: join(stateDir, "internal-secret"),
    queuePrefix: o.queuePrefix ?? "moela",
    logLevel: o.logLevel ?? "info",
    graceMs: o.stopGraceMs ?? 10_000,
    env,
    apiKey: o.apiKey ?? env["MOELA_ROUTER_API_KEY"],
    progress: o.onProgress ?? (() => {}),
    deadline: Date.now() + (o.startupTimeoutMs ?? 180_000),
    hasTokenizer: existsSync(join(model, "tokenizer.json")),
  };
  if (o.privateRedis === true && o.redisUrl !== undefined) {
    throw new InvalidArgumentError("--private-redis and --redis-url exclude each other");
  }
  return settings;
}
