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
 * Blocks are freed on finish, on cancel, on failure, and when a sequence has had no Stream for the
 * grace period (the router went away). A sequence inside a running step is freed right after that
 * step, never while the engine is using its blocks.
 */
import { CancelledError, Code, MoelaError, UnavailableError, type Logger } from "@moela/core";
import type { EmittedToken, Engine, FinishReason, Sequence } from "@moela/engine";
import type { KvFailure, KvTransferMeta } from "@moela/kv-transfer";

export interface Usage {
  readonly promptTokens: number;
  readonly completionTokens: number;
  readonly cachedPromptTokens: number;
  readonly draftTokens: number;
  readonly acceptedDraftTokens: number;
}

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
  /** After each step: its duration, tokens emitted, MTP drafts proposed and accepted. */
  readonly onStep?: (seconds: number, tokens: number, drafted: number, accepted: number) => void;
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
  cancelAfterStep: MoelaError | null = null;
  /** The attached Stream call, if any. */
  subscriber: symbol | null = null;
  /** The last message (finish or error) reached a Stream. */
  delivered = false;
  graceTimer: NodeJS.Timeout | undefined;
  kvTimer: NodeJS.Timeout | undefined;
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

  clearTimers(): void {
    clearTimeout(this.graceTimer);
    clearTimeout(this.kvTimer);
    this.graceTimer = undefined;
    this.kvTimer = undefined;
  }
}

/** Ids of requests that ended without a Stream to tell (cancelled, abandoned, expired): a late
 * transfer or Stream for them gets this error instead of starting over. */
const TOMBSTONES = 10_000;

