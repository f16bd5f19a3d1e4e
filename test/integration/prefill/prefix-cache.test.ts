/**
 * The prefix cache in the prefill service against real neighbours: real BullMQ queues on the local Redis
 * (a unique prefix per test, every key under it deleted afterwards), two real prefill services in this
 * process, and a decode-side KvInbox behind a real KvTransfer gRPC server.
 *
 *   - two requests sharing a system prompt: the second's KvBegin says how many prompt tokens came from
 *     the cache, prefill's metrics count the hit, and decode continues both to exactly the single-process
 *     engine's tokens and logprobs (all rows still cross: decode has no prefix cache);
 *   - the instance publishes the keys it holds in <prefix>:prefix:<id> and registers as role prefill;
 *   - the router's PrefillRouter sends a prompt to the instance holding its prefix (its own queue), and
 *     events of jobs in instance queues reach the shared queue's listeners;
 *   - jobs left in the queue of an instance that is gone are moved to the shared queue and run.
 */
import { randomUUID } from "node:crypto";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { createLogger, prefixBlockHashes } from "@moela/core";
import type { EmittedToken, GenerationParams } from "@moela/engine";
import {
  createPrefillQueue,
  createRedisClient,
  enqueuePrefill,
  instancePrefillQueue,
  InstanceRegistry,
  PREFILL_QUEUE,
  PrefillRouter,
  prefillQueuesKey,
  prefixSetKey,
  redisConnection,
  type PrefillJob,
} from "@moela/scheduler";
import { Queue, QueueEvents } from "bullmq";
import type { Redis } from "ioredis";
import { startPrefill, type StartedPrefill } from "../../../services/prefill/src/main.js";
import { referenceRun } from "../../helpers/kv.js";
import { DecodeSide, prefillConfig, prefillJob, REDIS_URL as REDIS, singleProcessEngine } from "../../helpers/prefill.js";

const silent = createLogger("prefix-cache-test", "silent");

const GREEDY: GenerationParams = { temperature: 0, topP: 1, topK: -1, seed: 1, maxTokens: 8, ignoreEos: true, topLogprobs: 2 };
/** A 70-token "system prompt" and questions after it; prefill's blocks are 16 tokens. */
const SYSTEM = Array.from({ length: 70 }, (_, i) => 2 + ((i * 37 + 11) % 1000));
const QUESTIONS = [
  [5, 81, 400, 9, 12, 700, 33],
  [6, 90, 17, 250, 3],
  [7, 7, 140, 512, 64, 8, 901, 300, 2],
];
/** SYSTEM is 70 tokens: 4 whole blocks (64 tokens) and the token after them are shared. */
const SHARED_TOKENS = 64;

function job(requestId: string, prompt: number[], decodeAddress: string): PrefillJob {
  return prefillJob(requestId, prompt, decodeAddress, { maxTokens: GREEDY.maxTokens, deadlineMs: 120_000 });
}

function metric(body: string, name: string): number {
  // The first series of `name`, with or without labels (moela_prefill_tokens_total carries model).
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "m").exec(body);
  return m === null ? Number.NaN : Number(m[1]);
}

const prompts = QUESTIONS.map((q) => [...SYSTEM, ...q]);
const references: EmittedToken[][] = [];

beforeAll(async () => {
  const engine = singleProcessEngine();
  for (const p of prompts) references.push(await referenceRun(engine, p, GREEDY));
});

