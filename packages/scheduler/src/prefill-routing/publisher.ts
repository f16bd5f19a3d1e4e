/**
 * The prefill side of prefix routing: keeps `<prefix>:prefix:<instanceId>` equal to the prefix keys the
 * instance's cache holds, for the router's lookup (../prefill-routing.ts has the key layout).
 */
import type { Logger } from "@moela/core";
import type { Redis } from "ioredis";
import { validateQueuePrefix } from "../queues.js";
import { prefillQueuesKey } from "./instance-queues.js";
import { errorMessage } from "@moela/core";

/** The SET of prefix keys an instance holds. */
export function prefixSetKey(prefix: string, instanceId: string): string {
  return `${prefix}:prefix:${instanceId}`;
}

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
        // Nobody awaits the rerun (a caller that asked during the last write was given that write), and
        // publish() never rejects: write() logs a failed write.
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
    // A timer has nobody to await it; publish() never rejects.
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
      if (!this.failing) this.options.logger?.warn({ key: this.key, err: errorMessage(err) }, "cannot publish prefix keys (retrying every refresh)");
      this.failing = true;
    }
  }
}
