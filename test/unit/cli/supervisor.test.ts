// The supervision policy and loop (services/cli/src/supervisor.ts) against stand-in units: back-off
// doubling, its cap and its reset after a stable run; restart, failed restart, stop during a back-off,
// and a cluster that is stopping.
import { CancelledError } from "@moela/core";
import { describe, expect, it, vi } from "vitest";
import { RestartBackoff, Supervisor, type ExitInfo, type SupervisedUnit, type SupervisorEvent } from "../../../services/cli/src/supervisor.js";

describe("RestartBackoff", () => {
  const o = { initialMs: 500, maxMs: 10_000, stableMs: 60_000 };
  it.each([
    { name: "doubles for restarts that did not last", ups: [0, 100, 2_000, 5_000], delays: [500, 1_000, 2_000, 4_000] },
    { name: "stops at the cap", ups: [0, 0, 0, 0, 0, 0, 0, 0], delays: [500, 1_000, 2_000, 4_000, 8_000, 10_000, 10_000, 10_000] },
    { name: "starts over after a stable minute", ups: [0, 0, 0, 60_000, 0], delays: [500, 1_000, 2_000, 500, 1_000] },
    { name: "a first death after a long run waits the initial delay", ups: [3_600_000], delays: [500] },
  ])("$name", ({ ups, delays }) => {
    const b = new RestartBackoff(o);
    expect(ups.map((up) => b.next(up))).toEqual(delays);
  });
});

/** A unit whose incarnations the test kills; restart() takes `restartMs` and fails while `failNext` > 0. */
class FakeUnit implements SupervisedUnit {
  pidNow = 100;
  restartCalls = 0;
  kills = 0;
  failNext = 0;
  cancel = false;
  private exitNow!: (e: ExitInfo) => void;
  private exitP!: Promise<ExitInfo>;
  constructor(
    readonly label: string,
    private readonly restartMs = 5,
  ) {
    this.arm();
  }
  private arm(): void {
    this.exitP = new Promise((r) => (this.exitNow = r));
  }
  die(exit: ExitInfo = { code: null, signal: "SIGKILL" }): void {
    this.exitNow(exit);
  }
  pid(): number {
    return this.pidNow;
  }
  waitExit(): Promise<ExitInfo> {
    return this.exitP;
  }
  async restart(): Promise<void> {
    this.restartCalls++;
    await new Promise((r) => setTimeout(r, this.restartMs));
    if (this.cancel) throw new CancelledError("the cluster is stopping");
    this.pidNow++;
    if (this.failNext > 0) {
      this.failNext--;
      // the new incarnation is there (and dies) but never serves
      this.arm();
      throw new Error("did not come back");
    }
    this.arm();
  }
  async kill(): Promise<void> {
    this.kills++;
    this.die({ code: null, signal: "SIGTERM" });
  }
}

/** vi.waitFor's options here: retry every 5 ms, fail the test after 5 s. */
const EVENTUALLY = { timeout: 5_000, interval: 5 };

describe("Supervisor", () => {
  it("restarts a unit that exits after the back-off, reports exit and restart, and backs off more when it dies again soon", async () => {
    const events: SupervisorEvent[] = [];
    const u = new FakeUnit("decode 0");
    const other = new FakeUnit("decode 1");
    const s = new Supervisor([u, other], { initialMs: 20, maxMs: 1_000, stableMs: 60_000, onEvent: (e) => events.push(e) }).start();
    try {
      u.die();
      await vi.waitFor(() => expect(events.some((e) => e.kind === "restarted")).toBe(true), EVENTUALLY);
      u.die({ code: 1, signal: null });
      await vi.waitFor(() => expect(events.filter((e) => e.kind === "restarted")).toHaveLength(2), EVENTUALLY);
      const exits = events.filter((e) => e.kind === "exited");
      expect(exits.map((e) => [e.label, e.pid, e.exit, e.restartInMs])).toEqual([
        ["decode 0", 100, { code: null, signal: "SIGKILL" }, 20],
        ["decode 0", 101, { code: 1, signal: null }, 40],
      ]);
      expect(events.filter((e) => e.kind === "restarted").map((e) => [e.label, e.pid, e.restarts])).toEqual([
        ["decode 0", 101, 1],
        ["decode 0", 102, 2],
      ]);
      expect(other.restartCalls, "the other unit is left alone").toBe(0);
      expect(s.restarts.get("decode 0")).toBe(2);
    } finally {
      await s.stop();
    }
  });

  it("a restart that fails is reported, its leftover killed, and retried with a longer back-off", async () => {
    const events: SupervisorEvent[] = [];
    const u = new FakeUnit("expert-host 1");
    u.failNext = 2;
    const s = new Supervisor([u], { initialMs: 10, maxMs: 1_000, onEvent: (e) => events.push(e) }).start();
    try {
      u.die();
      await vi.waitFor(() => expect(events.some((e) => e.kind === "restarted")).toBe(true), EVENTUALLY);
      expect(events.map((e) => e.kind)).toEqual([
        "exited",
        "restarting",
        "restart-failed",
        "exited",
        "restarting",
        "restart-failed",
        "exited",
        "restarting",
        "restarted",
      ]);
      expect(events.flatMap((e) => (e.kind === "exited" ? [e.restartInMs] : []))).toEqual([10, 20, 40]);
      expect(u.kills).toBe(2);
      expect(u.restartCalls).toBe(3);
    } finally {
      await s.stop();
    }
  });

  it("stop() during a back-off: no restart happens", async () => {
    const events: SupervisorEvent[] = [];
    const u = new FakeUnit("prefill 0");
    const s = new Supervisor([u], { initialMs: 60_000, onEvent: (e) => events.push(e) }).start();
    u.die();
    await vi.waitFor(() => expect(events).toHaveLength(1), EVENTUALLY);
    const t0 = Date.now();
    await s.stop();
    expect(Date.now() - t0, "stop does not wait out the back-off").toBeLessThan(1_000);
    expect(u.restartCalls).toBe(0);
    expect(events.map((e) => e.kind)).toEqual(["exited"]);
  });

  it("a unit whose cluster is stopping (restart throws CancelledError) is no longer supervised", async () => {
    const events: SupervisorEvent[] = [];
    const u = new FakeUnit("router 0");
    u.cancel = true;
    const s = new Supervisor([u], { initialMs: 5, onEvent: (e) => events.push(e) }).start();
    u.die();
    await vi.waitFor(() => expect(u.restartCalls).toBe(1), EVENTUALLY);
    await new Promise((r) => setTimeout(r, 50));
    expect(events.map((e) => e.kind)).toEqual(["exited", "restarting"]);
    await s.stop();
  });
});
