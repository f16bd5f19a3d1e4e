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
 *
 * Migration. When the Decode.Stream fails with UNAVAILABLE (the instance died or drained: the connection
 * broke; or decode ended the request with a retryable failure, e.g. a step that lost an expert-host: the
 * status then names FailureReason.DECODE_STEP_FAILED in its trailing metadata, read here as `err.reason`), the
 * request moves to another decode instance: a new attempt with the prompt plus every token already sent to
 * the caller as its prompt, max_tokens reduced by those tokens, under a new decode-side id
 * (`<request id>.m<n>`, also its job id), and its completion indices offset by what was sent. For greedy
 * decoding the continuation of prompt + generated is exactly the tokens the first instance would have
 * produced (test/unit/engine/continuation.test.ts), so the caller's stream goes on with no gap and no
 * duplicate; for seeded sampling the new attempt restarts the sampler from the seed, so its continuation is
 * a valid sample but not the one the lost instance would have drawn. Penalties and min_tokens count the
 * tokens already sent as output, not prompt: the job names them (sampling.priorOutputTokens, the prompt's
 * last N), so a greedy request with penalties continues exactly too. The incremental detokenizer and the
 * stop-string matcher carry over, so text is cut exactly as it would have been. A request migrates at
 * most `maxMigrations` times; then, or when no decode instance is left, it fails UNAVAILABLE (HTTP 503).
 * A prefill job's final failure is not migrated: BullMQ already retried it (attempts with backoff,
 * stalled-job recovery), and its code goes to the caller.
 *
 * A job that vanishes. Until the first token of an attempt arrives, the router looks every
 * jobCheckIntervalMs (2 s) whether its job is still in Redis. A job gone from its queue (Redis restarted
 * without persistence, a flushed key) and not moved to the shared queue is enqueued again, as it was (the
 * same id: decode takes a request's KV once, so a job that did finish after all costs a wasted prefill, not
 * a wrong answer), at most maxRequeues (2) times; then, or when Redis cannot be asked for 30 s, the request
 * fails UNAVAILABLE (HTTP 503, retryable). So a request never waits silently for its deadline.
 *
 * min_tokens: decode keeps EOS and stop_token_ids from ending the output early; stop strings are looked for
 * only once the output is longer than min_tokens (vLLM's rule), so text before then is never cut.
 *
 * Messages of the errors thrown here name no address (they reach clients); the logs have the details.
 */
import { randomInt } from "node:crypto";
import {
  CancelledError,
  Code,
  DataLossError,
  DeadlineExceededError,
  errorForCode,
  errorMessage,
  FailureReason,
  InternalError,
  InvalidArgumentError,
  MoelaError,
  ResourceExhaustedError,
  UnavailableError,
  type Logger,
} from "@moela/core";
import type { MetricsOf } from "@moela/metrics";
import type { FinishReason, GeneratedToken, SamplingRequest } from "@moela/openai-api";
import { DecodeClient, FinishReason as WireFinishReason, type StreamResponse as DecodeStreamMessage, type TokenEvent } from "@moela/proto-gen";
import { asMoelaError, connect, serverStreamCall, unaryCall, type InternalSecurity } from "@moela/rpc";
import {
  enqueuePrefill,
  PREFILL_JOB_VERSION,
  parseJobFailure,
  type DecodePool,
  type PrecisionProfile,
  type PrefillJob,
  type PrefillRouter,
} from "@moela/scheduler";
import type { Tokenizer } from "@moela/tokenizer";
import type { Queue, QueueEvents } from "bullmq";
import { GenerationRecorder } from "./request-metrics.js";
import { TokenAssembler } from "./token-assembler.js";

export interface GenerateInput {
  readonly requestId: string;
  /** The prompt exactly as the model sees it. */
  readonly promptTokenIds: readonly number[];
  readonly sampling: SamplingRequest;
  readonly stop: readonly string[];
  readonly skipSpecialTokens: boolean;
  /** BullMQ priority (lower runs first); 0 = default. */
  readonly priority?: number;
  /** vLLM's cache_salt, forwarded in the prefill job. */
  readonly cacheSalt?: string;
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
  readonly usage?: {
    readonly promptTokens: number;
    readonly completionTokens: number;
    /** Prompt tokens prefill served from its prefix cache (decode's Usage of the last attempt; 0 when unknown). */
    readonly cachedPromptTokens?: number;
  };
}

/** Why a watched job ran again (routerRetries reasons): BullMQ retried it, or the router enqueued it again. */
export type JobRetryReason = "prefill_failed" | "prefill_stalled" | "prefill_vanished";

interface JobWatch {
  failed: (reason: string) => void;
  active: () => void;
  retried?: (reason: JobRetryReason) => void;
}

/** Notifies the requests waiting on prefill jobs of their jobs' fate (one QueueEvents per router). */
export class JobWatcher {
  private readonly watchers = new Map<string, JobWatch>();

  constructor(events: QueueEvents) {
    // 'failed' on QueueEvents is a final failure (retries exhausted, or an unrecoverable job).
    events.on("failed", ({ jobId, failedReason }) => this.watchers.get(jobId)?.failed(failedReason));
    events.on("active", ({ jobId }) => this.watchers.get(jobId)?.active());
    // A failed attempt that will run again after its backoff (prefill jobs are never delayed otherwise).
    events.on("delayed", ({ jobId }) => this.watchers.get(jobId)?.retried?.("prefill_failed"));
    // Its worker died (the lock expired): BullMQ put it back in the queue for another worker.
    events.on("stalled", ({ jobId }) => this.watchers.get(jobId)?.retried?.("prefill_stalled"));
  }

  watch(jobId: string, on: JobWatch): () => void {
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
  /** The served model's name: the `model` label of the request metrics. */
  readonly model: string;
  /** Most migrations of one request to another decode instance (default 3). */
  readonly maxMigrations?: number;
  /** Sends each job to the queue of the prefill instance holding the longest cached prefix; absent: `queue`. */
  readonly prefillRouter?: PrefillRouter;
  /** Between checks that a job waiting for prefill is still in Redis (default 2000 ms). */
  readonly jobCheckIntervalMs?: number;
  /** Most times one attempt's vanished job is enqueued again (default 2). */
  readonly maxRequeues?: number;
  /** A waiting request fails once Redis could not be asked about its job for this long (default 30 s). */
  readonly queueUnreachableMs?: number;
  /** Internal gRPC security towards decode (TLS, the shared secret); absent: plaintext, no secret. */
  readonly security?: InternalSecurity;
}

/** How long an enqueue may wait for Redis before the request fails UNAVAILABLE. */
const ENQUEUE_TIMEOUT_MS = 10_000;
/** Defaults of the vanished-job watch (PipelineDeps). */
const JOB_CHECK_INTERVAL_MS = 2_000;
const MAX_REQUEUES = 2;
const QUEUE_UNREACHABLE_MS = 30_000;
/** Wait before the n-th migration: 100 ms, 200 ms, 400 ms, ... at most 2 s (lets the pool see the loss). */
const MIGRATION_BACKOFF_MS = (n: number): number => Math.min(2_000, 100 * 2 ** (n - 1));

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** Largest seed the router picks for a request that gave none (crypto randomInt's bound is 2^48). */
const MAX_PICKED_SEED = 2 ** 48 - 1;

/** An attempt lost its decode instance; the request may continue elsewhere. */
class Migrate extends Error {
  constructor(
    readonly reason: "decode_unavailable" | "decode_failed",
    readonly error: MoelaError,
  ) {
    super(error.message);
  }
}

interface Attempt {
  readonly n: number;
  /** The decode-side request id and job id of this attempt. */
  readonly id: string;
  readonly deadline: number;
  readonly seed: number;
}

/** What one attempt's steps share while it runs. */
interface AttemptState {
  /** Aborted by the caller's signal, by a final prefill failure, or by our own cleanup. */
  readonly ctl: AbortController;
  /** Tokens sent before this attempt (its completion indices start at 0). */
  readonly base: number;
  /** Tokens of this attempt received so far. */
  got: number;
  /** The last event was yielded: nothing to cancel. */
  finished: boolean;
  enqueued: boolean;
  /** The queue the job went to (an instance's own, or the shared one). */
  jobQueue: Queue;
  /** Set while waiting on the Decode.Stream: an error then is the decode instance's (or its connection's). */
  reading: boolean;
  endReason: string;
  /** Why a still-queued job is removed (moela_router_queue_removed_total). */
  removal: "cancelled" | "timeout" | "error";
  prefillFailure?: MoelaError;
  /** Set when the job vanished for good or Redis stayed unreachable (the vanished-job watch). */
  queueFailure?: MoelaError;
  stopWatch?: () => void;
}

export class Pipeline {
  private readonly clients = new Map<string, DecodeClient>();

  constructor(private readonly deps: PipelineDeps) {}

  /** The decode gRPC client for `address` (one channel per instance). */
  decodeClient(address: string): DecodeClient {
    let c = this.clients.get(address);
    if (c === undefined) {
      c = connect(DecodeClient, address, {}, this.deps.security);
      this.clients.set(address, c);
    }
    return c;
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }

  /**
   * Run one generation. Throws UnavailableError (no decode instance, Redis down, migrations exhausted),
   * InvalidArgumentError (cannot fit any decode instance), CancelledError (signal), or the failure of the
   * prefill job or the decode stream as a MoelaError of its code.
   */
  generate(input: GenerateInput, signal: AbortSignal): AsyncGenerator<GenerateEvent> {
    const rec = new GenerationRecorder(this.deps.metrics, this.deps.model, input.promptTokenIds.length);
    return rec.track(this.run(input, signal, rec));
  }

  private async *run(input: GenerateInput, signal: AbortSignal, rec: GenerationRecorder): AsyncGenerator<GenerateEvent> {
    const { metrics } = this.deps;
    const log = this.deps.logger.child({ requestId: input.requestId });
    if (signal.aborted) throw new CancelledError("the client went away");
    const maxMigrations = this.deps.maxMigrations ?? 3;
    const deadline = Date.now() + this.deps.requestTimeoutMs;
    // Picked once: every attempt samples from the same seed.
    const seed = input.sampling.seed ?? randomInt(MAX_PICKED_SEED);
    // What the caller has been sent so far, carried from one attempt to the next.
    const asm = new TokenAssembler(this.deps.tokenizer, input, metrics, this.deps.model);
    for (let n = 0; ; n++) {
      const attempt: Attempt = { n, id: n === 0 ? input.requestId : `${input.requestId}.m${n}`, deadline, seed };
      try {
        yield* this.runAttempt(input, attempt, asm, signal, log, rec);
        return;
      } catch (err) {
        if (!(err instanceof Migrate)) throw err;
        if (n >= maxMigrations) {
          log.warn({ attempts: n + 1, err: err.error.message }, "migrations exhausted");
          throw new UnavailableError(`the request lost its decode instance ${n + 1} times; retry later`, { cause: err.error });
        }
        if (Date.now() >= deadline) throw new DeadlineExceededError("the request's deadline passed while migrating it", { cause: err.error });
        metrics.routerRetries.inc({ reason: err.reason });
        log.warn({ attempt: n, reason: err.reason, err: err.error.message, sent: asm.sent }, "decode instance lost; migrating the request");
        await abortableDelay(MIGRATION_BACKOFF_MS(n + 1), signal);
      }
    }
  }

  /** One attempt on one decode instance; throws Migrate when that instance is lost. */
  private async *runAttempt(
    input: GenerateInput,
    attempt: Attempt,
    asm: TokenAssembler,
    signal: AbortSignal,
    log: Logger,
    rec: GenerationRecorder,
  ): AsyncGenerator<GenerateEvent> {
    // A migrated attempt continues from what the caller has: prompt + sent tokens, the rest of max_tokens.
    const prompt = asm.ids.length === 0 ? input.promptTokenIds : [...input.promptTokenIds, ...asm.ids];
    const maxTokens = input.sampling.maxTokens - asm.sent;
    const address = this.chooseDecode(attempt, prompt.length, maxTokens, log);
    const client = this.decodeClient(address);
    const requestId = attempt.id;
    const st: AttemptState = {
      ctl: new AbortController(),
      base: asm.sent,
      got: 0,
      finished: false,
      enqueued: false,
      jobQueue: this.deps.queue,
      reading: false,
      endReason: "abandoned by the router",
      removal: "cancelled",
    };
    // Aborted by the caller's signal, by a final prefill failure, or by our own cleanup.
    const forward = (): void => st.ctl.abort(signal.reason ?? new CancelledError("the client went away"));
    signal.addEventListener("abort", forward, { once: true });
    const unwatch = this.watchPrefill(requestId, st, rec, log);

    const stream = serverStreamCall((md, o) => client.stream({ requestId, startIndex: 0 }, md, o), { signal: st.ctl.signal, deadline: attempt.deadline });
    const iter = stream[Symbol.asyncIterator]();
    // The first next() starts the call: the stream is open before the job exists.
    const first = iter.next();
    first.catch(() => {});
    try {
      const job = prefillJob(input, attempt, prompt, maxTokens, asm.sent, address, this.deps.precision);
      await this.enqueueAttempt(job, input.priority ?? 0, attempt, st, log);
      yield* this.readTokens(iter, first, input, asm, st, address, requestId, log);
    } catch (err) {
      throw this.attemptFailure(err, st, signal, address);
    } finally {
      st.stopWatch?.();
      signal.removeEventListener("abort", forward);
      unwatch();
      if (!st.finished) this.abandonAttempt(st, signal, address, requestId, log);
      // Ends the Decode.Stream call if it is still open.
      await iter.return(undefined).catch(() => undefined);
    }
  }

  /** The decode instance for an attempt (the pool's choice); throws the policy's refusal as a client may read it. */
  private chooseDecode(attempt: Attempt, promptTokens: number, maxTokens: number, log: Logger): string {
    let choice: ReturnType<DecodePool["choose"]>;
    try {
      choice = this.deps.pool.choose({ requestId: attempt.id, promptTokens, maxTokens });
    } catch (err) {
      // The policy's message lists every instance and why it was passed over: for the log, not the client.
      const e = publicChoiceError(asMoelaError(err), promptTokens, maxTokens);
      log.info({ attempt: attempt.n, err: asMoelaError(err).message }, "no decode instance chosen");
      // No instance left right now: a migration waits and tries again; a first attempt fails at once.
      if (attempt.n > 0 && e.code === Code.UNAVAILABLE) throw new Migrate("decode_unavailable", e);
      throw e;
    }
    log.debug({ decode: choice.address, attempt: attempt.n, reason: choice.reason, candidates: choice.candidates }, "decode instance chosen");
    return choice.address;
  }

  /** Follows the attempt's prefill job: a final failure aborts the attempt; its start and retries are recorded. */
  private watchPrefill(requestId: string, st: AttemptState, rec: GenerationRecorder, log: Logger): () => void {
    const { metrics } = this.deps;
    const enqueuedAt = performance.now();
    return this.deps.jobs.watch(requestId, {
      failed: (reason) => {
        const f = parseJobFailure(reason);
        st.prefillFailure = errorForCode(f.code, `prefill failed: ${f.message}`);
        st.ctl.abort(st.prefillFailure);
      },
      active: () => rec.prefillStarted(enqueuedAt),
      retried: (reason) => {
        metrics.routerRetries.inc({ reason });
        log.info({ jobId: requestId, reason }, "prefill job runs again");
      },
    });
  }

  /** Enqueues the attempt's job (UNAVAILABLE when Redis does not take it in time) and, until the first token, watches it. */
  private async enqueueAttempt(job: PrefillJob, priority: number, attempt: Attempt, st: AttemptState, log: Logger): Promise<void> {
    try {
      // With Redis down BullMQ waits for it to come back; a request waits only so long.
      st.jobQueue = await withTimeout(this.enqueuePrefillJob(job, priority, log), ENQUEUE_TIMEOUT_MS, "Redis");
    } catch (err) {
      log.warn({ err: errorMessage(err) }, "cannot enqueue the prefill job");
      throw new UnavailableError("cannot enqueue the prefill job: the queue is unreachable; retry later", { cause: err });
    }
    st.enqueued = true;
    if (attempt.n === 0) this.deps.metrics.routerPromptTokens.inc({ model: this.deps.model }, job.promptTokenIds.length);
    // Until the first token: is the job still there? (see "A job that vanishes" above)
    const fail = (e: MoelaError): void => {
      st.queueFailure = e;
      st.ctl.abort(e);
    };
    st.stopWatch = this.watchJob(
      job,
      priority,
      () => st.jobQueue,
      (q) => (st.jobQueue = q),
      () => st.got > 0,
      fail,
      log,
    );
  }

  /** Reads the attempt's Decode.Stream (deduplicated by completion index) and yields the caller's events until a finish. */
  private async *readTokens(
    iter: AsyncIterator<DecodeStreamMessage>,
    first: Promise<IteratorResult<DecodeStreamMessage>>,
    input: GenerateInput,
    asm: TokenAssembler,
    st: AttemptState,
    address: string,
    requestId: string,
    log: Logger,
  ): AsyncGenerator<GenerateEvent> {
    const wantLogprobs = input.sampling.logprobs !== null;
    let pending = first;
    for (;;) {
      st.reading = true;
      const r = await pending;
      st.reading = false;
      if (r.done) throw new InternalError("decode ended the stream without a finish reason");
      const msg = r.value;
      const b = asm.batch();
      for (const ev of msg.tokens) {
        // A reopened stream may repeat what was already received.
        if (ev.index < st.got) continue;
        if (ev.index > st.got) throw new DataLossError(`decode skipped tokens ${st.base + st.got}..${st.base + ev.index - 1}`);
        st.got++;
        if (!asm.add(b, generatedToken(ev, wantLogprobs))) break;
      }
      asm.observe(b);
      const decodeFinish = msg.finishReason;
      const decodeDone = decodeFinish === WireFinishReason.FINISH_REASON_STOP || decodeFinish === WireFinishReason.FINISH_REASON_LENGTH;
      if (b.stopped || decodeDone) {
        if (!b.stopped) asm.flush(b);
        // Decode is still generating after a stop-string match: stop it now, not when the caller lets go.
        if (b.stopped && !decodeDone) this.cancelOnDecode(address, requestId, "stop string", log);
        // Done before yielding: the caller may stop iterating at this yield.
        st.finished = true;
        const finishReason: FinishReason = b.stopped || decodeFinish === WireFinishReason.FINISH_REASON_STOP ? "stop" : "length";
        const cachedPromptTokens = msg.usage?.cachedPromptTokens ?? 0;
        yield {
          tokens: b.tokens,
          text: b.text,
          finishReason,
          usage: { promptTokens: input.promptTokenIds.length, completionTokens: asm.sent, cachedPromptTokens },
        };
        return;
      }
      if (b.tokens.length > 0 || b.text.length > 0) yield { tokens: b.tokens, text: b.text, finishReason: null };
      pending = iter.next();
      pending.catch(() => {});
    }
  }

  /** What an attempt that failed throws: the caller's reason, the job's failure, Migrate for a lost decode instance, or the error. */
  private attemptFailure(err: unknown, st: AttemptState, signal: AbortSignal, address: string): Error {
    if (signal.aborted) {
      st.endReason = abortReason(signal);
      // The caller's reason: a client that went away (CANCELLED) or a router shutting down (UNAVAILABLE).
      return signal.reason instanceof MoelaError ? signal.reason : new CancelledError("the client went away", { cause: err });
    }
    if (st.prefillFailure !== undefined) {
      st.endReason = "prefill failed";
      return st.prefillFailure;
    }
    if (st.queueFailure !== undefined) {
      st.endReason = "prefill job lost";
      return st.queueFailure;
    }
    const e = asMoelaError(err);
    st.endReason = `router saw an error: ${e.message}`;
    st.removal = e.code === Code.DEADLINE_EXCEEDED ? "timeout" : "error";
    if (st.reading && e.code === Code.UNAVAILABLE) {
      // Decode's own retryable end of the request (a step that failed, e.g. an expert-host lost: the reason
      // decode put in the status's trailing metadata) vs the instance itself gone (connection broken,
      // draining): only the latter is kept out of the choice.
      const inBand = e.reason === FailureReason.DECODE_STEP_FAILED;
      if (!inBand) this.deps.pool.markUnavailable(address, e.message);
      st.endReason = `migrating: ${e.message}`;
      return new Migrate(inBand ? "decode_failed" : "decode_unavailable", e);
    }
    return e;
  }

  /** An attempt that ends unfinished: abort its stream, cancel it on decode, remove its job if still queued. */
  private abandonAttempt(st: AttemptState, signal: AbortSignal, address: string, requestId: string, log: Logger): void {
    if (signal.aborted) st.endReason = abortReason(signal);
    if (!st.ctl.signal.aborted) st.ctl.abort(new CancelledError(st.endReason));
    this.cancelOnDecode(address, requestId, st.endReason, log);
    // A job no worker has taken yet would only waste a prefill; an active one cannot be removed.
    if (!st.enqueued) return;
    const { metrics } = this.deps;
    const removal = st.removal;
    st.jobQueue.remove(requestId).then(
      (removed) => {
        if (removed !== 1) return;
        metrics.routerQueueRemoved.inc({ reason: removal });
        log.debug({ jobId: requestId, reason: removal }, "queued prefill job removed");
      },
      () => 0,
    );
  }

  /** Add the job to the prefill instance's queue the prefill router picks (else the shared queue); returns that queue. */
  private async enqueuePrefillJob(job: PrefillJob, priority: number, log: Logger): Promise<Queue> {
    const router = this.deps.prefillRouter;
    if (router === undefined) {
      await enqueuePrefill(this.deps.queue, job, priority);
      return this.deps.queue;
    }
    const routed = await router.enqueue(job, priority);
    log.debug({ prefill: routed.instanceId ?? "shared queue", cachedTokens: routed.cachedTokens, reason: routed.reason }, "prefill queue chosen");
    return routed.queue;
  }

  /**
   * Checks every jobCheckIntervalMs, until `started()`, that `job` is still in its queue (getQueue); one
   * that vanished is looked for in the shared queue (a departed prefill instance's jobs move there), else
   * enqueued again (setQueue), at most maxRequeues times; then, or after queueUnreachableMs without an
   * answer from Redis, `fail` is called with an UnavailableError. Returns the function that stops it.
   */
  private watchJob(
    job: PrefillJob,
    priority: number,
    getQueue: () => Queue,
    setQueue: (q: Queue) => void,
    started: () => boolean,
    fail: (err: MoelaError) => void,
    log: Logger,
  ): () => void {
    const every = this.deps.jobCheckIntervalMs ?? JOB_CHECK_INTERVAL_MS;
    const maxRequeues = this.deps.maxRequeues ?? MAX_REQUEUES;
    const unreachableMs = this.deps.queueUnreachableMs ?? QUEUE_UNREACHABLE_MS;
    let requeues = 0;
    let unreachableSince = 0;
    let stopped = false;
    let timer: NodeJS.Timeout | undefined;
    const present = async (q: Queue): Promise<boolean> => (await withTimeout(q.getJobState(job.requestId), every, "Redis")) !== "unknown";
    const check = async (): Promise<void> => {
      try {
        if (await present(getQueue())) {
          unreachableSince = 0;
          return;
        }
        if (getQueue() !== this.deps.queue && (await present(this.deps.queue))) {
          setQueue(this.deps.queue);
          return;
        }
        unreachableSince = 0;
        if (stopped || started()) return;
        if (requeues >= maxRequeues) {
          log.warn({ jobId: job.requestId, requeues }, "the prefill job vanished again; giving up");
          fail(new UnavailableError(`the request's prefill job vanished from the queue ${requeues + 1} times; retry later`));
          stopped = true;
          return;
        }
        requeues++;
        this.deps.metrics.routerRetries.inc({ reason: "prefill_vanished" });
        log.warn({ jobId: job.requestId, requeues }, "the prefill job vanished from the queue; enqueueing it again");
        setQueue(await withTimeout(this.enqueuePrefillJob({ ...job, enqueuedAtMs: Date.now() }, priority, log), ENQUEUE_TIMEOUT_MS, "Redis"));
      } catch (err) {
        const now = Date.now();
        if (unreachableSince === 0) unreachableSince = now;
        log.debug({ jobId: job.requestId, err: errorMessage(err) }, "cannot check the prefill job");
        if (now - unreachableSince >= unreachableMs && !stopped && !started()) {
          fail(new UnavailableError("the queue's Redis stopped answering while the request waited for prefill; retry later"));
          stopped = true;
        }
      }
    };
    const schedule = (): void => {
      timer = setTimeout(() => {
        if (stopped || started()) return;
        // A timer has nobody to await it: check() catches its own errors (a Redis that stays away
        // fails the request through fail()).
        void check().finally(() => {
          if (!stopped && !started()) schedule();
        });
      }, every);
      timer.unref();
    };
    schedule();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }

  /** Decode.Cancel, fire and forget (a failure is logged: decode frees the request on its own timeout). */
  private cancelOnDecode(address: string, requestId: string, reason: string, log: Logger): void {
    const client = this.decodeClient(address);
    unaryCall<{ found: boolean }>((md, o, cb) => client.cancel({ requestId, reason }, md, o, cb), { timeoutMs: 5_000 }).then(
      (r) => log.debug({ decode: address, reason, found: r.found }, "cancelled on decode"),
      (err: unknown) => log.warn({ decode: address, reason, err: errorMessage(err) }, "Decode.Cancel failed"),
    );
  }
}

/**
 * The policy's refusal as a client may read it: the same code and gist, without the candidates' ids and
 * addresses (DecodePool.choose lists them all).
 */
function publicChoiceError(e: MoelaError, promptTokens: number, maxTokens: number): MoelaError {
  switch (e.code) {
    case Code.INVALID_ARGUMENT:
      return new InvalidArgumentError(
        `the request (${promptTokens} prompt tokens + max_tokens ${maxTokens}) fits no decode instance's KV cache; reduce the prompt or max_tokens`,
        { cause: e },
      );
    case Code.RESOURCE_EXHAUSTED:
      return new ResourceExhaustedError("no decode instance has room for the request now; retry later", { cause: e });
    case Code.UNAVAILABLE:
      return new UnavailableError("no decode instance is available right now; retry later", { cause: e });
    default:
      return e;
  }
}

/** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
function abortableDelay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason instanceof MoelaError ? signal.reason : new CancelledError("the client went away"));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason instanceof MoelaError ? signal.reason : new CancelledError("the client went away"));
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** Why the caller aborted, for Decode.Cancel and the logs. */
function abortReason(signal: AbortSignal): string {
  const r: unknown = signal.reason;
  if (r === undefined || r instanceof CancelledError) return "client disconnected";
  return errorMessage(r);
}

/**
 * The job's penalty fields: only those that change sampling (a job without them is what older prefill
 * workers take). An attempt that continues after `sent` tokens says so (priorOutputTokens): the engine
 * counts them as output for the penalties and for min_tokens.
 */
function penaltiesOf(s: SamplingRequest, sent: number): Partial<PrefillJob["sampling"]> {
  const minTokens = s.minTokens ?? 0;
  // A constrained attempt rebuilds its grammar's position from the earlier output, so it counts too.
  const counted = s.presencePenalty !== undefined || s.frequencyPenalty !== undefined || minTokens > sent || s.grammar !== undefined;
  return {
    ...(s.presencePenalty !== undefined ? { presencePenalty: s.presencePenalty } : {}),
    ...(s.frequencyPenalty !== undefined ? { frequencyPenalty: s.frequencyPenalty } : {}),
    ...(s.repetitionPenalty !== undefined ? { repetitionPenalty: s.repetitionPenalty } : {}),
    ...(s.logitBias !== undefined && s.logitBias.length > 0 ? { logitBias: s.logitBias.map(([id, bias]) => [id, bias] as [number, number]) } : {}),
    ...(s.minP !== undefined ? { minP: s.minP } : {}),
    ...(minTokens > sent ? { minTokens } : {}),
    ...(counted && sent > 0 ? { priorOutputTokens: sent } : {}),
    ...(s.grammar !== undefined ? { grammar: s.grammar } : {}),
  };
}

/** The prefill job of an attempt: its prompt (the request's plus what was sent), the rest of max_tokens, its decode instance. */
function prefillJob(
  input: GenerateInput,
  attempt: Attempt,
  prompt: readonly number[],
  maxTokens: number,
  sent: number,
  decodeAddress: string,
  precision: PrecisionProfile,
): PrefillJob {
  const { sampling } = input;
  return {
    version: PREFILL_JOB_VERSION,
    requestId: attempt.id,
    promptTokenIds: [...prompt],
    sampling: {
      temperature: sampling.temperature,
      topP: sampling.topP,
      topK: sampling.topK,
      seed: attempt.seed,
      maxTokens,
      stopTokenIds: [...sampling.stopTokenIds],
      ignoreEos: sampling.ignoreEos,
      logprobs: sampling.logprobs,
      ...penaltiesOf(sampling, sent),
    },
    decodeAddress,
    deadlineUnixMs: attempt.deadline,
    precision,
    enqueuedAtMs: Date.now(),
    ...(input.cacheSalt !== undefined ? { cacheSalt: input.cacheSalt } : {}),
  };
}

function generatedToken(ev: TokenEvent, wantLogprobs: boolean): GeneratedToken {
  if (!wantLogprobs || ev.logprobs === undefined) return { id: ev.tokenId };
  return { id: ev.tokenId, logprob: ev.logprobs.logprob, top: ev.logprobs.top.map((t) => ({ id: t.tokenId, logprob: t.logprob })) };
}
