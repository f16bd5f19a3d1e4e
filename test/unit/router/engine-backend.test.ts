// The one-process backend's batching loop on the tiny model, in this process: batched greedy tokens equal a
// lone run's, requests past the batch wait their turn, and every way a request ends (too large, deadline,
// close, the caller letting go) gives its KV blocks back.
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Code, createLogger, MoelaError } from "@moela/core";
import { DeepseekModel, Engine } from "@moela/engine";
import { createServiceMetrics } from "@moela/metrics";
import type { SamplingRequest } from "@moela/openai-api";
import { EngineBackend, type EngineBackendOptions } from "../../../services/router/src/engine-backend.js";
import type { GenerateEvent, GenerateInput } from "../../../services/router/src/backend.js";

const MODEL = "models/tiny-v3";

function sampling(maxTokens: number): SamplingRequest {
  return { temperature: 0, topP: 1, topK: -1, seed: 0, maxTokens, stopTokenIds: [], ignoreEos: true, logprobs: null } as SamplingRequest;
}

function input(id: string, prompt: number[], maxTokens: number): GenerateInput {
  return { requestId: id, promptTokenIds: prompt, sampling: sampling(maxTokens), stop: [], skipSpecialTokens: true, arrivedAt: performance.now() };
}

async function drain(gen: AsyncGenerator<GenerateEvent>): Promise<{ ids: number[]; last: GenerateEvent }> {
  const ids: number[] = [];
  let last: GenerateEvent | undefined;
  for await (const ev of gen) {
    ids.push(...ev.tokens.map((t) => t.id));
    last = ev;
  }
  return { ids, last: last! };
}

async function failure(p: Promise<unknown>): Promise<MoelaError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof MoelaError) return err;
    throw err;
  }
  throw new Error("expected a failure");
}

