/**
 * More than one expert-host per shard. A ReplicatedExpertHostTransport is the dispatcher's transport
 * for ONE shard: it keeps that shard's replicas (each a GrpcExpertHostTransport), sends each Dispatch
 * to one of them, and when a replica answers UNAVAILABLE (down, draining, unreachable) retries the
 * same request on another replica of the shard. Replicas of a shard hold the same experts and run the
 * same code, so the answer is the same bits whichever one computes it, and a Dispatch has no side
 * effects, so repeating it is safe. When no replica is left the call fails with a retryable
 * UnavailableError naming the shard and what each replica said.
 *
 * Choice: "least-loaded" (default) takes the replica with the fewest calls in flight from this
 * process, ties in round-robin order; "round-robin" rotates. A replica that answered UNAVAILABLE is
 * skipped for `downForMs` unless every replica is down (then all are tried again). When every replica
 * answered UNAVAILABLE, the call waits up to `reconnectWaitMs` for one of them to connect before it
 * fails: a replica restarted a moment ago is up while this process's channel to it still sits out its
 * reconnect backoff, and a request that arrives then should be served, not refused.
 *
 * ExpertShardSet keeps one such transport per shard and their membership: the static replicas
 * (--expert-hosts "a|b,c|d") plus those found in the registry (update()), each checked once with
 * `validate` (Info against the placement) before it takes traffic. Wire types stay in grpc.ts.
 */
import { Code, errorMessage, InvalidArgumentError, MoelaError, UnavailableError, type Logger } from "@moela/core";
import type { EncodedActivations } from "../codec/index.js";
import type { ExpertHostTransport } from "../dispatcher.js";
import type { ExpertDispatchRequest, HostInfo } from "../host.js";
import { GrpcExpertHostTransport, type GrpcExpertHostOptions } from "./grpc.js";

export type ReplicaSelection = "least-loaded" | "round-robin";

export interface ReplicaOptions extends Omit<GrpcExpertHostOptions, "address" | "shard"> {
  readonly selection?: ReplicaSelection;
  /** How long a replica that answered UNAVAILABLE is passed over (default 2000 ms). */
  readonly downForMs?: number;
  /**
   * When every replica answered UNAVAILABLE, how long to wait for one to (re)connect before failing
   * (default 2500 ms: the channels' longest reconnect backoff, 2 s, plus its jitter).
   */
  readonly reconnectWaitMs?: number;
  readonly logger?: Logger;
}

interface Replica {
  readonly address: string;
  readonly transport: GrpcExpertHostTransport;
  inFlight: number;
  downUntil: number;
  /** Closed once its last call ends (it left the set while calls were in flight). */
  retired: boolean;
}

const isUnavailable = (err: unknown): boolean => err instanceof MoelaError && err.code === Code.UNAVAILABLE;

export class ReplicatedExpertHostTransport implements ExpertHostTransport {
  readonly shard: number;
  private replicas: Replica[] = [];
  private next = 0;
  private readonly selection: ReplicaSelection;
  private readonly downForMs: number;
  private readonly reconnectWaitMs: number;
  private readonly options: ReplicaOptions;
  private readonly logger: Logger | undefined;
  /** Dispatches this transport sent again to another replica after an UNAVAILABLE. */
  failovers = 0;

  constructor(shard: number, addresses: readonly string[] = [], options: ReplicaOptions = {}) {
    this.shard = shard;
    this.options = options;
    this.selection = options.selection ?? "least-loaded";
    this.downForMs = options.downForMs ?? 2_000;
    this.reconnectWaitMs = options.reconnectWaitMs ?? 2_500;
    this.logger = options.logger;
    for (const a of addresses) this.add(a);
  }

  /** "expert shard 1": how errors name the shard. */
  get name(): string {
    return `expert shard ${this.shard}`;
  }

  /** Some replica is reached through shared memory (ExpertHostTransport.sameMachine). */
  get sameMachine(): boolean {
    return this.replicas.some((r) => r.transport.sameMachine);
  }

  /** The replicas' addresses, in the order they joined. */
  get addresses(): readonly string[] {
    return this.replicas.map((r) => r.address);
  }

  has(address: string): boolean {
    return this.replicas.some((r) => r.address === address);
  }

  /** Add a replica (no-op when present). */
  add(address: string): void {
    if (this.has(address)) return;
    this.replicas.push({
      address,
      transport: new GrpcExpertHostTransport({ ...this.options, address, shard: this.shard }),
      inFlight: 0,
      downUntil: 0,
      retired: false,
    });
  }

  /** Remove a replica; its channel closes once its calls in flight end. */
  remove(address: string): void {
    const r = this.replicas.find((x) => x.address === address);
    if (r === undefined) return;
    this.replicas = this.replicas.filter((x) => x !== r);
    r.retired = true;
    if (r.inFlight === 0) r.transport.close();
  }

