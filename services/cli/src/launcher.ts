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
 *
 * The parts: cluster-options.ts (the options, checked), topology.ts (which processes, with which flags),
 * service-process.ts (one child: spawn, output, ready line, stop), cluster-info.ts (cluster.json),
 * internal-security.ts (each service's environment); @moela/core's ready-line.ts (the line itself) and
 * disposables.ts (the one clean-up stack: what stop() and a failed start undo, last claimed first).
 */
import { randomBytes } from "node:crypto";
import { availableParallelism } from "node:os";
import { rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { CancelledError, DeadlineExceededError, DisposableStack, errorMessage, InvalidArgumentError, type ReadyLine } from "@moela/core";
import { INTERNAL_SECURITY_FLAGS, parseInternalSecurity, waitForServing, type InternalSecurity } from "@moela/rpc";
import { curlExample, writeClusterFile, type ClusterInfo, type InstanceInfo } from "./cluster-info.js";
import { acquireQueuePrefixLock, acquireStateDirLock, newHolder, probePort, type StateDirLock } from "./cluster-lock.js";
import { resolveClusterSettings, type ClusterOptions, type ClusterSettings } from "./cluster-options.js";
import { internalSecurityOf, serviceEnv, type InternalSecuritySettings } from "./internal-security.js";
import { resolveRedis, type RedisChoice } from "./redis-local.js";
import { describeExit, ServiceProcess, ServiceStartError } from "./service-process.js";
import { Supervisor, type SupervisedUnit, type SupervisorOptions } from "./supervisor.js";
import {
  byRoleThenIndex,
  processCount,
  serviceArgs,
  pinAddresses,
  shardAddresses,
  shardOfExpertHost,
  STOP_TIERS,
  type Role,
  type ServiceArgsInput,
} from "./topology.js";

// What the launcher's users import from here.
export { parseReadyLine, type ReadyLine } from "@moela/core";
export { curlExample, formatEndpointTable, writeClusterFile, type ClusterInfo, type InstanceInfo } from "./cluster-info.js";
export type { ClusterOptions, ProgressEvent } from "./cluster-options.js";
export { internalSecurityOf } from "./internal-security.js";
export { DEFAULT_MODEL, MOELA_BIN, REPO_ROOT, TINY_MODEL } from "./paths.js";
export { defaultServiceCommand, ServiceProcess, ServiceStartError, type ExitInfo, type ServiceCommand, type ServiceProcessOptions } from "./service-process.js";
export { isRole, pinAddresses, PRECISIONS, ROLES, serviceArgs, type Precision, type Role, type ServiceArgsInput } from "./topology.js";

// ---- the cluster -----------------------------------------------------------------------------

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

/**
 * The expert-hosts' niceness in a cluster on one machine (their --nice): enough that the OS runs decode first when both
 * want a core, which shortened a step at 1 and 16 streams on 2 cores (docs/PERFORMANCE.md, "Full collections in decode, and the hosts yielding the core").
 */
export const EXPERT_HOST_NICE = 5;

/**
 * Decode's micro-batches in a cluster on one machine (its --micro-batches). Two let one micro-batch's attention run
 * while the other's experts compute, which pays where the hosts have cores of their own. Here they share decode's, so
 * the overlap adds no compute, and splitting the batch makes every host read each expert the two halves reach once per
 * half: on large-v3 at 16 streams about 68 experts a layer instead of 50. One micro-batch, with the hosts computing on
 * every core while decode waits, served 16 streams 1.1-1.2x faster on 2 cores (docs/PERFORMANCE.md, "One
 * micro-batch when the hosts share decode's cores").
 */
export const LOCAL_DECODE_MICRO_BATCHES = 1;

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
    timer = setTimeout(() => reject(new DeadlineExceededError(what())), ms);
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
      last = errorMessage(err);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new DeadlineExceededError(`router at ${url} did not answer GET /v1/models (last: ${last})`);
}

/** What a cluster holds before it starts any service; `stack` gives it all back, last claimed first. */
interface Claims {
  readonly stateLock: StateDirLock;
  readonly redis: RedisChoice;
  readonly internal: InternalSecuritySettings;
  /** The given secret and TLS files, checked; the health probes dial with its TLS (health needs no secret). */
  readonly security: InternalSecurity;
  readonly stack: DisposableStack;
}

/**
 * Claims before anything starts: the state dir, the router port, then (in its Redis) the queue prefix;
 * then writes a generated internal secret. A refused claim gives back what was claimed before it.
 */
async function claimCluster(o: ClusterOptions, s: ClusterSettings): Promise<Claims> {
  const note = (message: string) => s.progress({ kind: "note", message });
  // Checked before anything is claimed or started: what the launcher's own health probes use, too.
  const internal = internalSecurityOf(o);
  const holder = newHolder({ stateDir: s.stateDir, port: s.port, queuePrefix: s.queuePrefix });
  const stateLock = acquireStateDirLock(s.stateDir, holder, { onNote: note });
  const stack = new DisposableStack();
  stack.defer(() => stateLock.release());
  // cluster.json and the generated secret are this cluster's only once every claim is held: a refused
  // second cluster touches nothing.
  let ownsFiles = false;
  stack.defer(() => {
    if (!ownsFiles) return;
    rmSync(s.clusterFile, { force: true });
    if (internal.generate) rmSync(s.secretFile, { force: true });
  });
  try {
    const security = parseInternalSecurity(internal.flags(), INTERNAL_SECURITY_FLAGS, "moela cluster");
    await probePort(s.host, s.port);
    const redis = await resolveRedis({
      flagUrl: o.redisUrl,
      envUrl: s.env["REDIS_URL"],
      privateDir: join(s.stateDir, "redis"),
      privateLogFile: join(s.logDir, "redis.log"),
      forcePrivate: o.privateRedis === true,
      ...(o.redisServerBinary !== undefined ? { redisServerBinary: o.redisServerBinary } : {}),
      ...(o.localRedisUrl !== undefined ? { localUrl: o.localRedisUrl } : {}),
      onNote: note,
    });
    stack.defer(() => redis.stop());
    stateLock.setRedisPid(redis.server?.pid());
    const queueLock = await acquireQueuePrefixLock(redis.url, holder, { onNote: note });
    stack.defer(() => queueLock.release());
    ownsFiles = true;
    s.progress({ kind: "redis", url: redis.url, source: redis.source });
    if (internal.generate) {
      // A fresh secret per cluster, readable by this user only; the services read it from the file, and
      // stop() removes it.
      rmSync(s.secretFile, { force: true }); // a stale one (a killed launcher's) is replaced, never reused
      writeFileSync(s.secretFile, `${randomBytes(32).toString("hex")}\n`, { mode: 0o600, flag: "wx" });
      internal.env.internalSecretFile = s.secretFile;
    }
    return { stateLock, redis, internal, security, stack };
  } catch (err) {
    await stack.disposeAll();
    throw err;
  }
}

/** A started cluster: its processes, what it claimed, and how to restart and stop them. */
class LocalCluster implements Cluster {
  info!: ClusterInfo;
  readonly clusterFile: string;
  readonly processes: ServiceProcess[] = [];
  readonly redis: RedisChoice;
  readonly unexpectedExit: Promise<ServiceProcess>;
  private readonly o: ClusterOptions;
  private readonly s: ClusterSettings;
  private readonly claims: Claims;
  private resolveDeath!: (p: ServiceProcess) => void;
  /** During start-up a death anywhere fails the start; this rejects with that child's error. */
  private readonly startupFailure: Promise<never>;
  private rejectStartup!: (e: Error) => void;
  private starting = true;
  /** Services up so far (progress "healthy"). */
  private up = 0;
  /** Processes whose gRPC health said SERVING during start-up (the timeout names those that printed a ready line but are not). */
  private readonly serving = new Set<ServiceProcess>();
  /** The launcher's own flags of each process (before --service-arg extras), for restart(). */
  private readonly baseArgs = new Map<ServiceProcess, string[]>();
  private readonly shardOf = new Map<ServiceProcess, number>();
  /** Each label's last ready line: a restarted process that never became ready is listed with it. */
  private readonly lastReady = new Map<string, ReadyLine>();
  /** Ends health polling and the router probe when start-up fails or is interrupted. */
  private readonly startup = new AbortController();
  private readonly onAbort = (): void => this.startup.abort(new CancelledError("cluster start-up interrupted"));

  constructor(o: ClusterOptions, s: ClusterSettings, claims: Claims) {
    this.o = o;
    this.s = s;
    this.claims = claims;
    this.clusterFile = s.clusterFile;
    this.redis = claims.redis;
    this.unexpectedExit = new Promise<ServiceProcess>((r) => (this.resolveDeath = r));
    this.startupFailure = new Promise<never>((_, rej) => (this.rejectStartup = rej));
    this.startupFailure.catch(() => {});
    // Stopped first of all that stop() undoes: the services, then the claims.
    claims.stack.defer(() => this.stopServices());
    if (o.signal?.aborted === true) this.onAbort();
    else o.signal?.addEventListener("abort", this.onAbort, { once: true });
  }

  get stopping(): boolean {
    return this.claims.stack.disposed;
  }

  /** Stop every service (router first), then a private Redis; removes cluster.json and releases the claims. Idempotent. */
  readonly stop = (): Promise<void> => this.claims.stack.disposeAll();

  /** Starts every service and writes cluster.json; a failure stops whatever started and rethrows. */
  async start(): Promise<void> {
    try {
      const { url, servedModelName } = await this.startServices();
      this.info = this.describe(url, servedModelName);
      writeClusterFile(this.clusterFile, this.info);
    } catch (err) {
      this.starting = false;
      this.o.signal?.removeEventListener("abort", this.onAbort);
      this.startup.abort(err);
      await this.stop();
      throw err;
    }
    this.starting = false;
    this.o.signal?.removeEventListener("abort", this.onAbort);
    // A death between the last phase and here was recorded as a start-up failure; surface it.
    const dead = this.processes.find((p) => p.exitInfo !== undefined && !p.stopRequested);
    if (dead !== undefined) this.resolveDeath(dead);
  }

  /** Expert-hosts, then decode and prefill pointed at them, then the router pointed at decode; each phase up before the next. */
  private async startServices(): Promise<{ url: string; servedModelName: string }> {
    const { counts, host, port } = this.s;
    const base: Omit<ServiceArgsInput, "shardIndex" | "expertHostAddresses" | "decodeAddresses"> = {
      model: this.s.model,
      precision: this.s.precision,
      logLevel: this.s.logLevel,
      host,
      redisUrl: this.redis.url,
      queuePrefix: this.s.queuePrefix,
      httpAddress: `${host}:${port}`,
      servedModelName: this.o.servedModelName,
      shardCount: counts.expertHosts,
      // Every core, unless the environment says otherwise (MOELA_DECODE_THREADS, which the service then reads).
      decodeThreads: this.s.env["MOELA_DECODE_THREADS"] === undefined ? Math.min(256, availableParallelism()) : undefined,
      // Decode first when it and a host both want a core; MOELA_EXPERT_HOST_NICE, when set, is the service's to read.
      expertHostNice: this.s.env["MOELA_EXPERT_HOST_NICE"] === undefined ? EXPERT_HOST_NICE : undefined,
      // Decode waits while the hosts compute, so they may use every core too (MOELA_EXPERT_HOST_THREADS wins).
      expertHostThreads: this.s.env["MOELA_EXPERT_HOST_THREADS"] === undefined ? Math.min(256, availableParallelism()) : undefined,
      decodeMicroBatches: this.s.env["MOELA_DECODE_MICRO_BATCHES"] === undefined ? LOCAL_DECODE_MICRO_BATCHES : undefined,
    };
    const whenUp = (p: ServiceProcess): Promise<ReadyLine> => this.whenUp(p);
    const hosts = Array.from({ length: counts.expertHosts * counts.expertReplicas }, (_, k) => {
      const shardIndex = shardOfExpertHost(k, counts.expertHosts);
      const p = this.launch("expert-host", k, serviceArgs("expert-host", { ...base, shardIndex, expertHostAddresses: [], decodeAddresses: [] }));
      this.shardOf.set(p, shardIndex);
      return p;
    });
    const hostReady = await this.phase(Promise.all(hosts.map(whenUp)), "the expert-hosts");
    const expertHostAddresses = shardAddresses(hostReady, counts.expertHosts);

    const withHosts = { ...base, shardIndex: 0, expertHostAddresses, decodeAddresses: [] };
    const decodes = Array.from({ length: counts.decode }, (_, i) => this.launch("decode", i, serviceArgs("decode", withHosts)));
    const prefills = Array.from({ length: counts.prefill }, (_, i) => this.launch("prefill", i, serviceArgs("prefill", withHosts)));
    const [decodeReady] = await this.phase(Promise.all([Promise.all(decodes.map(whenUp)), Promise.all(prefills.map(whenUp))]), "decode and prefill");
    const decodeAddresses = decodeReady.map((r) => r.grpc);

    const router = this.launch("router", 0, serviceArgs("router", { ...withHosts, decodeAddresses }));
    const routerReady = await this.phase(whenUp(router), "the router");
    const url = routerReady.http!.replace(/\/+$/, "");
    const servedModelName = await this.phase(routerModelId(url, this.s.deadline, this.startup.signal, this.s.apiKey), "the router's HTTP API");
    for (const p of this.processes) this.lastReady.set(p.label, p.readyLine!);
    return { url, servedModelName };
  }

  /** Spawns one service (its flags, then any --service-arg extras) and watches for its death. */
  private launch(role: Role, index: number, args: string[]): ServiceProcess {
    const extra = this.o.serviceArgs?.[role] ?? [];
    const p = new ServiceProcess({
      role,
      index,
      args: [...args, ...extra],
      logPath: join(this.s.logDir, `${role}-${index}.log`),
      ...(this.o.command !== undefined ? { command: this.o.command } : {}),
      env: serviceEnv(role, this.s.env, this.claims.internal, this.s.apiKey),
    });
    this.processes.push(p);
    this.baseArgs.set(p, args);
    this.s.progress({ kind: "starting", label: p.label, pid: p.pid, logPath: p.logPath });
    // Watches for the death for as long as the process lives; exited never rejects, and the death goes
    // to start() (rejectStartup) or to unexpectedExit (resolveDeath).
    void p.exited.then((exit) => {
      if (p.stopRequested) return;
      if (this.starting) {
        this.rejectStartup(new ServiceStartError(p.label, `${describeExit(exit)} during cluster start-up`, p.logPath, p.tail()));
      } else this.resolveDeath(p);
    });
    return p;
  }

  /**
   * Health probes dial the internal services with their TLS settings; the router's gRPC server is the
   * public Generate API (plaintext, behind --api-key), not an internal one.
   */
  private probeSecurity(role: Role): { security?: InternalSecurity } {
    return role === "router" ? {} : { security: this.claims.security };
  }

  /** Ready line, then grpc health SERVING. */
  private async whenUp(p: ServiceProcess): Promise<ReadyLine> {
    const ready = await p.waitReady();
    this.s.progress({ kind: "ready", label: p.label, ready });
    // No deadline of its own: the phase's start-up deadline is the one timer, so a start that runs out of
    // time always fails with the phase's message (two timers at one deadline would race); the startup
    // signal ends the polling when the start fails.
    await waitForServing(ready.grpc, { timeoutMs: Infinity, signal: this.startup.signal, ...this.probeSecurity(p.role) });
    this.serving.add(p);
    this.s.progress({ kind: "healthy", label: p.label, up: ++this.up, total: processCount(this.s.counts) });
    return ready;
  }

  /** `work`, unless a service dies, the signal aborts or the start-up deadline passes first. */
  private async phase<T>(work: Promise<T>, what: string): Promise<T> {
    const timeout = timeoutPromise(Math.max(0, this.s.deadline - Date.now()), () => {
      const waiting = this.processes.filter((p) => p.readyLine === undefined).map((p) => p.label);
      const notServing = this.processes.filter((p) => p.readyLine !== undefined && !this.serving.has(p)).map((p) => p.label);
      const details = [
        ...(waiting.length > 0 ? [`no ready line yet from: ${waiting.join(", ")}`] : []),
        ...(notServing.length > 0 ? [`gRPC health not SERVING yet: ${notServing.join(", ")}`] : []),
      ];
      return `cluster start-up timed out while starting ${what}${details.length > 0 ? ` (${details.join("; ")})` : ""}; logs in ${this.s.logDir}`;
    });
    try {
      return await Promise.race([work, this.startupFailure, abortPromise(this.o.signal), timeout.promise]);
    } finally {
      timeout.cancel();
    }
  }

  /** cluster.json's content once every service is up. */
  private describe(url: string, servedModelName: string): ClusterInfo {
    const { counts } = this.s;
    const { internal, security } = this.claims;
    return {
      version: 1,
      started_at: new Date().toISOString(),
      launcher_pid: process.pid,
      model: this.s.model,
      served_model_name: servedModelName,
      precision: this.s.precision,
      url,
      openai_base_url: `${url}/v1`,
      curl: curlExample(url, servedModelName, this.s.hasTokenizer, this.s.apiKey !== undefined),
      redis: this.redisNow(),
      queue_prefix: this.s.queuePrefix,
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
      instances: this.instancesNow(),
    };
  }

  private instancesNow(): InstanceInfo[] {
    const list: InstanceInfo[] = this.processes.map((p) => {
      const r = p.readyLine ?? this.lastReady.get(p.label)!;
      const shard = this.shardOf.get(p);
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
    return list.sort(byRoleThenIndex);
  }

  private redisNow(): ClusterInfo["redis"] {
    return { url: this.redis.url, source: this.redis.source, pid: this.redis.pid ?? null };
  }

  /** cluster.json again, after a restart: the instances and Redis as they are now. */
  private rewriteClusterFile(): void {
    writeClusterFile(this.clusterFile, { ...this.info, redis: this.redisNow(), instances: this.instancesNow() });
  }

  readonly restart = async (label: string, ro: { readonly timeoutMs?: number } = {}): Promise<ServiceProcess> => {
    const { processes } = this;
    const old = processes.find((p) => p.label === label);
    if (old === undefined) throw new InvalidArgumentError(`no service "${label}" in this cluster (${processes.map((p) => p.label).join(", ")})`);
    if (old.exitInfo === undefined) throw new InvalidArgumentError(`${label} (pid ${old.pid}) is still running; only a service that exited can be restarted`);
    if (this.stopping) throw new CancelledError("the cluster is stopping");
    // A process that was restarted already has its addresses pinned (and may have died before its ready line).
    const args = old.readyLine !== undefined ? pinAddresses(this.baseArgs.get(old)!, old.readyLine) : this.baseArgs.get(old)!;
    const fresh = this.launch(old.role, old.index, args);
    // The new process takes the old one's place (launch appended it).
    processes.splice(processes.indexOf(fresh), 1);
    processes.splice(processes.indexOf(old), 1, fresh);
    this.baseArgs.delete(old);
    const shard = this.shardOf.get(old);
    if (shard !== undefined) this.shardOf.set(fresh, shard);
    const timeoutMs = ro.timeoutMs ?? 120_000;
    const timeout = timeoutPromise(timeoutMs, () => `${label} did not come back within ${timeoutMs} ms; log: ${fresh.logPath}`);
    try {
      const ready = await Promise.race([fresh.waitReady(), timeout.promise]);
      this.s.progress({ kind: "ready", label: fresh.label, ready });
      this.lastReady.set(fresh.label, ready);
      await Promise.race([waitForServing(ready.grpc, { timeoutMs, ...this.probeSecurity(fresh.role) }), timeout.promise]);
    } finally {
      timeout.cancel();
    }
    if (this.stopping) throw new CancelledError("the cluster is stopping");
    this.rewriteClusterFile();
    return fresh;
  };

  readonly restartRedis = async (ro: { readonly timeoutMs?: number } = {}): Promise<void> => {
    const server = this.redis.server;
    if (server === undefined) throw new InvalidArgumentError(`the cluster's Redis (${this.redis.url}) is not one it started`);
    if (this.stopping) throw new CancelledError("the cluster is stopping");
    await server.restart(ro.timeoutMs);
    this.claims.stateLock.setRedisPid(server.pid());
    if (this.stopping) throw new CancelledError("the cluster is stopping");
    this.rewriteClusterFile();
  };

  /** SIGTERM (SIGKILL after the grace period) to every service, a tier at a time (STOP_TIERS). */
  private async stopServices(): Promise<void> {
    for (const tier of STOP_TIERS) {
      const members = this.processes.filter((p) => tier.includes(p.role));
      await Promise.all(
        members.map(async (p) => {
          if (p.exitInfo === undefined) this.s.progress({ kind: "stopping", label: p.label });
          const exit = await p.stop(this.s.graceMs);
          this.s.progress({ kind: "stopped", label: p.label, exit });
        }),
      );
    }
  }
}

/** Checks the options, claims the state dir, port, Redis and queue prefix, then starts every service (see the top). */
export async function startCluster(o: ClusterOptions = {}): Promise<Cluster> {
  const settings = resolveClusterSettings(o);
  const claims = await claimCluster(o, settings);
  const cluster = new LocalCluster(o, settings, claims);
  await cluster.start();
  return cluster;
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
