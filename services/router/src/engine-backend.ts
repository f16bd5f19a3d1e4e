/**
 * The one-process backend (`moela serve --role all`): generations run on this process's Engine, with no
 * gRPC, no Redis and no KV transfer between prefill and decode. One loop batches every request in flight
 * (continuous batching, as decode's batcher does):
 *
 *   waiting --admit--> prefill (the new ones together) --> running --step--> ... --> finished | cancelled
 *
 * Each turn of the loop (1) drops the sequences whose requests ended and gives their KV blocks back,
 * (2) admits waiting requests in arrival order while the batch has a slot (maxBatch), the KV cache can hold
 * them at their longest (prompt + max_tokens: a running sequence never runs out of blocks) and the turn's
 * prompt-token budget (maxPrefillTokens; the first admitted always fits) allows, and prefills them in one
 * call, (3) runs one decode step over every running sequence, (4) yields to the event loop, so HTTP
 * requests, SSE writes and disconnects are served between steps. Sequences leave the batch only between
 * steps, never while the engine uses their blocks.
 *
 * generate() turns a sequence's tokens into the router's GenerateEvents exactly as pipeline.ts does
 * (incremental detokenization, stop strings, usage on the last event), so the HTTP answers are formatted by
 * the same code as the cluster's. Greedy tokens equal `moela generate`'s: the same engine, kernels and
 * prefill chunk, and a sequence's rows do not depend on the others in its batch.
 */
import { randomInt } from "node:crypto";
import { setImmediate as nextTurn } from "node:timers/promises";
import { CancelledError, DeadlineExceededError, InternalError, InvalidArgumentError, MoelaError, UnavailableError, type Logger } from "@moela/core";
import type { EmittedToken, Engine, GenerationParams, Sequence } from "@moela/engine";
import type { MetricsOf } from "@moela/metrics";
import type { FinishReason, GeneratedToken, SamplingRequest } from "@moela/openai-api";
import type { Tokenizer } from "@moela/tokenizer";
import type { GenerateEvent, GenerateInput, GenerationBackend } from "./backend.js";
import { GenerationRecorder } from "./request-metrics.js";
import { TokenAssembler } from "./token-assembler.js";

export interface EngineBackendOptions {
  readonly engine: Engine;
  /** null: no detokenization (text stays ""), as for a checkpoint without a tokenizer. */
  readonly tokenizer: Tokenizer | null;
  /** Most sequences per decode step; more wait for a slot. */
  readonly maxBatch: number;
  /** Prompt tokens one turn of the loop prefills at most (the first admitted request always goes). */
  readonly maxPrefillTokens: number;
  /** A request's deadline, waiting included. */
  readonly requestTimeoutMs: number;
  readonly logger: Logger;
  readonly metrics: MetricsOf<"router">;
  /** The served model's name: the `model` label of the request metrics. */
  readonly model: string;
  /**
   * After each step: its time, sequences, emitted tokens, and drafts verified and accepted by position (the engine's
   * stepDraftedAt and stepAcceptedAt, valid during the call only).
   */
  readonly onStep?: (seconds: number, batch: number, tokens: number, drafted: readonly number[], accepted: readonly number[]) => void;
}

/** Largest seed picked for a request that gave none (as pipeline.ts). */
const MAX_PICKED_SEED = 2 ** 48 - 1;

/** One request's place in the loop. */
class Slot {
  /** Tokens the engine produced that generate() has not taken yet. */
  readonly produced: EmittedToken[] = [];
  /** Set once the sequence finished (stop or length) or the loop failed it. */
  done = false;
  error: MoelaError | null = null;
  /** The request ended (client gone, stop string, deadline): leave the batch at the next turn. */
  cancelled = false;
  /** In the running batch (its blocks are counted in EngineBackend.committed). */
  admitted = false;
  private wake: (() => void) | null = null;

  /** performance.now() when it joined the waiting queue (its queue time ends at admission). */
  readonly queuedAt = performance.now();

