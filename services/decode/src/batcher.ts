/**
 * The decode instance's request table and its continuous-batching loop.
 *
 * A request id goes through: awaiting-kv (a Stream is open, or a KV transfer is in progress) ->
 * waiting (admitted: KV complete, blocks held; no batch slot yet) -> running (in the batch) ->
 * finished | failed. One async loop steps every running sequence together (engine.step, up to
 * maxBatch of them) while any runs, and yields to the event loop after each step so transfers,
 * Stream calls and cancels are served between steps: admissions never wait for the batch.
 *
 * Tokens are read from the sequence's own output (the engine appends to it), so a Stream attached
 * late, or reopened with start_index, gets everything it has not seen; nothing is buffered twice.
 * Blocks are freed on finish, on cancel, on failure, at the request's deadline, and when a sequence has
 * had no Stream for the grace period (the router went away). A sequence inside a running step is freed
 * right after that step, never while the engine is using its blocks. Every one of those goes through
 * the sequence's KvLedger hold (`release(reason)`), the one way blocks go back.
 *
 * A transfer that fails with a retryable code (the sender broke or went away, corrupt data, a full cache)
 * does not end the request: its blocks are already back, and prefill's retry (BullMQ attempts, or
 * stalled-job recovery when the prefill worker died) arrives as a new transfer for the same request. The
 * request stays awaiting its KV, bounded by kvWaitMs while a Stream waits and by the grace period when
 * none does; a final prefill failure reaches the router, which cancels it.
 */
import {
  AbortedError,
  AlreadyExistsError,
  CancelledError,
  type Clock,
  type ClockTimer,
  Code,
  DeadlineExceededError,
  errorForCode,
  errorMessage,
  FailureReason,
  MoelaError,
  realClock,
  UnavailableError,
  type Logger,
} from "@moela/core";
import type { EmittedToken, Engine, FinishReason, Sequence } from "@moela/engine";
import type { KvFailure, KvHold, KvReleaseReason, KvTransferMeta } from "@moela/kv-transfer";
import type { Usage as WireUsage } from "@moela/proto-gen";

/** A request's token counts, as the last message of its Stream carries them to the router. */
export type Usage = Readonly<WireUsage>;

/** One message of a request's token stream. */
export interface StreamMessage {
  /** Tokens in completion order; index 0 is the token prefill sampled. */
  readonly tokens: ReadonlyArray<{ readonly index: number; readonly token: EmittedToken }>;
  /** Whether the request asked for logprobs. */
  readonly logprobs: boolean;
  /** Set on the last message only. */
  readonly finish: { readonly reason: FinishReason; readonly usage: Usage } | null;
}

export interface BatcherOptions {
  readonly engine: Engine;
  readonly maxBatch: number;
  /** How long a sequence with no Stream attached is kept before it is freed. */
  readonly streamGraceMs: number;
  /** How long an open Stream waits for its KV. */
  readonly kvWaitMs: number;
  readonly logger: Logger;
  /**
   * After each step: its time, the tokens it emitted, and its drafts verified and accepted by position (the engine's
   * stepDraftedAt and stepAcceptedAt, valid during the call only).
   */
  readonly onStep?: (seconds: number, tokens: number, drafted: readonly number[], accepted: readonly number[]) => void;
  /** The time the grace, KV-wait and drain timers run on and deadlines are checked against (default: the real clock). */
  readonly clock?: Clock | undefined;
}

type Phase = "awaiting-kv" | "waiting" | "running" | "finished" | "failed";

class Request {
  phase: Phase = "awaiting-kv";
  seq: Sequence | null = null;
  meta: KvTransferMeta | null = null;
  /** The transfer currently feeding this request (the latest KvBegin accepted for it). */
  transferId: string | null = null;
  error: MoelaError | null = null;
  finishReason: FinishReason | null = null;
  /** Set when a cancel arrives while the sequence is inside a step: applied after the step. */
  cancelAfterStep: { err: MoelaError; why: KvReleaseReason } | null = null;
  /** The ledger's record of the sequence's blocks (set on admission). */
  hold: KvHold | null = null;
  /** The attached Stream call, if any. */
  subscriber: symbol | null = null;
  /** The last message (finish or error) reached a Stream. */
  delivered = false;
  graceTimer: ClockTimer | undefined;
  kvTimer: ClockTimer | undefined;
  private waiters: Array<() => void> = [];

