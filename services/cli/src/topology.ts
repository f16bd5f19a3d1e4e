/**
 * The cluster's shape: which roles run, how many of each, which flags each process gets, where a
 * restarted one listens, which shard an expert-host serves, and in which order they stop. Pure
 * functions of the options and the ready lines; launcher.ts does the starting.
 */
import { InvalidArgumentError, isServiceRole, SERVICE_ROLES, type ReadyLine, type ServiceRole } from "@moela/core";

/** @moela/moe-dispatch PRECISION_NAMES (spelled out: the launcher loads no engine; a test keeps them equal). */
export const PRECISIONS = ["exact", "paper", "paper-logfmt8"] as const;
export type Precision = (typeof PRECISIONS)[number];
/** The service roles (@moela/core's SERVICE_ROLES, whose ready lines the launcher reads). */
export const ROLES = SERVICE_ROLES;
export type Role = ServiceRole;
export const isRole = isServiceRole;

// ---- how many of each ------------------------------------------------------------------------

/** Processes per role: expertHosts counts shards, expertReplicas the processes of each. */
export interface ClusterCounts {
  readonly prefill: number;
  readonly decode: number;
  readonly expertHosts: number;
  readonly expertReplicas: number;
}

function positiveInt(name: string, v: number, min: number): number {
  if (!Number.isInteger(v) || v < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got ${v}`);
  return v;
}

/** The counts asked for (defaults: 1 prefill, 1 decode, 2 expert shards of 1 replica), each checked. */
export function clusterCounts(o: {
  readonly prefill?: number;
  readonly decode?: number;
  readonly expertHosts?: number;
  readonly expertReplicas?: number;
}): ClusterCounts {
  return {
    prefill: positiveInt("--prefill", o.prefill ?? 1, 1),
    decode: positiveInt("--decode", o.decode ?? 1, 1),
    expertHosts: positiveInt("--expert-hosts", o.expertHosts ?? 2, 1),
    expertReplicas: positiveInt("--expert-replicas", o.expertReplicas ?? 1, 1),
  };
}

/** Every service process of the cluster: the expert-hosts, decode, prefill and the router. */
export function processCount(c: ClusterCounts): number {
  return c.expertHosts * c.expertReplicas + c.decode + c.prefill + 1;
}

/** Process k serves shard k mod H: replica r of shard i is expert-host i + r*H. */
export function shardOfExpertHost(k: number, shards: number): number {
  return k % shards;
}

/** Per shard, the gRPC addresses of its replicas joined by "|", from the expert-hosts' ready lines in process order. */
export function shardAddresses(hostReady: readonly ReadyLine[], shards: number): string[] {
  return Array.from({ length: shards }, (_, i) =>
    hostReady
      .filter((_, k) => shardOfExpertHost(k, shards) === i)
      .map((r) => r.grpc)
      .join("|"),
  );
}

/** Stopping order: router first (no new work), then the attention side, then the experts they call. */
export const STOP_TIERS: readonly (readonly Role[])[] = [["router"], ["prefill", "decode"], ["expert-host"]];

/** cluster.json's order: router, prefill, decode, expert-host, each by index. */
export function byRoleThenIndex(a: { readonly role: Role; readonly index: number }, b: { readonly role: Role; readonly index: number }): number {
  const order: Record<Role, number> = { router: 0, prefill: 1, decode: 2, "expert-host": 3 };
  return order[a.role] - order[b.role] || a.index - b.index;
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
  /**
   * decode's --threads, when set. The launcher gives decode every core: its expert-hosts run on this machine and
   * attach through shared memory, so decode leaves them its threads while they compute a large batch
   * (KernelBackend.callerOnly, from LEAVE_CORES_MIN_ROWS rows).
   */
  readonly decodeThreads?: number | undefined;
  /**
   * The expert-hosts' --nice, when set. They share this machine's cores with decode, whose step waits on all of them
   * (and on its own compute), so the OS should give decode the core when both want one.
   */
  readonly expertHostNice?: number | undefined;
  /**
   * The expert-hosts' --threads, when set. On one machine decode waits while they compute, so a host may use every
   * core, and the busier host of a layer is not left to finish on one core while the other idles.
   */
  readonly expertHostThreads?: number | undefined;
  /**
   * decode's --micro-batches, when set. On cores it shares with its hosts, overlapping them gains no compute, while
   * each micro-batch reads the weights of every expert it reaches once more.
   */
  readonly decodeMicroBatches?: number | undefined;
}

/** The flags each role is started with (then any --service-arg extras). */
export function serviceArgs(role: Role, a: ServiceArgsInput): string[] {
  const common = [
    "--model",
    a.model,
    "--precision",
    a.precision,
    "--log-level",
    a.logLevel,
    "--grpc-address",
    `${a.host}:0`,
    "--metrics-address",
    `${a.host}:0`,
  ];
  switch (role) {
    case "expert-host":
      // Registered, so decode and prefill see replicas come and go.
      return [
        ...common,
        "--shard-index",
        String(a.shardIndex),
        "--shard-count",
        String(a.shardCount),
        "--redis-url",
        a.redisUrl,
        "--queue-prefix",
        a.queuePrefix,
        ...(a.expertHostNice !== undefined ? ["--nice", String(a.expertHostNice)] : []),
        ...(a.expertHostThreads !== undefined ? ["--threads", String(a.expertHostThreads)] : []),
      ];
    case "decode":
      return [
        ...common,
        "--redis-url",
        a.redisUrl,
        "--queue-prefix",
        a.queuePrefix,
        "--expert-hosts",
        a.expertHostAddresses.join(","),
        ...(a.decodeThreads !== undefined ? ["--threads", String(a.decodeThreads)] : []),
        ...(a.decodeMicroBatches !== undefined ? ["--micro-batches", String(a.decodeMicroBatches)] : []),
      ];
    case "prefill":
      return [...common, "--redis-url", a.redisUrl, "--queue-prefix", a.queuePrefix, "--expert-hosts", a.expertHostAddresses.join(",")];
    case "router":
      return [
        ...common,
        "--http-address",
        a.httpAddress,
        "--redis-url",
        a.redisUrl,
        "--queue-prefix",
        a.queuePrefix,
        "--decode",
        a.decodeAddresses.join(","),
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
