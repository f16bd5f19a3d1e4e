// `moela serve --role all` as users run it: one real process (router, prefill, decode and the experts
// inside it, no Redis, no gRPC) with the OpenAI API on a real port. Concurrent chat and completion
// requests, streamed and not, through the official `openai` client must give exactly the greedy tokens of
// `moela generate` (the exactness oracle), while the engine batches them; a client that disconnects frees
// its sequence at once; beyond --max-in-flight the answer is 429 with Retry-After.
// One server for the file; short completions (the suite runs on 2 cores).
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { MoelaClient } from "@moela/client";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { MOELA_BIN, REPO_ROOT, TINY_MODEL } from "../../services/cli/src/launcher.js";
import { mapLimit, metricSum, moelaGenerate, scrapeMetrics, type GenerateResult } from "../helpers/cluster.js";

const MAX_TOKENS = 24;
const MAX_NUM_SEQS = 4;
const MAX_IN_FLIGHT = 6;
/** Logprobs come back as JSON numbers from the same float32 kernels: equal up to the last bits. */
const LOGPROB_TOL = 1e-4;
const IDS = [0, 399, 332];
const TEXT = "Hello";
const CHAT = "What is a hazelnut?";

// vLLM's extensions: the official client sends extra body fields as given.
type Extra = { return_tokens_as_token_ids?: boolean; ignore_eos?: boolean };

interface Server {
  readonly child: ChildProcess;
  readonly url: string;
  /** host:port of the gRPC Generate API (--grpc-address). */
  readonly grpc: string | undefined;
  readonly stderr: () => string;
  readonly exited: Promise<number | null>;
}

async function startServer(args: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<Server> {
  const child = spawn(process.execPath, [MOELA_BIN, "serve", "--role", "all", ...args], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"], env });
  let stderr = "";
  child.stderr!.on("data", (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const ready = await new Promise<{ http: string; grpc?: string }>((resolve, reject) => {
    const rl = createInterface({ input: child.stdout! });
    rl.on("line", (line) => {
      if (!line.startsWith("{")) return;
      const r = JSON.parse(line) as { event?: string; role?: string; http?: string; grpc?: string };
      if (r.event === "ready" && r.role === "all" && typeof r.http === "string") resolve({ http: r.http, ...(r.grpc !== undefined ? { grpc: r.grpc } : {}) });
    });
    void exited.then((code) => reject(new Error(`moela serve --role all exited with ${code} before it was ready:\n${stderr.slice(-4000)}`)));
  });
  return { child, url: ready.http, grpc: ready.grpc, stderr: () => stderr, exited };
}

/** SIGTERM, and the server must exit 0 within 30 s (SIGKILL if it does not); nothing when it never started. */
async function stopServer(server: Server | undefined): Promise<void> {
  if (server === undefined) return;
  server.child.kill("SIGTERM");
  const code = await Promise.race([server.exited, new Promise<"late">((r) => setTimeout(() => r("late"), 30_000))]);
  if (code === "late") server.child.kill("SIGKILL");
  expect(code, `exit after SIGTERM\n${server.stderr().slice(-2000)}`).toBe(0);
}

/** "token_id:123" -> 123 (return_tokens_as_token_ids). */
function idsOf(tokens: readonly string[]): number[] {
  return tokens.map((t) => {
    const m = /^token_id:(\d+)$/.exec(t);
    if (m === null) throw new Error(`expected "token_id:<id>", got ${JSON.stringify(t)}`);
    return Number(m[1]);
  });
}

interface Health {
  status: string;
  engine: { running: number; waiting: number; kv_blocks_used: number; kv_blocks_capacity: number };
}

async function health(url: string): Promise<Health> {
  const res = await fetch(`${url}/health`);
  expect(res.status).toBe(200);
  return (await res.json()) as Health;
}

async function until<T>(what: string, probe: () => Promise<T>, ok: (v: T) => boolean, ms = 15_000): Promise<T> {
  return vi.waitFor(
    async () => {
      const v = await probe();
      if (!ok(v)) throw new Error(`${what}: still ${JSON.stringify(v)}`);
      return v;
    },
    { timeout: ms, interval: 50 },
  );
}

/** A streaming completion over raw fetch; resolves once its first SSE data line arrived. */
async function openStream(url: string, prompt: number[], maxTokens: number): Promise<{ ctl: AbortController; done: Promise<void> }> {
  const ctl = new AbortController();
  const res = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true, stream: true }),
    signal: ctl.signal,
  });
  expect(res.status).toBe(200);
  const reader = res.body!.getReader();
  const first = await reader.read();
  expect(first.done).toBe(false);
  expect(new TextDecoder().decode(first.value)).toMatch(/^data: \{/);
  // Keep reading (so the server is never held up by a full socket) until the abort ends it.
  const done = (async () => {
    try {
      for (;;) if ((await reader.read()).done) return;
    } catch (err) {
      if (!ctl.signal.aborted) throw err;
    }
  })();
  return { ctl, done };
}

describe("moela serve --role all: flags", () => {
  const run = (args: string[]) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [MOELA_BIN, "serve", "--role", "all", ...args], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
      let stdout = "";
      let stderr = "";
      child.stdout!.on("data", (b: Buffer) => (stdout += b.toString()));
      child.stderr!.on("data", (b: Buffer) => (stderr += b.toString()));
      child.once("exit", (code) => resolve({ code, stdout, stderr }));
    });

  it("--help prints its usage with every flag's env twin and exits 0; a bad value exits 2 naming the flag and its env twin", async () => {
    const [help, bad] = await Promise.all([run(["--help"]), run(["--model", TINY_MODEL, "--max-num-seqs", "0"])]);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^usage: moela serve --role all/);
    expect(help.stdout).toContain("--max-num-seqs <v>");
    expect(help.stdout).toContain("[env MOELA_ALL_MAX_IN_FLIGHT]");
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--max-num-seqs (env MOELA_ALL_MAX_NUM_SEQS) must be at least 1");
  }, 120_000);
});

