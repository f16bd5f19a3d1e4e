/**
 * The instance registry in Redis: every instance (router, prefill, decode, expert-host) writes its
 * record with a TTL and rewrites it every heartbeat with its current load; one that stops (crash,
 * kill -9, partition) drops out when its key expires, within the TTL. Readers list a role.
 *
 * Keys (plain Redis, readable with redis-cli):
 *   <prefix>:registry:<role>:<id>   HASH, PEXPIRE ttlMs on every heartbeat. Fields (strings):
 *       role id pid hostname grpc metrics http precision model shard_index shard_count
 *       started_at_ms heartbeat_at_ms ttl_ms
 *       running waiting pending free_kv_blocks total_kv_blocks block_size accepting (1|0)
 *       queue.<name>             one per queue length the instance publishes (e.g. queue.prefill_waiting)
 *   <prefix>:registry:<role>        ZSET of the role's ids, scored by their last heartbeat (ms). An index
 *       only: the hash's existence decides liveness (Redis expires it on its own clock, so the
 *       instances' clocks need not agree); ids silent for a minute are pruned from the index on reads.
 *
 * A heartbeat rewrites the whole record, so a record lost with a Redis restart comes back with the
 * next beat. Heartbeat failures are logged (once per outage), never thrown: an instance keeps serving
 * while Redis is away and reappears when it is back.
 */
import { hostname } from "node:os";
import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import type { Logger } from "@moela/core";
import { redisConnection, validateQueuePrefix } from "./queues.js";
import type { InstanceLoad, InstanceRole } from "./policy/types.js";
import { errorMessage } from "@moela/core";

export const INSTANCE_ROLES: readonly InstanceRole[] = ["router", "prefill", "decode", "expert-host"];
/** Default heartbeat period. */
export const HEARTBEAT_INTERVAL_MS = 1_000;
/** Default record TTL: a few missed heartbeats and the instance is gone. */
export const REGISTRY_TTL_MS = 4_000;
/** Index entries silent this long are pruned (much longer than any TTL: clocks may differ). */
const INDEX_PRUNE_MS = 60_000;

/** Where an instance is reached and what it serves: declared by the instance, read back as declared. */
interface InstanceAddress {
  readonly role: InstanceRole;
  /** Dialable gRPC host:port. */
  readonly grpcAddress: string;
  readonly metricsUrl?: string;
  /** router: its HTTP API. */
  readonly httpUrl?: string;
  readonly precision?: string;
  readonly modelId?: string;
  /** expert-host: the shard it serves, of how many. */
  readonly shardIndex?: number;
  readonly shardCount?: number;
}

/** The optional fields of InstanceAddress and the hash fields they are kept in (numbers as decimal strings). */
const OPTIONAL_TEXT = { metricsUrl: "metrics", httpUrl: "http", precision: "precision", modelId: "model" } as const;
const OPTIONAL_NUMBERS = { shardIndex: "shard_index", shardCount: "shard_count" } as const;
type OptionalAddress = Pick<InstanceAddress, keyof typeof OPTIONAL_TEXT | keyof typeof OPTIONAL_NUMBERS>;

/** What an instance says about itself (fixed for its lifetime). */
export interface InstanceInfo extends InstanceAddress {
  /** Default: `<role>-<hostname>-<pid>-<6 hex>`. */
  readonly id?: string;
  readonly pid?: number;
}

/** What an instance publishes each heartbeat; absent numbers are 0 (accepting: true). */
export interface PublishedLoad extends Partial<InstanceLoad> {
  /** Queue lengths by name (e.g. prefill_waiting, prefill_active). */
  readonly queues?: Readonly<Record<string, number>>;
}

/** One live instance as read back. */
export interface InstanceRecord extends InstanceAddress {
  readonly id: string;
  readonly pid: number;
  readonly hostname: string;
  readonly startedAtMs: number;
  readonly heartbeatAtMs: number;
  readonly ttlMs: number;
  readonly load: InstanceLoad;
  readonly queues: Readonly<Record<string, number>>;
}

