/**
 * Routing prefill work to the instance that holds the longest cached prefix of the prompt.
 *
 * Keys (plain Redis, readable with redis-cli):
 *   <prefix>:prefix:<instanceId>      SET of the prefix keys (prefixBlockHashes in @moela/core) the prefill
 *                                     instance's cache holds; rewritten on change and every refresh,
 *                                     PEXPIRE ttl each time, so a dead instance's set goes with it.
 *   BullMQ queue "prefill.<instanceId>" (keys <prefix>:prefill.<instanceId>:*): jobs the router sent to
 *                                     that instance. Each prefill worker consumes its own queue and the
 *                                     shared "prefill" queue. (BullMQ refuses ':' in a queue name, and a
 *                                     name outside "prefill:" keeps these keys clear of the shared
 *                                     queue's job keys, whose ids callers choose.)
 *   <prefix>:prefill-queues           SET of instance ids that opened an own queue, so work left in the
 *                                     queue of an instance that died is found and moved to the shared
 *                                     queue (rescueOrphanedJobs).
 *
 * The router (PrefillRouter) gathers, per live prefill instance (registry role "prefill"), which of the
 * prompt's prefix keys it holds (one SMISMEMBER per instance, pipelined), runs the prefill policy
 * (default: healthy, same-precision; prefix-affinity x2 + load x1; max-score) and adds the job to
 * the chosen instance's queue. With no instance registered, no decision possible or Redis slow, the job
 * goes to the shared queue as before: routing is an optimisation, never a new way to fail.
 *
 * BullMQ emits a job's events on its own queue's stream, so the router listens to every instance queue
 * it may use and re-emits their events (forwardEventsTo) on the shared queue's QueueEvents, where the
 * router's job watcher listens.
 */
import type { EventEmitter } from "node:events";
import { longestPrefix, prefixBlockHashes, type Logger } from "@moela/core";
import { Queue, QueueEvents, type ConnectionOptions, type Job } from "bullmq";
import type { Redis } from "ioredis";
import { Policy } from "./policy/policy.js";
import type { PolicyConfig } from "./policy/config.js";
import { PREFIX_AFFINITY, type PrefixAffinityAttribute } from "./policy/scorers/prefix-affinity/index.js";
import type { Candidate, Decision } from "./policy/types.js";
import { enqueuePrefill, PREFILL_JOB_OPTIONS, PREFILL_QUEUE, validateQueuePrefix, type PrefillJob } from "./queues.js";
import type { InstanceRecord } from "./registry.js";

export { cachedPrefixTokens, PREFIX_AFFINITY, prefixAffinityOf, type PrefixAffinityAttribute } from "./policy/scorers/prefix-affinity/index.js";

/** The SET of prefix keys an instance holds. */
export function prefixSetKey(prefix: string, instanceId: string): string {
  return `${prefix}:prefix:${instanceId}`;
}

/** BullMQ queue name of an instance's own prefill queue. */
export function instancePrefillQueue(instanceId: string): string {
  if (!/^[A-Za-z0-9_.-]+$/.test(instanceId)) throw new RangeError(`instance id "${instanceId}" may only hold letters, digits and _ . -`);
  return `${PREFILL_QUEUE}.${instanceId}`;
}

/** The SET of instance ids with an own queue. */
export function prefillQueuesKey(prefix: string): string {
  return `${prefix}:prefill-queues`;
}

/** The default prefill policy: where the prompt's prefix is cached, unless that instance is much busier. */
export const DEFAULT_PREFILL_POLICY: PolicyConfig = Object.freeze({
  filters: [{ type: "healthy" }, { type: "same-precision" }],
  scorers: [
    { type: PREFIX_AFFINITY, weight: 2 },
    // load, not queue-depth: a prefill instance's backlog is its running jobs (taken, waiting in its batcher) too.
    { type: "load", weight: 1 },
  ],
  picker: { type: "max-score" },
});

// ---- prefill side: publishing the keys ---------------------------------------------------------

