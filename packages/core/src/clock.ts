/**
 * Time for code that keeps timers (the decode batcher, the client's retries, the KV receiver), injected
 * through its options so that a test can move time itself instead of racing the wall clock. Production
 * code takes `realClock`, the default everywhere.
 */

/** What setTimeout returned; only the clock that made it can clear it. */
export interface ClockTimer {
  /** Do not keep the process alive for this timer (a no-op on clocks without an event loop of their own). */
  unref(): unknown;
}

export interface Clock {
  /** Milliseconds since the Unix epoch, on Date.now()'s scale (deadlines are absolute times on it). */
  now(): number;
  /** Calls `fn` once, `ms` milliseconds from now (as soon as possible for ms <= 0). */
  setTimeout(fn: () => void, ms: number): ClockTimer;
  /** Cancels a timer of this clock's that has not fired; does nothing for undefined or a fired timer. */
  clearTimeout(timer: ClockTimer | undefined): void;
}

/** The process's own clock: Date.now and the global timers. */
export const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (timer) => clearTimeout(timer as NodeJS.Timeout | undefined),
};
