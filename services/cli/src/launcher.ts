/**
 * The local cluster as a library: every service runs as a real child process
 * (`node services/cli/bin/moela.js serve --role <role> ...`) and is "up" once it printed its
 * ready line on stdout and answers grpc.health.v1 with SERVING. Start order follows the
 * dependencies: expert-hosts (R replicas of each shard i of H), then decode and prefill pointed at the hosts'
 * reported gRPC addresses, then the router pointed at the decode instances. Every child's
 * stdout and stderr go to <stateDir>/logs/<role>-<i>.log. Stopping is SIGTERM, a grace period,
 * then SIGKILL, router first and expert-hosts last so nothing in flight loses its peer early.
 *
 * `moela cluster`, test/helpers/cluster.ts and scripts/bench/cluster.ts all start clusters
 * through startCluster, so the tests exercise exactly what `npm start` runs.
 *
 * A service that dies is not replaced by the library itself; `restart(label)` starts it again with the
 * same flags at the same gRPC, metrics (and HTTP) addresses, as a Kubernetes StatefulSet brings a pod
 * back under its name, so its peers find it again, and `superviseCluster` (what `moela cluster` runs)
 * does that by itself with back-off for every service and the private Redis (supervisor.ts).
 *
 * Before it starts anything, startCluster claims the state dir, the router port and the queue prefix
 * (cluster-lock.ts), so a second cluster on any of them fails at once and leaves the first alone. Every
 * child gets one end of a pipe on fd 3 (parent-watch.ts) and exits when the launcher dies, however it
 * died; the private redis-server gets SIGTERM from the kernel then (redis-local.ts).
 */
import { spawn, type ChildProcess } from "node:child_process";
import type { Socket } from "node:net";
import { randomBytes } from "node:crypto";
import { createWriteStream, existsSync, mkdirSync, renameSync, rmSync, writeFileSync, type WriteStream } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { CancelledError, Code, InvalidArgumentError, isServiceRole, MoelaError, parseReadyLine, SERVICE_ROLES, type ReadyLine, type ServiceRole } from "@moela/core";
import { INTERNAL_SECURITY_FLAGS, parseInternalSecurity, waitForServing, type InternalSecurity } from "@moela/rpc";
import { acquireQueuePrefixLock, acquireStateDirLock, newHolder, probePort, type QueuePrefixLock, type StateDirLock } from "./cluster-lock.js";
import { PARENT_FD, PARENT_FD_ENV } from "./parent-watch.js";
import { resolveRedis, stopChild, type RedisChoice, type RedisSource } from "./redis-local.js";
import { Supervisor, type SupervisedUnit, type SupervisorOptions } from "./supervisor.js";

/** The service roles (@moela/core's SERVICE_ROLES, whose ready lines the launcher reads). */
export const ROLES = SERVICE_ROLES;
export type Role = ServiceRole;
/** @moela/moe-dispatch PRECISION_NAMES (spelled out: the launcher loads no engine; a test keeps them equal). */
export const PRECISIONS = ["exact", "paper", "paper-logfmt8"] as const;
export type Precision = (typeof PRECISIONS)[number];

/** The repository root (services/cli/src -> ../../..). */
export const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));
/** The `moela` executable the children run. */
export const MOELA_BIN = join(REPO_ROOT, "services/cli/bin/moela.js");
/** The bundled model `npm start` serves: trained by `moela train` on the Brown corpus (its README is the model card). */
export const DEFAULT_MODEL = join(REPO_ROOT, "models/moela-v3-brown");
/** The random-weight miniature the tests run (scripts/gen-tiny-model.ts writes it; committed at models/tiny-v3). */
export const TINY_MODEL = join(REPO_ROOT, "models/tiny-v3");
/** Lines of a child's output kept in memory for error messages. */
const TAIL_LINES = 40;

export const isRole = isServiceRole;

// The ready line lives in @moela/core (ready-line.ts): the services print it through formatReadyLine.
export { parseReadyLine, type ReadyLine } from "@moela/core";

// ---- one child process -----------------------------------------------------------------------

export interface ExitInfo {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

function describeExit(e: ExitInfo): string {
  return e.signal !== null ? `was killed by ${e.signal}` : `exited with code ${e.code}`;
}

/** A service that died, timed out or misbehaved before it was up; carries its last log lines. */
export class ServiceStartError extends MoelaError {
  readonly label: string;
  readonly logPath: string;
  readonly tail: readonly string[];
  constructor(label: string, what: string, logPath: string, tail: readonly string[]) {
    const lines = tail.length > 0 ? `\n--- last ${tail.length} log lines of ${label} (${logPath}) ---\n${tail.join("\n")}` : ` (no output; log: ${logPath})`;
    super(`${label} ${what}${lines}`, Code.UNAVAILABLE);
    this.label = label;
    this.logPath = logPath;
    this.tail = tail;
  }
}

/** How to run one role: the executable and the arguments before the service flags. */
export type ServiceCommand = (role: Role) => { readonly file: string; readonly args: readonly string[] };

export const defaultServiceCommand: ServiceCommand = (role) => ({
  file: process.execPath,
  args: [MOELA_BIN, "serve", "--role", role],
});

export interface ServiceProcessOptions {
  readonly role: Role;
  readonly index: number;
  /** Service flags after the role (--model, --grpc-address, ...). */
  readonly args: readonly string[];
  readonly logPath: string;
  readonly command?: ServiceCommand;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
}

/** One service child: its log file, its ready line, its exit. */
export class ServiceProcess {
  readonly role: Role;
  readonly index: number;
  /** "decode 0" */
  readonly label: string;
  readonly logPath: string;
  readonly argv: readonly string[];
  readonly child: ChildProcess;
  /** Resolves once the process is gone and its output is flushed to the log. */
  readonly exited: Promise<ExitInfo>;
  exitInfo: ExitInfo | undefined;
  readyLine: ReadyLine | undefined;
  private readonly lines: string[] = [];
  private readonly log: WriteStream;
  private readonly readyPromise: Promise<ReadyLine>;
  private stopping = false;

