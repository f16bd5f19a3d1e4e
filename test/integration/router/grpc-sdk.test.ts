/**
 * The router's gRPC surface as @moela/client uses it, against a real router (real Redis queue, real
 * gRPC) whose decode stand-in never answers, so requests stay in flight for as long as a test wants:
 * ListModels, chat messages rendered with the chat template exactly as /v1/chat/completions renders
 * them (compared on the prefill jobs the two enqueue), and RESOURCE_EXHAUSTED past --max-in-flight
 * carrying `retry-after` trailing metadata, which the client waits for before its retry.
 */
import { randomUUID } from "node:crypto";
import { Metadata } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { CancelledError, createLogger } from "@moela/core";
import { InvalidArgumentError, MoelaClient, ResourceExhaustedError, type GenerateStream } from "@moela/client";
import { type DecodeCancelRequest, type StreamRequest, type StreamResponse } from "@moela/proto-gen";
import type { CallContext, RpcServer } from "@moela/rpc";
import { createPrefillQueue, parsePrefillJob, type PrefillJob } from "@moela/scheduler";
import type { Queue } from "bullmq";
import { startRouter, type StartedRouter } from "../../../services/router/src/main.js";
import { closeRouterRig, idleDecodeStatus, REDIS_URL as REDIS, serveDecode, testRouterConfig } from "../../helpers/router-rig.js";

const silent = createLogger("router-sdk-test", process.env.TEST_LOG ?? "silent");
const MAX_IN_FLIGHT = 3;

const prefix = `moela-test-${randomUUID()}`;
let decode: RpcServer;
let queue: Queue;
let router: StartedRouter;
let client: MoelaClient;

beforeAll(async () => {
  // A decode instance with room for everything that streams nothing until the call ends.
  const stalled = await serveDecode(
    {
      async *stream(_req: StreamRequest, ctx: CallContext): AsyncGenerator<StreamResponse> {
        await new Promise<void>((_, reject) => ctx.signal.addEventListener("abort", () => reject(new CancelledError("call ended")), { once: true }));
      },
      async cancel(_req: DecodeCancelRequest) {
        return { found: true };
      },
      async status() {
        return idleDecodeStatus();
      },
    },
    silent,
  );
  decode = stalled.server;
  queue = createPrefillQueue(REDIS, prefix);
  router = await startRouter(testRouterConfig(prefix, [stalled.address], { maxInFlight: MAX_IN_FLIGHT }), {
    logger: silent,
    shutdownGraceMs: 1_000,
    statusIntervalMs: 100,
  });
  client = new MoelaClient({ address: router.grpcAddress, initialBackoffMs: 1, maxBackoffMs: 1 });
}, 120_000);

afterAll(async () => {
  client?.close();
  await closeRouterRig({ router, queue, decode: [decode] });
});

/** The prefill job enqueued for a request whose id starts with `idPrefix`, once there is one. */
function jobOf(idPrefix: string): Promise<PrefillJob> {
  return vi.waitFor(
    async () => {
      const jobs = await queue.getJobs(["waiting", "prioritized", "active", "delayed"]);
      const job = jobs.map((j) => parsePrefillJob(j.data)).find((j) => j.requestId.startsWith(idPrefix));
      expect(job, `a prefill job for ${idPrefix}`).toBeDefined();
      return job!;
    },
    { timeout: 20_000, interval: 50 },
  );
}

/** Start iterating `stream` (so the call is made) and keep it running in the background. */
function hold(stream: GenerateStream): Promise<unknown> {
  return (async () => {
    for await (const _ of stream) void _;
  })().catch((err: unknown) => err);
}

describe("the router's gRPC API through @moela/client", () => {
  it("ListModels lists the served model, as GET /v1/models does", async () => {
    const models = await client.listModels();
    const http = (await (await fetch(`${router.httpUrl}/v1/models`)).json()) as { data: Array<{ id: string; created: number; max_model_len: number }> };
    expect(models).toEqual(http.data.map((m) => ({ id: m.id, created: m.created, ownedBy: "moela", maxModelLen: m.max_model_len })));
    expect(models.map((m) => m.id)).toEqual(["tiny-v3"]);
  });

  it("chat messages are rendered with the chat template into the same prompt /v1/chat/completions makes", async () => {
    const messages = [
      { role: "system" as const, content: "You answer in one word." },
      { role: "user" as const, content: "What is the capital of France?" },
    ];
    const grpcId = `chat-grpc-${randomUUID().slice(0, 8)}`;
    const httpId = `chat-http-${randomUUID().slice(0, 8)}`;
    const stream = client.generate({ messages, maxTokens: 4, requestId: grpcId });
    const grpcDone = hold(stream);
    const ac = new AbortController();
    const httpDone = fetch(`${router.httpUrl}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-request-id": httpId },
      body: JSON.stringify({ model: "tiny-v3", messages, max_tokens: 4 }),
      signal: ac.signal,
    }).catch((err: unknown) => err);
    try {
      const [viaGrpc, viaHttp] = await Promise.all([jobOf(grpcId), jobOf(httpId)]);
      expect(viaGrpc.promptTokenIds.length).toBeGreaterThan(10);
      expect(viaGrpc.promptTokenIds).toEqual(viaHttp.promptTokenIds);
      // Not the plain text of the last message: the template wrapped the conversation.
      const plain = client.generate({ prompt: "What is the capital of France?", maxTokens: 4, requestId: `${grpcId}-plain` });
      const plainDone = hold(plain);
      expect((await jobOf(`${grpcId}-plain`)).promptTokenIds.length).toBeLessThan(viaGrpc.promptTokenIds.length);
      plain.abort();
      await plainDone;
    } finally {
      stream.abort();
      ac.abort();
      await Promise.all([grpcDone, httpDone]);
    }
  });

  it("chat messages go through the chat validation: past its message limit is INVALID_ARGUMENT on messages", async () => {
    const messages = Array.from({ length: 4097 }, () => ({ role: "user" as const, content: "x" }));
    const err = await client.complete({ messages }, { deadlineMs: 20_000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as Error).message).toMatch(/messages may hold at most 4096 messages, got 4097/);
  });

  it("past --max-in-flight: RESOURCE_EXHAUSTED with retry-after: 1, which the client waits for before retrying", async () => {
    const holders = Array.from({ length: MAX_IN_FLIGHT }, (_, i) =>
      client.generate({ prompt: `hold ${i}`, maxTokens: 4, requestId: `hold-${i}-${randomUUID().slice(0, 8)}` }),
    );
    const held = holders.map(hold);
    try {
      await Promise.all(holders.map((h) => jobOf(h.requestId)));
      const started = Date.now();
      const err = await new MoelaClient({ address: router.grpcAddress, maxRetries: 1, initialBackoffMs: 1, maxBackoffMs: 1 })
        .complete({ prompt: "one too many", maxTokens: 2 })
        .catch((e: unknown) => e);
      const took = Date.now() - started;
      expect(err).toBeInstanceOf(ResourceExhaustedError);
      // The server's words, and its trailing metadata on the grpc-js error kept as the cause.
      const metadata = ((err as Error).cause as { metadata?: unknown }).metadata;
      expect(metadata).toBeInstanceOf(Metadata);
      expect((metadata as Metadata).get("retry-after")).toEqual(["1"]);
      // Two attempts, one second apart (the backoff alone would be 1 ms).
      expect(took).toBeGreaterThanOrEqual(950);
      expect(took).toBeLessThan(10_000);
    } finally {
      for (const h of holders) h.abort();
      await Promise.all(held);
    }
  });
});