describe("moela serve --role all", () => {
  let server: Server;
  let client: OpenAI;
  const oracle: { ids?: GenerateResult | undefined; text?: GenerateResult | undefined; chat?: GenerateResult | undefined } = {};

  beforeAll(async () => {
    // The oracle runs while the server starts (two at a time: the suite shares 2 cores). It drafts three tokens per
    // step and the server none: greedy tokens and logprobs are the same either way.
    const started = startServer([
      "--model",
      TINY_MODEL,
      "--port",
      "0",
      "--threads",
      "1",
      "--log-level",
      "warn",
      "--max-num-seqs",
      String(MAX_NUM_SEQS),
      "--max-in-flight",
      String(MAX_IN_FLIGHT),
      // One token per sequence per step, so the step count tells whether sequences shared steps.
      "--speculative",
      "off",
      "--grpc-address",
      "127.0.0.1:0",
    ]);
    const generated = mapLimit([{ promptIds: IDS }, { prompt: TEXT }, { chat: CHAT }] as const, 1, (r) =>
      moelaGenerate({ ...r, maxTokens: MAX_TOKENS, extraArgs: ["--ignore-eos", "--threads", "1", "--speculative", "on", "--speculative-tokens", "3"] }),
    );
    [server, [oracle.ids, oracle.text, oracle.chat]] = await Promise.all([started, generated]);
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 120_000 });
  }, 400_000);

  afterAll(() => stopServer(server), 60_000);

  it("answers /health, /v1/models and /metrics on the API port", async () => {
    const h = await health(server.url);
    expect(h.status).toBe("ok");
    expect(h.engine.kv_blocks_capacity).toBe(2048);
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(["tiny-v3"]);
    const metrics = await scrapeMetrics(`${server.url}/metrics`);
    expect(metrics.has("moela_router_requests_in_flight")).toBe(true);
    expect(metricSum(metrics, "moela_decode_kv_blocks_capacity")).toBe(2048);
  });

  it("gives moela generate's greedy tokens to concurrent chat and completion requests, streamed and not, batched", async () => {
    const before = await scrapeMetrics(`${server.url}/metrics`);
    const model = "tiny-v3";
    const base = { model, max_tokens: MAX_TOKENS, temperature: 0, ignore_eos: true } as const;
    const completion = (prompt: string | number[]) =>
      client.completions.create({ ...base, prompt, logprobs: 1, return_tokens_as_token_ids: true } as OpenAI.Completions.CompletionCreateParamsNonStreaming &
        Extra);
    const completionStream = async (prompt: string | number[]) => {
      const stream = await client.completions.create({
        ...base,
        prompt,
        logprobs: 1,
        return_tokens_as_token_ids: true,
        stream: true,
      } as OpenAI.Completions.CompletionCreateParamsStreaming & Extra);
      const tokens: string[] = [];
      const logprobs: number[] = [];
      let finish: string | null = null;
      for await (const chunk of stream) {
        for (const c of chunk.choices) {
          tokens.push(...(c.logprobs?.tokens ?? []));
          logprobs.push(...(c.logprobs?.token_logprobs ?? []).map((x) => x ?? NaN));
          finish = c.finish_reason ?? finish;
        }
      }
      return { ids: idsOf(tokens), logprobs, finish };
    };
    const chat = () =>
      client.chat.completions.create({ ...base, messages: [{ role: "user", content: CHAT }] } as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming & Extra);
    const chatStream = async () => {
      const stream = await client.chat.completions.create({
        ...base,
        messages: [{ role: "user", content: CHAT }],
        stream: true,
      } as OpenAI.Chat.ChatCompletionCreateParamsStreaming & Extra);
      let text = "";
      let finish: string | null = null;
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta.content ?? "";
        finish = chunk.choices[0]?.finish_reason ?? finish;
      }
      return { text, finish };
    };

    // All six at once: more than --max-num-seqs, so two also wait for a batch slot.
    const [idsFull, idsStream, textFull, textStream, chatFull, chatStreamed] = await Promise.all([
      completion(IDS),
      completionStream(IDS),
      completion(TEXT),
      completionStream(TEXT),
      chat(),
      chatStream(),
    ]);

    const o = { ids: oracle.ids!, text: oracle.text!, chat: oracle.chat! };
    expect(o.ids.tokenIds).toHaveLength(MAX_TOKENS);
    const full = idsFull.choices[0]!;
    expect(idsOf(full.logprobs!.tokens!)).toEqual(o.ids.tokenIds);
    full.logprobs!.token_logprobs!.forEach((lp, i) => expect(Math.abs(lp! - o.ids.logprobs[i]!)).toBeLessThan(LOGPROB_TOL));
    expect(full.finish_reason).toBe("length");
    expect(idsFull.usage).toMatchObject({ prompt_tokens: IDS.length, completion_tokens: MAX_TOKENS });
    expect(idsStream.ids).toEqual(o.ids.tokenIds);
    idsStream.logprobs.forEach((lp, i) => expect(Math.abs(lp - o.ids.logprobs[i]!)).toBeLessThan(LOGPROB_TOL));
    expect(idsStream.finish).toBe("length");

    expect(idsOf(textFull.choices[0]!.logprobs!.tokens!)).toEqual(o.text.tokenIds);
    expect(textFull.choices[0]!.text).toBe(o.text.text);
    expect(textStream.ids).toEqual(o.text.tokenIds);

    expect(typeof o.chat.text).toBe("string");
    expect(o.chat.text!.length).toBeGreaterThan(0);
    expect(chatFull.choices[0]!.message.content).toBe(o.chat.text);
    expect(chatFull.usage?.completion_tokens).toBe(MAX_TOKENS);
    expect(chatStreamed.text).toBe(o.chat.text);
    expect(chatStreamed.finish).toBe("length");

    // Batched: six requests of MAX_TOKENS tokens (the first from prefill) took fewer decode steps than one
    // sequence at a time would (each step gives every sequence in it one token: speculation is off).
    const after = await scrapeMetrics(`${server.url}/metrics`);
    const delta = (name: string): number => (metricSum(after, name) ?? 0) - (metricSum(before, name) ?? 0);
    expect(delta("moela_decode_generated_tokens_total")).toBe(6 * (MAX_TOKENS - 1));
    const steps = delta("moela_decode_step_seconds_count");
    expect(steps).toBeGreaterThanOrEqual(MAX_TOKENS - 1);
    expect(steps).toBeLessThan(6 * (MAX_TOKENS - 1));
    expect(delta("moela_router_generation_tokens_total")).toBe(6 * MAX_TOKENS);
    const ok = (m: Map<string, number>): number => metricSum(m, "moela_router_requests_total", (l) => l.includes('outcome="ok"')) ?? 0;
    expect(ok(after) - ok(before)).toBe(6);
  }, 300_000);

  it("serves gRPC Generate too (--grpc-address): the SDK gets the same greedy tokens", async () => {
    expect(server.grpc).toMatch(/^127\.0\.0\.1:\d+$/);
    const sdk = new MoelaClient({ address: server.grpc!, deadlineMs: 120_000 });
    try {
      const [model] = await sdk.listModels();
      expect(model!.id).toBe("tiny-v3");
      const [ids, chat] = await Promise.all([
        sdk.complete({ prompt: IDS, maxTokens: MAX_TOKENS, temperature: 0, ignoreEos: true }),
        sdk.complete({ messages: [{ role: "user", content: CHAT }], maxTokens: MAX_TOKENS, temperature: 0, ignoreEos: true }),
      ]);
      expect(ids.tokenIds).toEqual(oracle.ids!.tokenIds);
      expect(ids.finishReason).toBe("length");
      expect(chat.text).toBe(oracle.chat!.text);
    } finally {
      sdk.close();
    }
  }, 120_000);

  it("frees a sequence as soon as its streaming client disconnects", async () => {
    const idle = await until(
      "the engine to be idle",
      () => health(server.url),
      (h) => h.engine.running === 0 && h.engine.waiting === 0,
    );
    const before = await scrapeMetrics(`${server.url}/metrics`);
    // 2000 tokens would take far longer than the test: only a cancellation ends it in time.
    const s = await openStream(server.url, [5, 6, 7], 2000);
    const running = await health(server.url);
    expect(running.engine.running).toBe(1);
    expect(running.engine.kv_blocks_used).toBeGreaterThan(idle.engine.kv_blocks_used);
    s.ctl.abort();
    await s.done;
    const h = await until(
      "the sequence to leave the batch",
      () => health(server.url),
      (v) => v.engine.running === 0,
    );
    expect(h.engine.kv_blocks_used).toBe(idle.engine.kv_blocks_used);
    const a = await scrapeMetrics(`${server.url}/metrics`);
    await new Promise((r) => setTimeout(r, 300));
    const b = await scrapeMetrics(`${server.url}/metrics`);
    const tokens = (m: Map<string, number>): number => metricSum(m, "moela_decode_generated_tokens_total") ?? 0;
    // Nothing more is generated for it, and it stopped far short of its max_tokens.
    expect(tokens(b)).toBe(tokens(a));
    expect(tokens(b) - tokens(before)).toBeLessThan(2000);
    expect(metricSum(b, "moela_router_requests_in_flight")).toBe(0);
  }, 120_000);

  it("answers 429 with Retry-After beyond --max-in-flight, and serves again once clients leave", async () => {
    await until(
      "the engine to be idle",
      () => health(server.url),
      (h) => h.engine.running === 0 && h.engine.waiting === 0,
    );
    // MAX_NUM_SEQS run; the rest wait for a slot (their streams have no first chunk yet, so open them raw).
    const running = await Promise.all(Array.from({ length: MAX_NUM_SEQS }, (_, i) => openStream(server.url, [10 + i, 20, 30], 2000)));
    const waitingCtl = new AbortController();
    const waiting = Array.from({ length: MAX_IN_FLIGHT - MAX_NUM_SEQS }, (_, i) =>
      fetch(`${server.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: [40 + i, 50], max_tokens: 2000, temperature: 0, ignore_eos: true, stream: true }),
        signal: waitingCtl.signal,
      }).catch((err: unknown) => {
        if (!waitingCtl.signal.aborted) throw err;
        return null;
      }),
    );
    const h = await until(
      "the batch to be full",
      () => health(server.url),
      (v) => v.engine.running === MAX_NUM_SEQS && v.engine.waiting === MAX_IN_FLIGHT - MAX_NUM_SEQS,
    );
    expect(h.engine.running).toBe(MAX_NUM_SEQS);

    const refused = await fetch(`${server.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: [60, 61], max_tokens: 4, temperature: 0 }),
    });
    expect(refused.status).toBe(429);
    expect(refused.headers.get("retry-after")).toBe("1");
    const body = (await refused.json()) as { error: { message: string } };
    expect(body.error.message).toMatch(/limit of 6 generations in flight/);

    waitingCtl.abort();
    await Promise.all(waiting);
    for (const s of running) s.ctl.abort();
    await Promise.all(running.map((s) => s.done));
    await until(
      "every sequence to leave",
      () => health(server.url),
      (v) => v.engine.running === 0 && v.engine.waiting === 0,
    );
    await until(
      "the admission slots to come back",
      () => scrapeMetrics(`${server.url}/metrics`),
      (m) => metricSum(m, "moela_router_requests_in_flight") === 0,
    );
    const again = await client.completions.create({ model: "tiny-v3", prompt: IDS, max_tokens: 4, temperature: 0 });
    expect(again.choices[0]!.finish_reason).toBe("length");
    expect(again.usage?.completion_tokens).toBe(4);
  }, 120_000);
});

