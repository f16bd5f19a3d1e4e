/**
 * The KV ledger: one record per request of every KV block a service holds for it, and the ONE path by
 * which those blocks go back to the pool.
 *
 * Why in-process and not a Redis hash: the blocks are memory of this process, so the process is the
 * only place that can free them and the only place that knows for sure what it holds; a second copy in
 * Redis could disagree with it, would cost a round trip on every request end, and would be unreachable
 * exactly when Redis restarts. A process that dies frees its memory with it, so nothing can outlive its
 * holder. What crosses processes is the request's lifetime, and every service bounds that itself: decode
 * reclaims a transfer whose sender went silent or broke, and a sequence no Stream reads after its grace
 * period; prefill holds blocks only while its job computes. The ledger makes each of those paths name
 * itself (a reason) and go through `KvHold.release`, and exports what it holds as metrics.
 *
 * A request id's record has one or more holds: prefill holds its job's sequence while it computes;
 * decode holds a transfer's reservation (KvBegin to KvEnd), which becomes the sequence's blocks on
 * admission (`adopt`), until the request ends. Two holds of one request can coexist (a duplicate
 * delivery of a prefill job, a retry's transfer while the failed one is being torn down); each is
 * released once, whichever path gets there first, and the record goes when its last hold does.
 *
 * Stranded: a hold nobody has touched for `strandedAfterMs` (a silent sender, a sequence whose Stream
 * went away). Holders touch their holds as they make progress; the timeouts that reclaim stranded
 * holds belong to the holders (receiver idle timer, batcher grace period), the ledger counts them.
 */

/** Why a hold was released; the `reason` label of the reclaim metrics (names.ts RECLAIM_REASONS). */
export const KV_RELEASE_REASONS = ["finished", "cancelled", "deadline", "rejected", "sender_failed", "lost", "failed", "shutdown"] as const;
export type KvReleaseReason = (typeof KV_RELEASE_REASONS)[number];

/** What holds the blocks: a prefill job's sequence, a transfer's reservation, a decode sequence. */
export type KvHoldKind = "prefill" | "transfer" | "sequence";

export interface KvLedgerOptions {
  /** Called once per released hold, after its blocks are back in the pool (metrics). */
  readonly onRelease?: (reason: KvReleaseReason, blocks: number, hold: KvHold) => void;
  /** A hold untouched for this long counts as stranded (default 5000 ms). */
  readonly strandedAfterMs?: number;
  /** Clock (ms); tests pass their own. */
  readonly now?: () => number;
}

/** One holder's blocks. `free` gives them back and returns how many it gave. */
export class KvHold {
  readonly requestId: string;
  readonly since: number;
  private kind_: KvHoldKind;
  private free: () => number;
  private count: () => number;
  private touched: number;
  private reason_: KvReleaseReason | null = null;

  /** @internal use KvLedger.hold(). */
  constructor(
    private readonly ledger: KvLedger,
    requestId: string,
    kind: KvHoldKind,
    free: () => number,
    count: () => number,
    now: number,
  ) {
    this.requestId = requestId;
    this.kind_ = kind;
    this.free = free;
    this.count = count;
    this.since = now;
    this.touched = now;
  }

  get kind(): KvHoldKind {
    return this.kind_;
  }

  /** Blocks held now (0 once released). */
  get blocks(): number {
    return this.reason_ === null ? this.count() : 0;
  }

  get lastActivity(): number {
    return this.touched;
  }

  get released(): boolean {
    return this.reason_ !== null;
  }

  /** Why it was released (null while held). */
  get releaseReason(): KvReleaseReason | null {
    return this.reason_;
  }

  /** The holder made progress (a frame arrived, a step ran, a reader is attached). */
  touch(now: number = this.ledger.now()): void {
    this.touched = now;
  }

  /**
   * The same blocks change holder (a transfer's reservation becomes the admitted sequence's): from now on
   * `free` and `count` are the new holder's. Throws once released (blocks already freed cannot be adopted).
   */
  adopt(kind: KvHoldKind, free: () => number, count: () => number): void {
    if (this.reason_ !== null) throw new Error(`KV hold of ${this.requestId} was released (${this.reason_}); it cannot be adopted`);
    this.kind_ = kind;
    this.free = free;
    this.count = count;
    this.touch();
  }

  /** Give the blocks back for `reason`; returns how many. Idempotent: later calls return 0. */
  release(reason: KvReleaseReason): number {
    if (this.reason_ !== null) return 0;
    this.reason_ = reason;
    return this.ledger.released(this, reason, this.free);
  }
}

export class KvLedger {
  private readonly records = new Map<string, Set<KvHold>>();
  private readonly options: KvLedgerOptions;
  readonly now: () => number;
  private readonly strandedAfterMs: number;

  constructor(options: KvLedgerOptions = {}) {
    this.options = options;
    this.now = options.now ?? Date.now;
    this.strandedAfterMs = options.strandedAfterMs ?? 5_000;
  }

  /** Record blocks taken for `requestId`. `free` returns them (and how many); `count` says how many are held now. */
  hold(requestId: string, kind: KvHoldKind, free: () => number, count: () => number): KvHold {
    const h = new KvHold(this, requestId, kind, free, count, this.now());
    let set = this.records.get(requestId);
    if (set === undefined) {
      set = new Set();
      this.records.set(requestId, set);
    }
    set.add(h);
    return h;
  }

  /** Release every hold of `requestId` (however the request ended); returns the blocks given back. */
  reclaim(requestId: string, reason: KvReleaseReason): number {
    let n = 0;
    for (const h of [...(this.records.get(requestId) ?? [])]) n += h.release(reason);
    return n;
  }

  /** Holds of a request still held. */
  holdsOf(requestId: string): KvHold[] {
    return [...(this.records.get(requestId) ?? [])];
  }

  /** Requests with at least one hold. */
  get requests(): number {
    return this.records.size;
  }

  /** Blocks held by every hold. */
  get heldBlocks(): number {
    let n = 0;
    for (const set of this.records.values()) for (const h of set) n += h.blocks;
    return n;
  }

  /** Blocks of holds untouched for the stranded threshold. */
  strandedBlocks(now: number = this.now()): number {
    let n = 0;
    for (const set of this.records.values()) for (const h of set) if (now - h.lastActivity >= this.strandedAfterMs) n += h.blocks;
    return n;
  }

  /** Every hold, for logs and tests. */
  holds(): KvHold[] {
    return [...this.records.values()].flatMap((s) => [...s]);
  }

  /** @internal the one place blocks go back: free them, drop the hold, report. */
  released(h: KvHold, reason: KvReleaseReason, free: () => number): number {
    let blocks = 0;
    try {
      blocks = free();
    } finally {
      const set = this.records.get(h.requestId);
      if (set !== undefined) {
        set.delete(h);
        if (set.size === 0) this.records.delete(h.requestId);
      }
      this.options.onRelease?.(reason, blocks, h);
    }
    return blocks;
  }
}
