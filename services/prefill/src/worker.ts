/**
 * Prefill work: BullMQ jobs in, KV transfers out.
 *
 * The BullMQ worker runs up to `concurrency` jobs at once. Each job validates itself and hands its sequence
 * to the batcher. The batcher runs whatever sequences are waiting when the engine is free as ONE
 * engine.prefill call (up to max-batch-tokens prompt tokens); just before, it opens each sequence's KV
 * transfer to its decode instance (KvBegin: decode reserves the blocks or refuses at once), so a prompt
 * waiting behind others never idles a transfer into decode's timeout. Concurrent jobs share
 * forward passes; each sequence's latent rows stream to its own sender as each layer of each chunk is
 * computed (batchKvSink). Then each job sends KvEnd with its sequence's snapshot (first token, MTP draft,
 * sampler state), waits for decode's verdict, and releases its blocks here.
 *
 * Failures: a bad job (schema, precision, vocabulary, too long, deadline passed, refused as invalid by
 * decode) throws BullMQ's UnrecoverableError, so it is not retried; transient ones (decode or an
 * expert-host UNAVAILABLE, a full decode cache, a corrupted transfer) throw a plain Error and BullMQ
 * retries them with backoff (PREFILL_JOB_OPTIONS). Either way the message is `<CODE>: <text>`
 * (jobFailureMessage), which the router turns back into a status for its client.
 *
 * A job may run more than once: a retry, or stalled-job recovery after its worker died (BullMQ gives an
 * active job whose lock expired to another worker). Each run sends a new transfer id; decode takes a
 * request's KV once and answers any later transfer for it with ALREADY_EXISTS, which counts as done here.
 *
 * KV: a job's sequence holds prefill blocks from its forward pass until its rows are encoded into the
 * transfer; the hold is in the service's KvLedger and released through it, whichever way the job ends.
 * With the prefix cache on, a job first takes the longest cached prefix of its prompt (those positions are
 * not computed; their rows still go to decode) and its new full blocks join the cache after its prefill.
 */
import { randomUUID } from "node:crypto";
import {
  Code,
  DeadlineExceededError,
  errorForCode,
  errorMessage,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  MoelaError,
  type Logger,
} from "@moela/core";
import type { Engine, GenerationParams, Sequence, StepResult } from "@moela/engine";
import {
  batchKvSink,
  KvPoll,
  KvSender,
  kvTransferMeta,
  type KvConnector,
  type KvFailure,
  type KvHold,
  type KvLedger,
  type KvReleaseReason,
} from "@moela/kv-transfer";
import type { MetricsOf } from "@moela/metrics";
import { jobFailureMessage, parsePrefillJob, type PrecisionProfile, type PrefillJob } from "@moela/scheduler";
import { UnrecoverableError, type Job } from "bullmq";

interface Pending {
  readonly seq: Sequence;
  readonly sender: KvSender;
  /** Opens the sequence's transfer (KvBegin): called when its batch is about to be computed, not before. */
  readonly begin: () => Promise<void>;
  /** The ledger's record of the sequence's prefill blocks. */
  readonly hold: KvHold;
  readonly resolve: (r: StepResult) => void;
  readonly reject: (err: unknown) => void;
}

/** Runs waiting sequences together, one engine.prefill call at a time. */
export class PrefillBatcher {
  private readonly waiting: Pending[] = [];
  private running = false;
  /** Prompt tokens queued or being computed. */
  pendingTokens = 0;
  /** Moving average of seconds per prompt token over batches without prefix-cache hits (null before one). */
  private coldSecondsPerToken: number | null = null;

  constructor(
    private readonly engine: Engine,
    private readonly maxBatchTokens: number,
    private readonly metrics: MetricsOf<"prefill">,
    private readonly logger: Logger,
    /** The `model` label of prefillTokens: the model folder's name (names.ts); "" leaves it off. */
    private readonly model: string = "",
  ) {}