describe("EngineBackend", () => {
  let model: DeepseekModel;
  const backends: EngineBackend[] = [];

  beforeAll(() => {
    model = DeepseekModel.load(MODEL);
  });
  afterAll(async () => {
    for (const b of backends) await b.close();
    await model.close();
  });

  function backend(o: Partial<EngineBackendOptions> & { numBlocks?: number } = {}): { b: EngineBackend; engine: Engine } {
    const engine = new Engine(model, { numBlocks: o.numBlocks ?? 64, speculation: "off" });
    const b = new EngineBackend({
      engine,
      tokenizer: null,
      maxBatch: o.maxBatch ?? 8,
      maxPrefillTokens: o.maxPrefillTokens ?? 2048,
      requestTimeoutMs: o.requestTimeoutMs ?? 60_000,
      logger: createLogger("test", "silent"),
      metrics: o.metrics ?? createServiceMetrics("router", { defaultMetrics: false }).m,
      model: "tiny",
      ...(o.onStep !== undefined ? { onStep: o.onStep } : {}),
    });
    backends.push(b);
    return { b, engine };
  }

  async function alone(prompt: number[], maxTokens: number): Promise<number[]> {
    const engine = new Engine(model, { numBlocks: 64, speculation: "off" });
    const seq = engine.newSequence("alone", prompt, { temperature: 0, topP: 1, topK: -1, seed: 0, maxTokens, ignoreEos: true });
    const out: number[] = [];
    for await (const t of engine.generate(seq)) out.push(t.id);
    return out;
  }

  it("batches concurrent requests; each gets the tokens it gets alone; one past the batch waits its turn", async () => {
    const batches: number[] = [];
    const { b, engine } = backend({ maxBatch: 2, onStep: (_s, batch) => batches.push(batch) });
    const prompts = [
      [5, 6, 7],
      [100, 3],
      [42, 43, 44, 45],
    ];
    const signal = new AbortController().signal;
    const results = await Promise.all(prompts.map((p, i) => drain(b.generate(input(`r${i}`, p, 12), signal))));
    // Two shared the steps (never more); the third ran after a slot came free: 2 x 11 steps in all at most.
    expect(Math.max(...batches)).toBe(2);
    expect(batches.reduce((a, x) => a + x, 0)).toBe(3 * 11);
    expect(batches.length).toBeLessThan(3 * 11);
    for (const [i, p] of prompts.entries()) {
      expect(results[i]!.ids).toEqual(await alone(p, 12));
      expect(results[i]!.last.finishReason).toBe("length");
      expect(results[i]!.last.usage).toMatchObject({ promptTokens: p.length, completionTokens: 12 });
    }
    // The last sequences' blocks may be freed just after their streams end.
    await vi.waitFor(() => expect(engine.cache.usedBlocks).toBe(0), { timeout: 5_000, interval: 5 });
  });

  it("refuses a request the KV cache could never hold: INVALID_ARGUMENT, before it runs", async () => {
    const { b } = backend({ numBlocks: 2 });
    const e = await failure(drain(b.generate(input("big", [5, 6, 7], 64), new AbortController().signal)));
    expect(e.code).toBe(Code.INVALID_ARGUMENT);
    expect(e.message).toMatch(/needs \d+ KV blocks, more than this server's 2/);
    expect(b.waitingCount).toBe(0);
  });

  it("ends a request at its deadline with DEADLINE_EXCEEDED and gives its blocks back", async () => {
    const { b, engine } = backend({ requestTimeoutMs: 30 });
    const e = await failure(drain(b.generate(input("slow", [5, 6, 7], 900), new AbortController().signal)));
    expect(e.code).toBe(Code.DEADLINE_EXCEEDED);
    await vi.waitFor(
      () => {
        expect(b.runningCount).toBe(0);
        expect(engine.cache.usedBlocks).toBe(0);
      },
      { timeout: 5_000, interval: 5 },
    );
  });

  it("frees a sequence when its caller stops iterating, and when its signal aborts", async () => {
    const { b, engine } = backend();
    const gen = b.generate(input("leave", [5, 6, 7], 900), new AbortController().signal);
    await gen.next();
    expect(b.runningCount).toBe(1);
    await gen.return(undefined);
    const ctl = new AbortController();
    const gen2 = b.generate(input("abort", [8, 9], 900), ctl.signal);
    await gen2.next();
    ctl.abort();
    const e = await failure(drain(gen2));
    expect(e.code).toBe(Code.CANCELLED);
    await vi.waitFor(
      () => {
        expect(b.runningCount).toBe(0);
        expect(engine.cache.usedBlocks).toBe(0);
      },
      { timeout: 5_000, interval: 5 },
    );
  });

  it("records every generation's end, prompt and output length, queue, prefill and decode time under the served model", async () => {
    const sm = createServiceMetrics("router", { defaultMetrics: false, model: "tiny" });
    const { b } = backend({ metrics: sm.m, maxBatch: 1 });
    const signal = new AbortController().signal;
    // One slot: the second waits for the first to finish.
    await Promise.all([drain(b.generate(input("a", [5, 6, 7], 16), signal)), drain(b.generate(input("b", [8, 9], 3), signal))]);
    const left = b.generate(input("c", [5], 900), signal);
    expect((await left.next()).value?.tokens.length).toBeGreaterThan(0);
    await left.return(undefined);
    // Refused before it ran: a rejected request, not a generation.
    expect((await failure(drain(b.generate(input("big", [5, 6, 7], 5000), signal)))).code).toBe(Code.INVALID_ARGUMENT);
    const { b: slow } = backend({ metrics: sm.m, requestTimeoutMs: 30 });
    expect((await failure(drain(slow.generate(input("slow", [5, 6, 7], 900), signal)))).code).toBe(Code.DEADLINE_EXCEEDED);

    const ends = Object.fromEntries((await sm.m.routerGenerations.get()).values.map((v) => [v.labels.finish_reason, v.value]));
    expect(ends).toEqual({ stop: 0, length: 2, abort: 1, timeout: 1, error: 0 });
    const series = async (
      h: { get(): Promise<{ values: Array<{ metricName?: string; labels: Record<string, string | number>; value: number }> }> },
      suffix: string,
    ) => (await h.get()).values.filter((v) => v.metricName?.endsWith(suffix) && v.labels.model === "tiny").map((v) => v.value);
    expect(await series(sm.m.routerRequestPromptTokens, "_count")).toEqual([4]);
    expect(await series(sm.m.routerRequestPromptTokens, "_sum")).toEqual([3 + 2 + 1 + 3]);
    const generated = (await series(sm.m.routerRequestGenerationTokens, "_sum"))[0]!;
    expect(generated).toBeGreaterThanOrEqual(16 + 3 + 1);
    // Queue time ends at admission (all four were admitted); the second waited for the first's 16 tokens.
    expect(await series(sm.m.routerQueueWait, "_count")).toEqual([4]);
    const waits = (await sm.m.routerQueueWait.get()).values.filter(
      (v) => v.metricName?.endsWith("_bucket") && (v.labels as Record<string, unknown>)["le"] === 0.001,
    );
    expect(waits[0]!.value).toBeLessThan(4);
    // Prefill time needs a first token, decode time a generation that produced one.
    const prefills = (await series(sm.m.routerRequestPrefill, "_count"))[0]!;
    expect(prefills).toBeGreaterThanOrEqual(3);
    expect(await series(sm.m.routerRequestDecode, "_count")).toEqual([prefills]);
    expect((await series(sm.m.routerRequestPrefill, "_sum"))[0]).toBeGreaterThan(0);
    expect(await series(sm.m.routerTimeToFirstToken, "_count")).toEqual([prefills]);
  });

  it("close() fails the requests in flight with UNAVAILABLE and refuses new ones", async () => {
    const { b, engine } = backend();
    const gen = b.generate(input("cut", [5, 6, 7], 900), new AbortController().signal);
    await gen.next();
    const rest = drain(gen);
    await b.close();
    expect((await failure(rest)).code).toBe(Code.UNAVAILABLE);
    expect(engine.cache.usedBlocks).toBe(0);
    expect((await failure(drain(b.generate(input("late", [5], 4), new AbortController().signal)))).code).toBe(Code.UNAVAILABLE);
  });
});
