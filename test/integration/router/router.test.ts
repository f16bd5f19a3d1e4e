/**
 * The router against real neighbours, driven by the official openai client: real Redis (a unique queue
 * prefix per test file, obliterated afterwards), a real BullMQ worker standing in for prefill, and a
 * scripted decode instance serving the real Decode gRPC service on 127.0.0.1:0. The scripted decode
 * streams, for each request, tokens taken from its prompt (BOS skipped, cycled) two per message, with
 * logprobs when asked, until max_tokens or a stop token id, once the "prefill" worker has delivered the
 * job. So every test knows exactly which tokens the router received and can check what it made of them:
 * detokenized text, stop strings (and the Decode.Cancel they cause), SSE chunks, logprobs formats,
 * usage, errors, a disconnecting client, a failed prefill job, and the gRPC Generate API.
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import OpenAI, { APIError } from "openai";
import { createLogger, FailureReason, InvalidArgumentError, MoelaError, UnavailableError } from "@moela/core";
import { FinishReason, GenerateClient, type GenerateResponse, type TokenEvent } from "@moela/proto-gen";
import { connect, serverStreamCall } from "@moela/rpc";
import { createPrefillQueue, parsePrefillJob, type PrefillJob } from "@moela/scheduler";
import { Tokenizer } from "@moela/tokenizer";
import { UnrecoverableError, type Queue, type Worker } from "bullmq";
import { startRouter, type StartedRouter } from "../../../services/router/src/main.js";
import {
  closeRouterRig,
  idleDecodeStatus,
  REDIS_URL as REDIS,
  ScriptedDecode,
  sleep,
  standInPrefill,
  streamUsage,
  testRouterConfig,
  TINY_MODEL_DIR as MODEL,
  type DecodeScript,
} from "../../helpers/router-rig.js";

const silent = createLogger("router-test", process.env.TEST_LOG ?? "silent");
const tokenizer = Tokenizer.fromDir(MODEL);
/** A prompt token that makes the stand-in prefill fail the job for good. */
const POISON = 999;
/** A prompt token that makes the scripted decode lose a request's first attempt after LOSE_AFTER tokens. */
const LOSE = 998;
const LOSE_AFTER = 3;

/** What the scripted decode streams for a job: prompt tokens after BOS, cycled, up to max_tokens or a stop id. */
export function script(job: PrefillJob): { ids: number[]; finish: FinishReason } {
  const p = job.promptTokenIds.length > 1 ? job.promptTokenIds.slice(1) : job.promptTokenIds;
  const ids: number[] = [];
  for (let k = 0; k < job.sampling.maxTokens; k++) {
    const id = p[k % p.length]!;
    ids.push(id);
    if (job.sampling.stopTokenIds.includes(id)) return { ids, finish: FinishReason.FINISH_REASON_STOP };
  }
  return { ids, finish: FinishReason.FINISH_REASON_LENGTH };
}

const logprobOf = (k: number): number => -0.125 * (k + 1);

/**
 * The scripted tokens, two per message with logprobs when asked, delayMs apart (read when the stream starts:
 * a slow stream for the disconnect tests).
 */
const scriptedTokens: DecodeScript = async function* (job, req, signal, decode) {
  const { ids, finish } = script(job);
  const slow = decode.delayMs;
  // A first attempt (not `<id>.m<n>`) of a LOSE prompt: the step "fails" after LOSE_AFTER tokens.
  const loseAt = job.promptTokenIds.includes(LOSE) && !/\.m\d+$/.test(req.requestId) ? LOSE_AFTER : Infinity;
  for (let k = 0; k < ids.length; k += 2) {
    if (k >= loseAt) throw new UnavailableError("decode step failed: expert-host 1 is unavailable", { reason: FailureReason.DECODE_STEP_FAILED });
    const tokens: TokenEvent[] = ids.slice(k, Math.min(k + 2, loseAt)).map((tokenId, j) => ({
      index: k + j,
      tokenId,
      ...(job.sampling.logprobs !== null
        ? {
            logprobs: {
              logprob: logprobOf(k + j),
              top: [
                { tokenId, logprob: logprobOf(k + j) },
                { tokenId: 7, logprob: -5 },
              ].slice(0, job.sampling.logprobs),
            },
          }
        : {}),
    }));
    const last = k + 2 >= ids.length && loseAt === Infinity;
    yield { tokens, finishReason: last ? finish : FinishReason.FINISH_REASON_UNSPECIFIED, ...(last ? { usage: streamUsage(job, ids.length) } : {}) };
    if (slow > 0) await sleep(slow, signal);
    if (signal.aborted) throw signal.reason;
  }
};

