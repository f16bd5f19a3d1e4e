/**
 * Tokenizing off the router's event loop. A 50 MB prompt takes the JavaScript tokenizer about half a
 * minute; on the event loop that is half a minute in which no other client is answered. So:
 *
 * - an op whose text is short (encodeOpCost <= inlineMaxCost, 4096 characters by default: a couple of
 *   milliseconds) runs at once on the calling thread: the hop to a thread would cost more than it saves,
 *   and a small request never waits behind a large one;
 * - anything larger goes to a pool of worker threads (--tokenizer-threads), each with its own copy of the
 *   tokenizer (tokenize-worker.ts), first come first served, one op per thread at a time;
 * - at most maxQueued ops wait for a thread; past that the request is refused with RESOURCE_EXHAUSTED
 *   (429, retry later) rather than queued without bound;
 * - a request that goes away (its AbortSignal) leaves the queue, and if its op is running, the thread is
 *   terminated and replaced, so an abandoned 50 MB prompt stops burning a core.
 *
 * The results are exactly what the calling thread would compute (same tokenizer files, same runEncodeOp).
 */
import { Worker } from "node:worker_threads";
import { CancelledError, errorForCode, InternalError, InvalidArgumentError, MoelaError, ResourceExhaustedError, UnavailableError } from "@moela/core";
import type { Logger } from "@moela/core";
import { encodeOpCost, runEncodeOp, type AsyncPromptEncoder, type EncodeOp, type EncodeResult, type PromptEncoder } from "@moela/openai-api";
import type { TokenizeReply, TokenizeRequest, TokenizeWorkerInit } from "./tokenize-worker.js";

/** Ops up to this many characters run on the calling thread (about 2 ms for the bundled tokenizer). */
export const INLINE_TOKENIZE_CHARS = 4096;
/** Ops that may wait for a thread before new ones are refused. */
export const DEFAULT_MAX_QUEUED_OPS = 256;

export interface TokenizerPoolOptions {
  /** Checkpoint folder with tokenizer.json (each thread loads its own tokenizer from it). */
  readonly model: string;
  /** Worker threads; 0 runs every op inline (blocking the event loop on large prompts). */
  readonly threads: number;
  /** The calling thread's tokenizer, for small ops. */
  readonly inline: PromptEncoder;
  /** Largest op (encodeOpCost) run inline (default INLINE_TOKENIZE_CHARS). */
  readonly inlineMaxCost?: number;
  /** Most ops waiting for a thread (default DEFAULT_MAX_QUEUED_OPS). */
  readonly maxQueued?: number;
  readonly logger?: Logger;
}

interface Job {
  readonly id: number;
  readonly op: EncodeOp;
  readonly resolve: (r: EncodeResult) => void;
  readonly reject: (err: unknown) => void;
  readonly signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

interface Slot {
  worker: Worker;
  /** The op it runs now. */
  job: Job | null;
  ready: boolean;
}

/** The ids as a plain array; a loop, since Array.from on a typed array of millions takes seconds. */
function toArray(ids: Uint32Array): number[] {
  const out = new Array<number>(ids.length);
  for (let i = 0; i < ids.length; i++) out[i] = ids[i]!;
  return out;
}

function errorOf(e: { code: number; message: string }): MoelaError {
  return errorForCode(e.code, e.message);
}

function abortError(signal: AbortSignal): unknown {
  return signal.reason instanceof MoelaError ? signal.reason : new CancelledError("the request went away while its prompt was tokenized");
}

export class TokenizerPool implements AsyncPromptEncoder {
  private readonly slots: Slot[] = [];
  private readonly queue: Job[] = [];
  private readonly inlineMaxCost: number;
  private readonly maxQueued: number;
  private readonly init: TokenizeWorkerInit;
  private readonly bootUrl: URL;
  private nextId = 1;
  private closed = false;
  /** Set when a thread cannot start: every later op is refused UNAVAILABLE. */
  private broken: Error | null = null;

  private constructor(private readonly o: TokenizerPoolOptions) {
    this.inlineMaxCost = o.inlineMaxCost ?? INLINE_TOKENIZE_CHARS;
    this.maxQueued = o.maxQueued ?? DEFAULT_MAX_QUEUED_OPS;
    const self = import.meta.url;
    this.init = { moduleUrl: new URL(self.endsWith(".ts") ? "./tokenize-worker.ts" : "./tokenize-worker.js", self).href, model: o.model };
    this.bootUrl = new URL("./tokenize-boot.mjs", self);
  }

  /** A pool whose threads have loaded their tokenizers (rejects when one cannot). */
  static async start(o: TokenizerPoolOptions): Promise<TokenizerPool> {
    if (!(Number.isInteger(o.threads) && o.threads >= 0)) throw new InvalidArgumentError(`tokenizer threads must be an integer >= 0, got ${o.threads}`);
    const pool = new TokenizerPool(o);
    try {
      await Promise.all(Array.from({ length: o.threads }, () => pool.spawn()));
    } catch (err) {
      await pool.close();
      throw err;
    }
    return pool;
  }

  get threads(): number {
    return this.slots.length;
  }

  /** Ops waiting for a thread now. */
  get queued(): number {
    return this.queue.length;
  }

