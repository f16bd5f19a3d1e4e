/**
 * Doorbells: one 32-bit word per process, in a file of its own under /dev/shm, 1 when rung. A peer that left work
 * for the process (a request or a reply in a channel) sets it and wakes the process, which clears it before it
 * looks for work and sleeps on the one word for all of its channels.
 *
 * `DoorbellLoop` is how a process waits without giving up its event loop: while work is expected it runs as a
 * chain of setImmediate steps, each of which looks for work and, once a whole turn of the loop found none,
 * sleeps on the doorbell for at most a short slice. A sleeping thread uses no CPU, and a futex wake-up reaches it in microseconds, where a socket's
 * reaches it through the event loop's poll. Between steps the loop serves its other I/O and timers, so they wait
 * at most a slice. When no more work is expected it stops, and, if asked, leaves a watcher thread to start it
 * again at the next ring.
 */
import { randomBytes } from "node:crypto";
import { readdirSync, unlinkSync } from "node:fs";
import { SHM_DIR } from "./channel.js";
import { shmNative, shmLoadError, type ShmNative, type ShmWatcher } from "./native.js";

const BELL_BYTES = 64;
const BELL_PREFIX = `${SHM_DIR}/moela-bell-`;

function native(): ShmNative {
  if (shmNative === null) throw new Error(`shared memory is not available: ${shmLoadError?.message ?? "unknown"}`);
  return shmNative;
}

/** This process's doorbell. */
export class Doorbell {
  private static mine: Doorbell | undefined;
  readonly words: Int32Array;

  private constructor(readonly path: string) {
    this.words = new Int32Array(native().map(path, BELL_BYTES, true));
  }

  /**
   * The process's one doorbell, made at first use and removed at exit. A process killed by SIGKILL cannot remove
   * its files, so the first use also removes the doorbells and channels of processes that are gone.
   */
  static own(): Doorbell {
    if (Doorbell.mine === undefined) {
      removeOrphans();
      const bell = new Doorbell(`${BELL_PREFIX}${process.pid}-${randomBytes(8).toString("hex")}`);
      process.once("exit", () => {
        try {
          unlinkSync(bell.path);
        } catch {
          // already gone
        }
      });
      Doorbell.mine = bell;
    }
    return Doorbell.mine;
  }

  /**
   * Clears the bell and says whether it had rung. Clear it before looking for work: a ring after that sets it
   * again, so wait() returns at once and no ring is missed.
   */
  take(): boolean {
    return Atomics.exchange(this.words, 0, 0) !== 0;
  }

  /** Whether it rang since the last take(). */
  rung(): boolean {
    return Atomics.load(this.words, 0) !== 0;
  }

  /** Sleeps while the bell has not rung, at most `timeoutMs`. */
  wait(timeoutMs: number): void {
    native().wait(this.words, 0, 0, timeoutMs);
  }

  watch(onRing: () => void): ShmWatcher {
    return native().watch(this.words, 0, onRing);
  }
}

/** Removes moela's files under SHM_DIR whose creator (the pid in the name) is no longer running. */
export function removeOrphans(dir = SHM_DIR): string[] {
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return removed;
  }
  for (const name of names) {
    const m = /^moela-(?:bell|channel)-(\d+)-[0-9a-f]+$/.exec(name);
    if (m === null || running(Number(m[1]))) continue;
    try {
      unlinkSync(`${dir}/${name}`);
      removed.push(name);
    } catch {
      // another process removed it first, or it is not ours to remove
    }
  }
  return removed;
}

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it runs, under another user.
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** A peer's doorbell, to ring after leaving it work. */
export class PeerDoorbell {
  readonly words: Int32Array;

  constructor(readonly path: string) {
    if (!path.startsWith(BELL_PREFIX) || path.includes("/..")) throw new Error(`${path} is not a moela doorbell`);
    this.words = new Int32Array(native().map(path, BELL_BYTES, false));
  }

  ring(): void {
    Atomics.store(this.words, 0, 1);
    native().wake(this.words, 0);
  }
}

/**
 * Rings every bell added in this turn of the event loop together, after the code that added them has finished
 * (a microtask), two at a time in one system call: the first peer woken cannot take this thread's core before
 * the others are woken. A caller that writes a request to each of several hosts rings them as one.
 */
export class RingTogether {
  private readonly bells = new Set<PeerDoorbell>();
  private queued = false;

  add(bell: PeerDoorbell): void {
    this.bells.add(bell);
    if (this.queued) return;
    this.queued = true;
    queueMicrotask(this.flush);
  }

  private readonly flush = (): void => {
    this.queued = false;
    const bells = [...this.bells];
    this.bells.clear();
    let i = 0;
    for (; i + 1 < bells.length; i += 2) native().ringPair(bells[i]!.words, 0, bells[i + 1]!.words, 0);
    if (i < bells.length) bells[i]!.ring();
  };
}

export interface DoorbellLoopOptions {
  readonly bell: Doorbell;
  /** Looks for work and starts it; true when it found some. */
  readonly poll: () => boolean;
  /** Whether more work is expected (the loop keeps waiting); false ends the loop until kick() or a watched ring. */
  readonly expectsWork: () => boolean;
  /**
   * When the loop ends, whether to leave a watcher that restarts it at the next ring (a server with nothing in
   * flight). A caller, and a server whose work in flight will kick() it when done, need none.
   */
  readonly watchWhenIdle: () => boolean;
  /** Longest sleep per step, ms: the longest the event loop's other work waits (default 1). */
  readonly sliceMs?: number;
}

export class DoorbellLoop {
  private running = false;
  /** Steps in a row that found no work. */
  private turnsWithout = 0;
  private watcher: ShmWatcher | undefined;
  private closed = false;
  private readonly sliceMs: number;

  constructor(private readonly o: DoorbellLoopOptions) {
    this.sliceMs = o.sliceMs ?? 1;
  }

  /** Starts the loop if it is not running. */
  kick(): void {
    if (this.running || this.closed) return;
    this.running = true;
    // The loop sees every ring itself while it runs; a watcher's thread would only wake along with it.
    this.watcher?.close();
    this.watcher = undefined;
    setImmediate(this.step);
  }

  close(): void {
    this.closed = true;
    this.watcher?.close();
    this.watcher = undefined;
  }

  private readonly step = (): void => {
    if (this.closed) return;
    this.o.bell.take();
    if (this.o.poll()) {
      this.turnsWithout = 0;
    } else {
      if (!this.o.expectsWork()) {
        this.running = false;
        this.turnsWithout = 0;
        if (this.o.watchWhenIdle()) {
          this.watcher = this.o.bell.watch(() => this.kick());
          // A ring between the poll and the watcher's start would wait for the next one: look once more.
          if (this.o.bell.rung()) this.kick();
        }
        return;
      }
      // Sleep only after a whole turn of the event loop found nothing either: whatever was queued behind this
      // step when it was scheduled (a caller's own next computation, set off by setImmediate) runs first.
      if (this.turnsWithout++ > 0) {
        this.o.bell.wait(this.sliceMs);
        this.o.bell.take();
        if (this.o.poll()) this.turnsWithout = 0;
      }
    }
    // Found work runs on the microtask queue before the next step; other I/O and timers run in between.
    setImmediate(this.step);
  };
}