  constructor(o: ServiceProcessOptions) {
    this.role = o.role;
    this.index = o.index;
    this.label = `${o.role} ${o.index}`;
    this.logPath = o.logPath;
    const cmd = (o.command ?? defaultServiceCommand)(o.role);
    this.argv = [cmd.file, ...cmd.args, ...o.args];
    mkdirSync(dirname(o.logPath), { recursive: true });
    this.log = createWriteStream(o.logPath, { flags: "w" });
    // fd 3: a pipe only this process holds the other end of; the child exits when it reads EOF there.
    this.child = spawn(cmd.file, [...cmd.args, ...o.args], {
      cwd: o.cwd ?? process.cwd(),
      env: { ...(o.env ?? process.env), [PARENT_FD_ENV]: String(PARENT_FD) },
      stdio: ["ignore", "pipe", "pipe", "pipe"],
    });
    const lifeline = this.child.stdio[PARENT_FD] as Socket | null | undefined;
    // Read it so its end (the child's exit) is seen and the child's "close" can fire.
    lifeline?.on("error", () => {});
    lifeline?.resume();
    let resolveReady!: (r: ReadyLine) => void;
    let rejectReady!: (e: Error) => void;
    this.readyPromise = new Promise<ReadyLine>((res, rej) => {
      resolveReady = res;
      rejectReady = rej;
    });
    // Nobody may be waiting yet when a child dies early; the rejection is read later through waitReady.
    this.readyPromise.catch(() => {});

    const onLine = (line: string, fromStdout: boolean) => {
      this.log.write(`${line}\n`);
      this.lines.push(line);
      if (this.lines.length > TAIL_LINES) this.lines.shift();
      if (!fromStdout || this.readyLine !== undefined) return;
      try {
        const ready = parseReadyLine(line);
        if (ready === null) return;
        if (ready.role !== this.role) throw new InvalidArgumentError(`ready line says role "${ready.role}", expected "${this.role}"`);
        this.readyLine = ready;
        resolveReady(ready);
      } catch (err) {
        rejectReady(new ServiceStartError(this.label, `printed a bad ready line: ${(err as Error).message}`, this.logPath, this.tail()));
      }
    };
    const closes = [this.child.stdout!, this.child.stderr!].map((stream, i) => {
      const rl = createInterface({ input: stream, crlfDelay: Infinity });
      rl.on("line", (line) => onLine(line, i === 0));
      return new Promise<void>((r) => rl.once("close", () => r()));
    });
    this.exited = new Promise<ExitInfo>((resolveExit) => {
      let spawnError: Error | undefined;
      this.child.once("error", (err) => {
        spawnError = err;
        // A child that never started emits no "close"; settle here.
        if (this.child.pid === undefined) finish({ code: null, signal: null });
      });
      const finish = (info: ExitInfo) => {
        if (this.exitInfo !== undefined) return;
        this.exitInfo = info;
        const why = spawnError !== undefined ? `could not be started: ${spawnError.message}` : describeExit(info);
        rejectReady(new ServiceStartError(this.label, `${why} before it was ready`, this.logPath, this.tail()));
        this.log.end(() => resolveExit(info));
      };
      this.child.once("close", (code, signal) => {
        void Promise.all(closes).then(() => finish({ code, signal }));
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** The last lines of its output (stdout and stderr interleaved). */
  tail(n = TAIL_LINES): string[] {
    return this.lines.slice(-n);
  }

  /** Whether stop() was called (an exit after it is expected). */
  get stopRequested(): boolean {
    return this.stopping;
  }

  /** Resolves with the ready line; rejects with ServiceStartError if the process dies first. */
  waitReady(): Promise<ReadyLine> {
    return this.readyPromise;
  }

  /** SIGTERM, wait up to graceMs, then SIGKILL; resolves once the process is gone. */
  async stop(graceMs: number): Promise<ExitInfo> {
    this.stopping = true;
    if (this.exitInfo === undefined && this.child.pid !== undefined) await stopChild(this.child, graceMs);
    return this.exited;
  }
}

// ---- service flags ---------------------------------------------------------------------------

export interface ServiceArgsInput {
  readonly model: string;
  readonly precision: Precision;
  readonly logLevel: string;
  /** host for --grpc-address / --metrics-address (port 0: the service picks and reports it). */
  readonly host: string;
  readonly redisUrl: string;
  readonly queuePrefix: string;
  /** Per shard, its replicas joined by "|" ("a:1|b:1"). */
  readonly expertHostAddresses: readonly string[];
  readonly decodeAddresses: readonly string[];
  readonly httpAddress: string;
  readonly servedModelName: string | undefined;
  readonly shardIndex: number;
  readonly shardCount: number;
}

/** The flags each role is started with (then any --service-arg extras). */
export function serviceArgs(role: Role, a: ServiceArgsInput): string[] {
  const common = [
    "--model", a.model,
    "--precision", a.precision,
    "--log-level", a.logLevel,
    "--grpc-address", `${a.host}:0`,
    "--metrics-address", `${a.host}:0`,
  ];
  switch (role) {
    case "expert-host":
      // Registered, so decode and prefill see replicas come and go.
      return [...common, "--shard-index", String(a.shardIndex), "--shard-count", String(a.shardCount), "--redis-url", a.redisUrl, "--queue-prefix", a.queuePrefix];
    case "decode":
      return [...common, "--redis-url", a.redisUrl, "--queue-prefix", a.queuePrefix, "--expert-hosts", a.expertHostAddresses.join(",")];
    case "prefill":
      return [...common, "--redis-url", a.redisUrl, "--queue-prefix", a.queuePrefix, "--expert-hosts", a.expertHostAddresses.join(",")];
    case "router":
      return [
        ...common,
        "--http-address", a.httpAddress,
        "--redis-url", a.redisUrl,
        "--queue-prefix", a.queuePrefix,
        "--decode", a.decodeAddresses.join(","),
        ...(a.servedModelName !== undefined ? ["--served-model-name", a.servedModelName] : []),
      ];
  }
}

/**
 * A service's flags with its listen addresses pinned to where it served before (its ready line), so a
 * restarted service comes back where its peers look for it: --grpc-address, --metrics-address, and the
 * router's --http-address.
 */
export function pinAddresses(args: readonly string[], ready: ReadyLine): string[] {
  const out = [...args];
  const set = (flag: string, value: string | undefined): void => {
    const i = out.indexOf(flag);
    if (i >= 0 && i + 1 < out.length && value !== undefined) out[i + 1] = value;
  };
  const hostPort = (url: string | undefined): string | undefined => (url === undefined ? undefined : new URL(url).host);
  set("--grpc-address", ready.grpc);
  set("--metrics-address", hostPort(ready.metrics));
  set("--http-address", hostPort(ready.http));
  return out;
}

// ---- cluster.json ----------------------------------------------------------------------------

/** One instance in cluster.json. */
export interface InstanceInfo {
  readonly role: Role;
  /** 0-based within its role. */
  readonly index: number;
  readonly pid: number;
  /** host:port */
  readonly grpc: string;
  /** http://host:port/metrics */
  readonly metrics: string;
  /** router: http://host:port */
  readonly http?: string;
  /** expert-host: its shard index */
  readonly shard?: number;
  /** Its log file. */
  readonly log: string;
}

/** .moela/cluster.json: everything a script needs to find the running cluster. */
export interface ClusterInfo {
  readonly version: 1;
  readonly started_at: string;
  /** pid of the launcher; when it is gone the file is stale. */
  readonly launcher_pid: number;
  readonly model: string;
  readonly served_model_name: string;
  readonly precision: Precision;
  /** http://host:port of the router */
  readonly url: string;
  /** what OpenAI clients take as baseURL */
  readonly openai_base_url: string;
  readonly curl: string;
  readonly redis: { readonly url: string; readonly source: RedisSource; readonly pid: number | null };
  readonly queue_prefix: string;
  /**
   * Internal gRPC security of the services: the file holding the shared secret their calls carry (absent:
   * no secret, or one given by value), and whether they talk TLS or mTLS. Never the secret itself.
   */
  readonly internal?: { readonly secret_file?: string; readonly secret: boolean; readonly tls: "off" | "tls" | "mtls" };
  /** expert_hosts counts shards; expert_replicas (present when > 1) the replicas of each. */
  readonly topology: { readonly prefill: number; readonly decode: number; readonly expert_hosts: number; readonly expert_replicas?: number };
  readonly instances: readonly InstanceInfo[];
}

/** Write cluster.json atomically (a reader never sees half a file). */
export function writeClusterFile(path: string, info: ClusterInfo): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(info, null, 2)}\n`);
  renameSync(tmp, path);
}

/** A curl that asks the router for a short greedy completion (token ids when there is no tokenizer). */
export function curlExample(url: string, servedModelName: string, hasTokenizer: boolean, withApiKey = false): string {
  const body = {
    model: servedModelName,
    prompt: hasTokenizer ? "The capital of France is" : [0, 17, 42, 99],
    max_tokens: 16,
    temperature: 0,
  };
  const auth = withApiKey ? ` -H "Authorization: Bearer $MOELA_ROUTER_API_KEY"` : "";
  return `curl -s ${url}/v1/completions -H 'Content-Type: application/json'${auth} -d '${JSON.stringify(body)}'`;
}

/** The endpoint table as aligned text: role, index, pid, gRPC address, metrics URL (and router HTTP). */
export function formatEndpointTable(instances: readonly InstanceInfo[]): string {
  const rows = [
    ["role", "pid", "gRPC", "metrics", "http"],
    ...instances.map((i) => [
      i.role === "expert-host" ? `expert-host ${i.index} (shard ${i.shard ?? i.index})` : `${i.role} ${i.index}`,
      String(i.pid),
      i.grpc,
      i.metrics,
      i.http ?? "",
    ]),
  ];
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c]!)).join("  ").trimEnd()).join("\n");
}

// ---- the cluster -----------------------------------------------------------------------------

export type ProgressEvent =
  | { readonly kind: "redis"; readonly url: string; readonly source: RedisSource }
  | { readonly kind: "note"; readonly message: string }
  | { readonly kind: "starting"; readonly label: string; readonly pid: number | undefined; readonly logPath: string }
  | { readonly kind: "ready"; readonly label: string; readonly ready: ReadyLine }
  | { readonly kind: "healthy"; readonly label: string; readonly up: number; readonly total: number }
  | { readonly kind: "stopping"; readonly label: string }
  | { readonly kind: "stopped"; readonly label: string; readonly exit: ExitInfo };

export interface ClusterOptions {
  /** Checkpoint folder (default: the bundled models/moela-v3-brown). */
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
  /**
   * Internal gRPC security, passed to every service through its environment (never argv):
   * `internalSecret` (a value: MOELA_<ROLE>_INTERNAL_SECRET) or `internalSecretFile` (a file:
   * MOELA_<ROLE>_INTERNAL_SECRET_FILE), or `generateInternalSecret`: a random 256-bit secret written to
   * <stateDir>/internal-secret (mode 0600) for this cluster's life. Default: no secret.
   */
  readonly internalSecret?: string;
  readonly internalSecretFile?: string;
  readonly generateInternalSecret?: boolean;
  /** PEM files every service gets as --tls-cert/--tls-key/--tls-ca (env twins), and mTLS (--tls-client-auth). */
  readonly tls?: { readonly cert?: string; readonly key?: string; readonly ca?: string; readonly clientAuth?: boolean };
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

export interface Cluster {
  readonly info: ClusterInfo;
  /** Where info was written. */
  readonly clusterFile: string;
  readonly processes: readonly ServiceProcess[];
  readonly redis: RedisChoice;
  /** Resolves with the first service that exits without being asked to. */
  readonly unexpectedExit: Promise<ServiceProcess>;
  /**
   * Start a service that exited (e.g. "decode 0") again with its flags at its former addresses; resolves
   * once it is up (ready line and health SERVING). It replaces the dead one in `processes` and cluster.json.
   * Rejects with CancelledError once the cluster is stopping.
   */
  restart(label: string, options?: { readonly timeoutMs?: number }): Promise<ServiceProcess>;
  /** Start the private redis-server again (after it exited) on its port over its data; updates cluster.json. */
  restartRedis(options?: { readonly timeoutMs?: number }): Promise<void>;
  /** Whether stop() was called. */
  readonly stopping: boolean;
  /** Stop every service (router first), then a private Redis; removes cluster.json and releases the claims. Idempotent. */
  stop(): Promise<void>;
}

function positiveInt(name: string, v: number, min: number): number {
  if (!Number.isInteger(v) || v < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got ${v}`);
  return v;
}

/** Rejects when the signal aborts (with CancelledError) — to race against start-up phases. */
function abortPromise(signal: AbortSignal | undefined): Promise<never> {
  return new Promise<never>((_, reject) => {
    if (signal === undefined) return;
    const fail = () => reject(new CancelledError("cluster start-up interrupted"));
    if (signal.aborted) fail();
    else signal.addEventListener("abort", fail, { once: true });
  });
}

function timeoutPromise(ms: number, what: () => string): { promise: Promise<never>; cancel: () => void } {
  let timer: NodeJS.Timeout | undefined;
  const promise = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new MoelaError(what(), Code.DEADLINE_EXCEEDED)), ms);
  });
  promise.catch(() => {});
  return { promise, cancel: () => clearTimeout(timer) };
}

