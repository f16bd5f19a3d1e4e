/**
 * The instance registry and the decision log against a real Redis on 127.0.0.1:6379: records with
 * their load, heartbeats that update it, an instance that stops heartbeating (a crash) gone within the
 * TTL, graceful deregistration, the watcher's snapshot, and decisions by request id with their TTL.
 * Each test uses its own key prefix and deletes its keys afterwards.
 */
import { randomUUID } from "node:crypto";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import type { Redis } from "ioredis";
import {
  createRedisClient,
  DecisionLog,
  decisionKey,
  InstanceRegistry,
  RegistryWatcher,
  registryKey,
  type Decision,
  type PublishedLoad,
} from "@moela/scheduler";

const REDIS = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
let redis: Redis;
let prefix = "";
const cleanups: (() => Promise<unknown> | unknown)[] = [];

beforeAll(() => {
  redis = createRedisClient(REDIS);
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  const keys = await redis.keys(`${prefix}:*`);
  if (keys.length > 0) await redis.del(...keys);
});

afterAll(async () => {
  await redis.quit();
});

function newPrefix(): string {
  prefix = `moela-test-registry-${randomUUID()}`;
  return prefix;
}

/** vi.waitFor's options: retry every 50 ms for up to `ms`. */
const within = (ms: number) => ({ timeout: ms, interval: 50 });

describe("InstanceRegistry", () => {
  it("publishes an instance's identity and load, and every heartbeat updates the load", async () => {
    const registry = new InstanceRegistry(redis, { prefix: newPrefix(), ttlMs: 3_000 });
    let running = 2;
    const load = (): PublishedLoad => ({
      runningSequences: running,
      waitingSequences: 1,
      freeKvBlocks: 90,
      totalKvBlocks: 128,
      blockSize: 16,
      queues: { prefill_waiting: 7 },
    });
    const info = {
      role: "decode",
      grpcAddress: "127.0.0.1:7001",
      metricsUrl: "http://127.0.0.1:9400/metrics",
      precision: "paper",
      modelId: "tiny-v3",
    } as const;
    const reg = await registry.register(info, load, { intervalMs: 100 });
    cleanups.push(() => reg.deregister());
    const [rec] = await registry.list("decode");
    // What was registered comes back as it was given, with the instance's id, pid and TTL.
    expect(rec).toMatchObject({
      ...info,
      id: reg.id,
      pid: process.pid,
      ttlMs: 3_000,
      load: { runningSequences: 2, waitingSequences: 1, pendingTransfers: 0, freeKvBlocks: 90, totalKvBlocks: 128, blockSize: 16, accepting: true },
      queues: { prefill_waiting: 7 },
    });
    expect(reg.id).toMatch(new RegExp(`^decode-.+-${process.pid}-[0-9a-f]{6}$`));
    // The raw layout, as an operator would read it with redis-cli.
    expect(await redis.hget(registryKey(prefix, "decode", reg.id), "running")).toBe("2");
    expect(await redis.pttl(registryKey(prefix, "decode", reg.id))).toBeGreaterThan(2_000);
    expect(await redis.zrange(registryKey(prefix, "decode"), 0, -1)).toEqual([reg.id]);

    running = 5;
    await vi.waitFor(async () => expect((await registry.list("decode"))[0]?.load.runningSequences).toBe(5), within(2_000));
    expect(await registry.list("prefill")).toEqual([]);
  });

  it("an instance that stops heartbeating disappears within its TTL; the others stay", async () => {
    const ttlMs = 1_000;
    const registry = new InstanceRegistry(redis, { prefix: newPrefix(), ttlMs });
    const a = await registry.register({ role: "expert-host", grpcAddress: "127.0.0.1:1", shardIndex: 0, shardCount: 2 }, () => ({}), { intervalMs: 200 });
    const b = await registry.register({ role: "expert-host", grpcAddress: "127.0.0.1:2", shardIndex: 1, shardCount: 2 }, () => ({}), { intervalMs: 200 });
    cleanups.push(
      () => b.deregister(),
      () => a.deregister(),
    );
    const listed = await registry.list("expert-host");
    expect(listed.map((r) => [r.grpcAddress, r.shardIndex, r.shardCount]).sort()).toEqual([
      ["127.0.0.1:1", 0, 2],
      ["127.0.0.1:2", 1, 2],
    ]);
    // a "crashes": no more heartbeats, no deregistration.
    a.stop();
    const key = registryKey(prefix, "expert-host", a.id);
    const lastBeat = await redis.hget(key, "heartbeat_at_ms");
    // Nothing extends the record any more: Redis drops it at most one TTL from now.
    const left = await redis.pttl(key);
    expect(left).toBeGreaterThan(0);
    expect(left).toBeLessThanOrEqual(ttlMs);
    await vi.waitFor(async () => expect((await registry.list("expert-host")).map((r) => r.id)).not.toContain(a.id), within(5 * ttlMs));
    expect(await redis.exists(key)).toBe(0);
    expect(lastBeat).not.toBeNull();
    expect((await registry.list("expert-host")).map((r) => r.id)).toEqual([b.id]);
  });

  it("deregistration removes the record at once", async () => {
    const registry = new InstanceRegistry(redis, { prefix: newPrefix(), ttlMs: 60_000 });
    const reg = await registry.register({ role: "router", grpcAddress: "127.0.0.1:3", httpUrl: "http://127.0.0.1:8000" }, () => ({}));
    expect((await registry.list("router"))[0]?.httpUrl).toBe("http://127.0.0.1:8000");
    await reg.deregister();
    expect(await registry.list("router")).toEqual([]);
    expect(await redis.exists(registryKey(prefix, "router", reg.id))).toBe(0);
  });

  it("a record lost from Redis comes back with the next heartbeat", async () => {
    const registry = new InstanceRegistry(redis, { prefix: newPrefix(), ttlMs: 2_000 });
    const reg = await registry.register({ role: "prefill", grpcAddress: "127.0.0.1:4" }, () => ({ runningSequences: 1 }), { intervalMs: 100 });
    cleanups.push(() => reg.deregister());
    await redis.del(registryKey(prefix, "prefill", reg.id), registryKey(prefix, "prefill"));
    expect(await registry.list("prefill")).toEqual([]);
    await vi.waitFor(async () => expect(await registry.list("prefill")).toHaveLength(1), within(2_000));
  });

  it("a heartbeat whose load callback throws keeps the last record alive until it expires, and does not throw", async () => {
    const registry = new InstanceRegistry(redis, { prefix: newPrefix(), ttlMs: 600 });
    let fail = false;
    const reg = await registry.register(
      { role: "decode", grpcAddress: "127.0.0.1:5" },
      () => {
        if (fail) throw new Error("engine gone");
        return { runningSequences: 3 };
      },
      { intervalMs: 100 },
    );
    cleanups.push(() => reg.deregister());
    fail = true;
    // An instance that cannot say its load is not advertised for long.
    await vi.waitFor(async () => expect(await registry.list("decode")).toHaveLength(0), within(2_000));
    fail = false;
    await vi.waitFor(async () => expect(await registry.list("decode")).toHaveLength(1), within(2_000));
  });

  it("RegistryWatcher follows a role's members", async () => {
    const registry = new InstanceRegistry(redis, { prefix: newPrefix(), ttlMs: 1_000 });
    const watcher = new RegistryWatcher(registry, "decode", 50);
    await watcher.start();
    cleanups.push(() => watcher.close());
    expect(watcher.snapshot()).toEqual([]);
    const reg = await registry.register({ role: "decode", grpcAddress: "127.0.0.1:6" }, () => ({}), { intervalMs: 200 });
    await vi.waitFor(() => expect(watcher.snapshot()).toHaveLength(1), within(2_000));
    await reg.deregister();
    await vi.waitFor(() => expect(watcher.snapshot()).toHaveLength(0), within(2_000));
  });
});