  async dispatch(req: ExpertDispatchRequest, signal?: AbortSignal): Promise<EncodedActivations> {
    return this.withFailover("Dispatch", (t) => t.dispatch(req, signal), signal);
  }

  async info(signal?: AbortSignal): Promise<HostInfo> {
    return this.withFailover("Info", (t) => t.info(signal), signal);
  }

  close(): void {
    for (const r of this.replicas) r.transport.close();
    this.replicas = [];
  }

  private async withFailover<T>(method: string, call: (t: GrpcExpertHostTransport) => Promise<T>, signal: AbortSignal | undefined): Promise<T> {
    const tried = new Set<Replica>();
    const failures: string[] = [];
    let waited = false;
    for (;;) {
      let r = this.pick(tried);
      if (r === undefined && !waited && failures.length > 0) {
        // Every replica failed: once, give a reconnecting one its backoff's time, then try the one that connected.
        waited = true;
        const connected = await this.firstConnected([...tried], signal);
        if (connected !== undefined) {
          tried.delete(connected);
          connected.downUntil = 0;
          r = this.pick(tried);
        }
      }
      if (r === undefined) {
        const what = failures.length > 0 ? failures.join("; ") : "no replica is known";
        throw new UnavailableError(`${this.name}: no replica could serve ${method} (${what})`);
      }
      tried.add(r);
      if (tried.size > 1) this.failovers++;
      r.inFlight++;
      try {
        return await call(r.transport);
      } catch (err) {
        if (!isUnavailable(err) || signal?.aborted) throw err;
        r.downUntil = Date.now() + this.downForMs;
        failures.push(`${r.address}: ${errorMessage(err)}`);
        this.logger?.warn(
          { shard: this.shard, replica: r.address, method, err: errorMessage(err) },
          "expert-host replica unavailable; trying another replica of the shard",
        );
      } finally {
        r.inFlight--;
        if (r.retired && r.inFlight === 0) r.transport.close();
      }
    }
  }

  /** The first of `replicas` still in the set whose channel connects within reconnectWaitMs, if any. */
  private async firstConnected(replicas: readonly Replica[], signal: AbortSignal | undefined): Promise<Replica | undefined> {
    const live = replicas.filter((r) => !r.retired);
    if (live.length === 0 || this.reconnectWaitMs <= 0) return undefined;
    const stop = new AbortController();
    const onAbort = (): void => stop.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      return await new Promise<Replica | undefined>((resolve) => {
        let pending = live.length;
        for (const r of live) {
          void r.transport.waitConnected(this.reconnectWaitMs, stop.signal).then((ok) => {
            if (ok) resolve(r);
            else if (--pending === 0) resolve(undefined);
          });
        }
      });
    } finally {
      stop.abort();
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /** The replica for the next call among those not yet tried: up ones first, then those marked down. */
  private pick(tried: ReadonlySet<Replica>): Replica | undefined {
    const now = Date.now();
    const left = this.replicas.filter((r) => !tried.has(r));
    if (left.length === 0) return undefined;
    const up = left.filter((r) => r.downUntil <= now);
    const pool = up.length > 0 ? up : left;
    const n = this.replicas.length;
    // Round-robin order starting at `next`; least-loaded takes the fewest in flight in that order.
    const rank = (r: Replica): number => (this.replicas.indexOf(r) - this.next + n) % n;
    pool.sort((a, b) => (this.selection === "least-loaded" ? a.inFlight - b.inFlight : 0) || rank(a) - rank(b));
    const chosen = pool[0]!;
    this.next = (this.replicas.indexOf(chosen) + 1) % n;
    return chosen;
  }
}

/** A replica found elsewhere (the registry): which shard, where. */
export interface FoundReplica {
  readonly shard: number;
  readonly address: string;
}

export interface ExpertShardSetOptions extends ReplicaOptions {
  readonly shardCount: number;
  /** Per shard, the statically configured replicas (kept whatever the registry says). */
  readonly staticReplicas?: readonly (readonly string[])[];
  /**
   * Checks a new replica before it takes traffic (e.g. Info against the placement); rejects to keep
   * it out. UNAVAILABLE rejections are retried every 250 ms for `validateWaitMs`.
   */
  readonly validate?: (replica: GrpcExpertHostTransport, shard: number) => Promise<void>;
  /** How long a new replica may stay unreachable before it is dropped (default 60 s; it comes back with the next update()). */
  readonly validateWaitMs?: number;
}

/** Every shard's replicas: static ones plus registry ones, validated before use. */
export class ExpertShardSet {
  /** shards[h] is the dispatcher's transport for shard h. */
  readonly shards: readonly ReplicatedExpertHostTransport[];
  private readonly options: ExpertShardSetOptions;
  private readonly statics: ReadonlySet<string>;
  /** address -> its validation in progress. */
  private readonly validating = new Map<string, Promise<void>>();
  /** address -> why it was refused (kept out until it leaves the registry). */
  private readonly refused = new Map<string, string>();
  /** The first refusal of a static replica: a configuration error waitReady reports. */
  private staticFailure: Error | undefined;
  private closed = false;

