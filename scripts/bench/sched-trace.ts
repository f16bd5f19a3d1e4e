/**
 * Reading a `perf sched timehist` of a running cluster: which thread ran on which CPU and when, how long a woken
 * thread waited for a core, and how much of a process's CPU went in slices too short to be work (a kernel worker
 * spinning and yielding between products). cluster-schedule.ts records the trace; this file only reads it, so the
 * unit tests can feed it text.
 *
 * One line of `perf sched timehist` per time a thread left a CPU (with -w, the wake-up lines between them are
 * skipped):
 *     2623.969722 [0001]  node[19817/19785]     0.223      0.000      0.080
 * the time it left (s), the CPU, comm[tid/pid] (comm[tid] for a process's main thread, <idle> for the idle task),
 * then wait time, scheduling delay (from its wake-up to running) and run time, in ms.
 */

export interface SchedSlice {
  /** When the thread left the CPU, seconds on perf's clock. */
  readonly end: number;
  readonly cpu: number;
  readonly comm: string;
  /** 0 for the idle task. */
  readonly tid: number;
  readonly pid: number;
  /** ms from its wake-up to running on this CPU. */
  readonly delayMs: number;
  readonly runMs: number;
}

const LINE = /^\s*(\d+\.\d+)\s+\[(\d+)\]\s+(.+?)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s*$/;
const TASK = /^(.*)\[(\d+)(?:\/(\d+))?\]$/;

/** The slices of a `perf sched timehist` text; header lines, wake-up lines (from -w) and tasks it cannot name are skipped. */
export function parseTimehist(text: string): SchedSlice[] {
  const out: SchedSlice[] = [];
  for (const line of text.split("\n")) {
    if (line.includes("awakened:")) continue;
    const m = LINE.exec(line);
    if (m === null) continue;
    const task = m[3]!.trim();
    const t = TASK.exec(task);
    if (t === null && task !== "<idle>") continue;
    const tid = t === null ? 0 : Number(t[2]);
    out.push({
      end: Number(m[1]),
      cpu: Number(m[2]),
      comm: t === null ? task : t[1]!,
      tid,
      pid: t === null ? 0 : Number(t[3] ?? t[2]),
      delayMs: Number(m[5]),
      runMs: Number(m[6]),
    });
  }
  return out;
}

/** A slice this short is a spin-and-yield turn, not a product's share (a chunk of work runs for tens of us or more). */
export const SHORT_SLICE_MS = 0.02;

export interface ThreadGroupUse {
  /** "decode 0 main", "decode 0 other threads", "idle", "everything else". */
  readonly name: string;
  /** CPU ms over the trace. */
  readonly runMs: number;
  /** Of runMs, in slices of at most SHORT_SLICE_MS. */
  readonly shortMs: number;
  /** ms its threads waited for a core after being woken, summed. */
  readonly delayMs: number;
  /** Of delayMs, the time another CPU was idle meanwhile: work left queued beside a free core. */
  readonly delayBesideIdleMs: number;
  /** Of runMs, the time every other CPU was idle: this group ran alone, with nothing beside it. */
  readonly aloneMs: number;
  readonly slices: number;
}

export interface ScheduleSummary {
  /** When the trace starts (the first slice's start), seconds on perf's clock. */
  readonly from: number;
  /** Seconds the trace covers (first slice's start to last slice's end). */
  readonly seconds: number;
  readonly groups: readonly ThreadGroupUse[];
  /** Per CPU, the share of the trace it ran the idle task. */
  readonly idleShare: ReadonlyMap<number, number>;
}

/**
 * The trace by thread group: each named process's main thread and its other threads (kernel workers, libuv's pool,
 * V8's helpers), the idle task, and everything else on the machine.
 */
