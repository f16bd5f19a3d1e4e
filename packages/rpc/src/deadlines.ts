/**
 * Deadlines are absolute times in ms since the Unix epoch (what grpc-js CallOptions.deadline
 * takes); Infinity means none. A call made on behalf of another call gets a deadline no later
 * than its parent's, so work for a caller who has given up stops everywhere.
 */
import type { Deadline } from "@grpc/grpc-js";
import { DeadlineExceededError, MoelaError } from "@moela/core";

/** The deadline `ms` from now. */
export function deadlineAfter(ms: number, now: number = Date.now()): number {
  return now + ms;
}

/** `deadline` (Date, ms or undefined) as ms since the epoch; Infinity when there is none. */
export function deadlineToMs(deadline: Deadline | undefined): number {
  if (deadline === undefined) return Infinity;
  const ms = deadline instanceof Date ? deadline.getTime() : deadline;
  return Number.isNaN(ms) ? Infinity : ms;
}

/** Milliseconds left before `deadline`: 0 once it has passed, Infinity when there is none. */
export function remainingMs(deadline: Deadline | undefined, now: number = Date.now()): number {
  return Math.max(0, deadlineToMs(deadline) - now);
}

/**
 * The deadline for a call made while serving a call with deadline `parent`: the parent's
 * deadline, or `now + capMs` when that is sooner.
 */
export function childDeadline(parent: Deadline | undefined, capMs: number = Infinity, now: number = Date.now()): number {
  return Math.min(deadlineToMs(parent), now + capMs);
}

/** The error a passed deadline gives: DEADLINE_EXCEEDED, naming what ran out of time. */
export function deadlineExceeded(what: string): MoelaError {
  return new DeadlineExceededError(`deadline exceeded: ${what}`);
}

/** Throw DEADLINE_EXCEEDED when `deadline` has passed (call between steps of long work). */
export function throwIfExpired(deadline: Deadline | undefined, what: string, now: number = Date.now()): void {
  if (remainingMs(deadline, now) === 0) throw deadlineExceeded(what);
}

/**
 * A signal that aborts at `deadline` (reason: DEADLINE_EXCEEDED) or when any of `signals` aborts
 * (their reason), for handing to work that does not know about deadlines.
 */
export function deadlineSignal(deadline: Deadline | undefined, what: string, ...signals: AbortSignal[]): AbortSignal {
  const left = remainingMs(deadline);
  if (left === Infinity) return signals.length === 1 ? signals[0]! : AbortSignal.any(signals);
  const controller = new AbortController();
  // setTimeout takes at most 2^31-1 ms; a deadline further out than ~24.8 days never fires here.
  const timer = left <= 2_147_483_647 ? setTimeout(() => controller.abort(deadlineExceeded(what)), left) : undefined;
  timer?.unref();
  const deadlineOnly = controller.signal;
  deadlineOnly.addEventListener("abort", () => clearTimeout(timer), { once: true });
  const combined = AbortSignal.any([deadlineOnly, ...signals]);
  combined.addEventListener("abort", () => clearTimeout(timer), { once: true });
  return combined;
}
