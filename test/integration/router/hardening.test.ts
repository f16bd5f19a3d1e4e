/**
 * The router's hardening (issue 10) against real neighbours: real Redis (a unique queue prefix per
 * router, obliterated afterwards), a real BullMQ worker standing in for prefill, and a scripted decode
 * instance serving the real Decode gRPC service. Each security case is shown refused:
 *
 * - authentication: no key or a wrong key -> 401 (HTTP) / UNAUTHENTICATED (gRPC); /health and /metrics open;
 *   routing decisions readable only with the key;
 * - request ids: two clients sending the same x-request-id (or gRPC request_id) at once each get their
 *   own stream and their own id back; one hanging up cancels only its own request; an id is reusable;
 * - errors name no internal address;
 * - bounds: body size (413), JSON depth, prompt characters, stop lists, a gRPC seed past 2^53, a gRPC
 *   message past the limit;
 * - a 50 MB prompt is tokenized off the event loop: a small request sent while it is being tokenized
 *   finishes first;
 * - a prefill job that vanishes from Redis is enqueued again (and, vanishing for good, fails at once with 503).
 */
import { randomUUID } from "node:crypto";
import { Writable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import OpenAI from "openai";
import { pino } from "pino";
import { Code, createLogger, MoelaError } from "@moela/core";
import { MoelaClient, UnauthenticatedError } from "@moela/client";
import { GenerateClient, type GenerateRequest, type GenerateResponse } from "@moela/proto-gen";
import { connect, serverStreamCall } from "@moela/rpc";
import { createPrefillQueue, parsePrefillJob, type PrefillJob } from "@moela/scheduler";
import { UnrecoverableError, type Queue, type Worker } from "bullmq";
import { Metadata } from "@grpc/grpc-js";
import { startRouter, type StartedRouter } from "../../../services/router/src/main.js";
import type { RouterConfig } from "../../../services/router/src/config.js";
import {
  closeRouterRig,
  lengthStream,
  REDIS_URL as REDIS,
  ScriptedDecode,
  sleep,
  standInPrefill as prefillWorker,
  testRouterConfig,
  type DecodeScript,
} from "../../helpers/router-rig.js";

const silent = createLogger("hardening-test", process.env.TEST_LOG ?? "silent");
const KEY = "sk-test-0123456789abcdef";
/** A prompt token that makes the stand-in prefill fail the job with a message naming an internal address. */
const LEAKY = 997;

/** Streams, per request, its prompt's tokens after the first (cycled) one per message, delayMs apart, once its job arrived. */
const promptTokens: DecodeScript = async function* (job, _req, signal, decode) {
  const p = job.promptTokenIds.slice(1);
  for (const m of lengthStream(job, (k) => p[k % p.length]!)) {
    yield m;
    if (decode.delayMs > 0) await sleep(decode.delayMs);
    if (signal.aborted) throw signal.reason;
  }
};

interface Rig {
  readonly prefix: string;
  readonly router: StartedRouter;
  readonly queue: Queue;
  worker: Worker | undefined;
  /** Debug log lines of the router (JSON). */
  readonly lines: string[];
}

let decode: ScriptedDecode;
const rigs: Rig[] = [];
/** Every job the stand-in prefills took. */
const taken: PrefillJob[] = [];

/** A prefill stand-in on `prefix`: hands each job to the scripted decode (or fails a LEAKY one). */
function standInPrefill(prefix: string): Worker {
  return prefillWorker(prefix, (data) => {
    const job = parsePrefillJob(data);
    taken.push(job);
    if (job.promptTokenIds.includes(LEAKY)) throw new UnrecoverableError("UNAVAILABLE: decode 10.9.8.7:5000 (decode-node7-99-abcdef) is unreachable");
    decode.job(job.requestId).resolve(job);
  });
}

async function rig(over: Partial<RouterConfig> = {}, o: { prefill?: boolean; jobCheckIntervalMs?: number } = {}): Promise<Rig> {
  const prefix = `moela-test-hardening-${randomUUID()}`;
  const lines: string[] = [];
  const logger = pino({ level: "debug", base: { service: "router" } }, new Writable({ write: (chunk, _e, cb) => (lines.push(String(chunk)), cb()) }));
  const router = await startRouter(testRouterConfig(prefix, [decode.address], { logLevel: "debug", ...over }), {
    logger,
    shutdownGraceMs: 500,
    statusIntervalMs: 100,
    ...(o.jobCheckIntervalMs !== undefined ? { jobCheckIntervalMs: o.jobCheckIntervalMs } : {}),
  });
  const r: Rig = { prefix, router, queue: createPrefillQueue(REDIS, prefix), worker: o.prefill === false ? undefined : standInPrefill(prefix), lines };
  await r.worker?.waitUntilReady();
  rigs.push(r);
  return r;
}

function post(r: Rig, path: string, body: unknown, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Response> {
  return fetch(`${r.router.httpUrl}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
    ...(signal !== undefined ? { signal } : {}),
  });
}

async function errorOf(res: Response): Promise<{ message: string; type: string; param: string | null; code: string | null }> {
  return ((await res.json()) as { error: { message: string; type: string; param: string | null; code: string | null } }).error;
}

/** Runs a raw Generate call to the end; resolves with its messages or rejects with its MoelaError. */
async function rawGenerate(r: Rig, req: Partial<GenerateRequest>, md = new Metadata()): Promise<GenerateResponse[]> {
  const c = connect(GenerateClient, r.router.grpcAddress);
  try {
    const out: GenerateResponse[] = [];
    const full: GenerateRequest = { model: "", requestId: "", priority: 0, cacheSalt: "", prompt: { $case: "tokenIds", value: { ids: [5, 6, 7] } }, ...req };
    for await (const m of serverStreamCall<GenerateResponse>((meta, o) => c.generate(full, (meta.merge(md), meta), o))) out.push(m);
    return out;
  } finally {
    c.close();
  }
}

async function metric(r: Rig, series: string): Promise<number> {
  const text = await (await fetch(r.router.metricsUrl)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

beforeAll(async () => {
  decode = await new ScriptedDecode(promptTokens).start(silent);
});

afterAll(async () => {
  for (const r of rigs) await closeRouterRig(r);
  await closeRouterRig({ decode: [decode.server] });
});

describe("authentication (--api-key)", () => {
  let r: Rig;
  beforeAll(async () => {
    r = await rig({ apiKeys: [KEY, "sk-previous"] });
  });

  it.each([
    { name: "no key", headers: {}, message: /didn't provide an API key/ },
    { name: "a wrong key", headers: { authorization: "Bearer sk-wrong" }, message: /Incorrect API key/ },
    { name: "a key in another scheme", headers: { authorization: `Basic ${KEY}` }, message: /must be 'Bearer <key>'/ },
  ])("POST /v1/completions with $name -> 401", async ({ headers, message }) => {
    const res = await post(r, "/v1/completions", { model: "tiny-v3", prompt: [5, 6], max_tokens: 2 }, headers as Record<string, string>);
    expect(res.status).toBe(401);
    expect(res.headers.get("www-authenticate")).toMatch(/^Bearer/);
    const e = await errorOf(res);
    expect(e).toMatchObject({ type: "invalid_request_error", code: "invalid_api_key" });
    expect(e.message).toMatch(message);
  });

  it("every API route needs the key: models, chat, routing decisions, unknown routes", async () => {
    for (const [method, path] of [
      ["GET", "/v1/models"],
      ["POST", "/v1/chat/completions"],
      ["GET", "/v1/routing/req-x"],
      ["GET", "/v1/embeddings"],
    ] as const) {
      const res = await fetch(`${r.router.httpUrl}${path}`, {
        method,
        ...(method === "POST" ? { headers: { "content-type": "application/json" }, body: "{}" } : {}),
      });
      expect(res.status, `${method} ${path}`).toBe(401);
    }
  });

  it("with the key (either of two) the official client works; /health and /metrics stay open", async () => {
    for (const apiKey of [KEY, "sk-previous"]) {
      const client = new OpenAI({ baseURL: `${r.router.httpUrl}/v1`, apiKey, maxRetries: 0 });
      const done = await client.completions.create({ model: "tiny-v3", prompt: [5, 6, 7], max_tokens: 3 });
      expect(done.choices[0]!.finish_reason).toBe("length");
      expect((await client.models.list()).data[0]!.id).toBe("tiny-v3");
    }
    expect((await fetch(`${r.router.httpUrl}/health`)).status).toBe(200);
    expect((await fetch(r.router.metricsUrl)).status).toBe(200);
  });

  it("routing decisions are readable with the key", async () => {
    const res = await post(r, "/v1/completions", { prompt: [5, 6, 7], max_tokens: 2 }, { authorization: `Bearer ${KEY}` });
    expect(res.status).toBe(200);
    const id = res.headers.get("x-moela-request-id")!;
    await res.text();
    const look = await fetch(`${r.router.httpUrl}/v1/routing/${id}`, { headers: { authorization: `Bearer ${KEY}` } });
    expect(look.status).toBe(200);
    expect(((await look.json()) as { decisions: unknown[] }).decisions.length).toBeGreaterThan(0);
  });

  it("gRPC Generate: no key or a wrong one -> UNAUTHENTICATED; the SDK's apiKey works", async () => {
    const none = await rawGenerate(r, {}).catch((e: unknown) => e);
    expect((none as MoelaError).code).toBe(Code.UNAUTHENTICATED);
    const wrong = new MoelaClient({ address: r.router.grpcAddress, apiKey: "sk-wrong", maxRetries: 0 });
    const right = new MoelaClient({ address: r.router.grpcAddress, apiKey: KEY, maxRetries: 0 });
    try {
      const err = await wrong.complete({ prompt: [5, 6, 7], maxTokens: 2 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UnauthenticatedError);
      const done = await right.complete({ prompt: [5, 6, 7], maxTokens: 2, requestId: "sdk-1" });
      expect(done).toMatchObject({ requestId: "sdk-1", finishReason: "length", tokenIds: [6, 7] });
    } finally {
      wrong.close();
      right.close();
    }
  });
});

describe("request ids: clients that choose the same id never touch each other", () => {
  let r: Rig;
  beforeAll(async () => {
    r = await rig();
  });

  it("two streams with the same x-request-id at once: each gets its own tokens and its own id back", async () => {
    decode.delayMs = 20;
    try {
      const id = `same-${randomUUID()}`;
      const [a, b] = await Promise.all([
        post(
          r,
          "/v1/completions",
          { prompt: [5, 100, 101], max_tokens: 6, stream: true, return_tokens_as_token_ids: true, logprobs: 0 },
          { "x-request-id": id },
        ),
        post(
          r,
          "/v1/completions",
          { prompt: [5, 200, 201], max_tokens: 6, stream: true, return_tokens_as_token_ids: true, logprobs: 0 },
          { "x-request-id": id },
        ),
      ]);
      expect([a.status, b.status]).toEqual([200, 200]);
      expect([a.headers.get("x-request-id"), b.headers.get("x-request-id")]).toEqual([id, id]);
      const ia = a.headers.get("x-moela-request-id")!;
      const ib = b.headers.get("x-moela-request-id")!;
      expect(ia).not.toBe(ib);
      expect(ia.startsWith(`${id}-`) && ib.startsWith(`${id}-`)).toBe(true);
      const tokensOf = (body: string): string[] => [...body.matchAll(/token_id:(\d+)/g)].map((m) => m[1]!);
      const [ta, tb] = await Promise.all([a.text(), b.text()]);
      expect(tokensOf(ta)).toEqual(["100", "101", "100", "101", "100", "101"]);
      expect(tokensOf(tb)).toEqual(["200", "201", "200", "201", "200", "201"]);
      expect(ta).not.toContain('"error"');
      expect(tb).not.toContain('"error"');
    } finally {
      decode.delayMs = 0;
    }
  });

  it("one of them hanging up cancels only its own request", async () => {
    decode.delayMs = 30;
    try {
      const id = `hangup-${randomUUID()}`;
      const ctl = new AbortController();
      const keeps = post(r, "/v1/completions", { prompt: [5, 300, 301], max_tokens: 12, stream: true }, { "x-request-id": id });
      const leaves = await post(r, "/v1/completions", { prompt: [5, 400, 401], max_tokens: 200, stream: true }, { "x-request-id": id }, ctl.signal);
      const leavesId = leaves.headers.get("x-moela-request-id")!;
      await leaves.body!.getReader().read();
      ctl.abort();
      const kept = await keeps;
      const keptId = kept.headers.get("x-moela-request-id")!;
      const body = await kept.text();
      expect(body).toContain('"finish_reason":"length"');
      expect(body.trimEnd().endsWith("data: [DONE]")).toBe(true);
      await expect.poll(() => decode.cancels.some((c) => c.requestId === leavesId), { timeout: 10_000 }).toBe(true);
      expect(decode.cancels.some((c) => c.requestId === keptId)).toBe(false);
    } finally {
      decode.delayMs = 0;
    }
  });

  it("an id is reusable as soon as its request finished (it used to be a 500)", async () => {
    const id = `reuse-${randomUUID()}`;
    for (let i = 0; i < 3; i++) {
      const res = await post(r, "/v1/completions", { prompt: [5, 6, 7], max_tokens: 2 }, { "x-request-id": id });
      expect(res.status).toBe(200);
      expect(res.headers.get("x-request-id")).toBe(id);
      await res.text();
    }
  });

  it("gRPC: two calls with the same request_id both complete, each answered with that id", async () => {
    const id = `grpc-same-${randomUUID()}`;
    const [a, b] = await Promise.all([
      rawGenerate(r, {
        requestId: id,
        prompt: { $case: "tokenIds", value: { ids: [5, 500, 501] } },
        sampling: { topK: 0, maxTokens: 4, stop: [], stopTokenIds: [], ignoreEos: false },
      }),
      rawGenerate(r, {
        requestId: id,
        prompt: { $case: "tokenIds", value: { ids: [5, 600, 601] } },
        sampling: { topK: 0, maxTokens: 4, stop: [], stopTokenIds: [], ignoreEos: false },
      }),
    ]);
    expect(a.flatMap((m) => m.tokenIds)).toEqual([500, 501, 500, 501]);
    expect(b.flatMap((m) => m.tokenIds)).toEqual([600, 601, 600, 601]);
    expect([...a, ...b].every((m) => m.requestId === id)).toBe(true);
  });
});

describe("cache_salt", () => {
  it("is forwarded to the prefill job from both APIs; a bad one is refused naming the field", async () => {
    const r = await rig();
    const res = await post(r, "/v1/chat/completions", { messages: [{ role: "user", content: "salted" }], max_tokens: 2, cache_salt: "tenant-a" });
    expect(res.status).toBe(200);
    const id = res.headers.get("x-moela-request-id")!;
    await res.text();
    expect(taken.find((j) => j.requestId === id)?.cacheSalt).toBe("tenant-a");
    const client = new MoelaClient({ address: r.router.grpcAddress, maxRetries: 0 });
    try {
      await client.complete({ prompt: [5, 901, 902], maxTokens: 2, cacheSalt: "tenant-b" });
      expect(taken.find((j) => j.promptTokenIds.join(",") === "5,901,902")?.cacheSalt).toBe("tenant-b");
      await client.complete({ prompt: [5, 903, 904], maxTokens: 2 });
      expect(taken.find((j) => j.promptTokenIds.join(",") === "5,903,904")).not.toHaveProperty("cacheSalt");
      const long = await client.complete({ prompt: [5, 6], maxTokens: 2, cacheSalt: "s".repeat(257) }).catch((e: unknown) => e);
      expect((long as MoelaError).code).toBe(Code.INVALID_ARGUMENT);
      expect((long as MoelaError).message).toMatch(/cache_salt may hold at most 256 characters/);
    } finally {
      client.close();
    }
    const empty = await post(r, "/v1/completions", { prompt: [5, 6], cache_salt: "" });
    expect(empty.status).toBe(400);
    expect((await errorOf(empty)).param).toBe("cache_salt");
  });
});

describe("errors name no internal address", () => {
  it("a prefill failure that names a decode address and instance id reaches the client scrubbed", async () => {
    const r = await rig();
    const res = await post(r, "/v1/completions", { prompt: [5, LEAKY, 7], max_tokens: 2 });
    expect(res.status).toBe(503);
    const e = await errorOf(res);
    expect(e.message).toMatch(/prefill failed: decode <internal> \(<internal>\) is unreachable/);
    expect(e.message).not.toMatch(/10\.9\.8\.7|5000|node7/);
    const grpc = await rawGenerate(r, { prompt: { $case: "tokenIds", value: { ids: [5, LEAKY, 7] } } }).catch((x: unknown) => x);
    expect((grpc as MoelaError).code).toBe(Code.UNAVAILABLE);
    expect((grpc as MoelaError).message).not.toMatch(/10\.9\.8\.7|node7/);
  });
});

describe("bounds", () => {
  let r: Rig;
  beforeAll(async () => {
    r = await rig({ maxBodyBytes: 64 * 1024, maxPromptChars: 1000, maxPromptTokens: 100 });
  });

  it.each([
    {
      name: "a body over --max-body-bytes",
      body: JSON.stringify({ prompt: Array(40_000).fill(5) }),
      status: 413,
      code: "request_too_large",
      message: /larger than this server's limit of 65536 bytes/,
    },
    {
      name: "JSON nested 10 000 deep",
      body: `{"prompt": [5], "metadata": ${"[".repeat(10_000)}${"]".repeat(10_000)}}`,
      status: 400,
      param: "body",
      message: /deeper than 64 levels/,
    },
    {
      name: "a prompt past --max-prompt-chars",
      body: JSON.stringify({ prompt: "x".repeat(1001) }),
      status: 400,
      param: "prompt",
      code: "context_length_exceeded",
      message: /1001 characters/,
    },
    {
      name: "65 stop strings",
      body: JSON.stringify({ prompt: "x", stop: Array.from({ length: 65 }, (_, i) => `s${i}`) }),
      status: 400,
      param: "stop",
      message: /at most 64/,
    },
    { name: "a long stop string", body: JSON.stringify({ prompt: "x", stop: "s".repeat(600) }), status: 400, param: "stop", message: /at most 512 characters/ },
    {
      name: "too many stop token ids",
      body: JSON.stringify({ prompt: "x", stop_token_ids: Array(1025).fill(3) }),
      status: 400,
      param: "stop_token_ids",
      message: /at most 1024/,
    },
    {
      name: "a seed beyond 64 bits",
      body: '{"prompt": "x", "seed": 123456789012345678901234567890}',
      status: 400,
      param: "seed",
      message: /seed must be an integer/,
    },
    {
      name: "a prompt past --max-prompt-tokens (prefill's limit: it would refuse it late)",
      body: JSON.stringify({ prompt: Array(101).fill(5), max_tokens: 1 }),
      status: 400,
      param: "prompt",
      code: "context_length_exceeded",
      message: /at most 100 tokens/,
    },
  ])("$name -> $status", async ({ body, status, param, code, message }) => {
    const res = await post(r, "/v1/completions", body);
    expect(res.status).toBe(status);
    const e = await errorOf(res);
    expect(e.message).toMatch(message);
    if (param !== undefined) expect(e.param).toBe(param);
    if (code !== undefined) expect(e.code).toBe(code);
  });

  it("gRPC: a seed past 2^53 is INVALID_ARGUMENT naming the field (not INTERNAL); a message past the limit is refused", async () => {
    const seed = await rawGenerate(r, { sampling: { topK: 0, maxTokens: 2, stop: [], stopTokenIds: [], ignoreEos: false, seed: 2 ** 60 } }).catch(
      (e: unknown) => e,
    );
    expect((seed as MoelaError).code).toBe(Code.INVALID_ARGUMENT);
    expect((seed as MoelaError).message).toMatch(/sampling\.seed/);
    const big = await rawGenerate(r, { prompt: { $case: "text", value: "x".repeat(100 * 1024) } }).catch((e: unknown) => e);
    expect((big as MoelaError).code).toBe(Code.RESOURCE_EXHAUSTED);
    const chars = await rawGenerate(r, { prompt: { $case: "text", value: "x".repeat(1001) } }).catch((e: unknown) => e);
    expect((chars as MoelaError).code).toBe(Code.INVALID_ARGUMENT);
    expect((chars as MoelaError).message).toMatch(/1001 characters/);
  });
});

describe("a 50 MB prompt does not stall the router", () => {
  it("with the text limit raised, a small request sent while the big one is tokenized finishes first", async () => {
    const r = await rig({ maxBodyBytes: 64 * 1024 * 1024, maxPromptChars: 60_000_000, tokenizerThreads: 1 });
    const order: string[] = [];
    const bigCtl = new AbortController();
    const text = "The quick brown fox jumps over the lazy dog. ".repeat(Math.ceil(50_000_000 / 45));
    const big = post(r, "/v1/completions", { prompt: text, max_tokens: 1 }, {}, bigCtl.signal).then(
      (res) => order.push(`big ${res.status}`),
      () => order.push("big aborted"),
    );
    // Wait until the router hands the big prompt to a tokenizer thread.
    await expect.poll(() => r.lines.some((l) => l.includes('"tokenizing on a thread"')), { timeout: 60_000, interval: 50 }).toBe(true);
    const small = await post(r, "/v1/completions", { prompt: "Hello there, small request", max_tokens: 2 });
    order.push(`small ${small.status}`);
    await small.text();
    expect(order).toEqual(["small 200"]);
    // The big one is abandoned: its thread is replaced rather than left to grind on.
    bigCtl.abort();
    await big;
    expect(order).toEqual(["small 200", "big aborted"]);
    await expect.poll(() => r.lines.some((l) => l.includes("replacing a tokenizer thread")), { timeout: 10_000 }).toBe(true);
  }, 120_000);
});

describe("a prefill job that vanishes from Redis", () => {
  it("is enqueued again, and the request completes", async () => {
    const r = await rig({}, { prefill: false, jobCheckIntervalMs: 100 });
    const res = post(r, "/v1/completions", { prompt: [5, 700, 701], max_tokens: 3 }, { "x-request-id": "vanish" });
    const jobId = await until(async () => (await r.queue.getJobs(["waiting"])).map((j) => j.id).find((id) => id?.startsWith("vanish-")), 10_000);
    // As after a Redis restart without persistence: the job is simply gone.
    await r.queue.remove(jobId);
    expect(await r.queue.getJobState(jobId)).toBe("unknown");
    await until(async () => (await r.queue.getJobState(jobId)) === "waiting" || undefined, 10_000);
    r.worker = standInPrefill(r.prefix);
    const done = await res;
    expect(done.status).toBe(200);
    expect(((await done.json()) as { choices: { finish_reason: string }[] }).choices[0]!.finish_reason).toBe("length");
    expect(await metric(r, 'moela_router_retries_total{reason="prefill_vanished"}')).toBeGreaterThanOrEqual(1);
  });

  it("vanishing again and again fails the request at once with a retryable 503, not at its deadline", async () => {
    const r = await rig({ requestTimeoutMs: 60_000 }, { prefill: false, jobCheckIntervalMs: 100 });
    let stop = false;
    const flusher = (async () => {
      while (!stop) {
        for (const j of await r.queue.getJobs(["waiting"])) if (j.id?.startsWith("gone-")) await r.queue.remove(j.id).catch(() => 0);
        await sleep(20);
      }
    })();
    try {
      const started = Date.now();
      const res = await post(r, "/v1/completions", { prompt: [5, 800, 801], max_tokens: 3 }, { "x-request-id": "gone" });
      expect(res.status).toBe(503);
      expect(res.headers.get("retry-after")).toBe("1");
      expect((await errorOf(res)).message).toMatch(/prefill job vanished from the queue 3 times/);
      expect(Date.now() - started).toBeLessThan(20_000);
    } finally {
      stop = true;
      await flusher;
    }
  });
});

async function until<T>(f: () => Promise<T | undefined>, ms: number): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`condition not met within ${ms} ms`);
    await sleep(25);
  }
}
