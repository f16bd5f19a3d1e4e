/**
 * `moela cluster` (what `npm start` runs): the whole platform on this machine as real processes,
 * through the launcher library (launcher.ts). Progress goes to stderr; when everything is up the
 * URL, a curl example and the endpoint table go to stdout (or, with --json, cluster.json as one
 * line), and the same lands in <state-dir>/cluster.json. Ctrl-C or SIGTERM stops everything and
 * exits 0.
 *
 * Once up, the cluster is supervised (launcher.ts superviseCluster, supervisor.ts): a service (or the
 * private Redis) that dies is restarted at its address with back-off while the rest keeps serving, and
 * each death and restart is printed as it happens. A service that dies during start-up still fails the
 * start (exit 1, with its last log lines): that is a configuration to fix, not a crash to ride out.
 */
import { relative } from "node:path";
import { CancelledError, InvalidArgumentError, MoelaError } from "@moela/core";
import {
  DEFAULT_MODEL,
  PRECISIONS,
  ROLES,
  formatEndpointTable,
  isRole,
  startCluster,
  superviseCluster,
  type Cluster,
  type ClusterInfo,
  type Precision,
  type ProgressEvent,
  type Role,
} from "./launcher.js";
import { describeExit, type Supervisor, type SupervisorEvent } from "./supervisor.js";

export interface ClusterCliOptions {
  model?: string;
  prefill: number;
  decode: number;
  expertHosts: number;
  expertReplicas?: number;
  precision: string;
  host: string;
  port: number;
  redisUrl?: string;
  privateRedis?: boolean;
  queuePrefix: string;
  servedModelName?: string;
  apiKey?: string;
  /** A value; false: --no-internal-secret; undefined: generate one (unless a file is given). */
  internalSecret?: string | false;
  internalSecretFile?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  tlsClientAuth?: boolean;
  stateDir: string;
  logLevel: string;
  startupTimeout: number;
  serviceArg: string[];
  json?: boolean;
}

/** "decode=--kv-blocks=64" -> ["decode", "--kv-blocks=64"]; the role must exist. */
export function parseServiceArg(spec: string): [Role, string] {
  const eq = spec.indexOf("=");
  const role = eq < 0 ? "" : spec.slice(0, eq);
  if (!isRole(role) || eq === spec.length - 1) {
    throw new InvalidArgumentError(`--service-arg must look like ROLE=ARG with ROLE one of ${ROLES.join(", ")}, got "${spec}"`);
  }
  return [role, spec.slice(eq + 1)];
}

export function groupServiceArgs(specs: readonly string[]): Partial<Record<Role, string[]>> {
  const out: Partial<Record<Role, string[]>> = {};
  for (const spec of specs) {
    const [role, arg] = parseServiceArg(spec);
    (out[role] ??= []).push(arg);
  }
  return out;
}

/** The human summary printed once the cluster is up. */
export function formatClusterSummary(info: ClusterInfo, clusterFile: string, logDir: string): string {
  const rel = (p: string) => {
    const r = relative(process.cwd(), p);
    return r.startsWith("..") ? p : r;
  };
  const redis = { flag: "--redis-url", env: "REDIS_URL", local: "already running", private: `private redis-server, pid ${info.redis.pid}` }[info.redis.source];
  return [
    "",
    `moela is serving ${info.served_model_name} (${info.precision}) at ${info.url}`,
    `OpenAI-compatible API: ${info.openai_base_url}`,
    "",
    "Try:",
    `  ${info.curl}`,
    "",
    formatEndpointTable(info.instances)
      .split("\n")
      .map((l) => `  ${l}`)
      .join("\n"),
    "",
    `Redis: ${info.redis.url} (${redis}), queue prefix "${info.queue_prefix}"`,
    `Internal gRPC: ${info.internal === undefined || !info.internal.secret ? "no secret" : info.internal.secret_file !== undefined ? `secret in ${rel(info.internal.secret_file)}` : "secret given"}, ${info.internal?.tls === "mtls" ? "mTLS" : info.internal?.tls === "tls" ? "TLS" : "plaintext"}`,
    `Endpoints: ${rel(clusterFile)}   Logs: ${rel(logDir)}/`,
    "A service that dies is restarted where it was. Press Ctrl-C to stop.",
    "",
  ].join("\n");
}

function progressLine(e: ProgressEvent): string | undefined {
  switch (e.kind) {
    case "redis":
      return `redis      ${e.url} (${{ flag: "from --redis-url", env: "from REDIS_URL", local: "already running", private: "private redis-server" }[e.source]})`;
    case "note":
      return `note       ${e.message}`;
    case "starting":
      return `starting   ${e.label} (pid ${e.pid ?? "?"})`;
    case "ready":
      return undefined;
    case "healthy":
      return `up         ${e.label} [${e.up}/${e.total}]`;
    case "stopping":
      return `stopping   ${e.label}`;
    case "stopped":
      return `stopped    ${e.label} (${e.exit.signal ?? `exit ${e.exit.code}`})`;
  }
}