/** GET {url}/v1/models until it answers 200; returns the first model id. */
async function routerModelId(url: string, deadline: number, signal: AbortSignal | undefined, apiKey?: string): Promise<string> {
  let last = "no answer";
  while (Date.now() < deadline) {
    if (signal?.aborted) throw new CancelledError("cluster start-up interrupted");
    try {
      const headers = apiKey !== undefined ? { authorization: `Bearer ${apiKey}` } : undefined;
      const res = await fetch(`${url}/v1/models`, { signal: AbortSignal.timeout(5_000), ...(headers !== undefined ? { headers } : {}) });
      const body = (await res.json()) as { data?: Array<{ id?: unknown }> };
      const id = body.data?.[0]?.id;
      if (res.ok && typeof id === "string") return id;
      last = `HTTP ${res.status} ${JSON.stringify(body).slice(0, 200)}`;
    } catch (err) {
      last = (err as Error).message;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new MoelaError(`router at ${url} did not answer GET /v1/models (last: ${last})`, Code.DEADLINE_EXCEEDED);
}

export async function startCluster(o: ClusterOptions = {}): Promise<Cluster> {
  const model = resolve(o.model ?? DEFAULT_MODEL);
  if (!existsSync(join(model, "config.json"))) {
    throw new InvalidArgumentError(`--model ${model}: no config.json there (expected a Hugging Face checkpoint folder)`);
  }
  const counts = {
    prefill: positiveInt("--prefill", o.prefill ?? 1, 1),
    decode: positiveInt("--decode", o.decode ?? 1, 1),
    expertHosts: positiveInt("--expert-hosts", o.expertHosts ?? 2, 1),
    expertReplicas: positiveInt("--expert-replicas", o.expertReplicas ?? 1, 1),
  };
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
  const clusterFile = join(stateDir, "cluster.json");
  const queuePrefix = o.queuePrefix ?? "moela";
  const logLevel = o.logLevel ?? "info";
  const graceMs = o.stopGraceMs ?? 10_000;
  const env = o.env ?? process.env;
  const apiKey = o.apiKey ?? env["MOELA_ROUTER_API_KEY"];
  const progress = o.onProgress ?? (() => {});
  const deadline = Date.now() + (o.startupTimeoutMs ?? 180_000);
  const hasTokenizer = existsSync(join(model, "tokenizer.json"));
  // Ends health polling and the router probe when start-up fails or is interrupted.
  const startup = new AbortController();
  const onAbort = () => startup.abort(new CancelledError("cluster start-up interrupted"));
  o.signal?.addEventListener("abort", onAbort, { once: true });

  if (o.privateRedis === true && o.redisUrl !== undefined) {
    throw new InvalidArgumentError("--private-redis and --redis-url exclude each other");
  }
  const note = (message: string) => progress({ kind: "note", message });
  // Checked before anything is claimed or started: what the launcher's own health probes use, too.
  const internal = internalSecurityOf(o);
  // Claims before anything starts: the state dir, the router port, then (in its Redis) the queue prefix.
  const holder = newHolder({ stateDir, port, queuePrefix });
  const stateLock: StateDirLock = acquireStateDirLock(stateDir, holder, { onNote: note });
  const secretFile = join(stateDir, "internal-secret");
  // The given secret and TLS files, checked now; the health probes dial with its TLS (health needs no secret).
  let security: InternalSecurity;
  try {
    security = parseInternalSecurity(internal.flags(), INTERNAL_SECURITY_FLAGS, "moela cluster");
  } catch (err) {
    stateLock.release();
    throw err;
  }
  // Health probes dial the internal services with their TLS settings; the router's gRPC server is the
  // public Generate API (plaintext, behind --api-key), not an internal one.
  const probeSecurity = (role: Role): { security?: InternalSecurity } => (role === "router" ? {} : { security });
  const envOf = (role: Role): NodeJS.ProcessEnv => {
    const out: NodeJS.ProcessEnv = { ...env };
    // The cluster's secret replaces whatever secret the launcher's own environment holds for the role.
    if (internal.env.internalSecret !== undefined || internal.env.internalSecretFile !== undefined) {
      delete out[`${ENV_PREFIX[role]}INTERNAL_SECRET`];
      delete out[`${ENV_PREFIX[role]}INTERNAL_SECRET_FILE`];
    }
    return { ...out, ...internal.envFor(role), ...(role === "router" && apiKey !== undefined ? { MOELA_ROUTER_API_KEY: apiKey } : {}) };
  };
  let redis: RedisChoice;
  let queueLock: QueuePrefixLock;
  try {
    await probePort(host, port);
    redis = await resolveRedis({
      flagUrl: o.redisUrl,
      envUrl: env["REDIS_URL"],
      privateDir: join(stateDir, "redis"),
      privateLogFile: join(logDir, "redis.log"),
      forcePrivate: o.privateRedis === true,
      ...(o.redisServerBinary !== undefined ? { redisServerBinary: o.redisServerBinary } : {}),
      ...(o.localRedisUrl !== undefined ? { localUrl: o.localRedisUrl } : {}),
      onNote: note,
    });
  } catch (err) {
    stateLock.release();
    throw err;
  }
  try {
    stateLock.setRedisPid(redis.server?.pid());
    queueLock = await acquireQueuePrefixLock(redis.url, holder, { onNote: note });
  } catch (err) {
    await redis.stop();
    stateLock.release();
    throw err;
  }
  progress({ kind: "redis", url: redis.url, source: redis.source });
  if (internal.generate) {
    // A fresh secret per cluster, readable by this user only; the services read it from the file, and
    // stop() removes it. Written only once every claim is held: a refused second cluster touches nothing.
    rmSync(secretFile, { force: true }); // a stale one (a killed launcher's) is replaced, never reused
    writeFileSync(secretFile, `${randomBytes(32).toString("hex")}\n`, { mode: 0o600, flag: "wx" });
    internal.env.internalSecretFile = secretFile;
  }

  const processes: ServiceProcess[] = [];
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      // Router first (no new work), then the attention side, then the experts they call.
      for (const tier of [["router"], ["prefill", "decode"], ["expert-host"]] as const) {
        const members = processes.filter((p) => (tier as readonly Role[]).includes(p.role));
        await Promise.all(
          members.map(async (p) => {
            if (p.exitInfo === undefined) progress({ kind: "stopping", label: p.label });
            const exit = await p.stop(graceMs);
            progress({ kind: "stopped", label: p.label, exit });
          }),
        );
      }
      await queueLock.release();
      await redis.stop();
      rmSync(clusterFile, { force: true });
      if (internal.generate) rmSync(secretFile, { force: true });
      stateLock.release();
    })();
    return stopped;
  };

  let resolveDeath!: (p: ServiceProcess) => void;
  const unexpectedExit = new Promise<ServiceProcess>((r) => (resolveDeath = r));
  // During start-up a death anywhere fails the start; this rejects with that child's error.
  let rejectStartup!: (e: Error) => void;
  const startupFailure = new Promise<never>((_, rej) => (rejectStartup = rej));
  startupFailure.catch(() => {});
  let starting = true;

  const total = counts.expertHosts * counts.expertReplicas + counts.decode + counts.prefill + 1;
  let up = 0;
  /** The launcher's own flags of each process (before --service-arg extras), for restart(). */
  const baseArgs = new Map<ServiceProcess, string[]>();
  const launch = (role: Role, index: number, args: string[]): ServiceProcess => {
    const extra = o.serviceArgs?.[role] ?? [];
    const p = new ServiceProcess({
      role,
      index,
      args: [...args, ...extra],
      logPath: join(logDir, `${role}-${index}.log`),
      ...(o.command !== undefined ? { command: o.command } : {}),
      env: envOf(role),
    });
    processes.push(p);
    baseArgs.set(p, args);
    progress({ kind: "starting", label: p.label, pid: p.pid, logPath: p.logPath });
    void p.exited.then((exit) => {
      if (p.stopRequested) return;
      if (starting) {
        rejectStartup(
          new ServiceStartError(p.label, `${describeExit(exit)} during cluster start-up`, p.logPath, p.tail()),
        );
      } else resolveDeath(p);
    });
    return p;
  };
  /** Ready line, then grpc health SERVING. */
  const whenUp = async (p: ServiceProcess): Promise<ReadyLine> => {
    const ready = await p.waitReady();
    progress({ kind: "ready", label: p.label, ready });
    await waitForServing(ready.grpc, { timeoutMs: Math.max(1_000, deadline - Date.now()), signal: startup.signal, ...probeSecurity(p.role) });
    progress({ kind: "healthy", label: p.label, up: ++up, total });
    return ready;
  };
  const phase = async <T>(work: Promise<T>, what: string): Promise<T> => {
    const timeout = timeoutPromise(Math.max(0, deadline - Date.now()), () => {
      const waiting = processes.filter((p) => p.readyLine === undefined).map((p) => p.label);
      return `cluster start-up timed out while starting ${what}${waiting.length > 0 ? ` (no ready line yet from: ${waiting.join(", ")})` : ""}; logs in ${logDir}`;
    });
    try {
      return await Promise.race([work, startupFailure, abortPromise(o.signal), timeout.promise]);
    } finally {
      timeout.cancel();
    }
  };

  const shardOf = new Map<ServiceProcess, number>();
  const base: Omit<ServiceArgsInput, "shardIndex" | "expertHostAddresses" | "decodeAddresses"> = {
    model,
    precision,
    logLevel,
    host,
    redisUrl: redis.url,
    queuePrefix,
    httpAddress: `${host}:${port}`,
    servedModelName: o.servedModelName,
    shardCount: counts.expertHosts,
  };
  try {
    // Process k serves shard k mod H: replica r of shard i is expert-host i + r*H.
    const hosts = Array.from({ length: counts.expertHosts * counts.expertReplicas }, (_, k) => {
      const shardIndex = k % counts.expertHosts;
      const p = launch("expert-host", k, serviceArgs("expert-host", { ...base, shardIndex, expertHostAddresses: [], decodeAddresses: [] }));
      shardOf.set(p, shardIndex);
      return p;
    });
    const hostReady = await phase(Promise.all(hosts.map(whenUp)), "the expert-hosts");
    const expertHostAddresses = Array.from({ length: counts.expertHosts }, (_, i) =>
      hostReady.filter((_, k) => k % counts.expertHosts === i).map((r) => r.grpc).join("|"),
    );

    const withHosts = { ...base, shardIndex: 0, expertHostAddresses, decodeAddresses: [] };
    const decodes = Array.from({ length: counts.decode }, (_, i) => launch("decode", i, serviceArgs("decode", withHosts)));
    const prefills = Array.from({ length: counts.prefill }, (_, i) => launch("prefill", i, serviceArgs("prefill", withHosts)));
    const [decodeReady] = await phase(
      Promise.all([Promise.all(decodes.map(whenUp)), Promise.all(prefills.map(whenUp))]),
      "decode and prefill",
    );
    const decodeAddresses = decodeReady.map((r) => r.grpc);

    const router = launch("router", 0, serviceArgs("router", { ...withHosts, decodeAddresses }));
    const routerReady = await phase(whenUp(router), "the router");
    const url = routerReady.http!.replace(/\/+$/, "");
    const servedModelName = await phase(routerModelId(url, deadline, startup.signal, apiKey), "the router's HTTP API");

    /** Each label's last ready line: a restarted process that never became ready is listed with it. */
    const lastReady = new Map<string, ReadyLine>(processes.map((p) => [p.label, p.readyLine!]));
    const instancesNow = (): InstanceInfo[] => {
      const list: InstanceInfo[] = processes.map((p) => {
        const r = p.readyLine ?? lastReady.get(p.label)!;
        const shard = shardOf.get(p);
        return {
          role: p.role,
          index: p.index,
          pid: p.readyLine?.pid ?? p.pid ?? r.pid,
          grpc: r.grpc,
          metrics: r.metrics,
          ...(r.http !== undefined ? { http: r.http } : {}),
          ...(shard !== undefined ? { shard } : {}),
          log: p.logPath,
        };
      });
      const order: Record<Role, number> = { router: 0, prefill: 1, decode: 2, "expert-host": 3 };
      return list.sort((a, b) => order[a.role] - order[b.role] || a.index - b.index);
    };
    const instances = instancesNow();
    const redisNow = (): ClusterInfo["redis"] => ({ url: redis.url, source: redis.source, pid: redis.pid ?? null });
    const info: ClusterInfo = {
      version: 1,
      started_at: new Date().toISOString(),
      launcher_pid: process.pid,
      model,
      served_model_name: servedModelName,
      precision,
      url,
      openai_base_url: `${url}/v1`,
      curl: curlExample(url, servedModelName, hasTokenizer, apiKey !== undefined),
      redis: redisNow(),
      queue_prefix: queuePrefix,
      internal: {
        ...(internal.env.internalSecretFile !== undefined ? { secret_file: resolve(internal.env.internalSecretFile) } : {}),
        secret: security.secrets.length > 0 || internal.generate,
        tls: security.tls === undefined ? "off" : security.tls.clientAuth ? "mtls" : "tls",
      },
      topology: {
        prefill: counts.prefill,
        decode: counts.decode,
        expert_hosts: counts.expertHosts,
        ...(counts.expertReplicas > 1 ? { expert_replicas: counts.expertReplicas } : {}),
      },
      instances,
    };
    writeClusterFile(clusterFile, info);
    starting = false;
    o.signal?.removeEventListener("abort", onAbort);
    // A death between the last phase and here was recorded as a start-up failure; surface it.
    const dead = processes.find((p) => p.exitInfo !== undefined && !p.stopRequested);
    if (dead !== undefined) resolveDeath(dead);

    const restart = async (label: string, ro: { readonly timeoutMs?: number } = {}): Promise<ServiceProcess> => {
      const old = processes.find((p) => p.label === label);
      if (old === undefined) throw new InvalidArgumentError(`no service "${label}" in this cluster (${processes.map((p) => p.label).join(", ")})`);
      if (old.exitInfo === undefined) throw new InvalidArgumentError(`${label} (pid ${old.pid}) is still running; only a service that exited can be restarted`);
      if (stopped !== undefined) throw new CancelledError("the cluster is stopping");
      // A process that was restarted already has its addresses pinned (and may have died before its ready line).
      const args = old.readyLine !== undefined ? pinAddresses(baseArgs.get(old)!, old.readyLine) : baseArgs.get(old)!;
      const fresh = launch(old.role, old.index, args);
      // The new process takes the old one's place (launch appended it).
      processes.splice(processes.indexOf(fresh), 1);
      processes.splice(processes.indexOf(old), 1, fresh);
      baseArgs.delete(old);
      const shard = shardOf.get(old);
      if (shard !== undefined) shardOf.set(fresh, shard);
      const timeout = timeoutPromise(ro.timeoutMs ?? 120_000, () => `${label} did not come back within ${ro.timeoutMs ?? 120_000} ms; log: ${fresh.logPath}`);
      try {
        const ready = await Promise.race([fresh.waitReady(), timeout.promise]);
        progress({ kind: "ready", label: fresh.label, ready });
        lastReady.set(fresh.label, ready);
        await Promise.race([waitForServing(ready.grpc, { timeoutMs: ro.timeoutMs ?? 120_000, ...probeSecurity(fresh.role) }), timeout.promise]);
      } finally {
        timeout.cancel();
      }
      if (stopped !== undefined) throw new CancelledError("the cluster is stopping");
      writeClusterFile(clusterFile, { ...info, redis: redisNow(), instances: instancesNow() });
      return fresh;
    };
    const restartRedis = async (ro: { readonly timeoutMs?: number } = {}): Promise<void> => {
      if (redis.server === undefined) throw new InvalidArgumentError(`the cluster's Redis (${redis.url}) is not one it started`);
      if (stopped !== undefined) throw new CancelledError("the cluster is stopping");
      await redis.server.restart(ro.timeoutMs);
      stateLock.setRedisPid(redis.server.pid());
      if (stopped !== undefined) throw new CancelledError("the cluster is stopping");
      writeClusterFile(clusterFile, { ...info, redis: redisNow(), instances: instancesNow() });
    };
    return {
      info,
      clusterFile,
      processes,
      redis,
      unexpectedExit,
      stop,
      restart,
      restartRedis,
      get stopping() {
        return stopped !== undefined;
      },
    };
  } catch (err) {
    starting = false;
    o.signal?.removeEventListener("abort", onAbort);
    startup.abort(err);
    await stop();
    throw err;
  }
}