  constructor(
    readonly seq: Sequence,
    /** KV blocks the sequence may need at most (prompt + max_tokens + one speculative row). */
    readonly blocks: number,
    /** Its request metrics (prefill starts at admission). */
    readonly rec: GenerationRecorder,
  ) {}

  notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** Resolves at the next notify() (the caller checks its state first). */
  changed(): Promise<void> {
    return new Promise((resolve) => {
      this.wake = resolve;
    });
  }
}

export class EngineBackend implements GenerationBackend {
  private readonly engine: Engine;
  private readonly o: EngineBackendOptions;
  private readonly waitingQueue: Slot[] = [];
  private running: Slot[] = [];
  /** KV blocks the admitted sequences may use at most, together. */
  private committed = 0;
  private wakeLoop: (() => void) | null = null;
  private loopDone: Promise<void> | null = null;
  private stopped = false;

  constructor(options: EngineBackendOptions) {
    if (!(Number.isInteger(options.maxBatch) && options.maxBatch >= 1))
      throw new InvalidArgumentError(`maxBatch must be a positive integer, got ${options.maxBatch}`);
    this.engine = options.engine;
    this.o = options;
  }

  /** Sequences in the decode batch. */
  get runningCount(): number {
    return this.running.length;
  }

  /** Requests waiting for a batch slot or KV blocks. */
  get waitingCount(): number {
    return this.waitingQueue.length;
  }

  health(): Record<string, unknown> {
    const cache = this.engine.cache;
    return {
      engine: { running: this.running.length, waiting: this.waitingQueue.length, kv_blocks_used: cache.usedBlocks, kv_blocks_capacity: cache.numBlocks },
    };
  }

  /** Nothing is routed in one process: no request has routing decisions. */
  async routing(): Promise<readonly never[]> {
    return [];
  }

  /** Stop the loop: requests still in flight fail UNAVAILABLE; their blocks go back. */
  async close(): Promise<void> {
    this.stopped = true;
    this.wakeLoop?.();
    await this.loopDone;
    const gone = new UnavailableError("the server is shutting down");
    for (const s of [...this.waitingQueue.splice(0), ...this.running.splice(0)]) this.fail(s, gone);
  }

  generate(input: GenerateInput, signal: AbortSignal): AsyncGenerator<GenerateEvent> {
    const rec = new GenerationRecorder(this.o.metrics, this.o.model, input.promptTokenIds.length);
    return rec.track(this.run(input, signal, rec));
  }