  run(op: EncodeOp, signal?: AbortSignal): Promise<EncodeResult> {
    if (signal?.aborted) return Promise.reject(abortError(signal));
    if (this.o.threads === 0 || encodeOpCost(op) <= this.inlineMaxCost) {
      try {
        return Promise.resolve(runEncodeOp(this.o.inline, op));
      } catch (err) {
        return Promise.reject(err);
      }
    }
    if (this.closed) return Promise.reject(new UnavailableError("the router is shutting down"));
    if (this.broken !== null) return Promise.reject(new UnavailableError("the router cannot tokenize long prompts right now"));
    if (this.queue.length >= this.maxQueued) {
      return Promise.reject(new ResourceExhaustedError(`the router is tokenizing ${this.queue.length} long prompts already; retry later`));
    }
    return new Promise<EncodeResult>((resolve, reject) => {
      const job: Job = { id: this.nextId++, op, resolve, reject, signal, onAbort: undefined };
      if (signal !== undefined) {
        job.onAbort = () => this.abort(job);
        signal.addEventListener("abort", job.onAbort, { once: true });
      }
      this.queue.push(job);
      this.pump();
    });
  }

  /** Stop every thread; ops waiting or running fail UNAVAILABLE. */
  async close(): Promise<void> {
    this.closed = true;
    const err = new UnavailableError("the router is shutting down");
    for (const job of this.queue.splice(0)) this.settle(job, err);
    const slots = this.slots.splice(0);
    for (const s of slots) if (s.job !== null) this.settle(s.job, err);
    await Promise.all(slots.map((s) => s.worker.terminate().catch(() => 0)));
  }

  private settle(job: Job, result: { ok: EncodeResult } | unknown): void {
    if (job.onAbort !== undefined) job.signal?.removeEventListener("abort", job.onAbort);
    if (typeof result === "object" && result !== null && "ok" in result) job.resolve((result as { ok: EncodeResult }).ok);
    else job.reject(result);
  }

  private abort(job: Job): void {
    const err = abortError(job.signal!);
    const i = this.queue.indexOf(job);
    if (i >= 0) {
      this.queue.splice(i, 1);
      this.settle(job, err);
      return;
    }
    const slot = this.slots.find((s) => s.job === job);
    if (slot === undefined) return;
    // A running op cannot be interrupted: end its thread and start another.
    slot.job = null;
    this.settle(job, err);
    this.replace(slot, "its request went away");
  }

  /** Give waiting ops to idle threads. */
  private pump(): void {
    for (const slot of this.slots) {
      if (this.queue.length === 0) return;
      if (!slot.ready || slot.job !== null) continue;
      const job = this.queue.shift()!;
      slot.job = job;
      this.o.logger?.debug({ chars: encodeOpCost(job.op), waiting: this.queue.length }, "tokenizing on a thread");
      slot.worker.postMessage({ id: job.id, op: job.op } satisfies TokenizeRequest);
    }
  }

  /** Start a thread; resolves once its tokenizer is loaded. */
  private spawn(): Promise<Slot> {
    const worker = new Worker(this.bootUrl, { workerData: this.init, execArgv: [] });
    worker.unref();
    const slot: Slot = { worker, job: null, ready: false };
    this.slots.push(slot);
    return new Promise<Slot>((resolve, reject) => {
      worker.on("message", (m: TokenizeReply) => {
        if ("ready" in m) {
          slot.ready = true;
          resolve(slot);
          this.pump();
          return;
        }
        const job = slot.job;
        if (job === null || job.id !== m.id) return; // the answer of an op abandoned meanwhile
        slot.job = null;
        if ("error" in m) this.settle(job, errorOf(m.error));
        else if ("text" in m) this.settle(job, { ok: m.text });
        else this.settle(job, { ok: toArray(m.ids) });
        this.pump();
      });
      const fail = (err: Error): void => {
        const i = this.slots.indexOf(slot);
        if (i < 0) return; // replaced or closed on purpose ('error' and 'exit' may both come)
        if (!slot.ready) {
          // Could not load the tokenizer: a new thread would do no better.
          this.slots.splice(i, 1);
          this.broken ??= err;
          // The thread is being discarded: nothing waits for it to end, and a failure to end it changes nothing.
          void worker.terminate().catch(() => 0);
          reject(new UnavailableError(`a tokenizer thread did not start: ${err.message}`, { cause: err }));
          return;
        }
        const job = slot.job;
        slot.job = null;
        if (job !== null) this.settle(job, new InternalError("the tokenizer thread failed", { cause: err }));
        this.replace(slot, `it failed: ${err.message}`);
      };
      worker.on("error", fail);
      worker.on("exit", (code) => fail(new Error(`exited with code ${code}`)));
    });
  }

  /** End `slot`'s thread and start a new one in its place. */
  private replace(slot: Slot, why: string): void {
    const i = this.slots.indexOf(slot);
    if (i >= 0) this.slots.splice(i, 1);
    // The thread is being discarded: nothing waits for it to end, and a failure to end it changes nothing.
    void slot.worker.terminate().catch(() => 0);
    if (this.closed) return;
    this.o.logger?.debug({ why }, "replacing a tokenizer thread");
    this.spawn().catch((err: unknown) => {
      this.o.logger?.error({ err }, "a tokenizer thread could not be replaced; long prompts are refused");
      for (const job of this.queue.splice(0)) this.settle(job, new UnavailableError("the router cannot tokenize long prompts right now"));
    });
  }
}
