/**
 * The router's view of its decode instances and the choice among them.
 *
 * Membership: the static --decode addresses (seeds, always kept, in configured order) plus the decode
 * instances live in the registry (`discover`, read from a RegistryWatcher; they come and go with their
 * heartbeats). Load: every member's Decode.Status is polled every `intervalMs` (the call is injected,
 * so this package stays free of wire types): fresher than the registry's heartbeat, and a successful
 * call proves the instance reachable from this router.
 *
 * An instance is healthy while its last poll succeeded and is recent (within `staleAfterMs`); a failed
 * poll, or a failure the router saw on a call (`markUnavailable`), makes it unhealthy until the next
 * successful poll. Blocks and sequences sent to an instance since its last report count against it
 * (reservations), so a burst between two polls spreads out.
 *
 * The choice is the configured Policy's (policy/); every decision goes to `onDecision` (the router
 * keeps them for lookup by request id), the failed ones included.
 */
import type { Logger } from "@moela/core";
import { blocksNeeded } from "./policy/params.js";
import { Policy } from "./policy/policy.js";
import type { Candidate, CandidateRecord, Decision, InstanceLoad, SchedulingRequest } from "./policy/types.js";
import { errorMessage } from "@moela/core";

/** What Decode.Status reports (decode.proto DecodeStatusResponse), as the policy needs it. */
export type DecodeLoad = InstanceLoad;

/** A Status report: the load, plus the identity the policy may filter on. */
export interface DecodeReport extends DecodeLoad {
  readonly precision?: string | undefined;
  readonly modelId?: string | undefined;
}

export type FetchDecodeStatus = (address: string, opts: { timeoutMs: number }) => Promise<DecodeReport>;

/** A decode instance found in the registry. */
export interface DiscoveredInstance {
  readonly id: string;
  readonly address: string;
  readonly precision?: string | undefined;
  readonly modelId?: string | undefined;
}

export interface DecodePoolOptions {
  /** Static gRPC host:port of decode instances (seeds; kept whatever the registry says), in tie order. */
  readonly addresses: readonly string[];
  /** The registry's live decode instances now (read at every poll). */
  readonly discover?: () => readonly DiscoveredInstance[];
  readonly fetchStatus: FetchDecodeStatus;
  /** Between polls (default 300 ms). */
  readonly intervalMs?: number;
  /** Per Status call (default 1000 ms). */
  readonly timeoutMs?: number;
  /** A report older than this marks the instance unhealthy (default 3 intervals + the timeout). */
  readonly staleAfterMs?: number;
  /** Default: new Policy() (DEFAULT_POLICY). */
  readonly policy?: Policy;
  /** The deployment's precision profile, put on every request (for same-precision). */
  readonly precision?: string;
  /** Every decision, made or failed. */
  readonly onDecision?: (decision: Decision) => void;
  readonly logger?: Logger;
}

/** What is being placed. */
export interface DecodeNeed {
  readonly requestId?: string;
  readonly promptTokens: number;
  readonly maxTokens: number;
  readonly promptTokenIds?: readonly number[];
}

export interface DecodeChoice {
  readonly address: string;
  /** The instance's id (registry id, or the address of a static one). */
  readonly id: string;
  /** KV blocks the request will hold there at most. */
  readonly blocks: number;
  readonly reason: string;
  readonly candidates: readonly CandidateRecord[];
  readonly decision: Decision;
}

interface Reservation {
  readonly atMs: number;
  readonly blocks: number;
}

interface InstanceState {
  id: string;
  readonly address: string;
  readonly source: "static" | "registry";
  precision: string | undefined;
  modelId: string | undefined;
  load: DecodeLoad | undefined;
  /** When the poll that produced `load` started. */
  measuredAtMs: number;
  ok: boolean;
  error: string | undefined;
  reservations: Reservation[];
}

export interface DecodeInstanceView extends Candidate {
  readonly source: "static" | "registry";
  readonly measuredAtMs: number;
}

export class DecodePool {
  readonly policy: Policy;
  private states: InstanceState[];
  private readonly discover: (() => readonly DiscoveredInstance[]) | undefined;
  private readonly fetchStatus: FetchDecodeStatus;
  private readonly intervalMs: number;
  private readonly timeoutMs: number;
  private readonly staleAfterMs: number;
  private readonly precision: string | undefined;
  private readonly onDecision: ((d: Decision) => void) | undefined;
  private readonly logger: Logger | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private polling: Promise<void> | undefined;

  constructor(options: DecodePoolOptions) {
    this.states = [...new Set(options.addresses)].map((address) => newState(address, address, "static"));
    this.discover = options.discover;
    this.fetchStatus = options.fetchStatus;
    this.intervalMs = options.intervalMs ?? 300;
    this.timeoutMs = options.timeoutMs ?? 1_000;
    this.staleAfterMs = options.staleAfterMs ?? 3 * this.intervalMs + this.timeoutMs;
    this.policy = options.policy ?? new Policy();
    this.precision = options.precision;
    this.onDecision = options.onDecision;
    this.logger = options.logger;
  }

  /** Poll every instance once, then keep polling in the background until close(). */
  async start(): Promise<void> {
    await this.pollOnce();
    this.schedule();
  }

  /** Take in the registry's members, then one round of Status calls to every instance (concurrently). */
  pollOnce(): Promise<void> {
    this.polling ??= (async () => {
      this.syncMembers();
      await Promise.all(this.states.map((s) => this.pollInstance(s)));
    })().finally(() => {
      this.polling = undefined;
    });
    return this.polling;
  }