const prefix = `moela-test-${randomUUID()}`;
let decode: ScriptedDecode;
let queue: Queue;
let worker: Worker;
let router: StartedRouter;
let client: OpenAI;
/** Jobs the stand-in prefill took, by request id. */
const taken = new Map<string, PrefillJob>();

beforeAll(async () => {
  decode = await new ScriptedDecode(scriptedTokens, (d) => idleDecodeStatus({ runningSequences: d.live.size })).start(silent);
  queue = createPrefillQueue(REDIS, prefix);
  worker = standInPrefill(prefix, (data) => {
    const job = parsePrefillJob(data);
    taken.set(job.requestId, job);
    if (job.promptTokenIds.includes(POISON)) throw new UnrecoverableError("UNAVAILABLE: expert-host 0 is unavailable");
    decode.job(job.requestId).resolve(job);
  });
  await worker.waitUntilReady();
  router = await startRouter(testRouterConfig(prefix, [decode.address], { requestTimeoutMs: 30_000 }), {
    logger: silent,
    shutdownGraceMs: 1_000,
    statusIntervalMs: 100,
  });
  client = new OpenAI({ baseURL: `${router.httpUrl}/v1`, apiKey: "none", maxRetries: 0 });
});

afterAll(async () => {
  await closeRouterRig({ router, worker, queue, decode: [decode.server] });
});

/** The text the router should make of a job's scripted tokens (special tokens skipped). */
function expectedText(job: PrefillJob): string {
  return tokenizer.decode(script(job).ids, { skipSpecialTokens: true });
}

/** The job of the request that produced completion `id`... found by its prompt (unique per test). */
function jobFor(prompt: readonly number[]): PrefillJob {
  const j = [...taken.values()].find((x) => x.promptTokenIds.join(",") === prompt.join(","));
  if (j === undefined) throw new Error(`no job with prompt ${prompt.join(",")}`);
  return j;
}