export interface PrefixPublisherOptions {
  readonly prefix: string;
  readonly instanceId: string;
  /** The keys held now (read at every rewrite). */
  readonly keys: () => Iterable<string>;
  /** Rewrite at least this often (default 2000 ms); the set's TTL is three times this. */
  readonly refreshMs?: number;
  /** A change is published within this (default 50 ms), batching the changes of one prefill batch. */
  readonly debounceMs?: number;
  readonly logger?: Logger;
}

/**
 * Keeps `<prefix>:prefix:<instanceId>` equal to an instance's cached prefix keys, and the instance in
 * `<prefix>:prefill-queues` (so its own queue is found if it dies).
 */
export class PrefixPublisher {
  readonly key: string;
  private readonly refreshMs: number;
  private readonly debounceMs: number;
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> | undefined;
  private again = false;
  private closed = false;
  private failing = false;

  constructor(
    private readonly redis: Redis,
    private readonly options: PrefixPublisherOptions,
  ) {
    this.key = prefixSetKey(validateQueuePrefix(options.prefix), options.instanceId);
    this.refreshMs = options.refreshMs ?? 2_000;
    this.debounceMs = options.debounceMs ?? 50;
  }

  /** Publish now, then keep it fresh. */
  async start(): Promise<void> {
    await this.publish();
  }

  /** The keys changed: publish soon. */
  changed(): void {
    if (this.closed) return;
    this.schedule(this.debounceMs);
  }

  /** Rewrite the whole set (one MULTI: readers never see it half written). Never throws; failures are logged. */
  publish(): Promise<void> {
    if (this.writing !== undefined) {
      this.again = true;
      return this.writing;
    }
    clearTimeout(this.timer);
    this.writing = this.write().finally(() => {
      this.writing = undefined;
      if (this.again && !this.closed) {
        this.again = false;
        void this.publish();
      } else {
        this.schedule(this.refreshMs);
      }
    });
    return this.writing;
  }

  /** Stop publishing; remove the set now (graceful shutdown) unless `keep`. */
  async close(keep = false): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.writing;
    if (keep) return;
    await this.redis.del(this.key).catch(() => 0);
  }

  private schedule(ms: number): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.publish(), ms);
    this.timer.unref();
  }

  private async write(): Promise<void> {
    if (this.closed) return;
    const keys = [...this.options.keys()];
    try {
      const tx = this.redis.multi().sadd(prefillQueuesKey(this.options.prefix), this.options.instanceId).del(this.key);
      for (let i = 0; i < keys.length; i += 1000) tx.sadd(this.key, ...keys.slice(i, i + 1000));
      if (keys.length > 0) tx.pexpire(this.key, this.refreshMs * 3);
      await tx.exec();
      if (this.failing) this.options.logger?.info({ key: this.key }, "prefix keys published again");
      this.failing = false;
    } catch (err) {
      if (!this.failing) this.options.logger?.warn({ key: this.key, err: (err as Error).message }, "cannot publish prefix keys (retrying every refresh)");
      this.failing = true;
    }
  }
}

// ---- moving work out of a dead instance's queue -------------------------------------------------

/** Job states that still wait for a worker. */
const WAITING_STATES = ["waiting", "prioritized", "delayed", "waiting-children"] as const;

/**
 * Move the jobs of instance `instanceId`'s own queue to the shared queue: every waiting job, and every
 * active one whose lock has expired (its worker is gone). Each is added to the shared queue under the
 * same id first (BullMQ ignores a second add of an id, so concurrent rescuers cannot duplicate it) and
 * only then removed from the instance queue (a rescuer that dies in between loses nothing). Returns
 * how many moved.
 */
export async function moveJobsToShared(
  redis: Redis,
  prefix: string,
  instanceQueue: Queue,
  shared: Queue,
  options: { activeToo?: boolean; logger?: Logger } = {},
): Promise<number> {
  const states = options.activeToo === false ? [...WAITING_STATES] : [...WAITING_STATES, "active" as const];
  const jobs = (await instanceQueue.getJobs(states)).filter((j): j is Job => j !== undefined && j.id !== undefined);
  let moved = 0;
  for (const job of jobs) {
    const id = job.id!;
    const state = await job.getState();
    if (state === "active" && (await redis.exists(`${prefix}:${instanceQueue.name}:${id}:lock`)) === 1) continue;
    if (state === "completed" || state === "failed" || state === "unknown") continue;
    await shared.add(job.name, job.data as PrefillJob, { jobId: id, ...(job.opts.priority ? { priority: job.opts.priority } : {}) });
    const removed = await instanceQueue.remove(id).catch(() => 0);
    if (removed === 1) moved++;
    options.logger?.info({ jobId: id, from: instanceQueue.name, state, removed }, "prefill job moved to the shared queue");
  }
  return moved;
}