  private async *run(input: GenerateInput, signal: AbortSignal, rec: GenerationRecorder): AsyncGenerator<GenerateEvent> {
    if (signal.aborted) throw new CancelledError("the client went away");
    if (this.stopped) throw new UnavailableError("the server is shutting down");
    const { metrics, tokenizer } = this.o;
    const { sampling } = input;
    const params = engineParams(sampling, input.cacheSalt);
    // Validates the prompt and parameters against the model (InvalidArgumentError: HTTP 400).
    const seq = this.engine.newSequence(input.requestId, input.promptTokenIds, params);
    const blocks = this.engine.blocksNeeded(input.promptTokenIds.length, sampling.maxTokens);
    if (blocks > this.engine.cache.numBlocks) {
      throw new InvalidArgumentError(
        `the request (${input.promptTokenIds.length} prompt tokens + max_tokens ${sampling.maxTokens}) needs ${blocks} KV blocks, more than this server's ${this.engine.cache.numBlocks}; reduce the prompt or max_tokens`,
      );
    }
    const slot = new Slot(seq, blocks, rec);
    const onAbort = (): void => {
      slot.cancelled = true;
      slot.notify();
      this.wakeLoop?.();
    };
    signal.addEventListener("abort", onAbort, { once: true });
    const timer = setTimeout(() => {
      slot.error ??= new DeadlineExceededError(`the request did not finish within ${this.o.requestTimeoutMs} ms`);
      onAbort();
    }, this.o.requestTimeoutMs);
    timer.unref();
    this.waitingQueue.push(slot);
    const model = this.o.model;
    metrics.routerPromptTokens.inc({ model }, input.promptTokenIds.length);
    this.start();
    this.wakeLoop?.();

    // Detokenizing, stop strings after min_tokens and the token metrics, as pipeline.ts does them.
    const asm = new TokenAssembler(tokenizer, input, metrics, model);
    const wantLogprobs = sampling.logprobs !== null;
    try {
      for (;;) {
        if (slot.cancelled || slot.error !== null) {
          if (slot.error !== null) throw slot.error;
          throw signal.reason instanceof MoelaError ? signal.reason : new CancelledError("the client went away");
        }
        if (slot.produced.length === 0 && !slot.done) {
          await slot.changed();
          continue;
        }
        const b = asm.batch();
        for (const t of slot.produced.splice(0)) if (!asm.add(b, generatedToken(t, wantLogprobs))) break;
        asm.observe(b);
        const finished = b.stopped || (slot.done && slot.produced.length === 0);
        if (finished) {
          // Release what the decoder and the matcher held back for a continuation that will not come.
          if (!b.stopped) asm.flush(b);
          const finishReason: FinishReason = b.stopped || seq.finishReason === "stop" ? "stop" : "length";
          // Leaves the batch now (a stop string mid-generation), not when the caller lets go.
          slot.cancelled = true;
          this.wakeLoop?.();
          yield {
            tokens: b.tokens,
            text: b.text,
            finishReason,
            usage: { promptTokens: input.promptTokenIds.length, completionTokens: asm.sent, cachedPromptTokens: seq.cachedTokens },
          };
          return;
        }
        if (b.tokens.length > 0 || b.text.length > 0) yield { tokens: b.tokens, text: b.text, finishReason: null };
      }
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
      slot.cancelled = true;
      // Not admitted yet: it never reaches the engine. Admitted: the loop gives its blocks back after the step.
      const i = this.waitingQueue.indexOf(slot);
      if (i >= 0) this.waitingQueue.splice(i, 1);
      this.wakeLoop?.();
    }
  }

  private start(): void {
    this.loopDone ??= this.loop().catch((err: unknown) => {
      // The loop itself never throws (a failed step fails its sequences); this is a bug, so say so loudly.
      this.o.logger.error({ err }, "the engine loop stopped");
      this.stopped = true;
    });
  }

  private async loop(): Promise<void> {
    const { engine, logger } = this.o;
    while (!this.stopped) {
      this.retire();
      if (this.running.length === 0 && this.waitingQueue.length === 0) {
        await new Promise<void>((resolve) => {
          this.wakeLoop = resolve;
        });
        this.wakeLoop = null;
        continue;
      }
      const fresh = this.admit();
      if (fresh.length > 0) {
        try {
          const results = await engine.prefill(fresh.map((s) => s.seq));
          results.forEach((r, i) => this.deliver(fresh[i]!, r.tokens));
        } catch (err) {
          logger.error({ err, requests: fresh.map((s) => s.seq.id) }, "prefill failed");
          for (const s of fresh) this.fail(s, failure("prefill", err));
        }
      }
      const stepping = this.running.filter((s) => !s.cancelled && !s.done);
      if (stepping.length > 0) {
        const t0 = performance.now();
        try {
          const results = await engine.step(stepping.map((s) => s.seq));
          let tokens = 0;
          results.forEach((r, i) => {
            tokens += r.tokens.length;
            this.deliver(stepping[i]!, r.tokens);
          });
          this.o.onStep?.((performance.now() - t0) / 1000, stepping.length, tokens, engine.stepDraftedAt, engine.stepAcceptedAt);
        } catch (err) {
          logger.error({ err, requests: stepping.map((s) => s.seq.id) }, "decode step failed");
          for (const s of stepping) this.fail(s, failure("decode step", err));
        }
      }
      // HTTP, SSE writes and disconnects between steps.
      await nextTurn();
    }
  }