describe("/v1/completions", () => {
  it("a string prompt: BOS added, job names the chosen decode, text and usage from decode's tokens", async () => {
    const r = await client.completions.create({ model: "tiny-v3", prompt: "Hello world, once more", max_tokens: 7, temperature: 0 });
    const prompt = tokenizer.encode("Hello world, once more");
    const job = jobFor(prompt);
    expect(job.promptTokenIds[0]).toBe(tokenizer.bosTokenId);
    expect(job).toMatchObject({ decodeAddress: decode.address, precision: "exact", sampling: { maxTokens: 7, temperature: 0, logprobs: null } });
    expect(Number.isSafeInteger(job.sampling.seed)).toBe(true);
    expect(r.object).toBe("text_completion");
    expect(r.model).toBe("tiny-v3");
    expect(r.choices).toHaveLength(1);
    expect(r.choices[0]!.text).toBe(expectedText(job));
    expect(r.choices[0]!.finish_reason).toBe("length");
    expect(r.usage).toEqual({ prompt_tokens: prompt.length, completion_tokens: 7, total_tokens: prompt.length + 7 });
  });

  it("a token-id prompt is sent to prefill exactly as given", async () => {
    const ids = [400, 401, 402, 403];
    const r = await client.completions.create({ model: "tiny-v3", prompt: ids, max_tokens: 3 });
    expect(jobFor(ids).promptTokenIds).toEqual(ids);
    expect(r.choices[0]!.text).toBe(tokenizer.decode([401, 402, 403], { skipSpecialTokens: true }));
  });

  it("streams chunks whose text adds up, ends with finish_reason and a usage chunk", async () => {
    const stream = await client.completions.create({
      model: "tiny-v3",
      prompt: "streaming is fun",
      max_tokens: 9,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    const finishes: (string | null)[] = [];
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      if (chunk.choices.length === 0) usage = chunk.usage;
      for (const c of chunk.choices) {
        text += c.text;
        finishes.push(c.finish_reason);
      }
    }
    const job = jobFor(tokenizer.encode("streaming is fun"));
    expect(text).toBe(expectedText(job));
    expect(finishes.at(-1)).toBe("length");
    expect(finishes.slice(0, -1).every((f) => f === null)).toBe(true);
    expect(usage).toEqual({ prompt_tokens: job.promptTokenIds.length, completion_tokens: 9, total_tokens: job.promptTokenIds.length + 9 });
  });

  it("logprobs with echo and return_tokens_as_token_ids: prompt entries null, generated ones from decode", async () => {
    const ids = [300, 301, 302];
    const r = await client.completions.create({
      model: "tiny-v3",
      prompt: ids,
      max_tokens: 4,
      logprobs: 1,
      echo: true,
      // vLLM's extension.
      ...({ return_tokens_as_token_ids: true } as object),
    });
    const lp = r.choices[0]!.logprobs!;
    expect(lp.tokens).toEqual(["token_id:300", "token_id:301", "token_id:302", "token_id:301", "token_id:302", "token_id:301", "token_id:302"]);
    expect(lp.token_logprobs).toEqual([null, null, null, logprobOf(0), logprobOf(1), logprobOf(2), logprobOf(3)]);
    expect(lp.top_logprobs![0]).toBeNull();
    expect(lp.top_logprobs![3]).toEqual({ "token_id:301": logprobOf(0) });
    expect(lp.text_offset![1]).toBe("token_id:300".length);
    expect(r.choices[0]!.text.startsWith(tokenizer.decode(ids))).toBe(true);
  });

  it("a stop string cuts the text, finishes with stop, and cancels the request on decode", async () => {
    const prompt = "alpha beta gamma delta";
    const r = await client.completions.create({ model: "tiny-v3", prompt, max_tokens: 40, stop: ["gamma"] });
    const job = jobFor(tokenizer.encode(prompt));
    const full = expectedText(job);
    expect(r.choices[0]!.text).toBe(full.slice(0, full.indexOf("gamma")));
    expect(r.choices[0]!.finish_reason).toBe("stop");
    expect(r.usage!.completion_tokens).toBeLessThan(40);
    await decode.waitForCancel((c) => c.requestId === job.requestId && c.reason === "stop string");
  });

  it("a stop token id reported by decode finishes with stop", async () => {
    const r = await client.completions.create({ model: "tiny-v3", prompt: [500, 501, 502, 503], max_tokens: 10, ...({ stop_token_ids: [503] } as object) });
    expect(r.choices[0]!.finish_reason).toBe("stop");
    expect(r.usage!.completion_tokens).toBe(3);
  });

  it("a batch of prompts gives one choice per prompt, by index", async () => {
    const r = await client.completions.create({
      model: "tiny-v3",
      prompt: [
        [600, 601, 602],
        [610, 611],
      ],
      max_tokens: 2,
    });
    expect(r.choices.map((c) => c.index).sort()).toEqual([0, 1]);
    const byIndex = new Map(r.choices.map((c) => [c.index, c.text]));
    expect(byIndex.get(0)).toBe(tokenizer.decode([601, 602], { skipSpecialTokens: true }));
    expect(byIndex.get(1)).toBe(tokenizer.decode([611, 611], { skipSpecialTokens: true }));
    expect(r.usage).toMatchObject({ prompt_tokens: 5, completion_tokens: 4 });
  });

  it("a client that disconnects mid-stream has its request cancelled on decode", async () => {
    decode.delayMs = 30;
    try {
      const ids = [700, 701, 702, 703];
      const ctl = new AbortController();
      const res = await fetch(`${router.httpUrl}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "tiny-v3", prompt: ids, max_tokens: 1000, stream: true }),
        signal: ctl.signal,
      });
      expect(res.status).toBe(200);
      const reader = res.body!.getReader();
      await reader.read();
      ctl.abort();
      const job = jobFor(ids);
      const c = await decode.waitForCancel((x) => x.requestId === job.requestId);
      expect(c.reason).toBe("client disconnected");
    } finally {
      decode.delayMs = 0;
    }
  });

  it("a request whose decode attempt is lost mid-stream migrates: prompt + sent tokens, max_tokens reduced, indices continue", async () => {
    const ids = [LOSE, 720, 721, 722, 723];
    const stream = await client.completions.create({
      model: "tiny-v3",
      prompt: ids,
      max_tokens: 8,
      stream: true,
      logprobs: 1,
      // vLLM's extension: token ids as strings, so the test sees exactly which tokens arrived.
      ...({ return_tokens_as_token_ids: true } as object),
    });
    const got: number[] = [];
    let finish: string | null = null;
    for await (const chunk of stream) {
      const c = chunk.choices[0];
      if (c === undefined) continue;
      got.push(...(c.logprobs?.tokens ?? []).map((t) => Number(t.replace("token_id:", ""))));
      if (c.finish_reason) finish = c.finish_reason;
    }
    const first = jobFor(ids);
    const second = taken.get(`${first.requestId}.m1`);
    expect(second, "the migrated attempt's job").toBeDefined();
    const sent = script(first).ids.slice(0, LOSE_AFTER);
    expect(second!.promptTokenIds).toEqual([...ids, ...sent]);
    expect(second!.sampling.maxTokens).toBe(8 - LOSE_AFTER);
    expect(second!.sampling.seed).toBe(first.sampling.seed);
    // No gap, no duplicate: what the first attempt sent, then the whole second attempt.
    expect(got).toEqual([...sent, ...script(second!).ids]);
    expect(finish).toBe("length");
    const text = await (await fetch(router.metricsUrl)).text();
    expect(text).toMatch(/moela_router_retries_total\{reason="decode_failed"\} [1-9]/);
  });

  it("a prefill job that fails for good ends the request with its status and cancels it on decode", async () => {
    const ids = [POISON, 5, 6];
    const err = await client.completions.create({ model: "tiny-v3", prompt: ids, max_tokens: 3 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(APIError);
    expect((err as APIError).status).toBe(503);
    expect((err as APIError).message).toMatch(/prefill failed: expert-host 0 is unavailable/);
    await decode.waitForCancel((c) => c.requestId === jobFor(ids).requestId && c.reason === "prefill failed");
  });
});

describe("/v1/chat/completions", () => {
  const messages = [{ role: "user" as const, content: "tell me something" }];

  it("streams a role chunk, content deltas, a finish chunk and a usage chunk", async () => {
    const stream = await client.chat.completions.create({ model: "tiny-v3", messages, max_tokens: 6, stream: true, stream_options: { include_usage: true } });
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    for await (const c of stream) chunks.push(c);
    expect(chunks[0]!.choices[0]!.delta).toEqual({ role: "assistant", content: "" });
    const content = chunks.flatMap((c) => c.choices.map((x) => x.delta.content ?? "")).join("");
    const job = jobFor(tokenizer.encodeChat(messages));
    expect(content).toBe(expectedText(job));
    const withChoices = chunks.filter((c) => c.choices.length > 0);
    expect(withChoices.at(-1)!.choices[0]).toMatchObject({ delta: {}, finish_reason: "length" });
    expect(chunks.at(-1)!.choices).toEqual([]);
    expect(chunks.at(-1)!.usage).toEqual({ prompt_tokens: job.promptTokenIds.length, completion_tokens: 6, total_tokens: job.promptTokenIds.length + 6 });
    expect(chunks.slice(0, -1).every((c) => c.usage === null)).toBe(true);
  });

  it("a full response with logprobs in chat format", async () => {
    const msgs = [{ role: "user" as const, content: "logprobs please" }];
    const r = await client.chat.completions.create({ model: "tiny-v3", messages: msgs, max_tokens: 3, logprobs: true, top_logprobs: 2 });
    const job = jobFor(tokenizer.encodeChat(msgs));
    expect(job.sampling.logprobs).toBe(2);
    expect(r.object).toBe("chat.completion");
    expect(r.choices[0]!.message).toMatchObject({ role: "assistant", content: expectedText(job) });
    const content = r.choices[0]!.logprobs!.content!;
    expect(content).toHaveLength(3);
    const first = script(job).ids[0]!;
    expect(content[0]).toEqual({
      token: tokenizer.decode([first]),
      logprob: logprobOf(0),
      bytes: [...Buffer.from(tokenizer.decode([first]), "utf8")],
      top_logprobs: [
        { token: tokenizer.decode([first]), logprob: logprobOf(0), bytes: [...Buffer.from(tokenizer.decode([first]), "utf8")] },
        { token: tokenizer.decode([7]), logprob: -5, bytes: [...Buffer.from(tokenizer.decode([7]), "utf8")] },
      ],
    });
  });
});

describe("errors", () => {
  it.each([
    { name: "temperature out of range", body: { model: "tiny-v3", prompt: "x", temperature: 3 }, status: 400, param: "temperature" },
    { name: "a presence penalty out of range", body: { model: "tiny-v3", prompt: "x", presence_penalty: 2.5 }, status: 400, param: "presence_penalty" },
    { name: "an unknown model", body: { model: "nope", prompt: "x" }, status: 404, param: "model" },
    { name: "n = 0", body: { model: "tiny-v3", prompt: "x", n: 0 }, status: 400, param: "n" },
    { name: "min_tokens over max_tokens", body: { model: "tiny-v3", prompt: "x", max_tokens: 2, min_tokens: 3 }, status: 400, param: "min_tokens" },
  ])("$name -> $status through the openai client", async ({ body, status, param }) => {
    const err = await client.completions.create(body as unknown as OpenAI.CompletionCreateParamsNonStreaming).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(APIError);
    expect((err as APIError).status).toBe(status);
    expect((err as APIError).param).toBe(param);
  });

  it.each([
    { name: "malformed JSON", path: "/v1/completions", body: '{"prompt": "x",', status: 400, message: /malformed JSON body/ },
    { name: "an empty body", path: "/v1/chat/completions", body: "", status: 400, message: /empty/i },
    { name: "a body that is not an object", path: "/v1/completions", body: "[1]", status: 400, message: /must be a JSON object/ },
    { name: "an unknown route", path: "/v1/embeddings", body: "{}", status: 404, message: /no route for POST \/v1\/embeddings/ },
  ])("$name -> $status as an OpenAI error object", async ({ path, body, status, message }) => {
    const res = await fetch(`${router.httpUrl}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body });
    expect(res.status).toBe(status);
    const json = (await res.json()) as { error: Record<string, unknown> };
    expect(Object.keys(json.error).sort()).toEqual(["code", "message", "param", "type"]);
    expect(json.error.message).toMatch(message);
    expect(json.error.type).toBe("invalid_request_error");
  });

  it("unknown fields are ignored, named in x-moela-ignored-fields (also on a later refusal); --strict-api refuses them", async () => {
    // Refused after the fields were read (the context check needs the rendered prompt): the header is there.
    const res = await fetch(`${router.httpUrl}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny-v3", messages: [{ role: "user", content: "hi", mood: "glad" }], max_tokens: 4096, frobnicate: 1 }),
    });
    expect(res.status).toBe(400);
    expect(res.headers.get("x-moela-ignored-fields")).toBe("frobnicate, messages[0].mood");
    expect(((await res.json()) as { error: { param: string } }).error.param).toBe("max_tokens");
    const strict = await startRouter(testRouterConfig(prefix, ["127.0.0.1:1"], { requestTimeoutMs: 5_000, maxInFlight: 4, strictApi: true }), {
      logger: silent,
      shutdownGraceMs: 100,
    });
    try {
      const c = new OpenAI({ baseURL: `${strict.httpUrl}/v1`, apiKey: "none", maxRetries: 0 });
      const err = await c.completions
        .create({ model: "tiny-v3", prompt: "x", best_of_luck: true } as unknown as OpenAI.CompletionCreateParamsNonStreaming)
        .catch((e: unknown) => e);
      expect((err as APIError).status).toBe(400);
      expect((err as APIError).param).toBe("best_of_luck");
    } finally {
      await strict.close();
    }
  });

  it("no reachable decode instance -> 503", async () => {
    const lonely = await startRouter(testRouterConfig(prefix, ["127.0.0.1:1"], { requestTimeoutMs: 5_000, maxInFlight: 4 }), {
      logger: silent,
      shutdownGraceMs: 100,
    });
    try {
      const c = new OpenAI({ baseURL: `${lonely.httpUrl}/v1`, apiKey: "none", maxRetries: 0 });
      const err = await c.completions.create({ model: "tiny-v3", prompt: "x", max_tokens: 2, stream: true }).catch((e: unknown) => e);
      expect((err as APIError).status).toBe(503);
      // The client is told what happened, not where: no internal address (the router's log has it).
      expect((err as APIError).message).toMatch(/no decode instance is available right now; retry later/);
      expect((err as APIError).message).not.toContain("127.0.0.1");
      const health = await fetch(`${lonely.httpUrl}/health`);
      expect(await health.json()).toEqual({ status: "ok", decode: { healthy: 0, total: 1 } });
    } finally {
      await lonely.close();
    }
  });
});

describe("models, health, metrics", () => {
  it("GET /v1/models lists the served model", async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(["tiny-v3"]);
    expect(models.data[0]).toMatchObject({ object: "model", owned_by: "moela", max_model_len: 2048 });
  });

  it("GET /health answers ok with the decode instances' state", async () => {
    const res = await fetch(`${router.httpUrl}/health`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: "ok", decode: { healthy: 1, total: 1 } });
  });

  it("/metrics counts requests by outcome and tokens", async () => {
    await client.completions.create({ model: "tiny-v3", prompt: [800, 801], max_tokens: 2 });
    const body = await (await fetch(router.metricsUrl)).text();
    // Request-level series carry the served model's name (names.ts LABEL.model).
    expect(Number(/^moela_router_requests_total\{model="tiny-v3",api="openai",outcome="ok"\} (\d+)$/m.exec(body)?.[1])).toBeGreaterThan(0);
    expect(Number(/^moela_router_generation_tokens_total\{model="tiny-v3"\} (\d+)$/m.exec(body)?.[1])).toBeGreaterThan(0);
    expect(/^moela_router_time_to_first_token_seconds_count\{model="tiny-v3"\} \d+$/m.test(body)).toBe(true);
    expect(Number(/^moela_router_generations_total\{model="tiny-v3",finish_reason="length"\} (\d+)$/m.exec(body)?.[1])).toBeGreaterThan(0);
    expect(/^moela_router_queue_depth \d+$/m.test(body)).toBe(true);
  });
});

describe("gRPC Generate", () => {
  it("streams token ids, text and a final message with finish reason and usage", async () => {
    const c = connect(GenerateClient, router.grpcAddress);
    try {
      const ids = [900, 901, 902];
      const out: GenerateResponse[] = [];
      for await (const m of serverStreamCall<GenerateResponse>((md, o) =>
        c.generate(
          {
            prompt: { $case: "tokenIds", value: { ids } },
            sampling: { temperature: 0, topK: 0, maxTokens: 5, stop: [], stopTokenIds: [], ignoreEos: false, logprobs: 0 },
            model: "",
            requestId: "grpc-test-1",
            priority: 0,
            cacheSalt: "",
          },
          md,
          o,
        ),
      )) {
        out.push(m);
      }
      expect(out.every((m) => m.requestId === "grpc-test-1")).toBe(true);
      const tokens = out.flatMap((m) => m.tokenIds);
      expect(tokens).toEqual([901, 902, 901, 902, 901]);
      expect(out.map((m) => m.text).join("")).toBe(tokenizer.decode(tokens, { skipSpecialTokens: true }));
      expect(out.flatMap((m) => m.logprobs.map((l) => l.logprob))).toEqual([0, 1, 2, 3, 4].map((k) => Math.fround(logprobOf(k))));
      expect(out.at(-1)!.finishReason).toBe(FinishReason.FINISH_REASON_LENGTH);
      expect(out.at(-1)!.usage).toMatchObject({ promptTokens: 3, completionTokens: 5 });
    } finally {
      c.close();
    }
  });

  it.each([
    { name: "no prompt", req: {}, message: /prompt is required/ },
    { name: "an unknown model", req: { prompt: { $case: "text" as const, value: "x" }, model: "other" }, message: /does not exist/ },
    {
      name: "a priority past BullMQ's range",
      req: { prompt: { $case: "text" as const, value: "x" }, priority: 2 ** 21 + 1 },
      message: /priority must be at most 2097152/,
    },
    { name: "a request id with a colon", req: { prompt: { $case: "text" as const, value: "x" }, requestId: "a:b" }, message: /request_id may hold/ },
    {
      name: "top_p above 1",
      req: { prompt: { $case: "text" as const, value: "x" }, sampling: { topP: 2, topK: 0, maxTokens: 0, stop: [], stopTokenIds: [], ignoreEos: false } },
      message: /top_p/,
    },
  ])("$name -> INVALID_ARGUMENT", async ({ req, message }) => {
    const c = connect(GenerateClient, router.grpcAddress);
    try {
      const run = async (): Promise<void> => {
        for await (const _ of serverStreamCall<GenerateResponse>((md, o) =>
          c.generate({ model: "", requestId: "", priority: 0, cacheSalt: "", ...req }, md, o),
        ))
          void _;
      };
      const err = await run().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect((err as MoelaError).message).toMatch(message);
    } finally {
      c.close();
    }
  });
});

describe("graceful shutdown", () => {
  async function anotherRouter(graceMs: number): Promise<StartedRouter> {
    return startRouter(testRouterConfig(prefix, [decode.address], { requestTimeoutMs: 30_000, maxInFlight: 8 }), {
      logger: silent,
      shutdownGraceMs: graceMs,
      statusIntervalMs: 100,
    });
  }

  /** Start a streamed completion and return its reader once the first chunk is in. */
  async function openStream(r: StartedRouter, ids: number[], maxTokens: number) {
    const res = await fetch(`${r.httpUrl}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny-v3", prompt: ids, max_tokens: maxTokens, stream: true }),
    });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    let text = new TextDecoder().decode((await reader.read()).value);
    return {
      async rest(): Promise<string> {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) return text;
          text += new TextDecoder().decode(value);
        }
      },
    };
  }

  it("a stream in flight finishes normally while the router closes; new connections are refused", async () => {
    const r = await anotherRouter(10_000);
    decode.delayMs = 30;
    try {
      const s = await openStream(r, [1000, 1001, 1002], 12);
      const closed = r.close();
      const body = await s.rest();
      await closed;
      expect(body.trimEnd().endsWith("data: [DONE]")).toBe(true);
      expect(body).toContain('"finish_reason":"length"');
      expect(body).not.toContain('"error"');
      await expect(fetch(`${r.httpUrl}/health`)).rejects.toThrow();
    } finally {
      decode.delayMs = 0;
      await r.close();
    }
  });

  it("past the grace period a stream ends with an error event and is cancelled on decode", async () => {
    const r = await anotherRouter(200);
    decode.delayMs = 30;
    try {
      const ids = [1010, 1011, 1012];
      const s = await openStream(r, ids, 1000);
      const closed = r.close();
      const body = await s.rest();
      await closed;
      expect(body).toMatch(/data: \{"error":\{"message":"the router is shutting down","type":"server_error","param":null,"code":"service_unavailable"\}\}/);
      expect(body.trimEnd().endsWith("data: [DONE]")).toBe(true);
      await decode.waitForCancel((c) => c.requestId === jobFor(ids).requestId);
    } finally {
      decode.delayMs = 0;
      await r.close();
    }
  });
});

describe("admission", () => {
  it("past --max-in-flight a request is refused with 429 and Retry-After", async () => {
    const small = await startRouter(testRouterConfig(prefix, [decode.address], { requestTimeoutMs: 30_000, maxInFlight: 1 }), {
      logger: silent,
      shutdownGraceMs: 1_000,
      statusIntervalMs: 100,
    });
    try {
      // Two prompts in one request need two slots; the bound is one.
      const res = await fetch(`${small.httpUrl}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: "tiny-v3",
          prompt: [
            [110, 111],
            [112, 113],
          ],
          max_tokens: 2,
        }),
      });
      expect(res.status).toBe(429);
      expect(res.headers.get("retry-after")).toBe("1");
      expect(((await res.json()) as { error: { type: string } }).error.type).toBe("rate_limit_error");
    } finally {
      await small.close();
    }
  });
});