describe("prefill with a prefix cache, over real queues and a real KV transfer", () => {
  let prefix: string;
  let redis: Redis;
  let shared: Queue;
  let decode: DecodeSide;
  const prefills: StartedPrefill[] = [];
  const closers: (() => Promise<unknown>)[] = [];

  const startOne = (instanceId: string, over: { prefixCache?: boolean } = {}): Promise<StartedPrefill> =>
    startPrefill(prefillConfig(prefix, { prefillChunk: 32, concurrency: 2, instanceId, prefixCacheBlocks: 64, ...over }), { logger: silent }).then((p) => {
      prefills.push(p);
      return p;
    });

  const setup = async (): Promise<void> => {
    prefix = `moela-test-${randomUUID()}`;
    redis = createRedisClient(REDIS);
    shared = createPrefillQueue(REDIS, prefix);
    decode = await new DecodeSide().start();
  };

  /** Send prompt `i` through `queue` and decode it to the end. */
  const run = async (queue: Queue, i: number): Promise<{ tokens: EmittedToken[]; cached: number }> => {
    const id = `req-${randomUUID()}`;
    await enqueuePrefill(queue, job(id, prompts[i]!, decode.address));
    const { seq, meta } = await decode.admittedOf(id);
    return { tokens: await decode.decodeToEnd(seq), cached: meta.cachedPromptTokens };
  };

  const expectReference = (got: EmittedToken[], i: number): void => {
    const want = references[i]!;
    expect(got.map((t) => t.id)).toEqual(want.map((t) => t.id));
    got.forEach((t, k) => expect(Math.abs(t.logprob - want[k]!.logprob)).toBeLessThan(1e-4));
  };

  afterEach(async () => {
    for (const c of closers.splice(0).reverse()) await c().catch(() => undefined);
    for (const p of prefills.splice(0)) await p.close();
    await decode?.close();
    await shared?.close();
    // Every key of the test's prefix: queues, registry, prefix sets.
    const keys = await redis.keys(`${prefix}:*`);
    const more = await redis.keys(`${prefix}:prefill.*`);
    if (keys.length + more.length > 0) await redis.del(...new Set([...keys, ...more]));
    await redis.quit();
  });

  it("a second request sharing the system prompt reuses its KV: cached tokens reported, same tokens as without a cache", async () => {
    await setup();
    const p = await startOne("pc-a");
    const first = await run(shared, 0);
    expect(first.cached).toBe(0);
    const second = await run(shared, 1);
    expect(second.cached).toBe(SHARED_TOKENS);
    expectReference(first.tokens, 0);
    expectReference(second.tokens, 1);
    expect(decode.engine.cache.freeBlocks).toBe(decode.engine.cache.numBlocks);

    const body = await (await fetch(p.metricsUrl)).text();
    expect(metric(body, "moela_prefill_prefix_cache_queries_total")).toBe(prompts[0]!.length + prompts[1]!.length);
    expect(metric(body, "moela_prefill_prefix_cache_hits_total")).toBe(SHARED_TOKENS);
    expect(metric(body, "moela_prefill_tokens_total")).toBe(prompts[0]!.length + prompts[1]!.length - SHARED_TOKENS);
    expect(metric(body, "moela_prefill_prefix_cache_saved_seconds_total")).toBeGreaterThan(0);
    expect(metric(body, "moela_prefill_prefix_cache_blocks")).toBeGreaterThanOrEqual(4);
    // Every row still crossed: layers (4 + MTP) x prompt tokens x (64 + 16) f32 values.
    expect(metric(body, "moela_prefill_kv_transfer_bytes_total")).toBe((prompts[0]!.length + prompts[1]!.length) * 5 * 80 * 4);

    // Published: the keys of the system prompt's blocks, under the instance's id; registered as prefill.
    const published = new Set(await redis.smembers(prefixSetKey(prefix, "pc-a")));
    for (const k of prefixBlockHashes(prompts[1]!, 16).slice(0, 4)) expect(published.has(k)).toBe(true);
    const records = await new InstanceRegistry(redis, { prefix }).list("prefill");
    expect(records.map((r) => [r.id, r.load.blockSize, r.precision])).toEqual([["pc-a", 16, "exact"]]);
    expect(await redis.sismember(prefillQueuesKey(prefix), "pc-a")).toBe(1);
  });

  it("--no-prefix-cache computes every prompt token and publishes nothing", async () => {
    await setup();
    const p = await startOne("pc-off", { prefixCache: false });
    await run(shared, 0);
    const second = await run(shared, 1);
    expect(second.cached).toBe(0);
    expectReference(second.tokens, 1);
    const body = await (await fetch(p.metricsUrl)).text();
    expect(metric(body, "moela_prefill_prefix_cache_hits_total")).toBe(0);
    expect(await redis.scard(prefixSetKey(prefix, "pc-off"))).toBe(0);
  });

  it("the prefill router sends a prompt to the instance holding its prefix, through that instance's own queue", async () => {
    await setup();
    await startOne("pc-warm");
    await startOne("pc-cold");
    // Warm pc-warm through its own queue.
    const warmQueue = new Queue(instancePrefillQueue("pc-warm"), { connection: redisConnection(REDIS), prefix });
    closers.push(() => warmQueue.close());
    expect((await run(warmQueue, 0)).cached).toBe(0);

    const registry = new InstanceRegistry(redis, { prefix });
    const events = new QueueEvents(PREFILL_QUEUE, { connection: redisConnection(REDIS), prefix });
    closers.push(() => events.close());
    await events.waitUntilReady();
    const seen: string[] = [];
    events.on("active", ({ jobId }) => seen.push(jobId));
    let records = await registry.list("prefill");
    const router = new PrefillRouter({
      redis,
      connection: redisConnection(REDIS),
      prefix,
      shared,
      instances: () => records,
      precision: "exact",
      forwardEventsTo: events,
      rescueIntervalMs: 0,
    });
    closers.push(() => router.close());
    // The published keys reach Redis within the publisher's debounce.
    await expect.poll(async () => redis.scard(prefixSetKey(prefix, "pc-warm")), { timeout: 5_000 }).toBeGreaterThan(0);
    records = await registry.list("prefill");
    expect(records.map((r) => r.id)).toEqual(["pc-cold", "pc-warm"]);

    const id = `req-${randomUUID()}`;
    const routed = await router.enqueue(job(id, prompts[2]!, decode.address));
    expect(routed.instanceId).toBe("pc-warm");
    expect(routed.cachedTokens).toBe(SHARED_TOKENS);
    expect(routed.queue.name).toBe(instancePrefillQueue("pc-warm"));
    const { seq, meta } = await decode.admittedOf(id);
    expect(meta.cachedPromptTokens).toBe(SHARED_TOKENS);
    expectReference(await decode.decodeToEnd(seq), 2);
    // The job's "active" event came from pc-warm's queue and was re-emitted on the shared queue's events.
    await expect.poll(() => seen.includes(id), { timeout: 5_000 }).toBe(true);
  });

  it("jobs left in the queue of an instance that is gone move to the shared queue and run", async () => {
    await setup();
    // A departed instance: its id is known, its queue holds a job, nothing consumes it, no record.
    const deadQueue = new Queue(instancePrefillQueue("pc-gone"), { connection: redisConnection(REDIS), prefix });
    closers.push(() => deadQueue.close());
    await redis.sadd(prefillQueuesKey(prefix), "pc-gone");
    const id = `req-${randomUUID()}`;
    await enqueuePrefill(deadQueue, job(id, prompts[1]!, decode.address));
    await startOne("pc-live");
    const live = await new InstanceRegistry(redis, { prefix }).list("prefill");
    expect(live.map((r) => r.id)).toEqual(["pc-live"]);
    // Rescue with the live instance known: only pc-gone's queue is touched.
    const rescuer = new PrefillRouter({ redis, connection: redisConnection(REDIS), prefix, shared, instances: () => live, rescueIntervalMs: 0 });
    closers.push(() => rescuer.close());
    expect(await rescuer.rescue()).toBe(1);
    const { seq } = await decode.admittedOf(id);
    expectReference(await decode.decodeToEnd(seq), 1);
    expect(await deadQueue.getJobCountByTypes("waiting", "prioritized", "active")).toBe(0);
    // Empty and gone: forgotten.
    expect(await redis.sismember(prefillQueuesKey(prefix), "pc-gone")).toBe(0);
    expect(await redis.sismember(prefillQueuesKey(prefix), "pc-live")).toBe(1);
  });
});