describe("moela serve --role all --precision paper --expert-hosts 2, with an API key", () => {
  const KEY = "sk-one-process-test";
  let server: Server;
  let oracle: GenerateResult;

  beforeAll(async () => {
    // The key from the environment (MOELA_ALL_API_KEY), as a deployment passes it; the dispatcher's paper
    // roundings over two in-process expert-hosts, as `moela generate --precision paper --expert-hosts 2`.
    const started = startServer(
      ["--model", TINY_MODEL, "--port", "0", "--threads", "1", "--log-level", "warn", "--precision", "paper", "--expert-hosts", "2"],
      { ...process.env, MOELA_ALL_API_KEY: KEY },
    );
    const generated = moelaGenerate({
      promptIds: IDS,
      maxTokens: MAX_TOKENS,
      precision: "paper",
      expertHosts: 2,
      extraArgs: ["--ignore-eos", "--threads", "1"],
    });
    [server, oracle] = await Promise.all([started, generated]);
  }, 400_000);

  afterAll(() => stopServer(server), 60_000);

  it("refuses a request without the key (401), and gives the paper profile's greedy tokens with it, to concurrent requests", async () => {
    const refused = await fetch(`${server.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: IDS, max_tokens: 4, temperature: 0 }),
    });
    expect(refused.status).toBe(401);
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0, timeout: 120_000 });
    const body = { model: "tiny-v3", prompt: IDS, max_tokens: MAX_TOKENS, temperature: 0, ignore_eos: true, logprobs: 1, return_tokens_as_token_ids: true };
    const answers = await Promise.all([0, 1, 2].map(() => client.completions.create(body as OpenAI.Completions.CompletionCreateParamsNonStreaming & Extra)));
    expect(oracle.tokenIds).toHaveLength(MAX_TOKENS);
    // paper's logprobs differ from exact's by about 1e-2 on this prompt: a server that ignored --precision fails here.
    for (const a of answers) {
      expect(idsOf(a.choices[0]!.logprobs!.tokens!)).toEqual(oracle.tokenIds);
      a.choices[0]!.logprobs!.token_logprobs!.forEach((lp, i) => expect(Math.abs(lp! - oracle.logprobs[i]!)).toBeLessThan(LOGPROB_TOL));
    }
  }, 300_000);
});