export interface RegistryOptions {
  /** Key prefix (the deployment's queue prefix, default "moela"). */
  readonly prefix?: string;
  /** Record TTL (default REGISTRY_TTL_MS). */
  readonly ttlMs?: number;
  readonly logger?: Logger;
}

/** An ioredis client for the registry and decision log: commands fail after a short retry instead of queueing forever. */
export function createRedisClient(url: string): Redis {
  const c = redisConnection(url) as { host: string; port: number; db: number; username?: string; password?: string; tls?: object };
  return new Redis({ ...c, maxRetriesPerRequest: 2, connectTimeout: 5_000, retryStrategy: (times) => Math.min(times * 200, 2_000) });
}

/**
 * The address to register: `override` when given, else the bound address with a wildcard host
 * (0.0.0.0, ::) replaced by this machine's hostname (others cannot dial a wildcard).
 */
export function advertisedAddress(bound: string, override?: string): string {
  if (override !== undefined && override !== "") return override;
  const i = bound.lastIndexOf(":");
  const host = bound.slice(0, i);
  return host === "0.0.0.0" || host === "[::]" || host === "::" ? `${hostname()}:${bound.slice(i + 1)}` : bound;
}

/**
 * The expert-host replicas among `records` that serve one of `shardCount` shards (and, when given,
 * the precision profile), as ExpertShardSet.update takes them.
 */
export function shardReplicas(records: readonly InstanceRecord[], shardCount: number, precision?: string): { shard: number; address: string }[] {
  return records
    .filter(
      (r) => r.role === "expert-host" && r.shardCount === shardCount && r.shardIndex !== undefined && (precision === undefined || r.precision === precision),
    )
    .map((r) => ({ shard: r.shardIndex!, address: r.grpcAddress }));
}

export function registryKey(prefix: string, role: InstanceRole, id?: string): string {
  return id === undefined ? `${prefix}:registry:${role}` : `${prefix}:registry:${role}:${id}`;
}

function defaultId(role: InstanceRole, pid: number): string {
  const host =
    hostname()
      .replace(/[^A-Za-z0-9.-]/g, "-")
      .slice(0, 63) || "host";
  return `${role}-${host}-${pid}-${randomBytes(3).toString("hex")}`;
}

function num(v: string | undefined, d = 0): number {
  const n = v === undefined || v === "" ? NaN : Number(v);
  return Number.isFinite(n) ? n : d;
}

function optNum(v: string | undefined): number | undefined {
  const n = v === undefined || v === "" ? NaN : Number(v);
  return Number.isFinite(n) ? n : undefined;
}

const entries = <T extends object>(o: T) => Object.entries(o) as [keyof T, string][];

/** The hash fields of an instance's optional address fields (those it has). */
function optionalAddressFields(info: OptionalAddress): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [field, key] of entries(OPTIONAL_TEXT)) {
    const v = info[field];
    if (v !== undefined) out[key] = v;
  }
  for (const [field, key] of entries(OPTIONAL_NUMBERS)) {
    const v = info[field];
    if (v !== undefined) out[key] = String(v);
  }
  return out;
}

/** The optional address fields a record's hash has (empty text and non-numbers count as absent). */
function parseOptionalAddress(h: Record<string, string>): OptionalAddress {
  const out: { -readonly [K in keyof OptionalAddress]: OptionalAddress[K] } = {};
  for (const [field, key] of entries(OPTIONAL_TEXT)) {
    const v = h[key];
    if (v) out[field] = v;
  }
  for (const [field, key] of entries(OPTIONAL_NUMBERS)) {
    const v = optNum(h[key]);
    if (v !== undefined) out[field] = v;
  }
  return out;
}