  /** Admit waiting requests (arrival order) that fit a batch slot, the KV budget and the turn's prompt budget. */
  private admit(): Slot[] {
    const fresh: Slot[] = [];
    let promptTokens = 0;
    const capacity = this.engine.cache.numBlocks;
    while (this.waitingQueue.length > 0 && this.running.length < this.o.maxBatch) {
      const s = this.waitingQueue[0]!;
      if (s.cancelled) {
        // Its request ended while it waited (deadline, client gone); generate() is about to drop it too.
        this.waitingQueue.shift();
        continue;
      }
      if (this.committed + s.blocks > capacity) break;
      if (fresh.length > 0 && promptTokens + s.seq.prompt.length > this.o.maxPrefillTokens) break;
      this.waitingQueue.shift();
      this.committed += s.blocks;
      promptTokens += s.seq.prompt.length;
      s.admitted = true;
      s.rec.prefillStarted(s.queuedAt);
      fresh.push(s);
      this.running.push(s);
    }
    return fresh;
  }

  /**
   * Sequences whose requests ended (finished, cancelled, failed) leave the batch and give their blocks back;
   * a finished one's last tokens stay on its Slot, which generate() holds, until its reader takes them.
   */
  private retire(): void {
    if (!this.running.some((s) => s.cancelled || s.done)) return;
    const keep: Slot[] = [];
    for (const s of this.running) {
      if (s.cancelled || s.done) this.releaseSlot(s);
      else keep.push(s);
    }
    this.running = keep;
  }

  private releaseSlot(s: Slot): void {
    if (!s.admitted) return;
    this.engine.release(s.seq);
    this.committed -= s.blocks;
    s.admitted = false;
  }

  private deliver(s: Slot, tokens: readonly EmittedToken[]): void {
    s.produced.push(...tokens);
    if (s.seq.finished) s.done = true;
    s.notify();
  }

  private fail(s: Slot, err: MoelaError): void {
    s.error ??= err;
    s.done = true;
    s.cancelled = true;
    this.releaseSlot(s);
    s.notify();
  }
}

/** The engine's parameters for a validated request (the router picks a seed when the client gave none). */
export function engineParams(s: SamplingRequest, cacheSalt: string | undefined): GenerationParams {
  return {
    temperature: s.temperature,
    topP: s.topP,
    topK: s.topK,
    seed: s.seed ?? randomInt(MAX_PICKED_SEED),
    maxTokens: s.maxTokens,
    stopTokenIds: s.stopTokenIds,
    ignoreEos: s.ignoreEos,
    topLogprobs: s.logprobs ?? 0,
    ...(cacheSalt === undefined ? {} : { cacheSalt }),
    // Penalties and filters (absent: off), as the cluster's prefill job carries them.
    ...(s.presencePenalty !== undefined ? { presencePenalty: s.presencePenalty } : {}),
    ...(s.frequencyPenalty !== undefined ? { frequencyPenalty: s.frequencyPenalty } : {}),
    ...(s.repetitionPenalty !== undefined ? { repetitionPenalty: s.repetitionPenalty } : {}),
    ...(s.logitBias !== undefined && s.logitBias.length > 0 ? { logitBias: s.logitBias } : {}),
    ...(s.minP !== undefined ? { minP: s.minP } : {}),
    ...(s.minTokens !== undefined ? { minTokens: s.minTokens } : {}),
    ...(s.grammar !== undefined ? { grammar: s.grammar } : {}),
  };
}

/** A failure of the engine as the request's error: its own MoelaError, else INTERNAL (details in the log). */
function failure(what: string, err: unknown): MoelaError {
  if (err instanceof MoelaError) return err;
  return new InternalError(`${what} failed`, { cause: err });
}

function generatedToken(t: EmittedToken, wantLogprobs: boolean): GeneratedToken {
  if (!wantLogprobs) return { id: t.id };
  return { id: t.id, logprob: t.logprob, top: (t.top ?? []).map(([id, logprob]) => ({ id, logprob })) };
}