// ---- internal security -------------------------------------------------------------------------

/** Env twin prefixes of the services (MOELA_<ROLE>_). */
const ENV_PREFIX: Record<Role, string> = { router: "MOELA_ROUTER_", prefill: "MOELA_PREFILL_", decode: "MOELA_DECODE_", "expert-host": "MOELA_EXPERT_HOST_" };

/**
 * The cluster's internal security settings as each service's environment: MOELA_<ROLE>_INTERNAL_SECRET
 * (or _INTERNAL_SECRET_FILE), _TLS_CERT, _TLS_KEY, _TLS_CA, _TLS_CLIENT_AUTH (not the router's: it serves no
 * internal gRPC). Files are passed as absolute paths. `generate`: no secret given and one is to be made.
 */
export function internalSecurityOf(o: Pick<ClusterOptions, "internalSecret" | "internalSecretFile" | "generateInternalSecret" | "tls">): {
  readonly generate: boolean;
  readonly env: { internalSecret?: string; internalSecretFile?: string; tlsCert?: string; tlsKey?: string; tlsCa?: string; tlsClientAuth?: "true" };
  flags(): { internalSecret?: string; internalSecretFile?: string; tlsCert?: string; tlsKey?: string; tlsCa?: string; tlsClientAuth?: string };
  envFor(role: Role): Record<string, string>;
} {
  if (o.internalSecret !== undefined && o.internalSecretFile !== undefined) {
    throw new InvalidArgumentError("--internal-secret and --internal-secret-file exclude each other");
  }
  const generate = o.internalSecret === undefined && o.internalSecretFile === undefined && o.generateInternalSecret === true;
  const env: { internalSecret?: string; internalSecretFile?: string; tlsCert?: string; tlsKey?: string; tlsCa?: string; tlsClientAuth?: "true" } = {
    ...(o.internalSecret !== undefined ? { internalSecret: o.internalSecret } : {}),
    ...(o.internalSecretFile !== undefined ? { internalSecretFile: resolve(o.internalSecretFile) } : {}),
    ...(o.tls?.cert !== undefined ? { tlsCert: resolve(o.tls.cert) } : {}),
    ...(o.tls?.key !== undefined ? { tlsKey: resolve(o.tls.key) } : {}),
    ...(o.tls?.ca !== undefined ? { tlsCa: resolve(o.tls.ca) } : {}),
    ...(o.tls?.clientAuth === true ? { tlsClientAuth: "true" as const } : {}),
  };
  const names = { internalSecret: "INTERNAL_SECRET", internalSecretFile: "INTERNAL_SECRET_FILE", tlsCert: "TLS_CERT", tlsKey: "TLS_KEY", tlsCa: "TLS_CA", tlsClientAuth: "TLS_CLIENT_AUTH" } as const;
  return {
    generate,
    env,
    flags: () => ({ ...env }),
    envFor: (role) => {
      const out: Record<string, string> = {};
      for (const [key, value] of Object.entries(env) as [keyof typeof names, string | undefined][]) {
        if (value === undefined || (role === "router" && key === "tlsClientAuth")) continue;
        out[`${ENV_PREFIX[role]}${names[key]}`] = value;
      }
      return out;
    },
  };
}