const seconds = (ms: number): string => (ms < 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 1000)} s`);

/** One line (or a few, with a crashed service's last log lines) per supervision event. */
export function supervisorLine(e: SupervisorEvent, tail: readonly string[] = []): string | undefined {
  switch (e.kind) {
    case "exited": {
      const head = `died       ${e.label} (pid ${e.pid ?? "?"}, ${describeExit(e.exit)} after ${seconds(e.upMs)}); restarting in ${seconds(e.restartInMs)}`;
      return tail.length > 0 ? `${head}\n${tail.map((l) => `  | ${l}`).join("\n")}` : head;
    }
    case "restarting":
      return undefined;
    case "restarted":
      return `restarted  ${e.label} (pid ${e.pid ?? "?"}) in ${seconds(e.tookMs)} [restart ${e.restarts}]`;
    case "restart-failed":
      return `failed     ${e.label} did not come back: ${e.error.message}`;
  }
}

export async function runCluster(o: ClusterCliOptions): Promise<number> {
  if (!(PRECISIONS as readonly string[]).includes(o.precision)) {
    throw new InvalidArgumentError(`--precision must be one of ${PRECISIONS.join(", ")}, got ${o.precision}`);
  }
  const serviceArgs = groupServiceArgs(o.serviceArg);
  const err = (s: string) => process.stderr.write(`${s}\n`);

  // Ctrl-C and SIGTERM: first one stops the cluster gracefully; a second one is left to the
  // default handlers of the children (they got it too when it came from the terminal).
  const interrupted = new AbortController();
  const onSignal = (why: string) => {
    if (interrupted.signal.aborted) return;
    err(`\n${why}: stopping the cluster...`);
    interrupted.abort();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  process.on("SIGHUP", onSignal);
  // Under `npm start` / `npx`, npm may exit on SIGTERM without passing it on; once npm is gone
  // (this process re-parented), nobody holds the cluster any more, so stop it as if signalled.
  const parent = process.ppid;
  const watchParent =
    process.env["npm_lifecycle_event"] !== undefined
      ? setInterval(() => {
          if (process.ppid !== parent) onSignal(`parent process ${parent} exited`);
        }, 1_000).unref()
      : undefined;

  let cluster: Cluster | undefined;
  let supervisor: Supervisor | undefined;
  try {
    const replicas = o.expertReplicas ?? 1;
    err(
      `moela cluster: ${o.expertHosts} expert-host shard(s)${replicas > 1 ? ` x ${replicas} replicas` : ""}, ${o.decode} decode, ${o.prefill} prefill, 1 router; model ${o.model ?? DEFAULT_MODEL}, precision ${o.precision}`,
    );
    try {
      cluster = await startCluster({
        ...(o.model !== undefined ? { model: o.model } : {}),
        prefill: o.prefill,
        decode: o.decode,
        expertHosts: o.expertHosts,
        expertReplicas: replicas,
        precision: o.precision as Precision,
        host: o.host,
        port: o.port,
        ...(o.redisUrl !== undefined ? { redisUrl: o.redisUrl } : {}),
        privateRedis: o.privateRedis === true,
        queuePrefix: o.queuePrefix,
        ...(o.servedModelName !== undefined ? { servedModelName: o.servedModelName } : {}),
        ...(o.apiKey !== undefined ? { apiKey: o.apiKey } : {}),
        // Internal gRPC carries a secret by default: a random one per cluster unless given or turned off.
        ...(typeof o.internalSecret === "string" ? { internalSecret: o.internalSecret } : {}),
        ...(o.internalSecretFile !== undefined ? { internalSecretFile: o.internalSecretFile } : {}),
        generateInternalSecret: o.internalSecret === undefined,
        tls: {
          ...(o.tlsCert !== undefined ? { cert: o.tlsCert } : {}),
          ...(o.tlsKey !== undefined ? { key: o.tlsKey } : {}),
          ...(o.tlsCa !== undefined ? { ca: o.tlsCa } : {}),
          clientAuth: o.tlsClientAuth === true,
        },
        stateDir: o.stateDir,
        logLevel: o.logLevel,
        serviceArgs,
        startupTimeoutMs: o.startupTimeout * 1000,
        signal: interrupted.signal,
        onProgress: (e) => {
          const line = progressLine(e);
          if (line !== undefined) err(line);
        },
      });
    } catch (e) {
      // Interrupted: whatever error won the race (a child dying of the same Ctrl-C), it was asked for.
      if (e instanceof CancelledError || interrupted.signal.aborted) {
        err("stopped before the cluster was up");
        return 0;
      }
      if (e instanceof MoelaError) {
        err(`\nmoela cluster: could not start: ${e.message}`);
        return 1;
      }
      throw e;
    }
    const logDir = `${o.stateDir.replace(/\/+$/, "")}/logs`;
    if (o.json) process.stdout.write(`${JSON.stringify(cluster.info)}\n`);
    else process.stdout.write(formatClusterSummary(cluster.info, cluster.clusterFile, logDir));

    const running = cluster;
    supervisor = superviseCluster(running, {
      onEvent: (e) => {
        // Ctrl-C from a terminal reaches the services too; their exits then are no deaths.
        if (interrupted.signal.aborted) return;
        // A service that crashed (an exit code, not a kill) shows why.
        const dead = e.kind === "exited" && e.exit.signal === null ? running.processes.find((p) => p.label === e.label) : undefined;
        const line = supervisorLine(e, dead?.tail(10) ?? []);
        if (line !== undefined) err(line);
      },
    });
    await new Promise<void>((r) => {
      if (interrupted.signal.aborted) r();
      else interrupted.signal.addEventListener("abort", () => r(), { once: true });
    });
    await supervisor.stop();
    await cluster.stop();
    err("cluster stopped");
    return 0;
  } finally {
    clearInterval(watchParent);
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    process.off("SIGHUP", onSignal);
  }
}