export function summarize(slices: readonly SchedSlice[], processes: ReadonlyMap<number, string>): ScheduleSummary {
  if (slices.length === 0) return { from: 0, seconds: 0, groups: [], idleShare: new Map() };
  const groups = new Map<string, { runMs: number; shortMs: number; delayMs: number; delayBesideIdleMs: number; aloneMs: number; slices: number }>();
  const idle = new Map<number, number>();
  const idleTimes = idleIntervals(slices);
  let first = Infinity;
  let last = -Infinity;
  for (const s of slices) {
    first = Math.min(first, s.end - s.runMs / 1000);
    last = Math.max(last, s.end);
    const label = processes.get(s.pid);
    const name = s.tid === 0 ? "idle" : label === undefined ? "everything else" : `${label} ${s.tid === s.pid ? "main" : "other threads"}`;
    if (s.tid === 0) idle.set(s.cpu, (idle.get(s.cpu) ?? 0) + s.runMs);
    const g = groups.get(name) ?? { runMs: 0, shortMs: 0, delayMs: 0, delayBesideIdleMs: 0, aloneMs: 0, slices: 0 };
    g.runMs += s.runMs;
    if (s.tid !== 0) g.aloneMs += allIdleBeside(idleTimes, s.cpu, s.end - s.runMs / 1000, s.end) * 1000;
    if (s.runMs <= SHORT_SLICE_MS) g.shortMs += s.runMs;
    g.delayMs += s.delayMs;
    if (s.delayMs > 0 && s.tid !== 0) {
      const started = s.end - s.runMs / 1000;
      g.delayBesideIdleMs += idleBeside(idleTimes, s.cpu, started - s.delayMs / 1000, started) * 1000;
    }
    g.slices++;
    groups.set(name, g);
  }
  const seconds = last - first;
  const idleShare = new Map([...idle].map(([cpu, ms]) => [cpu, ms / (seconds * 1000)]));
  const rank = (n: string): number => (n === "idle" ? 2 : n === "everything else" ? 1 : 0);
  return {
    from: first,
    seconds,
    groups: [...groups].map(([name, g]) => ({ name, ...g })).sort((a, b) => rank(a.name) - rank(b.name) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
    idleShare,
  };
}

type Interval = readonly [number, number];

/** Per CPU of the trace, when it ran the idle task, in order (seconds); empty for a CPU that never idled. */
function idleIntervals(slices: readonly SchedSlice[]): Map<number, Interval[]> {
  const byCpu = new Map<number, Interval[]>();
  for (const s of slices) {
    const list = byCpu.get(s.cpu) ?? [];
    if (s.tid === 0) list.push([s.end - s.runMs / 1000, s.end]);
    byCpu.set(s.cpu, list);
  }
  for (const list of byCpu.values()) list.sort((a, b) => a[0] - b[0]);
  return byCpu;
}

/** One CPU's idle intervals within [from, to), clipped to it. */
function idleWithin(list: readonly Interval[], from: number, to: number): Array<[number, number]> {
  // The first interval that ends after `from` (they are sorted by start and do not overlap, so by end too).
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (list[mid]![1] <= from) lo = mid + 1;
    else hi = mid;
  }
  const out: Array<[number, number]> = [];
  for (let i = lo; i < list.length && list[i]![0] < to; i++) out.push([Math.max(from, list[i]![0]), Math.min(to, list[i]![1])]);
  return out;
}

/** Seconds of [from, to) during which every CPU other than `cpu` was idle (none, when there is no other CPU). */
function allIdleBeside(idle: ReadonlyMap<number, readonly Interval[]>, cpu: number, from: number, to: number): number {
  const others = [...idle.keys()].filter((c) => c !== cpu);
  if (others.length === 0) return 0;
  let common: Array<[number, number]> = [[from, to]];
  for (const c of others) {
    const next: Array<[number, number]> = [];
    for (const [a, b] of common) next.push(...idleWithin(idle.get(c)!, a, b));
    common = next;
  }
  return common.reduce((sum, [a, b]) => sum + (b - a), 0);
}

/** Seconds of [from, to) during which at least one CPU other than `cpu` was idle. */
function idleBeside(idle: ReadonlyMap<number, readonly Interval[]>, cpu: number, from: number, to: number): number {
  const parts: Array<[number, number]> = [];
  for (const [c, list] of idle) if (c !== cpu) parts.push(...idleWithin(list, from, to));
  parts.sort((a, b) => a[0] - b[0]);
  let total = 0;
  let end = -Infinity;
  for (const [a, b] of parts) {
    const start = Math.max(a, end);
    if (b > start) total += b - start;
    end = Math.max(end, b);
  }
  return total;
}

/** The slices that ran within [from, to) seconds, clipped to it: what a timeline of that stretch draws. */
export function sliceWindow(slices: readonly SchedSlice[], from: number, to: number): Array<SchedSlice & { start: number }> {
  const out: Array<SchedSlice & { start: number }> = [];
  for (const s of slices) {
    const start = s.end - s.runMs / 1000;
    if (s.end <= from || start >= to) continue;
    const a = Math.max(start, from);
    const b = Math.min(s.end, to);
    out.push({ ...s, start: a, end: b, runMs: (b - a) * 1000 });
  }
  return out;
}