// ---- router side: choosing the queue -------------------------------------------------------------

/** Job events the router's watchers act on, forwarded from the instance queues. */
export const FORWARDED_JOB_EVENTS = ["active", "failed", "delayed", "stalled", "completed"] as const;

export interface PrefillRouterOptions {
  /** Commands (SMISMEMBER, SMEMBERS, EXISTS); should fail fast rather than queue while Redis is away. */
  readonly redis: Redis;
  /** BullMQ connection options for the per-instance queues and their events. */
  readonly connection: ConnectionOptions;
  readonly prefix: string;
  /** The shared prefill queue (the fallback, and where rescued work goes). */
  readonly shared: Queue;
  /** Live prefill instances (the registry's role "prefill"). */
  readonly instances: () => readonly InstanceRecord[];
  /** The deployment's precision profile (same-precision). */
  readonly precision?: string;
  readonly policy?: PolicyConfig;
  /** Every decision goes here (role "prefill"). */
  readonly onDecision?: (d: Decision) => void;
  /**
   * The shared queue's QueueEvents: events of jobs in instance queues (FORWARDED_JOB_EVENTS) are emitted
   * on it as they arrive, so whoever watches the shared queue's jobs sees them wherever they went.
   */
  readonly forwardEventsTo?: EventEmitter;
  /** The prefix lookup's budget before the job goes out without it (default 250 ms). */
  readonly lookupTimeoutMs?: number;
  /** Between rescues of dead instances' queues (default 2000 ms; 0 = only when rescue() is called). */
  readonly rescueIntervalMs?: number;
  readonly logger?: Logger;
}

interface InstanceQueue {
  readonly queue: Queue;
  readonly events: QueueEvents;
  readonly ready: Promise<void>;
}

export interface RoutedPrefill {
  /** Where the job went (remove it from there if the request ends before a worker takes it). */
  readonly queue: Queue;
  /** The instance chosen; undefined when it went to the shared queue. */
  readonly instanceId?: string;
  readonly cachedTokens: number;
  readonly reason: string;
}

export class PrefillRouter {
  private readonly policy: Policy;
  private readonly prefix: string;
  private readonly queues = new Map<string, InstanceQueue>();
  /** Jobs this router sent to an instance since the heartbeat its record carries. */
  private readonly sent = new Map<string, { heartbeatAtMs: number; jobs: number }>();
  private rescueTimer: NodeJS.Timeout | undefined;
  private rescuing: Promise<number> | undefined;
  private closed = false;

  constructor(private readonly o: PrefillRouterOptions) {
    this.prefix = validateQueuePrefix(o.prefix);
    this.policy = new Policy(o.policy ?? DEFAULT_PREFILL_POLICY, "prefill policy");
    const every = o.rescueIntervalMs ?? 2_000;
    if (every > 0) {
      const tick = (): void => {
        this.rescueTimer = setTimeout(() => void this.rescue().finally(tick), every);
        this.rescueTimer.unref();
      };
      tick();
    }
  }

  /** Choose the prefill queue for `job` and add it there (priority as enqueuePrefill). */
  async enqueue(job: PrefillJob, priority = 0): Promise<RoutedPrefill> {
    const routed = await this.choose(job);
    await enqueuePrefill(routed.queue, job, priority);
    if (routed.instanceId !== undefined) {
      const s = this.sent.get(routed.instanceId);
      if (s !== undefined) s.jobs++;
    }
    return routed;
  }