  constructor(readonly id: string) {}

  notify(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const resolve of w) resolve();
  }

  /** Resolves at the next notify(); rejects with the signal's reason when it aborts first. */
  changed(signal: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      const onAbort = (): void => reject(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
      this.waiters.push(() => {
        signal.removeEventListener("abort", onAbort);
        resolve();
      });
    });
  }

  clearTimers(clock: Clock): void {
    clock.clearTimeout(this.graceTimer);
    clock.clearTimeout(this.kvTimer);
    this.graceTimer = undefined;
    this.kvTimer = undefined;
  }
}

/** Ids of requests that ended without a Stream to tell (cancelled, abandoned, expired) or whose end was
 * delivered: a late transfer or Stream for them gets this error instead of starting over. */
const TOMBSTONES = 10_000;

/**
 * Transfer failures that end the request: the transfer itself is wrong (prefill will not retry it) or its
 * deadline passed. Any other failure (the sender broke or cancelled, corrupt data, a full cache, an
 * unavailable peer) may be retried by prefill with a new transfer, so the request keeps waiting for it.
 */
const FINAL_TRANSFER_FAILURES = new Set<Code>([
  Code.INVALID_ARGUMENT,
  Code.FAILED_PRECONDITION,
  Code.OUT_OF_RANGE,
  Code.NOT_FOUND,
  Code.PERMISSION_DENIED,
  Code.UNIMPLEMENTED,
  Code.DEADLINE_EXCEEDED,
]);

export class Batcher {
  private readonly engine: Engine;
  private readonly options: BatcherOptions;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly requests = new Map<string, Request>();
  private readonly tombstones = new Map<string, MoelaError>();
  private readonly waitingQueue: Request[] = [];
  private active: Request[] = [];
  /** Requests inside the step now running. */
  private readonly inStep = new Set<Request>();
  private currentStep: Promise<void> = Promise.resolve();
  private wake: (() => void) | null = null;
  private loopDone: Promise<void> | null = null;
  private stopped = false;
  private draining = false;

  constructor(options: BatcherOptions) {
    this.engine = options.engine;
    this.options = options;
    this.log = options.logger;
    this.clock = options.clock ?? realClock;
  }

  get running(): number {
    return this.active.length;
  }

  get waiting(): number {
    return this.waitingQueue.length;
  }

  get accepting(): boolean {
    return !this.draining;
  }

  /** Requests known (any phase), for tests and logs. */
  get size(): number {
    return this.requests.size;
  }

  /** Is a request with this id known (any phase)? */
  has(requestId: string): boolean {
    return this.requests.has(requestId);
  }

  start(): void {
    this.loopDone ??= this.loop();
  }

  // ---- KV transfer hooks (KvInbox) ----------------------------------------------------------------

  /** KvBegin passed validation: refuse it (throw) or note which transfer feeds the request. */
  beginTransfer(meta: KvTransferMeta): void {
    if (this.draining) throw new UnavailableError("this decode instance is draining; send the KV elsewhere");
    const tomb = this.tombstones.get(meta.requestId);
    if (tomb !== undefined) throw tomb;
    let r = this.requests.get(meta.requestId);
    if (r !== undefined && r.phase !== "awaiting-kv") {
      throw new AlreadyExistsError(`request ${meta.requestId} is already ${r.phase} on this decode instance`);
    }
    if (r === undefined) {
      r = this.add(meta.requestId);
      this.startGrace(r);
    }
    r.transferId = meta.transferId;
  }