/** A hash read back as a record (undefined when it is gone or not a record). */
export function parseRecord(h: Record<string, string>): InstanceRecord | undefined {
  if (h.id === undefined || h.role === undefined || h.grpc === undefined) return undefined;
  const queues: Record<string, number> = {};
  for (const [k, v] of Object.entries(h)) if (k.startsWith("queue.")) queues[k.slice(6)] = num(v);
  return {
    role: h.role as InstanceRole,
    id: h.id,
    pid: num(h.pid),
    hostname: h.hostname ?? "",
    grpcAddress: h.grpc,
    ...parseOptionalAddress(h),
    startedAtMs: num(h.started_at_ms),
    heartbeatAtMs: num(h.heartbeat_at_ms),
    ttlMs: num(h.ttl_ms),
    load: {
      runningSequences: num(h.running),
      waitingSequences: num(h.waiting),
      pendingTransfers: num(h.pending),
      freeKvBlocks: num(h.free_kv_blocks),
      totalKvBlocks: num(h.total_kv_blocks),
      blockSize: num(h.block_size, 1),
      accepting: h.accepting !== "0",
    },
    queues,
  };
}

/** One instance's registration: heartbeats until stop() or deregister(). */
export class Registration {
  readonly id: string;
  readonly key: string;
  private timer: NodeJS.Timeout | undefined;
  private beating: Promise<void> | undefined;
  private stopped = false;
  private failing = false;
  private readonly fixed: Record<string, string>;

  constructor(
    private readonly registry: InstanceRegistry,
    info: InstanceInfo,
    private readonly load: () => PublishedLoad | Promise<PublishedLoad>,
    private readonly intervalMs: number,
  ) {
    const pid = info.pid ?? process.pid;
    this.id = info.id ?? defaultId(info.role, pid);
    this.key = registryKey(registry.prefix, info.role, this.id);
    this.fixed = {
      role: info.role,
      id: this.id,
      pid: String(pid),
      hostname: hostname(),
      grpc: info.grpcAddress,
      started_at_ms: String(Date.now()),
      ttl_ms: String(registry.ttlMs),
      ...optionalAddressFields(info),
    };
  }

  get role(): InstanceRole {
    return this.fixed.role as InstanceRole;
  }

  /** Write the record now (also what every heartbeat does). Never throws; failures are logged. */
  beat(): Promise<void> {
    this.beating ??= this.write().finally(() => {
      this.beating = undefined;
    });
    return this.beating;
  }

  /** First write, then a heartbeat every interval. */
  async start(): Promise<void> {
    await this.beat();
    this.schedule();
  }

  /** Stop heartbeating and leave the record to expire (what a crash looks like to readers). */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  /** Stop heartbeating and remove the record now (graceful shutdown). */
  async deregister(): Promise<void> {
    this.stop();
    await this.beating;
    try {
      await this.registry.redis.multi().del(this.key).zrem(registryKey(this.registry.prefix, this.role), this.id).exec();
    } catch (err) {
      this.registry.logger?.warn({ instance: this.id, err: errorMessage(err) }, "registry: could not deregister (the record expires on its own)");
    }
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      // A timer has nobody to await it: write() logs a failed heartbeat and never rejects.
      void this.beat().finally(() => this.schedule());
    }, this.intervalMs);
    this.timer.unref();
  }

  private async write(): Promise<void> {
    const r = this.registry;
    try {
      const l = await this.load();
      const now = Date.now();
      const fields: Record<string, string> = {
        ...this.fixed,
        heartbeat_at_ms: String(now),
        running: String(l.runningSequences ?? 0),
        waiting: String(l.waitingSequences ?? 0),
        pending: String(l.pendingTransfers ?? 0),
        free_kv_blocks: String(l.freeKvBlocks ?? 0),
        total_kv_blocks: String(l.totalKvBlocks ?? 0),
        block_size: String(l.blockSize ?? 1),
        accepting: l.accepting === false ? "0" : "1",
      };
      for (const [q, n] of Object.entries(l.queues ?? {})) fields[`queue.${q}`] = String(n);
      await r.redis.multi().hset(this.key, fields).pexpire(this.key, r.ttlMs).zadd(registryKey(r.prefix, this.role), now, this.id).exec();
      if (this.failing) r.logger?.info({ instance: this.id }, "registry: heartbeats reach Redis again");
      this.failing = false;
    } catch (err) {
      if (!this.failing) r.logger?.warn({ instance: this.id, err: errorMessage(err) }, "registry: heartbeat failed (retrying every interval)");
      this.failing = true;
    }
  }
}

export class InstanceRegistry {
  readonly prefix: string;
  readonly ttlMs: number;
  readonly logger: Logger | undefined;

