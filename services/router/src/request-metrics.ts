/**
 * One generation's request-level metrics, as both backends (the cluster's pipeline.ts and the one-process
 * engine-backend.ts) record them: queue time, prefill time (prefill start to first token), decode time
 * (first token to last), prompt and generated lengths, and how it ended (routerGenerations'
 * finish_reason), every one labelled with the served model. `track` wraps a backend's event stream and
 * records the end whatever it is: a finish reason, an error, or a caller that stopped listening.
 */
import { Code, MoelaError } from "@moela/core";
import type { FINISH_REASON_VALUES, MetricsOf } from "@moela/metrics";
import type { GenerateEvent } from "./backend.js";

export type GenerationEnd = (typeof FINISH_REASON_VALUES)[number];

/** How an error ended a request (the outcome label of routerRequests, the handlers' logs). */
export type ErrorKind = "cancelled" | "timeout" | "rejected" | "error";

/**
 * What kind of end `err` is: cancelled (abort), a deadline (timeout), a refusal (bad request, unknown
 * model, no room, no key: the request was never served), anything else an error.
 */
export function errorKind(err: unknown): ErrorKind {
  if (!(err instanceof MoelaError)) return "error";
  switch (err.code) {
    case Code.CANCELLED:
      return "cancelled";
    case Code.DEADLINE_EXCEEDED:
      return "timeout";
    case Code.INVALID_ARGUMENT:
    case Code.NOT_FOUND:
    case Code.RESOURCE_EXHAUSTED:
    case Code.UNAUTHENTICATED:
      return "rejected";
    default:
      return "error";
  }
}

/**
 * How an error ends a generation: cancelled is abort, a deadline is timeout, anything else error; null for
 * a refusal (errorKind's rejected, the outcome handlers.ts counts), which never became a generation and is
 * not counted as one.
 */
export function endOf(err: unknown): GenerationEnd | null {
  const kind = errorKind(err);
  if (kind === "rejected") return null;
  return kind === "cancelled" ? "abort" : kind;
}

export class GenerationRecorder {
  private prefillStartedAt = 0;
  private firstTokenAt = 0;
  private lastTokenAt = 0;
  private generated = 0;
  private ended = false;

  constructor(
    private readonly m: MetricsOf<"router">,
    private readonly model: string,
    private readonly promptTokens: number,
  ) {}

  /** A prefill of this generation started (a worker took its job; one-process: the engine admitted it) after waiting since `queuedAt`. */
  prefillStarted(queuedAt: number, now: number = performance.now()): void {
    this.m.routerQueueWait.observe({ model: this.model }, (now - queuedAt) / 1000);
    // The first prefill counts (a retried or migrated attempt's is part of it). One whose news came after the
    // first token (the queue's event delivered late) has no prefill time to give: none is recorded.
    if (this.prefillStartedAt === 0 && this.firstTokenAt === 0) this.prefillStartedAt = now;
  }

  /** `n` tokens reached the caller's stream at `now`. */
  tokens(n: number, now: number = performance.now()): void {
    if (n <= 0) return;
    if (this.firstTokenAt === 0) {
      this.firstTokenAt = now;
      if (this.prefillStartedAt !== 0) this.m.routerRequestPrefill.observe({ model: this.model }, (now - this.prefillStartedAt) / 1000);
    }
    this.lastTokenAt = now;
    this.generated += n;
  }

  /** The generation ended; only the first call counts. */
  finish(end: GenerationEnd): void {
    if (this.ended) return;
    this.ended = true;
    const model = this.model;
    this.m.routerGenerations.inc({ model, finish_reason: end });
    this.m.routerRequestPromptTokens.observe({ model }, this.promptTokens);
    this.m.routerRequestGenerationTokens.observe({ model }, this.generated);
    if (this.firstTokenAt !== 0) this.m.routerRequestDecode.observe({ model }, (this.lastTokenAt - this.firstTokenAt) / 1000);
  }

  /**
   * `events` as they are, recording each event's tokens and, once it ends, how: its finish reason, the
   * error it threw (endOf; a refusal before any token is not recorded), or abort when the caller stopped
   * iterating before the last event.
   */
  async *track(events: AsyncGenerator<GenerateEvent>): AsyncGenerator<GenerateEvent> {
    let end: GenerationEnd | null = "abort";
    try {
      for await (const ev of events) {
        this.tokens(ev.tokens.length);
        if (ev.finishReason !== null) end = ev.finishReason;
        yield ev;
      }
    } catch (err) {
      end = endOf(err);
      if (end === null && this.generated > 0) end = "error";
      throw err;
    } finally {
      if (end !== null) this.finish(end);
    }
  }
}
