/**
 * The prefill instances' own BullMQ queues (../prefill-routing.ts has the key layout): the router makes
 * each on first use and forwards its job events to the shared queue's QueueEvents; the work of an instance
 * that is gone is moved to the shared queue.
 */
import type { EventEmitter } from "node:events";
import type { Logger } from "@moela/core";
import { Queue, QueueEvents, type ConnectionOptions, type Job } from "bullmq";
import type { Redis } from "ioredis";
import { PREFILL_JOB_OPTIONS, PREFILL_QUEUE, type PrefillJob } from "../queues.js";
import { errorMessage } from "@moela/core";

/** BullMQ queue name of an instance's own prefill queue. */
export function instancePrefillQueue(instanceId: string): string {
  if (!/^[A-Za-z0-9_.-]+$/.test(instanceId)) throw new RangeError(`instance id "${instanceId}" may only hold letters, digits and _ . -`);
  return `${PREFILL_QUEUE}.${instanceId}`;
}

/** The SET of instance ids with an own queue. */
export function prefillQueuesKey(prefix: string): string {
  return `${prefix}:prefill-queues`;
}

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

/** Job events the router's watchers act on, forwarded from the instance queues. */
export const FORWARDED_JOB_EVENTS = ["active", "failed", "delayed", "stalled", "completed"] as const;

export interface InstanceQueuesOptions {
  /** Commands (EXISTS, SMEMBERS, SREM, XREVRANGE). */
  readonly redis: Redis;
  /** BullMQ connection options for the per-instance queues and their events. */
  readonly connection: ConnectionOptions;
  /** The queue prefix, validated. */
  readonly prefix: string;
  /** The shared prefill queue, where rescued work goes. */
  readonly shared: Queue;
  /** Where the instance queues' job events (FORWARDED_JOB_EVENTS) are emitted again. */
  readonly forwardEventsTo?: EventEmitter;
  readonly logger?: Logger;
}

export interface InstanceQueue {
  readonly queue: Queue;
  readonly events: QueueEvents;
  readonly ready: Promise<void>;
}

/** The instance queues one router uses, made on first use. */
export class InstanceQueues {
  private readonly queues = new Map<string, InstanceQueue>();

  constructor(private readonly o: InstanceQueuesOptions) {}

  /** The instance's queue and its events (forwarded to forwardEventsTo), made on first use. */
  get(id: string): InstanceQueue {
    let q = this.queues.get(id);
    if (q !== undefined) return q;
    const name = instancePrefillQueue(id);
    const queue = new Queue(name, { connection: this.o.connection, prefix: this.o.prefix, defaultJobOptions: { ...PREFILL_JOB_OPTIONS } });
    queue.on("error", (err) => this.o.logger?.warn({ queue: name, err: err.message }, "prefill instance queue connection error"));
    // Read the stream from its current end, taken BEFORE any job goes in: no event of ours is missed
    // however late the reader's first XREAD runs.
    const eventsKey = `${this.o.prefix}:${name}:events`;
    let events!: QueueEvents;
    const ready = (async () => {
      const last = await this.o.redis.xrevrange(eventsKey, "+", "-", "COUNT", 1);
      events = new QueueEvents(name, { connection: this.o.connection, prefix: this.o.prefix, lastEventId: last[0]?.[0] ?? "0-0" });
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

  /**
   * Move the work of the instances that have an own queue but are not in `live()` to the shared queue,
   * and forget their queues once empty; stops early once `stopped()`. Returns jobs moved. Never throws:
   * a failure is logged (the caller retries on its next round).
   */
  async rescue(live: () => Iterable<string>, stopped: () => boolean): Promise<number> {
    let moved = 0;
    try {
      const alive = new Set(live());
      const ids = await this.o.redis.smembers(prefillQueuesKey(this.o.prefix));
      for (const id of ids) {
        if (alive.has(id) || stopped()) continue;
        const iq = this.get(id);
        await iq.ready;
        const n = await moveJobsToShared(this.o.redis, this.o.prefix, iq.queue, this.o.shared, { ...(this.o.logger ? { logger: this.o.logger } : {}) });
        moved += n;
        const left = await iq.queue.getJobCountByTypes(...WAITING_STATES, "active");
        if (left === 0) {
          // Empty and its instance gone: forget it (a restarted instance registers a new id).
          await this.o.redis.srem(prefillQueuesKey(this.o.prefix), id);
          this.queues.delete(id);
          await Promise.all([iq.events.close(), iq.queue.close()]).catch(() => undefined);
        }
        if (n > 0) this.o.logger?.warn({ instance: id, moved: n }, "moved a departed prefill instance's queued jobs to the shared queue");
      }
    } catch (err) {
      this.o.logger?.warn({ err: errorMessage(err) }, "prefill queue rescue failed (retrying)");
    }
    return moved;
  }

  /** Close every queue and its events. */
  async close(): Promise<void> {
    const all = [...this.queues.values()];
    this.queues.clear();
    await Promise.all(all.map(async (q) => Promise.all([q.events.close(), q.queue.close()]).catch(() => undefined)));
  }
}
