/**
 * One generation's path through the cluster, as the router drives it (both APIs share it):
 *   1. choose a decode instance (scheduler policy over polled Decode.Status);
 *   2. open Decode.Stream(request_id) there FIRST, so no token can be produced before someone listens;
 *   3. enqueue the prefill job (BullMQ) naming that decode instance;
 *   4. read tokens from the stream (deduplicated by completion index), detokenize incrementally and apply
 *      stop strings; on a stop-string match call Decode.Cancel;
 *   5. yield events until a finish reason.
 * Whatever ends it early (the caller stops iterating, its signal aborts, the prefill job fails for good, an
 * error) cancels the request on decode and removes a still-queued job, so no KV block outlives it.
 */
import { randomInt } from "node:crypto";
import { CancelledError, Code, DataLossError, MoelaError, UnavailableError, type Logger } from "@moela/core";
import type { MetricsOf } from "@moela/metrics";
import type { FinishReason, GeneratedToken, SamplingRequest } from "@moela/openai-api";
import { DecodeClient, FinishReason as WireFinishReason, type TokenEvent } from "@moela/proto-gen";
import { asMoelaError, connect, serverStreamCall, unaryCall } from "@moela/rpc";
import {
  enqueuePrefill,
  PREFILL_JOB_VERSION,
  parseJobFailure,
  type DecodePool,
  type PrecisionProfile,
  type PrefillJob,
} from "@moela/scheduler";
import { IncrementalDecoder, StopStringMatcher, type Tokenizer } from "@moela/tokenizer";
import type { Queue, QueueEvents } from "bullmq";

export interface GenerateInput {
  readonly requestId: string;
  /** The prompt exactly as the model sees it. */
  readonly promptTokenIds: readonly number[];
  readonly sampling: SamplingRequest;
  readonly stop: readonly string[];
  readonly skipSpecialTokens: boolean;
  /** BullMQ priority (lower runs first); 0 = default. */
  readonly priority?: number;
  /** performance.now() at the request's arrival (time to first token). */
  readonly arrivedAt: number;
}

export interface GenerateEvent {
  /** Tokens produced since the previous event, cut after the one that completed a stop string. */
  readonly tokens: readonly GeneratedToken[];
  /** The text they add (held back while it may be the start of a stop string or an unfinished character). */
  readonly text: string;
  /** Set on the last event only. */
  readonly finishReason: FinishReason | null;
  /** Set on the last event only. */
  readonly usage?: { readonly promptTokens: number; readonly completionTokens: number };
}

/** Notifies the requests waiting on prefill jobs of their jobs' fate (one QueueEvents per router). */
export class JobWatcher {
  private readonly watchers = new Map<string, { failed: (reason: string) => void; active: () => void }>();

  constructor(events: QueueEvents) {
    // 'failed' on QueueEvents is a final failure (retries exhausted, or an unrecoverable job).
    events.on("failed", ({ jobId, failedReason }) => this.watchers.get(jobId)?.failed(failedReason));
    events.on("active", ({ jobId }) => this.watchers.get(jobId)?.active());
  }

  watch(jobId: string, on: { failed: (reason: string) => void; active: () => void }): () => void {
    this.watchers.set(jobId, on);
    return () => {
      if (this.watchers.get(jobId) === on) this.watchers.delete(jobId);
    };
  }
}

export interface PipelineDeps {
  /** null: no detokenization (text stays ""), as for a checkpoint without a tokenizer. */
  readonly tokenizer: Tokenizer | null;
  readonly pool: DecodePool;
  readonly queue: Queue;
  readonly jobs: JobWatcher;
  readonly precision: PrecisionProfile;
  readonly requestTimeoutMs: number;
  readonly logger: Logger;
  readonly metrics: MetricsOf<"router">;
}