  constructor(options: ExpertShardSetOptions) {
    this.options = options;
    const statics = options.staticReplicas ?? [];
    if (statics.length > options.shardCount) {
      throw new InvalidArgumentError(`${statics.length} static expert shards for a shard count of ${options.shardCount}`);
    }
    this.statics = new Set(statics.flat());
    this.shards = Array.from({ length: options.shardCount }, (_, h) => new ReplicatedExpertHostTransport(h, [], options));
    statics.forEach((addresses, shard) => addresses.forEach((a) => this.consider(shard, a)));
  }

  /**
   * The registry's replicas now: new ones are validated and then take traffic; registry replicas that
   * are no longer listed leave (static ones stay).
   */
  update(found: readonly FoundReplica[]): void {
    if (this.closed) return;
    const listed = new Set<string>();
    for (const f of found) {
      if (!(Number.isInteger(f.shard) && f.shard >= 0 && f.shard < this.shards.length)) continue;
      listed.add(`${f.shard}|${f.address}`);
      this.consider(f.shard, f.address);
    }
    this.shards.forEach((s, h) => {
      for (const a of s.addresses) {
        if (this.statics.has(a) || listed.has(`${h}|${a}`)) continue;
        s.remove(a);
        this.options.logger?.info({ shard: h, replica: a }, "expert-host replica left the registry");
      }
    });
    for (const key of [...this.refused.keys()]) if (!listed.has(key) && !this.statics.has(key.slice(key.indexOf("|") + 1))) this.refused.delete(key);
  }

  /** Resolves once every shard has a validated replica; rejects naming the shards without one after `ms`. */
  async waitReady(ms: number, signal?: AbortSignal): Promise<void> {
    const deadline = Date.now() + ms;
    for (;;) {
      if (this.staticFailure !== undefined) throw this.staticFailure;
      const missing = this.shards.filter((s) => s.addresses.length === 0).map((s) => s.shard);
      if (missing.length === 0) return;
      if (signal?.aborted) throw signal.reason;
      if (Date.now() >= deadline) {
        throw new UnavailableError(
          `no usable expert-host for shard(s) ${missing.join(", ")} within ${ms} ms (static: ${[...this.statics].join(", ") || "none"})`,
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Dispatches sent again to another replica after an UNAVAILABLE, over every shard. */
  get failovers(): number {
    return this.shards.reduce((n, s) => n + s.failovers, 0);
  }

  close(): void {
    this.closed = true;
    for (const s of this.shards) s.close();
  }

  private consider(shard: number, address: string): void {
    const s = this.shards[shard]!;
    const key = `${shard}|${address}`;
    if (s.has(address) || this.validating.has(key) || this.refused.has(key)) return;
    if (this.options.validate === undefined) {
      s.add(address);
      return;
    }
    const v = this.validateReplica(shard, address).finally(() => this.validating.delete(key));
    this.validating.set(key, v);
  }

  private async validateReplica(shard: number, address: string): Promise<void> {
    const probe = new GrpcExpertHostTransport({ ...this.options, address, shard });
    const deadline = Date.now() + (this.options.validateWaitMs ?? 60_000);
    try {
      for (;;) {
        if (this.closed) return;
        try {
          await this.options.validate!(probe, shard);
          break;
        } catch (err) {
          if (isUnavailable(err) && Date.now() < deadline) {
            await new Promise((r) => setTimeout(r, 250));
            continue;
          }
          if (isUnavailable(err)) {
            this.options.logger?.warn(
              { shard, replica: address, err: errorMessage(err) },
              "expert-host replica stayed unreachable; dropped until it is listed again",
            );
            return;
          }
          this.refused.set(`${shard}|${address}`, errorMessage(err));
          this.options.logger?.error({ shard, replica: address, err: errorMessage(err) }, "expert-host replica refused: it does not match this placement");
          if (this.statics.has(address)) this.staticFailure ??= err as Error;
          return;
        }
      }
      if (this.closed) return;
      this.shards[shard]!.add(address);
      this.options.logger?.info({ shard, replica: address, replicas: this.shards[shard]!.addresses.length }, "expert-host replica in service");
    } finally {
      probe.close();
    }
  }
}

/** "--expert-hosts" entries in shard order, each "a|b" for replicas: ["a|b", "c"] -> [["a", "b"], ["c"]]. */
export function parseShardReplicas(entries: readonly string[]): string[][] {
  return entries.map((e) => [
    ...new Set(
      e
        .split("|")
        .map((a) => a.trim())
        .filter((a) => a.length > 0),
    ),
  ]);
}
