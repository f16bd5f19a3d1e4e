// One cluster per state dir, router port and queue prefix (services/cli/src/cluster-lock.ts): a live
// holder is refused with a message naming it, a dead one's claim is taken over (and the private
// redis-server it left is stopped), a release removes only what is ours. Real Redis on 127.0.0.1:6379.
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, describe, expect, it } from "vitest";
import {
  ClusterInUseError,
  acquireQueuePrefixLock,
  acquireStateDirLock,
  isSameProcessAlive,
  newHolder,
  probePort,
  processStartTime,
  queueLockKey,
  type LockHolder,
} from "../../../services/cli/src/cluster-lock.js";
import { LOCAL_REDIS_URL } from "../../../services/cli/src/redis-local.js";

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function stateDir(): string {
  const d = mkdtempSync(join(tmpdir(), "moela-lock-"));
  dirs.push(d);
  return d;
}

/** A pid that existed and is gone now. */
async function deadPid(): Promise<number> {
  const c = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
  await new Promise((r) => c.once("exit", r));
  return c.pid!;
}

function holderOf(pid: number, extra: Partial<LockHolder> = {}): LockHolder {
  return { ...newHolder({ stateDir: "/elsewhere", port: 8000, queuePrefix: "moela" }), pid, ...extra };
}

describe("processStartTime / isSameProcessAlive", () => {
  it("tells this process from a dead pid and from a pid whose start time differs (reused)", async () => {
    const start = processStartTime(process.pid);
    expect(start).toMatch(/^\d+$/);
    expect(isSameProcessAlive(process.pid, start)).toBe(true);
    expect(isSameProcessAlive(process.pid, "1")).toBe(false);
    expect(isSameProcessAlive(await deadPid(), undefined)).toBe(false);
  });
});

describe("state dir lock", () => {
  it("refuses while a live launcher holds it, naming that launcher; release lets the next one in", () => {
    const dir = stateDir();
    const first = acquireStateDirLock(dir, newHolder({ stateDir: dir, port: 8000, queuePrefix: "a" }));
    const before = readFileSync(first.path, "utf8");
    expect(() => acquireStateDirLock(dir, newHolder({ stateDir: dir, port: 8001, queuePrefix: "b" }))).toThrow(ClusterInUseError);
    try {
      acquireStateDirLock(dir, newHolder({ stateDir: dir, port: 8001, queuePrefix: "b" }));
    } catch (err) {
      expect((err as Error).message).toContain(`moela cluster pid ${process.pid}`);
      expect((err as Error).message).toContain("--state-dir");
    }
    expect(readFileSync(first.path, "utf8"), "the refused launcher changed nothing").toBe(before);
    first.release();
    expect(existsSync(first.path)).toBe(false);
    const second = acquireStateDirLock(dir, newHolder({ stateDir: dir, port: 8001, queuePrefix: "b" }));
    second.release();
  });

  it("takes over the lock of a launcher that is gone and stops the redis-server it left", async () => {
    const dir = stateDir();
    // Stands in for an orphaned private redis-server.
    const orphan = spawn("sleep", ["60"], { stdio: "ignore" });
    const orphanGone = new Promise((r) => orphan.once("exit", (_c, sig) => r(sig)));
    await new Promise((r) => setTimeout(r, 100));
    const stale = holderOf(await deadPid(), { redis_pid: orphan.pid!, redis_pid_start: processStartTime(orphan.pid!)! });
    writeFileSync(join(dir, "launcher.lock"), JSON.stringify(stale));
    const notes: string[] = [];
    const lock = acquireStateDirLock(dir, newHolder({ stateDir: dir, port: 0, queuePrefix: "x" }), { onNote: (m) => notes.push(m) });
    expect(JSON.parse(readFileSync(lock.path, "utf8")).pid).toBe(process.pid);
    expect(notes.join("\n")).toMatch(new RegExp(`launcher pid ${stale.pid} .* is gone`));
    expect(await orphanGone).toBe("SIGTERM");
    lock.release();
  });

  it("never stops a process that merely reuses the recorded redis pid", async () => {
    const dir = stateDir();
    const bystander = spawn("sleep", ["60"], { stdio: "ignore" });
    try {
      await new Promise((r) => setTimeout(r, 100));
      writeFileSync(join(dir, "launcher.lock"), JSON.stringify(holderOf(await deadPid(), { redis_pid: bystander.pid!, redis_pid_start: "1" })));
      const lock = acquireStateDirLock(dir, newHolder({ stateDir: dir, port: 0, queuePrefix: "x" }));
      await new Promise((r) => setTimeout(r, 100));
      expect(bystander.exitCode).toBeNull();
      expect(bystander.signalCode).toBeNull();
      lock.release();
    } finally {
      bystander.kill("SIGKILL");
    }
  });

  it("takes over an unreadable lock file and records the private redis pid", () => {
    const dir = stateDir();
    writeFileSync(join(dir, "launcher.lock"), "{ half a");
    const lock = acquireStateDirLock(dir, newHolder({ stateDir: dir, port: 0, queuePrefix: "x" }));
    lock.setRedisPid(process.pid);
    const held = JSON.parse(readFileSync(lock.path, "utf8")) as LockHolder;
    expect(held).toMatchObject({ pid: process.pid, redis_pid: process.pid, redis_pid_start: processStartTime(process.pid) });
    lock.release();
    expect(existsSync(lock.path)).toBe(false);
  });
});