  /** A transfer completed: the restored sequence (its blocks `hold`) joins the waiting queue. Throws to refuse it. */
  admit(seq: Sequence, meta: KvTransferMeta, hold: KvHold): void {
    const tomb = this.tombstones.get(meta.requestId);
    if (tomb !== undefined) throw tomb;
    if (this.draining) throw new UnavailableError("this decode instance is draining");
    let r = this.requests.get(meta.requestId);
    if (r === undefined) r = this.add(meta.requestId);
    if (r.phase !== "awaiting-kv" || (r.transferId !== null && r.transferId !== meta.transferId)) {
      throw new AlreadyExistsError(`request ${meta.requestId} is already fed by transfer ${r.transferId ?? "(none)"} (${r.phase})`);
    }
    this.clock.clearTimeout(r.kvTimer);
    r.seq = seq;
    r.meta = meta;
    r.hold = hold;
    this.log.info(
      { requestId: r.id, transferId: meta.transferId, promptTokens: meta.numTokens, maxTokens: meta.params.maxTokens, kvBlocks: seq.blockTable.length },
      "sequence admitted",
    );
    if (seq.finished) {
      // The token prefill sampled already ends it (a stop token, or max_tokens 1).
      this.finish(r);
    } else {
      r.phase = "waiting";
      this.waitingQueue.push(r);
      this.wake?.();
    }
    r.notify();
  }

  /**
   * A transfer failed (its blocks are back already). A final failure of the request's current transfer
   * ends the request with its status; a retryable one leaves it waiting for prefill's next transfer.
   */
  transferFailed(failure: KvFailure, meta: KvTransferMeta | null): void {
    if (meta === null) return;
    const r = this.requests.get(meta.requestId);
    if (r === undefined || r.phase !== "awaiting-kv" || r.transferId !== meta.transferId) return;
    r.transferId = null;
    if (FINAL_TRANSFER_FAILURES.has(failure.code)) {
      this.fail(r, errorForCode(failure.code, `KV transfer ${meta.transferId} failed: ${failure.reason}`), "rejected");
      return;
    }
    this.log.info(
      { requestId: r.id, transferId: meta.transferId, code: failure.code, reason: failure.reason },
      "KV transfer failed; waiting for prefill's retry",
    );
  }

  // ---- Decode RPCs -------------------------------------------------------------------------------

  /**
   * The request's tokens from `startIndex` on, one message per step (steps that completed while the
   * reader was busy come together), the last one with the finish reason. May be called before the
   * KV arrives. A second call for the same request takes over the stream (the first ends ABORTED).
   */
  async *stream(requestId: string, startIndex: number, signal: AbortSignal): AsyncGenerator<StreamMessage> {
    const tomb = this.tombstones.get(requestId);
    if (tomb !== undefined) throw tomb;
    let r = this.requests.get(requestId);
    if (r === undefined) {
      if (this.draining) throw new UnavailableError("this decode instance is draining");
      r = this.add(requestId);
    }
    const me = Symbol(requestId);
    const previous = r.subscriber;
    r.subscriber = me;
    r.hold?.touch();
    if (previous !== null) r.notify();
    this.clock.clearTimeout(r.graceTimer);
    if (r.phase === "awaiting-kv" && r.kvTimer === undefined) {
      const req = r;
      req.kvTimer = this.clock.setTimeout(() => {
        if (req.phase !== "awaiting-kv") return;
        const err = new DeadlineExceededError(`no KV for request ${req.id} arrived within ${this.options.kvWaitMs} ms`);
        this.bury(req.id, err);
        this.fail(req, err, "lost");
      }, this.options.kvWaitMs);
      req.kvTimer.unref();
    }
    let cursor = startIndex;
    try {
      for (;;) {
        if (r.subscriber !== me) throw new AbortedError(`request ${requestId}: a newer Stream call took over`);
        const out = r.seq?.output ?? [];
        const tokens: { index: number; token: EmittedToken }[] = [];
        for (; cursor < out.length; cursor++) tokens.push({ index: cursor, token: out[cursor]! });
        const logprobs = r.meta?.logprobs ?? false;
        if (r.phase === "finished") {
          r.delivered = true;
          yield { tokens, logprobs, finish: { reason: r.finishReason!, usage: this.usage(r) } };
          return;
        }
        if (r.phase === "failed") {
          if (tokens.length > 0) yield { tokens, logprobs, finish: null };
          r.delivered = true;
          throw r.error!;
        }
        if (tokens.length > 0) yield { tokens, logprobs, finish: null };
        await r.changed(signal);
      }
    } finally {
      if (r.subscriber === me) {
        r.subscriber = null;
        if (r.delivered) {
          // A late duplicate of its transfer (a prefill job run twice) is refused without taking blocks;
          // prefill takes ALREADY_EXISTS as "done already".
          this.bury(r.id, new AlreadyExistsError(`request ${r.id} already ${r.phase} on this decode instance`));
          this.forget(r);
        } else this.startGrace(r);
      }
    }
  }