  /**
   * Prefill `seq` (its blocks accounted in `hold`), streaming its rows to `sender`; resolves with its first token.
   * `begin` opens the transfer when the sequence's batch is taken, so time spent waiting here for the engine
   * never counts against decode's idle timer on the transfer (a long queue of prompts used to time out there).
   */
  submit(seq: Sequence, sender: KvSender, hold: KvHold, begin: () => Promise<void>): Promise<StepResult> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ seq, sender, hold, begin, resolve, reject });
      this.pendingTokens += seq.prompt.length;
      this.kick();
    });
  }

  private kick(): void {
    if (this.running || this.waiting.length === 0) return;
    this.running = true;
    // One macrotask of slack, so jobs the worker fetched together join one batch.
    setImmediate(() => void this.runBatches());
  }

  private async runBatches(): Promise<void> {
    try {
      while (this.waiting.length > 0) {
        const batch: Pending[] = [];
        let tokens = 0;
        while (this.waiting.length > 0) {
          const next = this.waiting[0]!;
          if (batch.length > 0 && tokens + next.seq.prompt.length > this.maxBatchTokens) break;
          batch.push(this.waiting.shift()!);
          tokens += next.seq.prompt.length;
        }
        // Open the batch's transfers now (decode reserves their blocks or refuses); a sequence whose transfer
        // failed (refused, or decode gone) is not worth computing.
        const begun = await Promise.all(
          batch.map((p) =>
            p.begin().then(
              () => true,
              (err: unknown) => {
                p.reject(err);
                return false;
              },
            ),
          ),
        );
        const live = batch.filter((p, i) => {
          if (!begun[i]) return false;
          if (p.sender.poll() !== KvPoll.Failed) return true;
          p.reject(failureError(p.sender.failure!));
          return false;
        });
        const liveTokens = live.reduce((n, p) => n + p.seq.prompt.length, 0);
        if (live.length > 0) await this.runOne(live, liveTokens);
        this.pendingTokens -= tokens;
      }
    } finally {
      this.running = false;
      this.kick();
    }
  }

  private async runOne(batch: Pending[], tokens: number): Promise<void> {
    const m = this.metrics;
    const seqs = batch.map((p) => p.seq);
    const started = performance.now();
    try {
      const results = await this.engine.prefill(seqs, {
        kvSink: batchKvSink(
          seqs,
          batch.map((p) => p.sender),
        ),
      });
      // The rows are encoded into the transfers already: free the blocks now, not after decode's verdicts,
      // so the next batch finds room.
      for (const p of batch) p.hold.release("finished");
      const seconds = (performance.now() - started) / 1000;
      const cached = seqs.reduce((n, s) => n + s.cachedTokens, 0);
      const computed = tokens - cached;
      m.prefillForward.observe(seconds);
      this.engine.model.phaseTimes?.drainInto(m.forwardPhase);
      m.prefillBatchSize.observe(batch.length);
      m.prefillBatchTokens.observe(computed);
      m.prefillTokens.inc({ model: this.model }, computed);
      // Prompt tokens served from the prefix cache were not computed; estimate what they would have cost
      // at the seconds per token of batches without hits (a batch with hits costs more per computed token:
      // its tokens attend over the cached context too), or this batch's rate before any such batch ran.
      if (cached === 0 && computed > 0) {
        const rate = seconds / computed;
        this.coldSecondsPerToken = this.coldSecondsPerToken === null ? rate : 0.8 * this.coldSecondsPerToken + 0.2 * rate;
      }
      if (cached > 0 && computed > 0) m.prefillPrefixCacheSaved.inc(cached * (this.coldSecondsPerToken ?? seconds / computed));
      this.logger.debug({ sequences: batch.length, tokens, cached, ms: Math.round(seconds * 1000) }, "prefill batch");
      results.forEach((r, i) => batch[i]!.resolve(r));
    } catch (err) {
      for (const p of batch) p.reject(err);
    }
  }
}

/** A transfer failure as a MoelaError of its code. */
function failureError(f: KvFailure): MoelaError {
  return errorForCode(f.code, `KV transfer failed: ${f.reason}`);
}

/** Codes worth another attempt: the peer may be back, have room, or the bytes may arrive intact. */
const RETRYABLE = new Set<Code>([Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED, Code.DATA_LOSS, Code.ABORTED, Code.INTERNAL, Code.UNKNOWN, Code.DEADLINE_EXCEEDED]);

/** What a job returns on success (kept by BullMQ for a while, for inspection). */
export interface PrefillJobResult {
  readonly transferId: string;
  readonly firstTokenId: number;
  readonly kvBlocks: number;
  readonly bytesSent: number;
}

export interface JobProcessorDeps {
  readonly engine: Engine;
  readonly batcher: PrefillBatcher;
  readonly precision: PrecisionProfile;
  readonly modelId: string;
  readonly maxPromptTokens: number;
  /** The KV connector of a decode instance (one per address, reused). */
  readonly connectorFor: (decodeAddress: string) => KvConnector;
  readonly metrics: MetricsOf<"prefill">;
  readonly logger: Logger;
  /** Transfers in progress (Prefill.Status). */
  readonly activeTransfers: Set<KvSender>;
  /** Where every job's KV blocks are accounted and released. */
  readonly ledger: KvLedger;
}