export class Batcher {
  private readonly engine: Engine;
  private readonly options: BatcherOptions;
  private readonly log: Logger;
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
      throw new MoelaError(`request ${meta.requestId} is already ${r.phase} on this decode instance`, Code.ALREADY_EXISTS);
    }
    if (r === undefined) {
      r = this.add(meta.requestId);
      this.startGrace(r);
    }
    r.transferId = meta.transferId;
  }

  /** A transfer completed: the restored sequence joins the waiting queue. Throws to refuse it. */
  admit(seq: Sequence, meta: KvTransferMeta): void {
    const tomb = this.tombstones.get(meta.requestId);
    if (tomb !== undefined) throw tomb;
    if (this.draining) throw new UnavailableError("this decode instance is draining");
    let r = this.requests.get(meta.requestId);
    if (r === undefined) r = this.add(meta.requestId);
    if (r.phase !== "awaiting-kv" || (r.transferId !== null && r.transferId !== meta.transferId)) {
      throw new MoelaError(`request ${meta.requestId} is already fed by transfer ${r.transferId ?? "(none)"} (${r.phase})`, Code.ALREADY_EXISTS);
    }
    clearTimeout(r.kvTimer);
    r.seq = seq;
    r.meta = meta;
    this.log.info({ requestId: r.id, transferId: meta.transferId, promptTokens: meta.numTokens, maxTokens: meta.params.maxTokens, kvBlocks: seq.blockTable.length }, "sequence admitted");
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

  /** A transfer failed: the Stream waiting on it (if it is the request's current transfer) ends with its status. */
  transferFailed(failure: KvFailure, meta: KvTransferMeta | null): void {
    if (meta === null) return;
    const r = this.requests.get(meta.requestId);
    if (r === undefined || r.phase !== "awaiting-kv" || r.transferId !== meta.transferId) return;
    this.fail(r, new MoelaError(`KV transfer ${meta.transferId} failed: ${failure.reason}`, failure.code));
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
    if (previous !== null) r.notify();
    clearTimeout(r.graceTimer);
    if (r.phase === "awaiting-kv" && r.kvTimer === undefined) {
      const req = r;
      req.kvTimer = setTimeout(() => {
        if (req.phase !== "awaiting-kv") return;
        const err = new MoelaError(`no KV for request ${req.id} arrived within ${this.options.kvWaitMs} ms`, Code.DEADLINE_EXCEEDED);
        this.bury(req.id, err);
        this.fail(req, err);
      }, this.options.kvWaitMs);
      req.kvTimer.unref();
    }
    let cursor = startIndex;
    try {
      for (;;) {
        if (r.subscriber !== me) throw new MoelaError(`request ${requestId}: a newer Stream call took over`, Code.ABORTED);
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
        if (r.delivered) this.forget(r);
        else this.startGrace(r);
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
      r.cancelAfterStep = err;
      await this.currentStep;
    } else {
      this.fail(r, err);
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
    const deadline = Date.now() + graceMs;
    while (this.active.length + this.waitingQueue.length > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, Math.min(50, Math.max(1, deadline - Date.now()))));
    }
    this.stopped = true;
    this.wake?.();
    await this.currentStep;
    await this.loopDone;
    const err = new UnavailableError("this decode instance is shutting down");
    for (const r of [...this.requests.values()]) if (r.phase !== "finished" && r.phase !== "failed") this.fail(r, err);
    for (const r of this.requests.values()) r.clearTimers();
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
    r.clearTimers();
    if (this.requests.get(r.id) === r) this.requests.delete(r.id);
  }

  /** Free the request if no Stream attaches within the grace period. */
  private startGrace(r: Request): void {
    clearTimeout(r.graceTimer);
    r.graceTimer = setTimeout(() => {
      if (r.subscriber !== null) return;
      if (r.phase === "finished" || r.phase === "failed") {
        this.forget(r);
        return;
      }
      const err = new CancelledError(`request ${r.id} had no Stream for ${this.options.streamGraceMs} ms`);
      this.log.info({ requestId: r.id, phase: r.phase }, "freeing a request nobody is streaming");
      this.bury(r.id, err);
      if (this.inStep.has(r)) r.cancelAfterStep = err;
      else {
        this.fail(r, err);
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
    this.engine.release(r.seq!);
    r.phase = "finished";
    r.finishReason = r.seq!.finishReason;
    clearTimeout(r.kvTimer);
    this.log.info({ requestId: r.id, reason: r.finishReason, tokens: r.seq!.output.length, drafted: r.seq!.drafted, accepted: r.seq!.accepted }, "sequence finished");
    if (r.subscriber === null) this.startGrace(r);
    r.notify();
  }

  /** End a request with `err`, freeing its blocks. Not for a request inside a running step. */
  private fail(r: Request, err: MoelaError): void {
    if (r.phase === "finished" || r.phase === "failed") return;
    if (r.seq !== null) this.engine.release(r.seq);
    const i = this.waitingQueue.indexOf(r);
    if (i >= 0) this.waitingQueue.splice(i, 1);
    this.active = this.active.filter((x) => x !== r);
    r.phase = "failed";
    r.error = err;
    clearTimeout(r.kvTimer);
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
      const drafted0 = this.engine.drafted;
      const accepted0 = this.engine.accepted;
      const t0 = performance.now();
      let failure: MoelaError | null = null;
      let emitted = 0;
      try {
        const results = await this.engine.step(batch.map((r) => r.seq!));
        for (const res of results) emitted += res.tokens.length;
      } catch (err) {
        // A step that throws (an expert-host went away) leaves its sequences in an unknown state:
        // end them all; the router may retry them elsewhere.
        this.log.error({ err, batch: batch.map((r) => r.id) }, "decode step failed");
        failure =
          err instanceof MoelaError && err.code === Code.UNAVAILABLE
            ? err
            : new UnavailableError(`decode step failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      }
      this.options.onStep?.((performance.now() - t0) / 1000, emitted, this.engine.drafted - drafted0, this.engine.accepted - accepted0);
      this.inStep.clear();
      for (const r of batch) {
        if (failure !== null) this.fail(r, failure);
        else if (r.cancelAfterStep !== null) this.fail(r, r.cancelAfterStep);
        else if (r.seq!.finished) this.finish(r);
        else r.notify();
      }
      this.active = this.active.filter((r) => r.phase === "running");
      stepDone();
      // Let transfers, Stream calls and cancels in between steps.
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
}