  /** Stop a request and free its blocks (after the current step, if it is in it). False when unknown or already over. */
  async cancel(requestId: string, reason: string): Promise<boolean> {
    const err = new CancelledError(`request ${requestId} was cancelled${reason ? `: ${reason}` : ""}`);
    const r = this.requests.get(requestId);
    // Remembered even when unknown: the router may cancel before the KV arrives.
    this.bury(requestId, err);
    if (r === undefined || r.phase === "finished" || r.phase === "failed") return false;
    this.log.info({ requestId, reason }, "request cancelled");
    if (this.inStep.has(r)) {
      r.cancelAfterStep = { err, why: "cancelled" };
      await this.currentStep;
    } else {
      this.fail(r, err, "cancelled");
    }
    return true;
  }

  // ---- lifecycle ---------------------------------------------------------------------------------

  /**
   * Stop admitting; let running and waiting sequences finish for up to graceMs; then end every
   * remaining request with UNAVAILABLE (the router may migrate it) and stop the loop.
   */
  async drain(graceMs: number): Promise<void> {
    this.draining = true;
    const deadline = this.clock.now() + graceMs;
    while (this.active.length + this.waitingQueue.length > 0 && this.clock.now() < deadline) {
      await new Promise<void>((resolve) => this.clock.setTimeout(resolve, Math.min(50, Math.max(1, deadline - this.clock.now()))));
    }
    this.stopped = true;
    this.wake?.();
    await this.currentStep;
    await this.loopDone;
    const err = new UnavailableError("this decode instance is shutting down");
    for (const r of [...this.requests.values()]) if (r.phase !== "finished" && r.phase !== "failed") this.fail(r, err, "shutdown");
    for (const r of this.requests.values()) r.clearTimers(this.clock);
  }

  // ---- internals ---------------------------------------------------------------------------------

  private add(id: string): Request {
    const r = new Request(id);
    this.requests.set(id, r);
    return r;
  }

  private bury(id: string, err: MoelaError): void {
    this.tombstones.delete(id);
    this.tombstones.set(id, err);
    while (this.tombstones.size > TOMBSTONES) this.tombstones.delete(this.tombstones.keys().next().value!);
  }

  private forget(r: Request): void {
    r.clearTimers(this.clock);
    if (this.requests.get(r.id) === r) this.requests.delete(r.id);
  }

  /** Free the request if no Stream attaches within the grace period. */
  private startGrace(r: Request): void {
    this.clock.clearTimeout(r.graceTimer);
    r.graceTimer = this.clock.setTimeout(() => {
      if (r.subscriber !== null) return;
      if (r.phase === "finished" || r.phase === "failed") {
        this.forget(r);
        return;
      }
      const err = new CancelledError(`request ${r.id} had no Stream for ${this.options.streamGraceMs} ms`);
      this.log.info({ requestId: r.id, phase: r.phase }, "freeing a request nobody is streaming");
      this.bury(r.id, err);
      if (this.inStep.has(r)) r.cancelAfterStep = { err, why: "lost" };
      else {
        this.fail(r, err, "lost");
        this.forget(r);
      }
    }, this.options.streamGraceMs);
    r.graceTimer.unref();
  }

  private usage(r: Request): Usage {
    const s = r.seq!;
    return {
      promptTokens: s.prompt.length,
      completionTokens: s.output.length,
      cachedPromptTokens: r.meta?.cachedPromptTokens ?? 0,
      draftTokens: s.drafted,
      acceptedDraftTokens: s.accepted,
    };
  }

