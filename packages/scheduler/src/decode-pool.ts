/**
 * The router's view of its decode instances: polls each one's Decode.Status every `intervalMs`, keeps the
 * last report, and chooses an instance per request with the policy (policy.ts). The gRPC call itself is
 * injected (`fetchStatus`), so this package stays free of wire types.
 *
 * An instance is healthy while its last poll succeeded and is recent (within `staleAfterMs`); a failed
 * poll, or a failure the router saw on a call (`markUnavailable`), makes it unhealthy until the next
 * successful poll.
 */
import type { Logger } from "@moela/core";
import { chooseDecode, type DecodeCandidate, type DecodeChoice, type DecodeLoad, type DecodeNeed } from "./policy.js";

export type FetchDecodeStatus = (address: string, opts: { timeoutMs: number }) => Promise<DecodeLoad>;

export interface DecodePoolOptions {
  /** gRPC host:port of every decode instance, in preference order for ties. */
  readonly addresses: readonly string[];
  readonly fetchStatus: FetchDecodeStatus;
  /** Between polls (default 300 ms). */
  readonly intervalMs?: number;
  /** Per Status call (default 1000 ms). */
  readonly timeoutMs?: number;
  /** A report older than this marks the instance unhealthy (default 3 intervals + the timeout). */
  readonly staleAfterMs?: number;
  readonly logger?: Logger;
}

interface Reservation {
  readonly atMs: number;
  readonly blocks: number;
}

interface InstanceState {
  readonly address: string;
  load: DecodeLoad | undefined;
  /** When the poll that produced `load` started. */
  measuredAtMs: number;
  ok: boolean;
  error: string | undefined;
  reservations: Reservation[];
}

export interface DecodeInstanceView extends DecodeCandidate {
  readonly measuredAtMs: number;
}

export class DecodePool {
  private readonly states: InstanceState[];
  private readonly fetchStatus: FetchDecodeStatus;
  private readonly intervalMs: number;
  private readonly timeoutMs: number;
  private readonly staleAfterMs: number;
  private readonly logger: Logger | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private polling: Promise<void> | undefined;

  constructor(options: DecodePoolOptions) {
    this.states = [...new Set(options.addresses)].map((address) => ({
      address,
      load: undefined,
      measuredAtMs: 0,
      ok: false,
      error: undefined,
      reservations: [],
    }));
    this.fetchStatus = options.fetchStatus;
    this.intervalMs = options.intervalMs ?? 300;
    this.timeoutMs = options.timeoutMs ?? 1_000;
    this.staleAfterMs = options.staleAfterMs ?? 3 * this.intervalMs + this.timeoutMs;
    this.logger = options.logger;
  }

  /** Poll every instance once, then keep polling in the background until close(). */
  async start(): Promise<void> {
    await this.pollOnce();
    this.schedule();
  }

  /** One round of Status calls to every instance (concurrently). */
  pollOnce(): Promise<void> {
    this.polling ??= Promise.all(this.states.map((s) => this.pollInstance(s))).then(() => {
      this.polling = undefined;
    });
    return this.polling;
  }

  /** Choose an instance for `need` and count it against that instance until its next report. */
  choose(need: DecodeNeed, now: number = Date.now()): DecodeChoice {
    const choice = chooseDecode(this.candidates(now), need);
    this.states.find((s) => s.address === choice.address)!.reservations.push({ atMs: now, blocks: choice.blocks });
    return choice;
  }

  /** A call to `address` failed as unreachable or draining: skip it until a poll succeeds again. */
  markUnavailable(address: string, reason: string): void {
    const s = this.states.find((x) => x.address === address);
    if (s === undefined || !s.ok) return;
    s.ok = false;
    s.error = reason;
    this.logger?.warn({ decode: address, reason }, "decode instance marked unavailable");
  }

  /** Every instance as the policy sees it now. */
  candidates(now: number = Date.now()): DecodeInstanceView[] {
    return this.states.map((s) => {
      const fresh = s.ok && now - s.measuredAtMs <= this.staleAfterMs;
      const error = fresh ? undefined : (s.error ?? (s.ok ? `no report for ${now - s.measuredAtMs} ms` : undefined));
      return {
        address: s.address,
        load: s.load,
        healthy: fresh,
        ...(error === undefined ? {} : { error }),
        reservedBlocks: s.reservations.reduce((n, r) => n + r.blocks, 0),
        reservedSequences: s.reservations.length,
        measuredAtMs: s.measuredAtMs,
      };
    });
  }

  get addresses(): readonly string[] {
    return this.states.map((s) => s.address);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.polling;
  }

  private schedule(): void {
    if (this.closed) return;
    this.timer = setTimeout(() => {
      void this.pollOnce().finally(() => this.schedule());
    }, this.intervalMs);
    this.timer.unref();
  }

  private async pollInstance(s: InstanceState): Promise<void> {
    const startedAt = Date.now();
    try {
      const load = await this.fetchStatus(s.address, { timeoutMs: this.timeoutMs });
      if (!s.ok) this.logger?.info({ decode: s.address }, "decode instance reachable");
      s.load = load;
      s.ok = true;
      s.error = undefined;
      s.measuredAtMs = startedAt;
      // What was sent before this poll started is in the report now (as running, waiting or pending).
      s.reservations = s.reservations.filter((r) => r.atMs >= startedAt);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      if (s.ok || s.error === undefined) this.logger?.warn({ decode: s.address, err: message }, "decode Status failed");
      s.ok = false;
      s.error = message;
    }
  }
}