  /**
   * Choose an instance for `need` and count it against that instance until its next report. Throws
   * the policy's error when none can take it (UNAVAILABLE, RESOURCE_EXHAUSTED or INVALID_ARGUMENT);
   * the decision is reported either way.
   */
  choose(need: DecodeNeed, now: number = Date.now()): DecodeChoice {
    const request: SchedulingRequest = {
      requestId: need.requestId ?? "",
      promptTokens: need.promptTokens,
      maxTokens: need.maxTokens,
      ...(this.precision !== undefined ? { precision: this.precision } : {}),
      ...(need.promptTokenIds !== undefined ? { promptTokenIds: need.promptTokenIds } : {}),
    };
    const { decision, chosen, error } = this.policy.decide("decode", request, this.candidates(now), now);
    try {
      this.onDecision?.(decision);
    } catch (err) {
      this.logger?.warn({ err }, "recording a decode decision failed");
    }
    if (chosen === undefined) throw error!;
    const s = this.states.find((x) => x.address === chosen.address)!;
    const blocks = s.load === undefined ? 0 : blocksNeeded(need, s.load.blockSize);
    s.reservations.push({ atMs: now, blocks });
    return { address: s.address, id: s.id, blocks, reason: decision.reason, candidates: decision.candidates, decision };
  }

  /** A call to `address` failed as unreachable or draining: skip it until a poll succeeds again. */
  markUnavailable(address: string, reason: string): void {
    const s = this.states.find((x) => x.address === address);
    if (s === undefined || !s.ok) return;
    s.ok = false;
    s.error = reason;
    this.logger?.warn({ decode: address, reason }, "decode instance marked unavailable");
  }

  /** Every instance as the policy sees it now: static ones in configured order, then registry ones by id. */
  candidates(now: number = Date.now()): DecodeInstanceView[] {
    return this.states.map((s) => {
      const fresh = s.ok && now - s.measuredAtMs <= this.staleAfterMs;
      const error = fresh ? undefined : (s.error ?? (s.ok ? `no report for ${now - s.measuredAtMs} ms` : undefined));
      return {
        id: s.id,
        address: s.address,
        source: s.source,
        load: s.load,
        healthy: fresh,
        ...(error === undefined ? {} : { error }),
        ...(s.precision === undefined ? {} : { precision: s.precision }),
        ...(s.modelId === undefined ? {} : { modelId: s.modelId }),
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

  private syncMembers(): void {
    if (this.discover === undefined) return;
    let found: readonly DiscoveredInstance[];
    try {
      found = this.discover();
    } catch (err) {
      this.logger?.warn({ err }, "decode discovery failed; keeping the members known");
      return;
    }
    const byAddress = new Map(found.map((f) => [f.address, f]));
    const kept = this.states.filter((s) => {
      if (s.source === "static" || byAddress.has(s.address)) return true;
      this.logger?.info({ decode: s.address, id: s.id }, "decode instance left the registry");
      return false;
    });
    for (const f of byAddress.values()) {
      let s = kept.find((x) => x.address === f.address);
      if (s === undefined) {
        s = newState(f.id, f.address, "registry");
        kept.push(s);
        this.logger?.info({ decode: f.address, id: f.id }, "decode instance found in the registry");
      }
      s.id = f.id;
      s.precision = f.precision ?? s.precision;
      s.modelId = f.modelId ?? s.modelId;
    }
    const statics = kept.filter((s) => s.source === "static");
    const discovered = kept.filter((s) => s.source === "registry").sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    this.states = [...statics, ...discovered];
  }

  private schedule(): void {
    if (this.closed) return;
    this.timer = setTimeout(() => {
      // A timer has nobody to await it: pollOnce() never rejects (a failed Status or discovery is
      // logged and recorded on the instance).
      void this.pollOnce().finally(() => this.schedule());
    }, this.intervalMs);
    this.timer.unref();
  }

  private async pollInstance(s: InstanceState): Promise<void> {
    const startedAt = Date.now();
    try {
      const report = await this.fetchStatus(s.address, { timeoutMs: this.timeoutMs });
      if (!s.ok) this.logger?.info({ decode: s.address }, "decode instance reachable");
      s.load = {
        freeKvBlocks: report.freeKvBlocks,
        totalKvBlocks: report.totalKvBlocks,
        blockSize: report.blockSize,
        runningSequences: report.runningSequences,
        waitingSequences: report.waitingSequences,
        pendingTransfers: report.pendingTransfers,
        accepting: report.accepting,
      };
      if (report.precision !== undefined) s.precision = report.precision;
      if (report.modelId !== undefined) s.modelId = report.modelId;
      s.ok = true;
      s.error = undefined;
      s.measuredAtMs = startedAt;
      // What was sent before this poll started is in the report now (as running, waiting or pending).
      s.reservations = s.reservations.filter((r) => r.atMs >= startedAt);
    } catch (err) {
      const message = errorMessage(err);
      if (s.ok || s.error === undefined) this.logger?.warn({ decode: s.address, err: message }, "decode Status failed");
      s.ok = false;
      s.error = message;
    }
  }
}

function newState(id: string, address: string, source: "static" | "registry"): InstanceState {
  return { id, address, source, precision: undefined, modelId: undefined, load: undefined, measuredAtMs: 0, ok: false, error: undefined, reservations: [] };
}