/** Why a job's blocks went back when it failed (the ledger's reason). */
function releaseReason(code: Code): KvReleaseReason {
  switch (code) {
    case Code.CANCELLED:
      return "cancelled";
    case Code.DEADLINE_EXCEEDED:
      return "deadline";
    case Code.RESOURCE_EXHAUSTED:
    case Code.ALREADY_EXISTS:
    case Code.INVALID_ARGUMENT:
    case Code.FAILED_PRECONDITION:
    case Code.OUT_OF_RANGE:
      return "rejected";
    case Code.DATA_LOSS:
      return "sender_failed";
    default:
      return "failed";
  }
}

function failureReason(code: Code): "unavailable" | "aborted" | "timeout" | "rejected" {
  if (code === Code.UNAVAILABLE) return "unavailable";
  if (code === Code.CANCELLED || code === Code.ABORTED) return "aborted";
  if (code === Code.DEADLINE_EXCEEDED) return "timeout";
  return "rejected";
}

/**
 * The engine's generation parameters of a job's sampling settings. Exported for the router's bounds test
 * (test/integration/router/downstream-bounds.test.ts), which runs jobs the way this worker does.
 */
export function generationParams(data: PrefillJob): GenerationParams {
  const s = data.sampling;
  const { temperature, topP, topK, seed, maxTokens, stopTokenIds, ignoreEos } = s;
  return {
    temperature,
    topP,
    topK,
    seed,
    maxTokens,
    stopTokenIds,
    ignoreEos,
    topLogprobs: s.logprobs ?? 0,
    ...(data.cacheSalt === undefined ? {} : { cacheSalt: data.cacheSalt }),
    ...(s.presencePenalty !== undefined ? { presencePenalty: s.presencePenalty } : {}),
    ...(s.frequencyPenalty !== undefined ? { frequencyPenalty: s.frequencyPenalty } : {}),
    ...(s.repetitionPenalty !== undefined ? { repetitionPenalty: s.repetitionPenalty } : {}),
    ...(s.logitBias !== undefined ? { logitBias: s.logitBias } : {}),
    ...(s.minP !== undefined ? { minP: s.minP } : {}),
    ...(s.minTokens !== undefined ? { minTokens: s.minTokens } : {}),
    ...(s.priorOutputTokens !== undefined ? { priorOutputTokens: s.priorOutputTokens } : {}),
    ...(s.grammar !== undefined ? { grammar: s.grammar } : {}),
  };
}

