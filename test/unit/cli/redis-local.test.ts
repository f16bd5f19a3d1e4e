// Finding a Redis for the local cluster (real Redis on 127.0.0.1:6379, real redis-server binary).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  LOCAL_REDIS_URL,
  RedisMissingError,
  findExecutable,
  freePort,
  pingRedis,
  resolveRedis,
} from "../../../services/cli/src/redis-local.js";

const dir = mkdtempSync(join(tmpdir(), "moela-redis-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const privateOpts = { privateDir: join(dir, "redis"), privateLogFile: join(dir, "redis.log") };

describe("pingRedis", () => {
  it("answers ok for the Redis on 127.0.0.1:6379", async () => {
    expect(await pingRedis(LOCAL_REDIS_URL)).toEqual({ ok: true });
  });
  it("reports an error, without throwing, for a port where nothing listens", async () => {
    const port = await freePort();
    const r = await pingRedis(`redis://127.0.0.1:${port}`, 500);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error).toMatch(/ECONNREFUSED|connect|closed/i);
  });
  it("reports a malformed URL", async () => {
    const r = await pingRedis("redis://127.0.0.1:notaport", 500);
    expect(r.ok).toBe(false);
  });
});

describe("resolveRedis", () => {
  it("uses --redis-url when it answers, before REDIS_URL", async () => {
    const r = await resolveRedis({ ...privateOpts, flagUrl: LOCAL_REDIS_URL, envUrl: "redis://127.0.0.1:1" });
    expect(r).toMatchObject({ url: LOCAL_REDIS_URL, source: "flag", pid: undefined });
  });

  it("falls back to REDIS_URL, then to 127.0.0.1:6379, noting each URL that did not answer", async () => {
    const dead = `redis://127.0.0.1:${await freePort()}`;
    const notes: string[] = [];
    const viaEnv = await resolveRedis({ ...privateOpts, flagUrl: dead, envUrl: LOCAL_REDIS_URL, onNote: (m) => notes.push(m) });
    expect(viaEnv.source).toBe("env");
    expect(notes.join("\n")).toContain(`--redis-url ${dead} does not answer`);
    const viaLocal = await resolveRedis({ ...privateOpts, envUrl: dead });
    expect(viaLocal).toMatchObject({ url: LOCAL_REDIS_URL, source: "local" });
  });

  it("starts a private redis-server when nothing answers, and stop() ends it", async () => {
    const binary = findExecutable("redis-server");
    expect(binary, "redis-server must be installed for this test (apt-get install -y redis-server)").toBeDefined();
    const dead = `redis://127.0.0.1:${await freePort()}`;
    const r = await resolveRedis({ ...privateOpts, localUrl: dead, redisServerBinary: binary! });
    try {
      expect(r.source).toBe("private");
      expect(r.url).toMatch(/^redis:\/\/127\.0\.0\.1:\d+$/);
      expect(r.url).not.toBe(dead);
      expect(await pingRedis(r.url)).toEqual({ ok: true });
      expect(alive(r.pid!)).toBe(true);
    } finally {
      await r.stop();
    }
    expect(alive(r.pid!)).toBe(false);
    expect((await pingRedis(r.url, 300)).ok).toBe(false);
  });

  it("says what is missing and how to install it when no Redis answers and none is installed", async () => {
    const dead = `redis://127.0.0.1:${await freePort()}`;
    const err = await resolveRedis({ ...privateOpts, localUrl: dead, envUrl: dead, redisServerBinary: null }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RedisMissingError);
    const message = (err as Error).message;
    expect(message).toContain(`REDIS_URL ${dead}`);
    expect(message).toContain("redis-server is not installed");
    expect(message).toContain("apt-get install -y redis-server");
    expect(message).toContain("--redis-url");
  });
});