describe("port probe", () => {
  it("refuses a port something listens on and passes a free one (and port 0)", async () => {
    const server: Server = createServer();
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const port = (server.address() as { port: number }).port;
    try {
      await expect(probePort("127.0.0.1", port)).rejects.toThrow(new RegExp(`127\\.0\\.0\\.1:${port} is in use.*--port`));
    } finally {
      await new Promise((r) => server.close(r));
    }
    await expect(probePort("127.0.0.1", port)).resolves.toBeUndefined();
    await expect(probePort("127.0.0.1", 0)).resolves.toBeUndefined();
  });
});

describe("queue prefix claim (Redis)", () => {
  const prefix = () => `locktest-${randomUUID().slice(0, 8)}`;

  it("refuses a second claim naming the holder; release deletes the key; the heartbeat keeps it alive", async () => {
    const redis = new Redis(LOCAL_REDIS_URL);
    const p = prefix();
    const first = await acquireQueuePrefixLock(LOCAL_REDIS_URL, newHolder({ stateDir: "/a", port: 0, queuePrefix: p }), { ttlMs: 600, heartbeatMs: 100 });
    try {
      const err = await acquireQueuePrefixLock(LOCAL_REDIS_URL, newHolder({ stateDir: "/b", port: 0, queuePrefix: p })).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ClusterInUseError);
      expect((err as Error).message).toContain(`queue prefix "${p}"`);
      expect((err as Error).message).toContain(`pid ${process.pid} on ${hostname()}`);
      expect((err as Error).message).toContain("--queue-prefix");
      await new Promise((r) => setTimeout(r, 1_200));
      expect(await redis.exists(queueLockKey(p)), "renewed past its 600 ms expiry").toBe(1);
    } finally {
      await first.release();
    }
    expect(await redis.exists(queueLockKey(p))).toBe(0);
    redis.disconnect();
  });

  it("takes over the claim of a launcher on this host whose pid is gone", async () => {
    const redis = new Redis(LOCAL_REDIS_URL);
    const p = prefix();
    await redis.set(queueLockKey(p), JSON.stringify(holderOf(await deadPid(), { queue_prefix: p })), "PX", 60_000);
    const notes: string[] = [];
    const lock = await acquireQueuePrefixLock(LOCAL_REDIS_URL, newHolder({ stateDir: "/c", port: 0, queuePrefix: p }), { onNote: (m) => notes.push(m) });
    expect(JSON.parse((await redis.get(queueLockKey(p)))!).pid).toBe(process.pid);
    expect(notes.join()).toContain("is gone");
    await lock.release();
    // A holder on another host is not ours to judge: refused until its claim expires.
    await redis.set(queueLockKey(p), JSON.stringify(holderOf(1, { hostname: "elsewhere", queue_prefix: p })), "PX", 60_000);
    await expect(acquireQueuePrefixLock(LOCAL_REDIS_URL, newHolder({ stateDir: "/c", port: 0, queuePrefix: p }))).rejects.toThrow(
      /in use by moela cluster pid 1 on elsewhere/,
    );
    await redis.del(queueLockKey(p));
    redis.disconnect();
  });
});
