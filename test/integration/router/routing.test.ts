/**
 * The router's scheduling and admission against real neighbours: real Redis (a unique prefix per
 * router, every key removed afterwards) and stand-in decode instances serving the real Decode gRPC
 * service on 127.0.0.1:0. No prefill worker runs, and the stand-in answers by request id: "run-" and the
 * router's own "req-" ids get three tokens at once (their jobs stay queued), "hold-" ids one token and
 * then nothing until cancelled (a running generation), any other id nothing (a request waiting for a
 * prefill that never comes). So a test controls exactly which requests are queued and which run.
 *
 * Covered: decode instances found in the registry next to the static --decode seed; every decision
 * (candidates, per-scorer scores, choice, reason) looked up by request id at GET /v1/routing/:id; the
 * client's x-request-id returned, and run inside the cluster namespaced as `<id>-<12 hex>` (the
 * x-moela-request-id header, the key of the routing lookup); 429 with Retry-After once queued + running generations
 * reach --max-in-flight; a cancelled queued request's job removed from the BullMQ queue; a request past
 * its deadline answered 504 and its job removed.
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import type { Redis } from "ioredis";
import { createLogger } from "@moela/core";
import { FinishReason, type StreamRequest, type StreamResponse } from "@moela/proto-gen";
import { drainAndClose, type CallContext, type RpcServer } from "@moela/rpc";
import { createPrefillQueue, createRedisClient, InstanceRegistry, type Decision, type Registration } from "@moela/scheduler";
import type { Queue } from "bullmq";
import { startRouter, type StartedRouter } from "../../../services/router/src/main.js";
import { idleDecodeStatus, REDIS_URL as REDIS, serveDecode, testRouterConfig } from "../../helpers/router-rig.js";

const silent = createLogger("routing-test", process.env.TEST_LOG ?? "silent");

/** A decode instance reporting a fixed load, answering by request id (see above). */
class StandInDecode {
  server!: RpcServer;
  address = "";
  readonly opened: string[] = [];
  constructor(readonly freeKvBlocks: number) {}

  async start(): Promise<this> {
    const self = this;
    const decode = await serveDecode(
      {
        async *stream(req: StreamRequest, ctx: CallContext): AsyncGenerator<StreamResponse> {
          self.opened.push(req.requestId);
          const forever = () => new Promise((_, reject) => ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason)));
          if (req.requestId.startsWith("hold-")) {
            yield { tokens: [{ index: 0, tokenId: 400 }], finishReason: FinishReason.FINISH_REASON_UNSPECIFIED };
            await forever();
          }
          if (!req.requestId.startsWith("run-") && !req.requestId.startsWith("req-")) await forever();
          yield { tokens: [400, 401, 402].map((tokenId, index) => ({ index, tokenId })), finishReason: FinishReason.FINISH_REASON_LENGTH };
        },
        async cancel() {
          return { found: true };
        },
        async status() {
          return idleDecodeStatus({ freeKvBlocks: self.freeKvBlocks });
        },
      },
      silent,
    );
    return Object.assign(this, decode);
  }
}

interface Rig {
  prefix: string;
  router: StartedRouter;
  queue: Queue;
}

let redis: Redis;
let seed: StandInDecode;
let better: StandInDecode;
const rigs: Rig[] = [];

async function rig(over: { maxInFlight?: number; requestTimeoutMs?: number } = {}): Promise<Rig> {
  const prefix = `moela-test-routing-${randomUUID()}`;
  const router = await startRouter(
    testRouterConfig(prefix, [seed.address], { requestTimeoutMs: over.requestTimeoutMs ?? 30_000, maxInFlight: over.maxInFlight ?? 64 }),
    {
      logger: silent,
      shutdownGraceMs: 500,
      statusIntervalMs: 100,
      heartbeatMs: 200,
    },
  );
  const r = { prefix, router, queue: createPrefillQueue(REDIS, prefix) };
  rigs.push(r);
  return r;
}

