// The supervised local cluster over stand-in services (fixtures/fake-service.ts), each launcher in its
// own process (fixtures/fake-cluster.ts) so a test can kill -9 it: a dead service or private Redis is
// restarted where it was; a killed launcher leaves nothing running and its claims are taken over by the
// next; a second launcher beside a running one is refused before it starts anything.
// Real child processes, real gRPC health, real Redis on 127.0.0.1:6379 and a private redis-server.
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";
import { afterAll, describe, expect, it, vi } from "vitest";
import { waitForServing } from "@moela/rpc";
import { ClusterInUseError } from "../../../services/cli/src/cluster-lock.js";
import { startCluster, type ClusterInfo, type ClusterOptions, type ProgressEvent, type ServiceCommand } from "../../../services/cli/src/launcher.js";
import { freePort } from "../../../services/cli/src/redis-local.js";
import { isAlive as alive } from "../../helpers/cluster.js";

const FIXTURES = fileURLToPath(new URL("./fixtures/", import.meta.url));
const fakeCommand: ServiceCommand = (role) => ({ file: process.execPath, args: ["--import", "tsx", join(FIXTURES, "fake-service.ts"), "--role", role] });
const dirs: string[] = [];
const launchers: ChildProcess[] = [];
afterAll(() => {
  for (const l of launchers) if (l.exitCode === null && l.signalCode === null) l.kill("SIGKILL");
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** vi.waitFor's options here: retry every 20 ms for up to `timeout` (20 s unless given). */
const within = (timeout = 20_000) => ({ timeout, interval: 20 });

function baseOptions(extra: Partial<ClusterOptions> = {}): ClusterOptions & { stateDir: string; queuePrefix: string } {
  const stateDir = mkdtempSync(join(tmpdir(), "moela-supervise-"));
  dirs.push(stateDir);
  return { stateDir, port: 0, expertHosts: 1, stopGraceMs: 3_000, startupTimeoutMs: 60_000, queuePrefix: `sv-${randomUUID().slice(0, 8)}`, ...extra };
}

type Line = { event: string; [k: string]: unknown };

/** A launcher process; resolves once it printed "up" (or rejects with its "error" line). */
async function launch(o: ClusterOptions) {
  const child = spawn(process.execPath, ["--import", "tsx", join(FIXTURES, "fake-cluster.ts"), JSON.stringify(o)], { stdio: ["ignore", "pipe", "inherit"] });
  launchers.push(child);
  const lines: Line[] = [];
  createInterface({ input: child.stdout! }).on("line", (l) => {
    if (l.startsWith("{")) lines.push(JSON.parse(l) as Line);
  });
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  const first = await Promise.race([
    vi.waitFor(() => {
      const line = lines.find((l) => l.event === "up" || l.event === "error");
      expect(line, "the launcher to be up").toBeDefined();
      return line!;
    }, within(60_000)),
    exited.then((code) => ({ event: "error", message: `launcher exited with ${code}` }) as Line),
  ]);
  if (first.event !== "up") throw new Error(String(first["message"]));
  const info = first["info"] as ClusterInfo;
  const file = (): ClusterInfo => JSON.parse(readFileSync(join(o.stateDir!, "cluster.json"), "utf8")) as ClusterInfo;
  const pid = (label: string): number => file().instances.find((i) => `${i.role} ${i.index}` === label)!.pid;
  return {
    child,
    info,
    lines,
    file,
    pid,
    exited,
    async stop(): Promise<number | null> {
      child.kill("SIGTERM");
      return exited;
    },
  };
}

const supervisorEvents = (lines: readonly Line[], kind: string, label: string) =>
  lines.filter((l) => l.event === "supervisor" && l["kind"] === kind && l["label"] === label);

describe("a supervised cluster (stand-in services)", () => {
  it("restarts a service killed -9 at its address, backing off more when it dies again soon", async () => {
    const o = baseOptions();
    const c = await launch(o);
    try {
      const before = c.info.instances.find((i) => i.role === "decode")!;
      process.kill(before.pid, "SIGKILL");
      await vi.waitFor(() => expect(supervisorEvents(c.lines, "restarted", "decode 0"), "decode 0 to be restarted").toHaveLength(1), within());
      const after = c.file().instances.find((i) => i.role === "decode")!;
      expect(after.pid).not.toBe(before.pid);
      expect({ grpc: after.grpc, metrics: after.metrics }).toEqual({ grpc: before.grpc, metrics: before.metrics });
      await waitForServing(after.grpc, { timeoutMs: 5_000 });
      expect(supervisorEvents(c.lines, "exited", "decode 0")[0]).toMatchObject({ pid: before.pid, exit: { code: null, signal: "SIGKILL" }, restartInMs: 100 });

      process.kill(after.pid, "SIGKILL");
      await vi.waitFor(() => expect(supervisorEvents(c.lines, "restarted", "decode 0"), "decode 0 to be restarted again").toHaveLength(2), within());
      expect(supervisorEvents(c.lines, "exited", "decode 0")[1]).toMatchObject({ pid: after.pid, restartInMs: 200 });
      expect(supervisorEvents(c.lines, "restarted", "decode 0")[1]).toMatchObject({ restarts: 2 });
      // Nothing else was touched.
      for (const i of c.info.instances.filter((x) => x.role !== "decode")) expect(c.pid(`${i.role} ${i.index}`)).toBe(i.pid);
    } finally {
      expect(await c.stop()).toBe(0);
    }
    expect(c.info.instances.map((i) => i.pid).filter(alive)).toEqual([]);
  }, 90_000);

  it("a service that keeps crashing on start is retried with growing back-off, then comes back at its address", async () => {
    const o = baseOptions();
    const crash = join(o.stateDir, "crash");
    const c = await launch({ ...o, serviceArgs: { prefill: ["--fake-die-before-ready-while", crash] } });
    try {
      const before = c.info.instances.find((i) => i.role === "prefill")!;
      writeFileSync(crash, "");
      process.kill(before.pid, "SIGKILL");
      await vi.waitFor(
        () => expect(supervisorEvents(c.lines, "restart-failed", "prefill 0").length, "three failed restarts").toBeGreaterThanOrEqual(3),
        within(60_000),
      );
      rmSync(crash);
      await vi.waitFor(() => expect(supervisorEvents(c.lines, "restarted", "prefill 0"), "prefill 0 to come back").toHaveLength(1), within(60_000));
      const delays = supervisorEvents(c.lines, "exited", "prefill 0").map((e) => e["restartInMs"]);
      expect(delays.slice(0, 4)).toEqual([100, 200, 400, 800]);
      expect(String(supervisorEvents(c.lines, "restart-failed", "prefill 0")[0]!["error"])).toContain("config.json is broken (fake)");
      const after = c.file().instances.find((i) => i.role === "prefill")!;
      expect({ grpc: after.grpc, metrics: after.metrics }).toEqual({ grpc: before.grpc, metrics: before.metrics });
      expect(alive(after.pid)).toBe(true);
      await waitForServing(after.grpc, { timeoutMs: 5_000 });
    } finally {
      expect(await c.stop()).toBe(0);
    }
  }, 120_000);

  it("restarts its private Redis killed -9 on the same port, with what it had persisted", async () => {
    const o = baseOptions({ privateRedis: true });
    const c = await launch(o);
    const redis = new Redis(c.info.redis.url, { maxRetriesPerRequest: 1, lazyConnect: true });
    redis.on("error", () => {});
    try {
      expect(c.info.redis.source).toBe("private");
      await redis.connect();
      await redis.set("queued", "job-1");
      await new Promise((r) => setTimeout(r, 1_200)); // appendfsync everysec
      const oldPid = c.info.redis.pid!;
      process.kill(oldPid, "SIGKILL");
      await vi.waitFor(() => expect(supervisorEvents(c.lines, "restarted", "redis"), "redis to be restarted").toHaveLength(1), within());
      expect(await redis.get("queued")).toBe("job-1");
      expect(c.file().redis.pid).not.toBe(oldPid);
      expect(c.file().redis.url).toBe(c.info.redis.url);
    } finally {
      redis.disconnect();
      expect(await c.stop()).toBe(0);
    }
  }, 90_000);

  it("kill -9 of the launcher: every service and the private Redis exit within seconds; the next launcher takes over its claims", async () => {
    const o = baseOptions({ privateRedis: true, expertHosts: 2 });
    const c = await launch(o);
    const pids = [...c.info.instances.map((i) => i.pid), c.info.redis.pid!];
    expect(pids.every(alive)).toBe(true);
    c.child.kill("SIGKILL");
    await c.exited;
    // Services SIGTERM themselves at once and exit hard 3 s later at most; Redis gets SIGTERM from the kernel.
    await vi.waitFor(() => expect(pids.filter(alive), "no process left").toEqual([]), within(10_000));
    // Same state dir and queue prefix: the dead launcher's claims are stale.
    const next = await launch(o);
    expect(next.info.launcher_pid).not.toBe(c.info.launcher_pid);
    expect(await next.stop()).toBe(0);
  }, 90_000);

  it("a second cluster on the same state dir, port or queue prefix fails at once and changes nothing of the first", async () => {
    const port = await freePort();
    const o = baseOptions({ port });
    const first = await launch(o);
    try {
      const clusterJson = readFileSync(join(o.stateDir, "cluster.json"), "utf8");
      const lock = readFileSync(join(o.stateDir, "launcher.lock"), "utf8");
      const attempts: Array<[string, Partial<ClusterOptions>, RegExp]> = [
        ["same state dir", { stateDir: o.stateDir, port: 0, queuePrefix: `other-${randomUUID().slice(0, 8)}` }, /is in use by moela cluster pid \d+/],
        ["same port", { port }, new RegExp(`127\\.0\\.0\\.1:${port} is in use`)],
        [
          "same queue prefix in the same Redis",
          { queuePrefix: o.queuePrefix },
          new RegExp(`queue prefix "${o.queuePrefix}" in redis://127\\.0\\.0\\.1:6379 is in use by moela cluster pid ${first.child.pid}`),
        ],
      ];
      for (const [what, extra, message] of attempts) {
        const events: ProgressEvent[] = [];
        const t0 = Date.now();
        const err = await startCluster({ ...baseOptions(), command: fakeCommand, ...extra, onProgress: (e) => events.push(e) }).catch((e: unknown) => e);
        expect(err, what).toBeInstanceOf(ClusterInUseError);
        expect((err as Error).message, what).toMatch(message);
        expect(Date.now() - t0, `${what}: refused at once`).toBeLessThan(5_000);
        expect(
          events.filter((e) => e.kind === "starting"),
          `${what}: nothing started`,
        ).toEqual([]);
      }
      expect(readFileSync(join(o.stateDir, "cluster.json"), "utf8")).toBe(clusterJson);
      expect(readFileSync(join(o.stateDir, "launcher.lock"), "utf8")).toBe(lock);
      expect(first.info.instances.map((i) => i.pid).every(alive)).toBe(true);
      const models = await fetch(`${first.info.url}/v1/models`);
      expect(models.status).toBe(200);
    } finally {
      expect(await first.stop()).toBe(0);
    }
  }, 120_000);
});
