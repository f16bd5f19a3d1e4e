/**
 * A Clock (packages/core/src/clock.ts) that moves only when told, for tests of code with timers.
 *
 * `advance(ms)` moves time forward and fires, in time order (ties in the order they were set), every
 * timer due on the way, each with now() at its own time; timers set by a callback fire in the same call
 * when they fall inside it. With `auto: true` the clock also moves by itself when the code under test is
 * waiting: each setTimeout schedules (setImmediate, so after the promise chains running now have settled)
 * a step to the earliest timer. Use that for code that waits on the clock between real I/O (a client's
 * backoff between calls to a real server): time then goes only as far as the code's own waits take it.
 */
import type { Clock, ClockTimer } from "@moela/core";

interface Pending {
  readonly at: number;
  readonly seq: number;
  readonly fn: () => void;
  readonly handle: ClockTimer;
}

export class ManualClock implements Clock {
  private t: number;
  private seq = 0;
  private timers: Pending[] = [];
  private readonly auto: boolean;
  private stepScheduled = false;

  constructor(options: { start?: number; auto?: boolean } = {}) {
    this.t = options.start ?? Date.now();
    this.auto = options.auto ?? false;
  }

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): ClockTimer {
    const handle: ClockTimer = { unref: () => handle };
    this.timers.push({ at: this.t + Math.max(0, ms), seq: this.seq++, fn, handle });
    if (this.auto) this.scheduleStep();
    return handle;
  }

  clearTimeout(timer: ClockTimer | undefined): void {
    this.timers = this.timers.filter((x) => x.handle !== timer);
  }

  /** Timers set and not yet fired or cleared. */
  get pending(): number {
    return this.timers.length;
  }

  /** Moves time `ms` forward, firing every timer due by then. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      const next = this.earliest();
      if (next === undefined || next.at > end) break;
      this.timers = this.timers.filter((x) => x !== next);
      this.t = next.at;
      next.fn();
    }
    this.t = end;
  }

  private earliest(): Pending | undefined {
    let best: Pending | undefined;
    for (const x of this.timers) if (best === undefined || x.at < best.at || (x.at === best.at && x.seq < best.seq)) best = x;
    return best;
  }

  private scheduleStep(): void {
    if (this.stepScheduled) return;
    this.stepScheduled = true;
    setImmediate(() => {
      this.stepScheduled = false;
      const next = this.earliest();
      if (next === undefined) return;
      this.advance(next.at - this.t);
      if (this.timers.length > 0) this.scheduleStep();
    });
  }
}
