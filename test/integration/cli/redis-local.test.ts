// Finding a Redis for the local cluster (real Redis on 127.0.0.1:6379, real redis-server binary).
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, describe, expect, it } from "vitest";
import {
  LOCAL_REDIS_URL,
  RedisMissingError,
  findExecutable,
  freePort,
  pingRedis,
  resolveRedis,
  startPrivateRedis,
} from "../../../services/cli/src/redis-local.js";
import { isAlive as alive } from "../../helpers/cluster.js";

const dir = mkdtempSync(join(tmpdir(), "moela-redis-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const privateOpts = { privateDir: join(dir, "redis"), privateLogFile: join(dir, "redis.log") };

describe("pingRedis", () => {
  it("answers ok for the Redis on 127.0.0.1:6379", async () => {
    expect(await pingRedis(LOCAL_REDIS_URL)).toEqual({ ok: true });
  });
  it("reports an error, without throwing, for a port where nothing listens", async () => {
    const port = await freePort();
    const r = await pingRedis(`redis://127.0.0.1:${port}`, 500);
    // ioredis's connect() rejects with "Connection is closed." whenever the socket closes before it is
    // ready; the ECONNREFUSED itself only reaches the 'error' event.
    expect(r).toEqual({ ok: false, error: "Connection is closed." });
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

describe("the private redis-server", () => {
  it("persists in its folder (append-only, fsync every second, noeviction); restart() keeps the data on the same port", async () => {
    const data = join(dir, "persist");
    const r = await startPrivateRedis({ dir: data, logFile: join(dir, "persist.log") });
    const client = new Redis(r.url, { maxRetriesPerRequest: 1, lazyConnect: true });
    client.on("error", () => {});
    try {
      await client.connect();
      const config = Object.fromEntries(["appendonly", "appendfsync", "maxmemory-policy", "dir", "save"].map((k) => [k, undefined as string | undefined]));
      for (const k of Object.keys(config)) config[k] = ((await client.config("GET", k)) as string[])[1];
      expect(config).toEqual({ appendonly: "yes", appendfsync: "everysec", "maxmemory-policy": "noeviction", dir: data, save: "" });
      await client.rpush("jobs", "a", "b", "c");
      const pid = r.pid!;
      // SIGTERM, as a service manager stops it: Redis writes its AOF first.
      await r.server!.stop();
      expect(alive(pid)).toBe(false);
      expect(existsSync(join(data, "appendonlydir"))).toBe(true);
      await r.server!.restart();
      expect(r.pid).not.toBe(pid);
      expect(await client.lrange("jobs", 0, -1)).toEqual(["a", "b", "c"]);
      // kill -9: whatever was written more than a second ago is there too.
      await client.rpush("jobs", "d");
      await new Promise((res) => setTimeout(res, 1_500));
      process.kill(r.pid!, "SIGKILL");
      expect(await r.server!.waitExit()).toEqual({ code: null, signal: "SIGKILL" });
      await r.server!.restart();
      expect(await client.lrange("jobs", 0, -1)).toEqual(["a", "b", "c", "d"]);
    } finally {
      client.disconnect();
      await r.stop();
    }
    expect(alive(r.pid!)).toBe(false);
  });

  it("starts on an emptied folder: nothing of an earlier cluster's data comes back", async () => {
    const data = join(dir, "fresh");
    const first = await startPrivateRedis({ dir: data, logFile: join(dir, "fresh.log") });
    const c1 = new Redis(first.url);
    await c1.set("old", "1");
    c1.disconnect();
    await first.stop();
    writeFileSync(join(data, "stray-file"), "x");
    const second = await startPrivateRedis({ dir: data, logFile: join(dir, "fresh.log") });
    const c2 = new Redis(second.url);
    try {
      expect(await c2.exists("old")).toBe(0);
      expect(readdirSync(data)).not.toContain("stray-file");
    } finally {
      c2.disconnect();
      await second.stop();
    }
  });

  it("forcePrivate starts one even though 127.0.0.1:6379 answers", async () => {
    const r = await resolveRedis({ privateDir: join(dir, "forced"), privateLogFile: join(dir, "forced.log"), forcePrivate: true });
    try {
      expect(r.source).toBe("private");
      expect(r.url).not.toBe(LOCAL_REDIS_URL);
      expect(r.server?.dir).toBe(join(dir, "forced"));
    } finally {
      await r.stop();
    }
  });
});