  /** The queue `job` should go to, without adding it. */
  async choose(job: PrefillJob): Promise<RoutedPrefill> {
    const shared = (reason: string): RoutedPrefill => ({ queue: this.o.shared, cachedTokens: 0, reason });
    const records = this.o.instances().filter((r) => r.role === "prefill");
    if (records.length === 0) return shared("no prefill instance registered");
    const held = await this.lookup(job.promptTokenIds, records, job.cacheSalt);
    const candidates: Candidate[] = records.map((r) => {
      const s = this.sentSince(r);
      const attr: PrefixAffinityAttribute | undefined = held === null ? undefined : { blockSize: r.load.blockSize, keys: held.get(r.id)! };
      return {
        id: r.id,
        address: r.grpcAddress,
        healthy: true,
        load: r.load,
        ...(r.precision !== undefined ? { precision: r.precision } : {}),
        ...(r.modelId !== undefined ? { modelId: r.modelId } : {}),
        reservedBlocks: 0,
        reservedSequences: s,
        ...(attr !== undefined ? { attributes: { [PREFIX_AFFINITY]: attr } } : {}),
      };
    });
    const outcome = this.policy.decide(
      "prefill",
      {
        requestId: job.requestId,
        promptTokens: job.promptTokenIds.length,
        maxTokens: job.sampling.maxTokens,
        promptTokenIds: job.promptTokenIds,
        ...(job.cacheSalt !== undefined ? { cacheSalt: job.cacheSalt } : {}),
        ...(this.o.precision !== undefined ? { precision: this.o.precision } : {}),
      },
      candidates,
    );
    const note = held === null ? "prefix lookup unavailable" : undefined;
    this.o.onDecision?.(note === undefined ? outcome.decision : { ...outcome.decision, notes: [...(outcome.decision.notes ?? []), note] });
    if (outcome.chosen === undefined) return shared(`no prefill instance chosen (${outcome.error?.message ?? "none"}): shared queue`);
    const id = outcome.chosen.id;
    const iq = this.queueOf(id);
    try {
      await iq.ready;
    } catch (err) {
      return shared(`${id}'s queue is not reachable (${(err as Error).message}): shared queue`);
    }
    const keys = held?.get(id);
    const blockSize = records.find((r) => r.id === id)!.load.blockSize;
    const cachedTokens = keys === undefined ? 0 : longestPrefix(prefixBlockHashes(job.promptTokenIds, blockSize, Infinity, job.cacheSalt), (k) => keys.has(k)) * blockSize;
    return { queue: iq.queue, instanceId: id, cachedTokens, reason: outcome.decision.reason };
  }

