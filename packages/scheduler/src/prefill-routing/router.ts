/**
 * The router side of prefix routing: which prefill instance's queue a job goes to (the instance holding
 * the longest cached prefix of its prompt, unless it is much busier), and the rescue of departed
 * instances' queues (../prefill-routing.ts has the whole picture).
 */
import type { EventEmitter } from "node:events";
import { errorMessage, longestPrefix, prefixBlockHashes, type Logger } from "@moela/core";
import type { ConnectionOptions, Queue } from "bullmq";
import type { Redis } from "ioredis";
import { Policy } from "../policy/policy.js";
import type { PolicyConfig } from "../policy/config.js";
import { PREFIX_AFFINITY, type PrefixAffinityAttribute } from "../policy/scorers/prefix-affinity/index.js";
import type { Candidate, Decision } from "../policy/types.js";
import { enqueuePrefill, validateQueuePrefix, type PrefillJob } from "../queues.js";
import type { InstanceRecord } from "../registry.js";
import { InstanceQueues } from "./instance-queues.js";
import { prefixSetKey } from "./publisher.js";

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
  private readonly queues: InstanceQueues;
  /** Jobs this router sent to an instance since the heartbeat its record carries. */
  private readonly sent = new Map<string, { heartbeatAtMs: number; jobs: number }>();
  private rescueTimer: NodeJS.Timeout | undefined;
  private rescuing: Promise<number> | undefined;
  private closed = false;

  constructor(private readonly o: PrefillRouterOptions) {
    this.prefix = validateQueuePrefix(o.prefix);
    this.policy = new Policy(o.policy ?? DEFAULT_PREFILL_POLICY, "prefill policy");
    this.queues = new InstanceQueues({
      redis: o.redis,
      connection: o.connection,
      prefix: this.prefix,
      shared: o.shared,
      ...(o.forwardEventsTo !== undefined ? { forwardEventsTo: o.forwardEventsTo } : {}),
      ...(o.logger !== undefined ? { logger: o.logger } : {}),
    });
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
    const iq = this.queues.get(id);
    try {
      await iq.ready;
    } catch (err) {
      return shared(`${id}'s queue is not reachable (${errorMessage(err)}): shared queue`);
    }
    const keys = held?.get(id);
    const blockSize = records.find((r) => r.id === id)!.load.blockSize;
    const cachedTokens =
      keys === undefined ? 0 : longestPrefix(prefixBlockHashes(job.promptTokenIds, blockSize, Infinity, job.cacheSalt), (k) => keys.has(k)) * blockSize;
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
    await this.queues.close();
  }

  /** Per record, the set of this prompt's keys it holds; null when Redis did not answer in time. */
  private async lookup(prompt: readonly number[], records: readonly InstanceRecord[], salt?: string): Promise<Map<string, Set<string>> | null> {
    const keysBySize = new Map<number, string[]>();
    for (const r of records)
      if (!keysBySize.has(r.load.blockSize)) keysBySize.set(r.load.blockSize, prefixBlockHashes(prompt, r.load.blockSize, Infinity, salt));
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
      this.o.logger?.warn({ err: errorMessage(err) }, "prefix lookup failed; choosing the prefill instance without it");
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

  private async rescueOnce(): Promise<number> {
    if (this.closed) return 0;
    return this.queues.rescue(
      () => this.o.instances().map((r) => r.id),
      () => this.closed,
    );
  }
}