  constructor(
    readonly redis: Redis,
    options: RegistryOptions = {},
  ) {
    this.prefix = validateQueuePrefix(options.prefix ?? "moela");
    this.ttlMs = options.ttlMs ?? REGISTRY_TTL_MS;
    if (!(Number.isInteger(this.ttlMs) && this.ttlMs >= 100)) throw new RangeError(`registry ttlMs must be an integer >= 100, got ${this.ttlMs}`);
    this.logger = options.logger;
  }

  /**
   * Register an instance: its record is written now (a failure is logged, not thrown) and rewritten
   * every `intervalMs` with `load()`. The TTL should cover a few intervals.
   */
  async register(info: InstanceInfo, load: () => PublishedLoad | Promise<PublishedLoad>, options: { intervalMs?: number } = {}): Promise<Registration> {
    const intervalMs = options.intervalMs ?? Math.min(HEARTBEAT_INTERVAL_MS, Math.floor(this.ttlMs / 3));
    const reg = new Registration(this, info, load, intervalMs);
    await reg.start();
    return reg;
  }

  /** The live instances of `role`, ordered by id. */
  async list(role: InstanceRole): Promise<InstanceRecord[]> {
    const index = registryKey(this.prefix, role);
    await this.redis.zremrangebyscore(index, "-inf", Date.now() - INDEX_PRUNE_MS);
    const ids = await this.redis.zrange(index, 0, -1);
    if (ids.length === 0) return [];
    const p = this.redis.pipeline();
    for (const id of ids) p.hgetall(registryKey(this.prefix, role, id));
    const res = (await p.exec()) ?? [];
    const out: InstanceRecord[] = [];
    for (const [err, h] of res) {
      if (err !== null) throw err;
      const rec = parseRecord(h as Record<string, string>);
      if (rec !== undefined && rec.role === role) out.push(rec);
    }
    return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** Every live instance of every role. */
  async listAll(): Promise<InstanceRecord[]> {
    return (await Promise.all(INSTANCE_ROLES.map((r) => this.list(r)))).flat();
  }
}

/**
 * A role's live instances, re-read every `intervalMs`, for code that must decide without waiting on
 * Redis (the router's decode choice, the dispatcher's replica choice). A failed read keeps the last
 * snapshot (logged once per outage): a Redis blip must not empty the pool.
 */
export class RegistryWatcher {
  private records: readonly InstanceRecord[] = [];
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private failing = false;
  private reading: Promise<void> | undefined;
  private readonly listeners: ((records: readonly InstanceRecord[]) => void)[] = [];

  constructor(
    private readonly registry: InstanceRegistry,
    readonly role: InstanceRole,
    private readonly intervalMs = 500,
  ) {}

  /** Read once, then keep reading in the background until close(). */
  async start(): Promise<void> {
    await this.refresh();
    this.schedule();
  }

  /** One read now (concurrent callers share it). */
  refresh(): Promise<void> {
    this.reading ??= this.registry
      .list(this.role)
      .then(
        (records) => {
          if (this.failing) this.registry.logger?.info({ role: this.role }, "registry: reads work again");
          this.failing = false;
          this.records = records;
          for (const l of this.listeners) l(records);
        },
        (err: unknown) => {
          if (!this.failing) this.registry.logger?.warn({ role: this.role, err: errorMessage(err) }, "registry: read failed; keeping the last snapshot");
          this.failing = true;
        },
      )
      .finally(() => {
        this.reading = undefined;
      });
    return this.reading;
  }

  snapshot(): readonly InstanceRecord[] {
    return this.records;
  }

  /** Called after every successful read. */
  onChange(listener: (records: readonly InstanceRecord[]) => void): void {
    this.listeners.push(listener);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.reading;
  }

  private schedule(): void {
    if (this.closed) return;
    this.timer = setTimeout(() => {
      // A timer has nobody to await it: a failed read is logged by refresh(); only a listener that throws
      // would reject it, and that bug then surfaces as an unhandled rejection.
      void this.refresh().finally(() => this.schedule());
    }, this.intervalMs);
    this.timer.unref();
  }
}