  /**
   * Move the work of instances that have an own queue but are no longer registered (killed, or gone
   * without draining) to the shared queue, and forget their queues once empty. Returns jobs moved.
   */
  rescue(): Promise<number> {
    this.rescuing ??= this.rescueOnce().finally(() => {
      this.rescuing = undefined;
    });
    return this.rescuing;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.rescueTimer);
    await this.rescuing?.catch(() => 0);
    const all = [...this.queues.values()];
    this.queues.clear();
    await Promise.all(all.map(async (q) => Promise.all([q.events.close(), q.queue.close()]).catch(() => undefined)));
  }

  /** Per record, the set of this prompt's keys it holds; null when Redis did not answer in time. */
  private async lookup(prompt: readonly number[], records: readonly InstanceRecord[], salt?: string): Promise<Map<string, Set<string>> | null> {
    const keysBySize = new Map<number, string[]>();
    for (const r of records) if (!keysBySize.has(r.load.blockSize)) keysBySize.set(r.load.blockSize, prefixBlockHashes(prompt, r.load.blockSize, Infinity, salt));
    const out = new Map<string, Set<string>>();
    const asked = records.filter((r) => keysBySize.get(r.load.blockSize)!.length > 0);
    for (const r of records) out.set(r.id, new Set());
    if (asked.length === 0) return out;
    const p = this.o.redis.pipeline();
    for (const r of asked) p.smismember(prefixSetKey(this.prefix, r.id), ...keysBySize.get(r.load.blockSize)!);
    let timer: NodeJS.Timeout | undefined;
    try {
      const res = await Promise.race([
        p.exec(),
        new Promise<null>((resolve) => {
          timer = setTimeout(() => resolve(null), this.o.lookupTimeoutMs ?? 250);
        }),
      ]);
      if (res === null) throw new Error(`no answer within ${this.o.lookupTimeoutMs ?? 250} ms`);
      asked.forEach((r, i) => {
        const [err, flags] = res[i]!;
        if (err !== null) throw err;
        const keys = keysBySize.get(r.load.blockSize)!;
        const set = out.get(r.id)!;
        (flags as number[]).forEach((f, k) => {
          if (f === 1) set.add(keys[k]!);
        });
      });
      return out;
    } catch (err) {
      this.o.logger?.warn({ err: (err as Error).message }, "prefix lookup failed; choosing the prefill instance without it");
      return null;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Jobs sent to `r` since its record was written (reset by each new heartbeat). */
  private sentSince(r: InstanceRecord): number {
    const s = this.sent.get(r.id);
    if (s === undefined || s.heartbeatAtMs !== r.heartbeatAtMs) {
      this.sent.set(r.id, { heartbeatAtMs: r.heartbeatAtMs, jobs: 0 });
      return 0;
    }
    return s.jobs;
  }

  /** The instance's queue and its events (forwarded to onJobEvent), made on first use. */
  private queueOf(id: string): InstanceQueue {
    let q = this.queues.get(id);
    if (q !== undefined) return q;
    const name = instancePrefillQueue(id);
    const queue = new Queue(name, { connection: this.o.connection, prefix: this.prefix, defaultJobOptions: { ...PREFILL_JOB_OPTIONS } });
    queue.on("error", (err) => this.o.logger?.warn({ queue: name, err: err.message }, "prefill instance queue connection error"));
    // Read the stream from its current end, taken BEFORE any job goes in: no event of ours is missed
    // however late the reader's first XREAD runs.
    const eventsKey = `${this.prefix}:${name}:events`;
    let events!: QueueEvents;
    const ready = (async () => {
      const last = await this.o.redis.xrevrange(eventsKey, "+", "-", "COUNT", 1);
      events = new QueueEvents(name, { connection: this.o.connection, prefix: this.prefix, lastEventId: last[0]?.[0] ?? "0-0" });
      events.on("error", (err) => this.o.logger?.warn({ queue: name, err: err.message }, "prefill instance queue events connection error"));
      const target = this.o.forwardEventsTo;
      if (target !== undefined) {
        for (const ev of FORWARDED_JOB_EVENTS) (events as EventEmitter).on(ev, (...args: unknown[]) => target.emit(ev, ...args));
      }
      await Promise.all([queue.waitUntilReady(), events.waitUntilReady()]);
    })();
    q = {
      queue,
      get events() {
        return events;
      },
      ready,
    };
    ready.catch(() => this.queues.delete(id));
    this.queues.set(id, q);
    return q;
  }

  private async rescueOnce(): Promise<number> {
    if (this.closed) return 0;
    let moved = 0;
    try {
      const live = new Set(this.o.instances().map((r) => r.id));
      const ids = await this.o.redis.smembers(prefillQueuesKey(this.prefix));
      for (const id of ids) {
        if (live.has(id) || this.closed) continue;
        const iq = this.queueOf(id);
        await iq.ready;
        const n = await moveJobsToShared(this.o.redis, this.prefix, iq.queue, this.o.shared, { ...(this.o.logger ? { logger: this.o.logger } : {}) });
        moved += n;
        const left = await iq.queue.getJobCountByTypes(...WAITING_STATES, "active");
        if (left === 0) {
          // Empty and its instance gone: forget it (a restarted instance registers a new id).
          await this.o.redis.srem(prefillQueuesKey(this.prefix), id);
          this.queues.delete(id);
          await Promise.all([iq.events.close(), iq.queue.close()]).catch(() => undefined);
        }
        if (n > 0) this.o.logger?.warn({ instance: id, moved: n }, "moved a departed prefill instance's queued jobs to the shared queue");
      }
    } catch (err) {
      this.o.logger?.warn({ err: (err as Error).message }, "prefill queue rescue failed (retrying)");
    }
    return moved;
  }
}