  private finish(r: Request): void {
    this.releaseBlocks(r, "finished");
    r.phase = "finished";
    r.finishReason = r.seq!.finishReason;
    this.clock.clearTimeout(r.kvTimer);
    this.log.info(
      {
        requestId: r.id,
        reason: r.finishReason,
        tokens: r.seq!.output.length,
        drafted: r.seq!.drafted,
        accepted: r.seq!.accepted,
        draftsSkipped: r.seq!.draftsSkipped,
      },
      "sequence finished",
    );
    if (r.subscriber === null) this.startGrace(r);
    r.notify();
  }

  /** The one way a request's sequence blocks go back: its ledger hold. */
  private releaseBlocks(r: Request, why: KvReleaseReason): void {
    if (r.hold !== null) r.hold.release(why);
    else if (r.seq !== null) this.engine.release(r.seq);
  }

  /** End a request with `err`, freeing its blocks for `why`. Not for a request inside a running step. */
  private fail(r: Request, err: MoelaError, why: KvReleaseReason): void {
    if (r.phase === "finished" || r.phase === "failed") return;
    this.releaseBlocks(r, why);
    const i = this.waitingQueue.indexOf(r);
    if (i >= 0) this.waitingQueue.splice(i, 1);
    this.active = this.active.filter((x) => x !== r);
    r.phase = "failed";
    r.error = err;
    this.clock.clearTimeout(r.kvTimer);
    if (r.subscriber === null) this.startGrace(r);
    r.notify();
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      while (this.active.length < this.options.maxBatch && this.waitingQueue.length > 0) {
        const r = this.waitingQueue.shift()!;
        r.phase = "running";
        this.active.push(r);
      }
      if (this.active.length === 0) {
        await new Promise<void>((resolve) => {
          this.wake = resolve;
        });
        this.wake = null;
        continue;
      }
      const batch = [...this.active];
      let stepDone!: () => void;
      this.currentStep = new Promise((resolve) => {
        stepDone = resolve;
      });
      for (const r of batch) this.inStep.add(r);
      const t0 = performance.now();
      let failure: MoelaError | null = null;
      let emitted = 0;
      try {
        const results = await this.engine.step(batch.map((r) => r.seq!));
        for (const res of results) emitted += res.tokens.length;
      } catch (err) {
        // A step that throws (an expert-host went away) leaves its sequences in an unknown state:
        // end them all with UNAVAILABLE "decode step failed: ..." and the reason DECODE_STEP_FAILED (in the
        // status's trailing metadata): the router migrates them and keeps this instance in its choice.
        this.log.error({ err, batch: batch.map((r) => r.id) }, "decode step failed");
        failure = new UnavailableError(`decode step failed: ${errorMessage(err)}`, { cause: err, reason: FailureReason.DECODE_STEP_FAILED });
      }
      this.options.onStep?.((performance.now() - t0) / 1000, emitted, this.engine.stepDraftedAt, this.engine.stepAcceptedAt);
      this.inStep.clear();
      const now = this.clock.now();
      for (const r of batch) {
        const deadline = r.meta?.deadlineUnixMs ?? 0;
        if (failure !== null) this.fail(r, failure, "failed");
        else if (r.cancelAfterStep !== null) this.fail(r, r.cancelAfterStep.err, r.cancelAfterStep.why);
        else if (r.seq!.finished) this.finish(r);
        else if (deadline > 0 && now >= deadline) {
          const err = new DeadlineExceededError(`request ${r.id} passed its deadline while decoding`);
          this.bury(r.id, err);
          this.fail(r, err, "deadline");
        } else r.notify();
      }
      this.active = this.active.filter((r) => r.phase === "running");
      // Progress for the ledger: a sequence someone reads (running or waiting for a slot) is not stranded.
      for (const r of this.active) if (r.subscriber !== null) r.hold?.touch(now);
      for (const r of this.waitingQueue) if (r.subscriber !== null) r.hold?.touch(now);
      stepDone();
      // Let transfers, Stream calls and cancels in between steps.
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
}