describe("DecisionLog", () => {
  const decision = (requestId: string, atMs: number, chosen: string): Decision => ({
    requestId,
    role: "decode",
    atMs,
    policy: "filters: healthy; scorers: load x1; picker: max-score",
    candidates: [{ id: chosen, address: `${chosen}:1`, scores: { load: 1 }, total: 1 }],
    chosen: { id: chosen, address: `${chosen}:1` },
    reason: "max-score: only candidate left (score 1.000)",
  });

  it("keeps every decision of a request in Redis with a TTL, readable from another router", async () => {
    newPrefix();
    const log = new DecisionLog({ redis, prefix, ttlS: 120 });
    log.record(decision("req-a", 1, "d0"));
    log.record(decision("req-b", 2, "d1"));
    log.record(decision("req-a", 3, "d1")); // a retry
    await log.flush();
    // A second router (no memory of these) finds them in Redis.
    const other = new DecisionLog({ redis, prefix });
    expect((await other.lookup("req-a")).map((d) => [d.atMs, d.chosen?.id])).toEqual([
      [1, "d0"],
      [3, "d1"],
    ]);
    expect(await other.lookup("req-unknown")).toEqual([]);
    expect(await redis.ttl(decisionKey(prefix, "req-a"))).toBeGreaterThan(100);
    expect(await other.recent(10)).toEqual(["req-a", "req-b"]);
  });

  it("the recent list is capped; memory holds the newest decisions", async () => {
    newPrefix();
    const log = new DecisionLog({ redis, prefix, maxRecent: 3, memory: 2 });
    for (let i = 0; i < 5; i++) log.record(decision(`req-${i}`, i, "d0"));
    await log.flush();
    expect(await redis.llen(`${prefix}:routing:recent`)).toBe(3);
    const memoryOnly = new DecisionLog({ memory: 2 });
    for (let i = 0; i < 5; i++) memoryOnly.record(decision(`req-${i}`, i, "d0"));
    expect(await memoryOnly.lookup("req-0")).toEqual([]);
    expect((await memoryOnly.lookup("req-4"))[0]?.atMs).toBe(4);
  });
});
