import { describe, expect, it } from "vitest";
import { parseTimehist, sliceWindow, summarize, type ThreadGroupUse } from "../../../scripts/bench/sched-trace.js";

// A `perf sched timehist` excerpt as perf 6.1 prints it: header, a wake-up line (-w), main threads as comm[tid],
// other threads as comm[tid/pid], the idle task without brackets; and a task without a thread id, to be skipped.
const TRACE = `           time    cpu  task name                       wait time  sch delay   run time
                        [tid/pid]                          (msec)     (msec)     (msec)
--------------- ------  ------------------------------  ---------  ---------  ---------
    100.000300 [0000]  node[10]                            0.000      0.050      0.300
    100.000310 [0001]  node[11/10]                         0.000      0.000      0.010
    100.000320 [0001]  node[21/20]                         0.000      0.000      0.010
    100.000400 [0001]  perf[99]                                                      awakened: node[20]
    100.000700 [0001]  <idle>                              0.000      0.000      0.380
    100.001000 [0000]  node[20]                            0.100      0.400      0.700
    100.001000 [0001]  kworker/1:0[7]                      0.000      0.000      0.300
    100.001000 [0002]  no-thread-id                        0.000      0.000      0.300
`;

/** decode 0 is pid 10, expert-host 0 pid 20. */
const SERVICES = new Map([
  [10, "decode 0"],
  [20, "expert-host 0"],
]);

/** The summary's groups by name, for a trace of these lines. */
function groupsOf(lines: readonly string[]): Map<string, ThreadGroupUse> {
  return new Map(summarize(parseTimehist(lines.join("\n")), SERVICES).groups.map((g) => [g.name, g]));
}

describe("reading a perf sched timehist (scripts/bench/sched-trace.ts)", () => {
  it("takes each slice's CPU, thread, process, delay and run time, and skips headers, wake-ups and unnamed tasks", () => {
    const s = parseTimehist(TRACE);
    expect(s).toHaveLength(6);
    expect(s[0]).toEqual({ end: 100.0003, cpu: 0, comm: "node", tid: 10, pid: 10, delayMs: 0.05, runMs: 0.3 });
    expect(s[1]).toMatchObject({ tid: 11, pid: 10 });
    expect(s[3]).toMatchObject({ comm: "<idle>", tid: 0, pid: 0, runMs: 0.38 });
    expect(s[5]).toMatchObject({ comm: "kworker/1:0", tid: 7, pid: 7 });
  });

  it("sums CPU, short slices and waits per process's main and other threads, and each CPU's idle share", () => {
    const sum = summarize(parseTimehist(TRACE), SERVICES);
    // From the first slice's start (100.000300 - 0.300 ms = 100.0) to the last end (100.001).
    expect(sum.from).toBeCloseTo(100.0, 9);
    expect(sum.seconds).toBeCloseTo(0.001, 9);
    const by = new Map(sum.groups.map((g) => [g.name, g]));
    expect(by.get("decode 0 main")).toMatchObject({ runMs: 0.3, shortMs: 0, delayMs: 0.05, delayBesideIdleMs: 0, slices: 1 });
    expect(by.get("decode 0 other threads")).toMatchObject({ runMs: 0.01, shortMs: 0.01, slices: 1 });
    expect(by.get("expert-host 0 main")).toMatchObject({ runMs: 0.7, shortMs: 0, delayMs: 0.4 });
    expect(by.get("expert-host 0 other threads")!.shortMs).toBeCloseTo(0.01, 12);
    expect(by.get("everything else")).toMatchObject({ runMs: 0.3, slices: 1 });
    expect(sum.idleShare.get(1)).toBeCloseTo(0.38, 9);
    expect(sum.idleShare.has(0)).toBe(false);
    // Services first, by name; then everything else, then idle.
    expect(sum.groups.map((g) => g.name)).toEqual([
      "decode 0 main",
      "decode 0 other threads",
      "expert-host 0 main",
      "expert-host 0 other threads",
      "everything else",
      "idle",
    ]);
  });

  it("counts the part of a wait during which another CPU was idle, once however many were", () => {
    // CPU 1 idle 100.0000-100.0004, CPU 2 idle 100.0001-100.0005. decode's main thread waited 100.0000-100.0005
    // for CPU 0 (delay 0.5 ms before its run at 100.0005): another CPU was idle 100.0000-100.0005, 0.5 ms. The host
    // waited 99.9990-100.0000 on CPU 1, before either was idle: 0.
    const trace = [
      "    100.000400 [0001]  <idle>                              0.000      0.000      0.400",
      "    100.000500 [0002]  <idle>                              0.000      0.000      0.400",
      "    100.000600 [0000]  node[10]                            0.000      0.500      0.100",
      "    100.000100 [0001]  node[20]                            0.000      1.000      0.100",
    ];
    const by = groupsOf(trace);
    expect(by.get("decode 0 main")!.delayBesideIdleMs).toBeCloseTo(0.5, 6);
    expect(by.get("expert-host 0 main")!.delayMs).toBeCloseTo(1.0, 9);
    expect(by.get("expert-host 0 main")!.delayBesideIdleMs).toBeCloseTo(0, 9);
  });

  it("counts a slice as run alone only while every other CPU is idle", () => {
    // decode runs on CPU 0 100.0000-100.0010. CPU 1 idles 100.0000-100.0006, CPU 2 idles 100.0004-100.0010: both
    // idle together 100.0004-100.0006, 0.2 ms. The host on CPU 1 (100.0006-100.0010) has CPU 0 busy beside it: 0.
    const trace = [
      "    100.000600 [0001]  <idle>                              0.000      0.000      0.600",
      "    100.001000 [0002]  <idle>                              0.000      0.000      0.600",
      "    100.001000 [0000]  node[10]                            0.000      0.000      1.000",
      "    100.001000 [0001]  node[20]                            0.000      0.000      0.400",
    ];
    const by = groupsOf(trace);
    expect(by.get("decode 0 main")!.aloneMs).toBeCloseTo(0.2, 6);
    expect(by.get("expert-host 0 main")!.aloneMs).toBeCloseTo(0, 9);
  });

  it("clips the slices to a window, dropping those outside it", () => {
    const w = sliceWindow(parseTimehist(TRACE), 100.0002, 100.0005);
    // decode's main thread ran 100.0000-100.0003: its last 0.1 ms falls in the window; expert-host 0's main thread
    // (100.0003-100.0010) is clipped at the window's end; the idle task (100.00032-100.0007) too.
    const main = w.find((s) => s.tid === 10)!;
    expect(main.start).toBeCloseTo(100.0002, 9);
    expect(main.runMs).toBeCloseTo(0.1, 6);
    const host = w.find((s) => s.tid === 20)!;
    expect(host.end).toBeCloseTo(100.0005, 9);
    expect(host.runMs).toBeCloseTo(0.2, 6);
    expect(w.every((s) => s.start >= 100.0002 - 1e-12 && s.end <= 100.0005 + 1e-12)).toBe(true);
  });
});