/** How long an enqueue may wait for Redis before the request fails UNAVAILABLE. */
const ENQUEUE_TIMEOUT_MS = 10_000;

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** Largest seed the router picks for a request that gave none (crypto randomInt's bound is 2^48). */
const MAX_PICKED_SEED = 2 ** 48 - 1;

export class Pipeline {
  private readonly clients = new Map<string, DecodeClient>();

  constructor(private readonly deps: PipelineDeps) {}

  /** The decode gRPC client for `address` (one channel per instance). */
  decodeClient(address: string): DecodeClient {
    let c = this.clients.get(address);
    if (c === undefined) {
      c = connect(DecodeClient, address);
      this.clients.set(address, c);
    }
    return c;
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }

  /**
   * Run one generation. Throws UnavailableError (no decode instance, Redis down), InvalidArgumentError
   * (cannot fit any decode instance), CancelledError (signal), or the failure of the prefill job or the
   * decode stream as a MoelaError of its code.
   */
  async *generate(input: GenerateInput, signal: AbortSignal): AsyncGenerator<GenerateEvent> {
    const { tokenizer, pool, queue, jobs, metrics } = this.deps;
    const { requestId, sampling } = input;
    const prompt = input.promptTokenIds;
    const log = this.deps.logger.child({ requestId });
    if (signal.aborted) throw new CancelledError("the client went away");

    const choice = pool.choose({ promptTokens: prompt.length, maxTokens: sampling.maxTokens });
    const address = choice.address;
    log.debug({ decode: address, reason: choice.reason, candidates: choice.candidates }, "decode instance chosen");
    const deadline = Date.now() + this.deps.requestTimeoutMs;
    const client = this.decodeClient(address);

    // Aborted by the caller's signal, by a final prefill failure, or by our own cleanup.
    const ctl = new AbortController();
    const forward = (): void => ctl.abort(signal.reason ?? new CancelledError("the client went away"));
    signal.addEventListener("abort", forward, { once: true });
    let prefillFailure: MoelaError | undefined;
    const enqueuedAt = performance.now();
    const unwatch = jobs.watch(requestId, {
      failed: (reason) => {
        const f = parseJobFailure(reason);
        prefillFailure = new MoelaError(`prefill failed: ${f.message}`, f.code);
        ctl.abort(prefillFailure);
      },
      active: () => metrics.routerQueueWait.observe((performance.now() - enqueuedAt) / 1000),
    });

    const stream = serverStreamCall((md, o) => client.stream({ requestId, startIndex: 0 }, md, o), { signal: ctl.signal, deadline });
    const iter = stream[Symbol.asyncIterator]();
    // The first next() starts the call: the stream is open before the job exists.
    let pending = iter.next();
    pending.catch(() => {});

    let finished = false;
    let enqueued = false;
    let endReason = "abandoned by the router";
    try {
      const job: PrefillJob = {
        version: PREFILL_JOB_VERSION,
        requestId,
        promptTokenIds: [...prompt],
        sampling: {
          temperature: sampling.temperature,
          topP: sampling.topP,
          topK: sampling.topK,
          seed: sampling.seed ?? randomInt(MAX_PICKED_SEED),
          maxTokens: sampling.maxTokens,
          stopTokenIds: [...sampling.stopTokenIds],
          ignoreEos: sampling.ignoreEos,
          logprobs: sampling.logprobs,
        },
        decodeAddress: address,
        deadlineUnixMs: deadline,
        precision: this.deps.precision,
        enqueuedAtMs: Date.now(),
      };
      try {
        // With Redis down BullMQ waits for it to come back; a request waits only so long.
        await withTimeout(enqueuePrefill(queue, job, input.priority ?? 0), ENQUEUE_TIMEOUT_MS, "Redis");
      } catch (err) {
        throw new UnavailableError(`cannot enqueue the prefill job: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      }
      enqueued = true;
      metrics.routerPromptTokens.inc(prompt.length);

      const decoder = tokenizer === null ? null : new IncrementalDecoder(tokenizer, { skipSpecialTokens: input.skipSpecialTokens, promptIds: prompt });
      const matcher = input.stop.length > 0 ? new StopStringMatcher(input.stop) : null;
      const wantLogprobs = sampling.logprobs !== null;
      let received = 0;
      let lastTokenAt = 0;
      for (;;) {
        const r = await pending;
        if (r.done) throw new MoelaError(`decode ${address} ended the stream without a finish reason`, Code.INTERNAL);
        const msg = r.value;
        const tokens: GeneratedToken[] = [];
        let text = "";
        let stopped = false;
        for (const ev of msg.tokens) {
          // A reopened stream may repeat what was already received.
          if (ev.index < received) continue;
          if (ev.index > received) throw new DataLossError(`decode ${address} skipped tokens ${received}..${ev.index - 1}`);
          received++;
          tokens.push(generatedToken(ev, wantLogprobs));
          const delta = decoder?.push(ev.tokenId) ?? "";
          if (matcher === null) {
            text += delta;
            continue;
          }
          const m = matcher.push(delta);
          text += m.text;
          if (m.stopped) {
            stopped = true;
            break;
          }
        }
        if (tokens.length > 0) {
          const now = performance.now();
          if (lastTokenAt === 0) metrics.routerTimeToFirstToken.observe((now - input.arrivedAt) / 1000);
          else for (let i = 0; i < tokens.length; i++) metrics.routerInterTokenLatency.observe((now - lastTokenAt) / 1000 / tokens.length);
          lastTokenAt = now;
          metrics.routerGenerationTokens.inc(tokens.length);
        }
        const decodeFinish = msg.finishReason;
        const decodeDone = decodeFinish === WireFinishReason.FINISH_REASON_STOP || decodeFinish === WireFinishReason.FINISH_REASON_LENGTH;
        if (stopped || decodeDone) {
          if (!stopped) {
            // Release what the decoder and the matcher held back for a continuation that will not come.
            let tail = decoder?.flush() ?? "";
            if (matcher !== null) {
              const m = matcher.push(tail);
              tail = m.text + (m.stopped ? "" : matcher.flush());
            }
            text += tail;
          }
          // Decode is still generating after a stop-string match: stop it now, not when the caller lets go.
          if (stopped && !decodeDone) this.cancelOnDecode(address, requestId, "stop string", log);
          // Done before yielding: the caller may stop iterating at this yield.
          finished = true;
          const finishReason: FinishReason = stopped || decodeFinish === WireFinishReason.FINISH_REASON_STOP ? "stop" : "length";
          yield { tokens, text, finishReason, usage: { promptTokens: prompt.length, completionTokens: received } };
          return;
        }
        if (tokens.length > 0 || text.length > 0) yield { tokens, text, finishReason: null };
        pending = iter.next();
        pending.catch(() => {});
      }
    } catch (err) {
      if (signal.aborted) {
        endReason = abortReason(signal);
        // The caller's reason: a client that went away (CANCELLED) or a router shutting down (UNAVAILABLE).
        throw signal.reason instanceof MoelaError ? signal.reason : new CancelledError("the client went away", { cause: err });
      }
      if (prefillFailure !== undefined) {
        endReason = "prefill failed";
        throw prefillFailure;
      }
      const e = asMoelaError(err);
      if (e.code === Code.UNAVAILABLE) pool.markUnavailable(address, e.message);
      endReason = `router saw an error: ${e.message}`;
      throw e;
    } finally {
      signal.removeEventListener("abort", forward);
      unwatch();
      if (!finished) {
        if (signal.aborted) endReason = abortReason(signal);
        if (!ctl.signal.aborted) ctl.abort(new CancelledError(endReason));
        this.cancelOnDecode(address, requestId, endReason, log);
        // A job no worker has taken yet would only waste a prefill; an active one cannot be removed.
        if (enqueued) queue.remove(requestId).catch(() => 0);
      }
      // Ends the Decode.Stream call if it is still open.
      await iter.return(undefined).catch(() => undefined);
    }
  }

  /** Decode.Cancel, fire and forget (a failure is logged: decode frees the request on its own timeout). */
  private cancelOnDecode(address: string, requestId: string, reason: string, log: Logger): void {
    const client = this.decodeClient(address);
    unaryCall<{ found: boolean }>((md, o, cb) => client.cancel({ requestId, reason }, md, o, cb), { timeoutMs: 5_000 }).then(
      (r) => log.debug({ decode: address, reason, found: r.found }, "cancelled on decode"),
      (err: unknown) => log.warn({ decode: address, reason, err: err instanceof Error ? err.message : String(err) }, "Decode.Cancel failed"),
    );
  }
}

/** Why the caller aborted, for Decode.Cancel and the logs. */
function abortReason(signal: AbortSignal): string {
  const r: unknown = signal.reason;
  if (r === undefined || r instanceof CancelledError) return "client disconnected";
  return r instanceof Error ? r.message : String(r);
}

function generatedToken(ev: TokenEvent, wantLogprobs: boolean): GeneratedToken {
  if (!wantLogprobs || ev.logprobs === undefined) return { id: ev.tokenId };
  return { id: ev.tokenId, logprob: ev.logprobs.logprob, top: ev.logprobs.top.map((t) => ({ id: t.tokenId, logprob: t.logprob })) };
}
