/**
 * The local cluster supervises its processes the way a kubelet restarts a StatefulSet's pods: a
 * process that exits without being asked to is started again under its name, at its address, after a
 * back-off that doubles with every restart that did not last (0.5 s, 1 s, 2 s, ... capped at 10 s) and
 * is forgotten once an incarnation has served for a stable minute (Kubernetes: 10 s doubling to 5 min,
 * reset after 10 min; a laptop cluster wants to be back sooner). Meanwhile the rest keeps serving: the
 * router migrates a dead decode instance's requests, BullMQ hands a dead prefill worker's jobs to
 * another, a dispatch fails over to another replica of the shard.
 *
 * The policy (RestartBackoff) is pure; the Supervisor runs one loop per unit: wait for the current
 * incarnation to exit, report it, sleep the back-off, restart, report. A restart that fails (the new
 * process dies or never serves) counts as a restart that did not last. stop() ends every loop and
 * interrupts back-off sleeps; a unit's restart() that throws CancelledError (its cluster is stopping)
 * ends that unit's loop.
 */
import { CancelledError } from "@moela/core";

export interface ExitInfo {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface BackoffOptions {
  /** First delay (default 500 ms). */
  readonly initialMs?: number;
  /** Largest delay (default 10 s). */
  readonly maxMs?: number;
  /** An incarnation up this long resets the back-off (default 60 s). */
  readonly stableMs?: number;
}

export const DEFAULT_BACKOFF: Required<BackoffOptions> = Object.freeze({ initialMs: 500, maxMs: 10_000, stableMs: 60_000 });

/** Exponential back-off with a reset after a stable run. */
export class RestartBackoff {
  private readonly o: Required<BackoffOptions>;
  /** Restarts in a row that did not last stableMs. */
  private streak = 0;

  constructor(o: BackoffOptions = {}) {
    this.o = { ...DEFAULT_BACKOFF, ...o };
  }

  /** The delay before the next restart, given how long the incarnation that just exited had been up. */
  next(upMs: number): number {
    if (upMs >= this.o.stableMs) this.streak = 0;
    const delay = Math.min(this.o.maxMs, this.o.initialMs * 2 ** Math.min(this.streak, 30));
    this.streak++;
    return delay;
  }
}

/** One supervised process (a service under its label, or the private Redis). */
export interface SupervisedUnit {
  /** "decode 0", "redis" */
  readonly label: string;
  /** The current incarnation's pid. */
  pid(): number | undefined;
  /** Resolves when the current incarnation exits. */
  waitExit(): Promise<ExitInfo>;
  /** Start it again at its address; resolves once it serves. CancelledError: its cluster is stopping. */
  restart(): Promise<void>;
  /** Stop an incarnation that a failed restart left running (it never became healthy). */
  kill(): Promise<void>;
}

export type SupervisorEvent =
  | {
      readonly kind: "exited";
      readonly label: string;
      readonly pid: number | undefined;
      readonly exit: ExitInfo;
      readonly upMs: number;
      readonly restartInMs: number;
    }
  | { readonly kind: "restarting"; readonly label: string; readonly attempt: number }
  | { readonly kind: "restarted"; readonly label: string; readonly pid: number | undefined; readonly restarts: number; readonly tookMs: number }
  | { readonly kind: "restart-failed"; readonly label: string; readonly error: Error };

export interface SupervisorOptions extends BackoffOptions {
  readonly onEvent?: (e: SupervisorEvent) => void;
  /** Tests: a clock. */
  readonly now?: () => number;
}

export function describeExit(e: ExitInfo): string {
  return e.signal !== null ? `killed by ${e.signal}` : `exited with code ${e.code}`;
}

export class Supervisor {
  private readonly abort = new AbortController();
  private readonly loops: Promise<void>[] = [];
  private readonly now: () => number;
  /** Restarts done per label. */
  readonly restarts = new Map<string, number>();

  constructor(
    private readonly units: readonly SupervisedUnit[],
    private readonly o: SupervisorOptions = {},
  ) {
    this.now = o.now ?? Date.now;
  }

  /** Start watching every unit (their current incarnations count as up from now). */
  start(): this {
    for (const u of this.units) this.loops.push(this.loop(u));
    return this;
  }

  /** Stop supervising: no restart starts after this; resolves once every loop has ended. */
  async stop(): Promise<void> {
    this.abort.abort();
    await Promise.all(this.loops);
  }

  private get stopped(): boolean {
    return this.abort.signal.aborted;
  }

  /** Resolves when `p` settles or stop() is called, whichever comes first; undefined when stopped. */
  private untilStopped<T>(p: Promise<T>): Promise<T | undefined> {
    return new Promise<T | undefined>((resolve, reject) => {
      if (this.stopped) return resolve(undefined);
      const onAbort = () => resolve(undefined);
      this.abort.signal.addEventListener("abort", onAbort, { once: true });
      p.then(
        (v) => {
          this.abort.signal.removeEventListener("abort", onAbort);
          resolve(v);
        },
        (e: unknown) => {
          this.abort.signal.removeEventListener("abort", onAbort);
          reject(e);
        },
      );
    });
  }

  private sleep(ms: number): Promise<void> {
    return this.untilStopped(new Promise<void>((r) => setTimeout(r, ms).unref())).then(() => undefined);
  }

  private async loop(u: SupervisedUnit): Promise<void> {
    const emit = this.o.onEvent ?? (() => {});
    const backoff = new RestartBackoff(this.o);
    let upSince = this.now();
    let attempt = 0;
    for (;;) {
      const pid = u.pid();
      const exit = await this.untilStopped(u.waitExit());
      if (exit === undefined || this.stopped) return;
      const upMs = this.now() - upSince;
      const delay = backoff.next(upMs);
      emit({ kind: "exited", label: u.label, pid, exit, upMs, restartInMs: delay });
      await this.sleep(delay);
      if (this.stopped) return;
      attempt++;
      emit({ kind: "restarting", label: u.label, attempt });
      const t0 = this.now();
      try {
        await u.restart();
      } catch (err) {
        if (err instanceof CancelledError || this.stopped) return;
        emit({ kind: "restart-failed", label: u.label, error: err as Error });
        // Whatever the failed attempt left running goes; the loop then sees it exit and backs off more.
        await u.kill().catch(() => {});
        upSince = this.now();
        continue;
      }
      const restarts = (this.restarts.get(u.label) ?? 0) + 1;
      this.restarts.set(u.label, restarts);
      upSince = this.now();
      emit({ kind: "restarted", label: u.label, pid: u.pid(), restarts, tookMs: upSince - t0 });
    }
  }
}