// ---- supervision -----------------------------------------------------------------------------

export interface SuperviseOptions extends SupervisorOptions {
  /** How long a restarted service may take to be up again (default 120 s). */
  readonly restartTimeoutMs?: number;
  /** Grace before SIGKILL for a restarted service that never became healthy (default 5 s). */
  readonly stopGraceMs?: number;
}

/**
 * Restart every service of `cluster` (and its private Redis) whenever it exits unasked, with back-off
 * (supervisor.ts), until the returned Supervisor is stopped. Exits that the cluster's stop() causes
 * are not deaths.
 */
export function superviseCluster(cluster: Cluster, o: SuperviseOptions = {}): Supervisor {
  const never = new Promise<never>(() => {});
  const notWhenStopping = <T>(p: Promise<T>): Promise<T> => p.then((v) => (cluster.stopping ? never : v));
  const current = (label: string): ServiceProcess => {
    const p = cluster.processes.find((x) => x.label === label);
    if (p === undefined) throw new InvalidArgumentError(`no service "${label}"`);
    return p;
  };
  const units: SupervisedUnit[] = cluster.processes.map(({ label }) => ({
    label,
    pid: () => current(label).pid,
    waitExit: () => notWhenStopping(current(label).exited),
    restart: async () => {
      await cluster.restart(label, { timeoutMs: o.restartTimeoutMs ?? 120_000 });
    },
    kill: async () => {
      const p = current(label);
      if (p.exitInfo === undefined) await p.stop(o.stopGraceMs ?? 5_000);
    },
  }));
  const server = cluster.redis.server;
  if (server !== undefined) {
    units.push({
      label: "redis",
      pid: () => server.pid(),
      waitExit: () => notWhenStopping(server.waitExit()),
      restart: () => cluster.restartRedis({ timeoutMs: o.restartTimeoutMs ?? 120_000 }),
      kill: () => server.stop(o.stopGraceMs ?? 5_000),
    });
  }
  return new Supervisor(units, o).start();
}
