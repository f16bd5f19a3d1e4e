/**
 * Time for the runner, injected so the tests can run the schedulers on a fake clock.
 *
 * `FakeClock` advances only when everything that runs on it is waiting: `sleep()` registers a timer and
 * schedules, with setImmediate, a step that moves time to the earliest timer and resolves every timer due
 * then (in the order they were set). setImmediate runs after the microtask queue drains, so all promise
 * chains woken by one step have run, and set their next timers, before the next step. With targets that
 * only await the clock, a whole bench runs in virtual milliseconds and its timestamps are exact.
 */
export interface Clock {
  /** Milliseconds on a monotonic scale (the origin is arbitrary). */
  now(): number;
  /** Resolves after `ms` milliseconds (at once for ms <= 0). */
  sleep(ms: number): Promise<void>;
}

export const realClock: Clock = {
  now: () => performance.now(),
  sleep: (ms) => (ms <= 0 ? Promise.resolve() : new Promise((resolve) => setTimeout(resolve, ms))),
};

interface Timer {
  readonly at: number;
  readonly seq: number;
  readonly resolve: () => void;
}

export class FakeClock implements Clock {
  private t: number;
  private seq = 0;
  private timers: Timer[] = [];
  private stepScheduled = false;

  constructor(start = 0) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.timers.push({ at: this.t + Math.max(0, ms), seq: this.seq++, resolve });
      this.schedule();
    });
  }

  /** Timers not yet due (for tests that check nothing is left behind). */
  get pending(): number {
    return this.timers.length;
  }

  private schedule(): void {
    if (this.stepScheduled) return;
    this.stepScheduled = true;
    setImmediate(() => this.step());
  }

  private step(): void {
    this.stepScheduled = false;
    if (this.timers.length === 0) return;
    this.timers.sort((a, b) => a.at - b.at || a.seq - b.seq);
    const at = this.timers[0]!.at;
    const due = this.timers.filter((x) => x.at === at);
    this.timers = this.timers.filter((x) => x.at !== at);
    this.t = at;
    for (const x of due) x.resolve();
    if (this.timers.length > 0) this.schedule();
  }
}
