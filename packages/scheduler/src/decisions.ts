/**
 * Routing decisions kept for lookup by request id ("why did my request go there?"). Each decision
 * (policy/types.ts Decision: candidates with per-scorer scores or the filter that dropped them, the
 * choice, the reason) is appended to its request's list; a request may have several (retries,
 * migrations), in order.
 *
 * Keys:
 *   <prefix>:routing:decision:<requestId>   LIST of JSON decisions, EXPIRE ttlS (default 1 h) on every append
 *   <prefix>:routing:recent                 LIST of request ids, newest first, capped at maxRecent (LTRIM)
 * The last `memory` decisions are also kept in this process, so lookups work while Redis is away
 * (and in routers started without one).
 */
import type { Redis } from "ioredis";
import type { Logger } from "@moela/core";
import type { Decision } from "./policy/types.js";
import { errorMessage } from "@moela/core";

export interface DecisionLogOptions {
  /** Omit to keep decisions in memory only. */
  readonly redis?: Redis;
  readonly prefix?: string;
  /** How long a request's decisions are kept in Redis (default 3600 s). */
  readonly ttlS?: number;
  /** Request ids in the recent list (default 10 000). */
  readonly maxRecent?: number;
  /** Decisions kept in this process (default 1000). */
  readonly memory?: number;
  readonly logger?: Logger;
}

export function decisionKey(prefix: string, requestId: string): string {
  return `${prefix}:routing:decision:${requestId}`;
}

export function recentDecisionsKey(prefix: string): string {
  return `${prefix}:routing:recent`;
}

export class DecisionLog {
  private readonly redis: Redis | undefined;
  private readonly prefix: string;
  private readonly ttlS: number;
  private readonly maxRecent: number;
  private readonly memory: number;
  private readonly logger: Logger | undefined;
  /** requestId -> its decisions, in insertion order (a Map keeps it: oldest first for eviction). */
  private readonly local = new Map<string, Decision[]>();
  private localCount = 0;
  private readonly writes = new Set<Promise<void>>();
  private failing = false;

  constructor(options: DecisionLogOptions = {}) {
    this.redis = options.redis;
    this.prefix = options.prefix ?? "moela";
    this.ttlS = options.ttlS ?? 3_600;
    this.maxRecent = options.maxRecent ?? 10_000;
    this.memory = options.memory ?? 1_000;
    this.logger = options.logger;
  }

  /** Keep `d` (in memory now, in Redis in the background; a Redis failure is logged once per outage). */
  record(d: Decision): void {
    let list = this.local.get(d.requestId);
    if (list === undefined) {
      list = [];
      this.local.set(d.requestId, list);
    }
    list.push(d);
    this.localCount++;
    while (this.localCount > this.memory) {
      const [oldest, ds] = this.local.entries().next().value as [string, Decision[]];
      this.local.delete(oldest);
      this.localCount -= ds.length;
    }
    if (this.redis === undefined) return;
    const key = decisionKey(this.prefix, d.requestId);
    const recent = recentDecisionsKey(this.prefix);
    const w = this.redis
      .multi()
      .rpush(key, JSON.stringify(d))
      .expire(key, this.ttlS)
      .lpush(recent, d.requestId)
      .ltrim(recent, 0, this.maxRecent - 1)
      .exec()
      .then(
        () => {
          this.failing = false;
        },
        (err: unknown) => {
          if (!this.failing) this.logger?.warn({ err: errorMessage(err) }, "decision log: cannot write to Redis (kept in memory only)");
          this.failing = true;
        },
      );
    this.writes.add(w);
    // Nothing awaits the write here (flush() does, through `writes`); w handles its own failure above,
    // so this chain never rejects.
    void w.finally(() => this.writes.delete(w));
  }

  /** Every decision kept for `requestId`, oldest first ([] when none). */
  async lookup(requestId: string): Promise<Decision[]> {
    const mine = this.local.get(requestId) ?? [];
    if (this.redis === undefined) return [...mine];
    let stored: Decision[];
    try {
      stored = (await this.redis.lrange(decisionKey(this.prefix, requestId), 0, -1)).map((s) => JSON.parse(s) as Decision);
    } catch (err) {
      this.logger?.warn({ err: errorMessage(err), requestId }, "decision log: Redis lookup failed; answering from memory");
      return [...mine];
    }
    // Writes still in flight (or lost while Redis was away) are in memory only.
    const seen = new Set(stored.map((d) => `${d.atMs}|${d.role}|${d.chosen?.id ?? ""}`));
    const merged = [...stored, ...mine.filter((d) => !seen.has(`${d.atMs}|${d.role}|${d.chosen?.id ?? ""}`))];
    return merged.sort((a, b) => a.atMs - b.atMs);
  }

  /** The newest request ids with decisions (Redis when there is one, else memory). */
  async recent(limit = 100): Promise<string[]> {
    if (this.redis !== undefined) {
      try {
        return [...new Set(await this.redis.lrange(recentDecisionsKey(this.prefix), 0, Math.max(0, limit * 2 - 1)))].slice(0, limit);
      } catch {
        // fall through to memory
      }
    }
    return [...this.local.keys()].reverse().slice(0, limit);
  }

  /** Wait for the Redis writes in flight (tests, shutdown). */
  async flush(): Promise<void> {
    await Promise.all([...this.writes]);
  }
}