function complete(r: Rig, body: Record<string, unknown>, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Response> {
  return fetch(`${r.router.httpUrl}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify({ model: "tiny-v3", prompt: [0, 17, 42], max_tokens: 3, ...body }),
    ...(signal ? { signal } : {}),
  });
}

async function routing(r: Rig, id: string): Promise<{ status: number; body: { request_id?: string; decisions?: Decision[] } }> {
  const res = await fetch(`${r.router.httpUrl}/v1/routing/${id}`);
  return { status: res.status, body: (await res.json()) as { decisions?: Decision[] } };
}

/** The queued job of the request the client sent as `clientId` (it runs as `<clientId>-<12 hex>`). */
async function jobOf(r: Rig, clientId: string): Promise<string | undefined> {
  const jobs = await r.queue.getJobs(["waiting", "prioritized", "active"]);
  return jobs.map((j) => j.id).find((id) => id !== undefined && id.startsWith(`${clientId}-`));
}

/** One sample's value from the router's /metrics (undefined when absent). */
async function metric(r: Rig, series: string): Promise<number | undefined> {
  const text = await (await fetch(r.router.metricsUrl)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

beforeAll(async () => {
  redis = createRedisClient(REDIS);
  [seed, better] = await Promise.all([new StandInDecode(100).start(), new StandInDecode(900).start()]);
});

afterAll(async () => {
  for (const r of rigs) {
    await r.router.close();
    await r.queue.obliterate({ force: true });
    await r.queue.close();
    const keys = await redis.keys(`${r.prefix}:*`);
    if (keys.length > 0) await redis.del(...keys);
  }
  await redis.quit();
  await Promise.all([seed, better].map((d) => drainAndClose(d.server, 0, { flushMs: 50 })));
});

describe("decode instances from the registry, decisions by request id", () => {
  it("finds a registered decode instance next to the static seed, prefers it, explains why, and forgets it once it leaves", async () => {
    const r = await rig();
    const registry = new InstanceRegistry(redis, { prefix: r.prefix, ttlMs: 1_000 });
    const reg: Registration = await registry.register(
      { role: "decode", grpcAddress: better.address, precision: "exact", modelId: "tiny-v3" },
      () => ({ freeKvBlocks: 900, totalKvBlocks: 1000, blockSize: 16 }),
      { intervalMs: 200 },
    );

    // The registered instance joins the candidates once the router has read the registry and polled it.
    const id = `run-${randomUUID()}`;
    await vi.waitFor(
      async () => {
        const res = await complete(r, {}, { "x-request-id": `${id}-probe-${Date.now()}` });
        await res.text();
        expect(better.opened.length, "the registered decode instance to be chosen").toBeGreaterThan(0);
      },
      { timeout: 10_000, interval: 50 },
    );

    const res = await complete(r, {}, { "x-request-id": id });
    expect(res.status).toBe(200);
    expect(res.headers.get("x-request-id")).toBe(id);
    // Inside the cluster the client's id is namespaced; that id keys the routing lookup.
    const internal = res.headers.get("x-moela-request-id")!;
    expect(internal).toMatch(new RegExp(`^${id}-[0-9a-f]{12}$`));
    expect(((await res.json()) as { choices: unknown[] }).choices).toHaveLength(1);

    const { status, body } = await routing(r, internal);
    expect(status).toBe(200);
    expect(body.request_id).toBe(internal);
    expect(body.decisions).toHaveLength(1);
    const d = body.decisions![0]!;
    expect(d).toMatchObject({
      requestId: internal,
      role: "decode",
      policy: "filters: healthy, has-free-kv; scorers: free-kv x2, load x1; picker: max-score",
      chosen: { id: reg.id, address: better.address },
      reason: expect.stringMatching(/^max-score: highest score/),
    });
    const byAddress = new Map(d.candidates.map((c) => [c.address, c]));
    // Free blocks are the last report minus what this router sent since (the probes), so about 900 and 100.
    expect(byAddress.get(better.address)).toMatchObject({ id: reg.id, scores: { "free-kv": 1 } });
    expect(byAddress.get(better.address)!.freeKvBlocks).toBeGreaterThan(850);
    expect(byAddress.get(seed.address)!.freeKvBlocks).toBeLessThanOrEqual(100);
    expect(byAddress.get(seed.address)?.scores?.["free-kv"]).toBeLessThan(0.2);
    expect(better.opened).toContain(internal);

    // Deregistered: the next request goes to the static seed.
    await reg.deregister();
    const after = `run-${randomUUID()}`;
    await vi.waitFor(
      async () => {
        const x = await complete(r, {}, { "x-request-id": `${after}-${Date.now()}` });
        await x.text();
        expect(
          seed.opened.some((o) => o.startsWith(after)),
          "the router to stop choosing an instance that left the registry",
        ).toBe(true);
      },
      { timeout: 10_000, interval: 50 },
    );
  });

  it("makes an id when the client sends none, answers 404 for an unknown one, 400 for a malformed header", async () => {
    const r = await rig();
    const res = await complete(r, {});
    const id = res.headers.get("x-request-id");
    await res.text();
    expect(id).toMatch(/^req-/);
    // A router-made id needs no namespace: it is the cluster's id too.
    expect(res.headers.get("x-moela-request-id")).toBe(id);
    expect((await routing(r, id!)).body.decisions?.[0]?.requestId).toBe(id);
    const unknown = await routing(r, "run-never-seen");
    expect(unknown.status).toBe(404);
    const bad = await complete(r, {}, { "x-request-id": "has space" });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { message: string } }).error.message).toMatch(/x-request-id/);
  });
});

describe("admission", () => {
  it("counts queued and running generations against --max-in-flight: 429 with Retry-After beyond; a cancelled queued request leaves the queue and frees its slot", async () => {
    const r = await rig({ maxInFlight: 2 });
    // One generation running: decode streamed its first token and goes on until cancelled.
    const stopRunning = new AbortController();
    const running = await complete(r, { stream: true }, { "x-request-id": `hold-${randomUUID()}` }, stopRunning.signal);
    expect(running.status).toBe(200);
    // One waiting for prefill: its job sits in the queue.
    const queuedId = `queued-${randomUUID()}`;
    const cancel = new AbortController();
    const queued = complete(r, { stream: true }, { "x-request-id": queuedId }, cancel.signal).catch((e: unknown) => e);
    const queuedJob = await vi.waitFor(
      async () => {
        const job = await jobOf(r, queuedId);
        expect(job, "the queued request's job to appear").toBeDefined();
        return job!;
      },
      { timeout: 10_000, interval: 50 },
    );
    expect(await r.queue.getJobState(queuedJob)).toBe("waiting");

    const refused = await complete(r, {}, { "x-request-id": "over-the-bound" });
    expect(refused.status).toBe(429);
    expect(refused.headers.get("retry-after")).toBe("1");
    expect(refused.headers.get("x-request-id")).toBe("over-the-bound");
    expect(((await refused.json()) as { error: { message: string } }).error.message).toMatch(/limit of 2 generations in flight/);

    // The client goes away: its job no worker took is removed from the queue, not left to run.
    cancel.abort();
    await queued;
    await vi.waitFor(async () => expect(await r.queue.getJob(queuedJob), "the cancelled request's job to leave the queue").toBeUndefined(), {
      timeout: 10_000,
      interval: 50,
    });
    await vi.waitFor(async () => expect(await metric(r, 'moela_router_queue_removed_total{reason="cancelled"}'), "the removal to be counted").toBe(1), {
      timeout: 5_000,
      interval: 50,
    });
    const admitted = await complete(r, {}, { "x-request-id": `run-${randomUUID()}` });
    expect(admitted.status).toBe(200);
    await admitted.text();
    stopRunning.abort();
    await running.text().catch(() => undefined);
  });

  it("a request past its deadline while queued: 504, and its job is removed from the queue", async () => {
    const r = await rig({ requestTimeoutMs: 1_500 });
    const id = `late-${randomUUID()}`;
    const res = await complete(r, {}, { "x-request-id": id });
    expect(res.status).toBe(504);
    expect(res.headers.get("x-request-id")).toBe(id);
    const internal = res.headers.get("x-moela-request-id")!;
    await res.text();
    await vi.waitFor(async () => expect(await r.queue.getJob(internal), "the expired request's job to leave the queue").toBeUndefined(), {
      timeout: 10_000,
      interval: 50,
    });
    await vi.waitFor(async () => expect(await metric(r, 'moela_router_queue_removed_total{reason="timeout"}'), "the removal to be counted").toBe(1), {
      timeout: 5_000,
      interval: 50,
    });
    expect(await metric(r, 'moela_router_queue_removed_total{reason="cancelled"}')).toBe(0);
  });
});