/** The BullMQ processor of prefill jobs. */
export function jobProcessor(deps: JobProcessorDeps): (job: Job) => Promise<PrefillJobResult> {
  const { engine, metrics: m } = deps;
  return async (job: Job): Promise<PrefillJobResult> => {
    let data: PrefillJob;
    try {
      data = parsePrefillJob(job.data);
    } catch (err) {
      m.prefillJobs.inc({ outcome: "error" });
      deps.logger.error({ jobId: job.id, err: errorMessage(err) }, "bad prefill job");
      throw new UnrecoverableError(jobFailureMessage(err as MoelaError));
    }
    const log = deps.logger.child({ requestId: data.requestId, attempt: job.attemptsMade + 1 });
    const unrecoverable = (err: MoelaError): UnrecoverableError => {
      m.prefillJobs.inc({ outcome: err.code === Code.CANCELLED ? "cancelled" : "error" });
      log.warn({ code: err.code, err: err.message }, "prefill job failed for good");
      return new UnrecoverableError(jobFailureMessage(err));
    };
    if (data.precision !== deps.precision) {
      throw unrecoverable(new FailedPreconditionError(`the job is for precision ${data.precision}, this prefill instance runs ${deps.precision}`));
    }
    if (Date.now() >= data.deadlineUnixMs) throw unrecoverable(new DeadlineExceededError("the request's deadline passed while it was queued"));
    if (data.promptTokenIds.length > deps.maxPromptTokens) {
      throw unrecoverable(
        new InvalidArgumentError(
          `the prompt has ${data.promptTokenIds.length} tokens; this prefill instance takes at most ${deps.maxPromptTokens} (--max-batch-tokens)`,
        ),
      );
    }
    const s = data.sampling;
    let seq: Sequence;
    try {
      seq = engine.newSequence(data.requestId, data.promptTokenIds, generationParams(data));
    } catch (err) {
      throw unrecoverable(err instanceof MoelaError ? err : new InvalidArgumentError(String(err)));
    }

    // A retried job gets a new transfer id, so a late duplicate of a failed attempt cannot be admitted.
    const transferId = `${data.requestId}.${job.attemptsMade}.${randomUUID().slice(0, 8)}`;
    // The job's own blocks; prefix-cache blocks it shares are the cache's (moela_prefill_prefix_cache_blocks).
    const ownBlocks = (): number => seq.blockTable.length - seq.cachedTokens / engine.cache.blockSize;
    const hold = deps.ledger.hold(
      data.requestId,
      "prefill",
      () => {
        const n = ownBlocks();
        engine.release(seq);
        return n;
      },
      ownBlocks,
    );
    // Take the longest cached prefix now, so KvBegin can say how much of the prompt came from the cache;
    // its blocks stay pinned (never evicted) until the hold is released.
    let cachedTokens = 0;
    if (engine.prefixCache !== null) {
      cachedTokens = engine.acquirePrefix(seq);
      m.prefillPrefixCacheQueries.inc(seq.prompt.length);
      m.prefillPrefixCacheHits.inc(cachedTokens);
    }
    let releaseAs: KvReleaseReason = "finished";
    const sender = new KvSender(deps.connectorFor(data.decodeAddress), { onChunk: (bytes) => m.prefillKvTransferBytes.inc(bytes) });
    deps.activeTransfers.add(sender);
    // The batcher wait ends, and the transfer starts, when the batch's turn comes and KvBegin goes out.
    const queued = performance.now();
    let started = queued;
    try {
      const begin = (): Promise<void> => {
        started = performance.now();
        m.prefillBatchWait.observe((started - queued) / 1000);
        return sender.begin(
          kvTransferMeta(engine, seq, {
            transferId,
            requestId: data.requestId,
            modelId: deps.modelId,
            logprobs: s.logprobs !== null,
            cachedPromptTokens: cachedTokens,
            deadlineUnixMs: data.deadlineUnixMs,
          }),
        );
      };
      const first = await deps.batcher.submit(seq, sender, hold, begin);
      const outcome = await sender.end(seq.snapshot());
      if (!outcome.ok) throw failureError(outcome.failure);
      m.prefillKvTransferDuration.observe((performance.now() - started) / 1000);
      m.prefillJobs.inc({ outcome: "ok" });
      const firstTokenId = first.tokens[0]?.id ?? -1;
      log.info(
        { decode: data.decodeAddress, transferId, promptTokens: seq.prompt.length, cachedTokens, kvBlocks: outcome.ack.kvBlocks, bytes: sender.bytesSent },
        "prefill done, KV admitted",
      );
      return { transferId, firstTokenId, kvBlocks: outcome.ack.kvBlocks, bytesSent: sender.bytesSent };
    } catch (err) {
      const e = err instanceof MoelaError ? err : new InternalError(errorMessage(err), { cause: err });
      sender.abort(`prefill failed: ${e.message}`);
      releaseAs = releaseReason(e.code);
      if (e.code === Code.ALREADY_EXISTS) {
        // Decode already has this request's KV (an earlier run of this job got there: a retry after a lost
        // acknowledgement, or stalled-job recovery of a job whose worker only looked dead). Done.
        m.prefillJobs.inc({ outcome: "ok" });
        log.info({ decode: data.decodeAddress, transferId, reason: e.message }, "decode already has this request's KV; job done");
        return { transferId, firstTokenId: -1, kvBlocks: 0, bytesSent: sender.bytesSent };
      }
      m.prefillKvTransferFailures.inc({ reason: failureReason(e.code) });
      const pastDeadline = Date.now() >= data.deadlineUnixMs;
      if (!RETRYABLE.has(e.code) || pastDeadline) throw unrecoverable(e);
      // Counted as finished only when BullMQ will not try again.
      if (job.attemptsMade + 1 >= (job.opts.attempts ?? 1)) m.prefillJobs.inc({ outcome: "error" });
      log.warn({ decode: data.decodeAddress, code: e.code, err: e.message }, "prefill attempt failed; BullMQ will retry");
      throw new Error(jobFailureMessage(e));
    } finally {
      deps.activeTransfers.delete(sender);
      hold.release(releaseAs);
    }
  };
}
