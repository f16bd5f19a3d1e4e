/**
 * A private redis-server for tests that restart Redis: its own free port and data folder, append-only
 * persistence as deployments run it (appendonly yes, appendfsync everysec), started and stopped by the
 * test. `restart()` stops it the way a service manager does (SIGTERM: Redis writes and fsyncs its AOF
 * and exits) and starts it again on the same port over the same folder, so queued work survives.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, mkdirSync } from "node:fs";
import { join } from "node:path";
import { vi } from "vitest";
import { findExecutable, freePort, pingRedis, privateRedisArgs, stopChild } from "../../services/cli/src/redis-local.js";

export interface TestRedis {
  readonly url: string;
  readonly port: number;
  readonly dir: string;
  /** pid of the running redis-server. */
  pid(): number | undefined;
  /** SIGTERM (clean shutdown: AOF flushed), wait `downMs`, start again on the same port and folder. */
  restart(downMs?: number): Promise<void>;
  stop(): Promise<void>;
}

/** Until PING answers; a redis-server that exited is reported when the wait times out. */
async function waitForPing(url: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  await vi.waitFor(
    async () => {
      if (child.exitCode !== null || child.signalCode !== null)
        throw new Error(`redis-server exited (${child.signalCode ?? child.exitCode}) before answering PING`);
      const p = await pingRedis(url, 500);
      if (!p.ok) throw new Error(`redis-server at ${url} did not answer PING within ${timeoutMs} ms (${p.error})`);
    },
    { timeout: timeoutMs, interval: 100 },
  );
}

export async function startTestRedis(dir: string): Promise<TestRedis> {
  const binary = findExecutable("redis-server");
  if (binary === undefined) throw new Error("redis-server is not on PATH (apt-get install -y redis-server)");
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const url = `redis://127.0.0.1:${port}`;
  const log = createWriteStream(join(dir, "redis.log"), { flags: "a" });
  const launch = (): ChildProcess => {
    // The flags `npm start` gives its private Redis (persistence as deployments run it).
    const child = spawn(binary, privateRedisArgs(port, dir), { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout!.pipe(log, { end: false });
    child.stderr!.pipe(log, { end: false });
    return child;
  };
  let child = launch();
  await waitForPing(url, child, 10_000);
  return {
    url,
    port,
    dir,
    pid: () => child.pid,
    async restart(downMs = 1_000) {
      await stopChild(child, 10_000);
      await new Promise((r) => setTimeout(r, downMs));
      child = launch();
      await waitForPing(url, child, 10_000);
    },
    async stop() {
      await stopChild(child, 10_000);
      log.end();
    },
  };
}
