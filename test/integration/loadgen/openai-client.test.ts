/**
 * The real client path: `moela bench` and the loadgen's OpenAI client against a small node:http server
 * in this process that streams SSE the way an OpenAI-compatible server does (per-chunk usage when asked,
 * two tokens in some chunks, a final usage chunk, [DONE]).
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { buildRequests, fetchModelName, levelStats, openAiTarget, parseLengthDist, realClock, runBench, type BenchReport } from "@moela/loadgen";
import { run } from "../../../services/cli/src/main.js";

const TOKEN_GAP_MS = 4;
const FIRST_TOKEN_MS = 25;

interface Seen {
  readonly path: string;
  readonly body: Record<string, unknown>;
}

const seen: Seen[] = [];
let server: Server;
let base: string;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function readBody(req: IncomingMessage): Promise<string> {
  let s = "";
  for await (const c of req) s += String(c);
  return s;
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (req.method === "GET" && req.url === "/v1/models") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ object: "list", data: [{ id: "fake-model", object: "model" }] }));
    return;
  }
  if (req.method !== "POST" || req.url !== "/v1/completions") {
    res.writeHead(404).end();
    return;
  }
  const body = JSON.parse(await readBody(req)) as Record<string, unknown>;
  seen.push({ path: req.url, body });
  if (body.model !== "fake-model") {
    res.writeHead(404, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: { message: `model ${String(body.model)} not found`, type: "NotFoundError" } }));
    return;
  }
  const max = body.max_tokens as number;
  const prompt = (body.prompt as number[]).length;
  const opts = (body.stream_options ?? {}) as { include_usage?: boolean; continuous_usage_stats?: boolean };
  const usage = (n: number) => ({ prompt_tokens: prompt, completion_tokens: n, total_tokens: prompt + n });
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  await sleep(FIRST_TOKEN_MS);
  // Chunks of 1, 2, 1, 2, ... tokens (a server that coalesces), the last one with finish_reason.
  let sent = 0;
  for (let i = 0; sent < max; i++) {
    if (i > 0) await sleep(TOKEN_GAP_MS);
    const n = Math.min(i % 2 === 0 ? 1 : 2, max - sent);
    sent += n;
    const chunk = {
      id: "cmpl-1",
      object: "text_completion",
      model: "fake-model",
      choices: [{ index: 0, text: "x".repeat(n), logprobs: null, finish_reason: sent === max ? "length" : null }],
      ...(opts.continuous_usage_stats ? { usage: usage(sent) } : {}),
    };
    // Split each event over two writes: the client must reassemble it.
    const text = `data: ${JSON.stringify(chunk)}\n\n`;
    res.write(text.slice(0, 10));
    res.write(text.slice(10));
  }
  if (opts.include_usage) res.write(`data: ${JSON.stringify({ id: "cmpl-1", object: "text_completion", choices: [], usage: usage(max) })}\n\n`);
  res.end("data: [DONE]\n\n");
}

beforeAll(async () => {
  server = createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise<void>((r) => server.close(() => r()));
});

const workload = { input: parseLengthDist("12"), output: parseLengthDist("uniform:3,9"), prompt: { kind: "ids", lo: 3, hi: 999 } } as const;

function target(over: { model?: string; continuousUsage?: boolean } = {}) {
  return openAiTarget({
    name: "fake",
    baseUrl: base,
    model: over.model ?? "fake-model",
    api: "completions",
    ignoreEos: true,
    continuousUsage: over.continuousUsage ?? true,
    temperature: 0,
    timeoutMs: 10_000,
  });
}

describe("the OpenAI client against a streaming HTTP server", () => {
  it("finds the model, sends what it promises, and counts every token exactly", async () => {
    expect(await fetchModelName(`${base}/v1/`)).toBe("fake-model");
    seen.length = 0;
    const [run0] = await runBench({
      targets: [target()],
      levels: [{ kind: "concurrency", value: 3 }],
      numPrompts: 6,
      warmup: 1,
      rounds: 1,
      requests: (_level, phase, n) => buildRequests(workload, n, phase === "warmup" ? 1 : 0),
      arrivalSeed: () => 0,
      clock: realClock,
    });
    const specs = buildRequests(workload, 6, 0);
    expect(seen).toHaveLength(7);
    expect(seen[1]!.body).toMatchObject({
      model: "fake-model",
      stream: true,
      ignore_eos: true,
      temperature: 0,
      stream_options: { include_usage: true, continuous_usage_stats: true },
    });
    const measured = seen.slice(1).map((s) => s.body);
    expect(measured.map((b) => b.prompt).sort()).toEqual(specs.map((s) => s.prompt).sort());
    const rs = run0!.records[0]!;
    expect(rs.map((r) => r.outputTokens)).toEqual(specs.map((s) => s.maxTokens));
    expect(rs.every((r) => r.countsExact && r.promptTokens === 12 && r.error === undefined)).toBe(true);
    expect(rs.map((r) => r.chunks.reduce((n, c) => n + c.tokens, 0))).toEqual(specs.map((s) => s.maxTokens));
    const s = levelStats(rs);
    expect(s.completed).toBe(6);
    expect(s.itlPerToken).toBe(true);
    expect(s.ttftMs!.p50).toBeGreaterThanOrEqual(FIRST_TOKEN_MS - 1);
    expect(s.tpotMs!.p50).toBeGreaterThan(0);
    // A chunk of two tokens contributes two gaps: as many ITL samples as tokens after the first.
    expect(s.itlMs!.count).toBe(specs.reduce((n, x) => n + x.maxTokens - 1, 0));
  });

  it("without per-chunk usage, chunks are counted as one token each and usage fixes the total", async () => {
    const [r0] = await runBench({
      targets: [target({ continuousUsage: false })],
      levels: [{ kind: "concurrency", value: 1 }],
      numPrompts: 1,
      warmup: 0,
      rounds: 1,
      requests: () => [{ index: 0, prompt: [5, 6, 7], promptLen: 3, maxTokens: 6 }],
      arrivalSeed: () => 0,
      clock: realClock,
    });
    const r = r0!.records[0]![0]!;
    expect(r.countsExact).toBe(false);
    expect(r.chunks).toHaveLength(4);
    expect(r.outputTokens).toBe(6);
  });

  it("16 requests in flight on one abortable bench raise no MaxListenersExceededWarning", async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on("warning", onWarning);
    try {
      const [r0] = await runBench({
        targets: [target()],
        levels: [{ kind: "concurrency", value: 16 }],
        numPrompts: 16,
        warmup: 0,
        rounds: 1,
        requests: (_l, _p, n) => buildRequests(workload, n, 3),
        arrivalSeed: () => 0,
        clock: realClock,
        signal: new AbortController().signal,
      });
      expect(levelStats(r0!.records[0]!).completed).toBe(16);
      await sleep(10); // warnings are emitted on the next tick
    } finally {
      process.off("warning", onWarning);
    }
    expect(warnings).not.toContain("MaxListenersExceededWarning");
  });

  it("an HTTP error is a failed request with the server's message", async () => {
    const [r0] = await runBench({
      targets: [target({ model: "nope" })],
      levels: [{ kind: "concurrency", value: 1 }],
      numPrompts: 2,
      warmup: 0,
      rounds: 1,
      requests: (_l, _p, n) => buildRequests(workload, n, 0),
      arrivalSeed: () => 0,
      clock: realClock,
    });
    expect(r0!.records[0]!.map((r) => r.error)).toEqual(["HTTP 404: model nope not found", "HTTP 404: model nope not found"]);
  });

  it("an unreachable target fails the model lookup with its URL", async () => {
    await expect(fetchModelName("http://127.0.0.1:1")).rejects.toThrow(/cannot reach http:\/\/127.0.0.1:1\/v1\/models/);
  });
});

describe("moela bench", () => {
  it("compares two targets, prints the tables, and writes the JSON report and the SVG", async () => {
    const dir = mkdtempSync(join(tmpdir(), "moela-bench-"));
    const out: string[] = [];
    const spy = vi.spyOn(process.stdout, "write").mockImplementation((s: string | Uint8Array) => {
      out.push(String(s));
      return true;
    });
    try {
      const rc = await run([
        "bench",
        "--target",
        base,
        "--target",
        `${base}/v1`,
        "--label",
        "one",
        "--label",
        "two",
        "--concurrency",
        "1,2",
        "--num-prompts",
        "4",
        "--warmup",
        "1",
        "--rounds",
        "2",
        "--input-len",
        "8",
        "--output-len",
        "4",
        "--no-progress",
        "--json",
        join(dir, "r.json"),
        "--svg",
        join(dir, "r.svg"),
      ]);
      expect(rc).toBe(0);
    } finally {
      spy.mockRestore();
    }
    const text = out.join("");
    expect(text).toContain(`### one: ${base}/v1 (model fake-model)`);
    expect(text).toContain("### two / one (ratios");
    const report = JSON.parse(readFileSync(join(dir, "r.json"), "utf8")) as BenchReport;
    expect(report.levels.map((l) => l.label)).toEqual(["c=1", "c=2"]);
    expect(report.levels.every((l) => l.stats.every((s) => s.completed === 4 && s.outputTokens === 16))).toBe(true);
    expect(report.config).toMatchObject({ numPrompts: 4, rounds: 2, inputLen: "fixed:8", outputLen: "fixed:4" });
    expect(report.config.command).toBe(
      `moela bench --target ${base} --target ${base}/v1 --label one --label two --api completions --concurrency 1,2 --num-prompts 4 --warmup 1 --rounds 2 --input-len 8 --output-len 4 --prompt ids --token-id-range 3:999 --seed 0 --temperature 0 --timeout 600`,
    );
    expect(readFileSync(join(dir, "r.svg"), "utf8")).toContain("<svg");
    rmSync(dir, { recursive: true, force: true });
  });

  it("refuses bad flags with a message and exit code 2", async () => {
    const err: string[] = [];
    const spy = vi.spyOn(process.stderr, "write").mockImplementation((s: string | Uint8Array) => {
      err.push(String(s));
      return true;
    });
    try {
      expect(await run(["bench", "--target", base, "--concurrency", "0,2"])).toBe(2);
      expect(await run(["bench"])).toBe(2);
      expect(await run(["bench", "--target", base, "--input-len", "poisson:3"])).toBe(2);
    } finally {
      spy.mockRestore();
    }
    expect(err.join("")).toContain("--concurrency must be a comma-separated list of positive integers");
    expect(err.join("")).toContain("--target URL is required");
  });
});
