// How a generation's end is recorded (routerGenerations' finish_reason), whatever ends it: its finish
// reason, an error, a refusal, or a caller that stops listening; with a real router registry.
import { describe, expect, it } from "vitest";
import { CancelledError, Code, InvalidArgumentError, MoelaError, UnavailableError } from "@moela/core";
import { createServiceMetrics } from "@moela/metrics";
import type { GenerateEvent } from "../../../services/router/src/backend.js";
import { endOf, GenerationRecorder } from "../../../services/router/src/request-metrics.js";

const tok = (n: number): GenerateEvent["tokens"] => Array.from({ length: n }, (_, i) => ({ id: i }));

async function* events(list: GenerateEvent[], thenThrow?: Error): AsyncGenerator<GenerateEvent> {
  for (const ev of list) yield ev;
  if (thenThrow !== undefined) throw thenThrow;
}

async function run(gen: AsyncGenerator<GenerateEvent>, stopAfter = Infinity): Promise<void> {
  let seen = 0;
  try {
    for await (const _ of gen) if (++seen >= stopAfter) break;
  } catch (err) {
    if (!(err instanceof Error)) throw err;
  }
}

describe("GenerationRecorder", () => {
  it.each([
    [new CancelledError("gone"), "abort"],
    [new MoelaError("late", Code.DEADLINE_EXCEEDED), "timeout"],
    [new UnavailableError("lost"), "error"],
    [new Error("bug"), "error"],
    [new InvalidArgumentError("bad"), null],
    [new MoelaError("full", Code.RESOURCE_EXHAUSTED), null],
  ] as const)("endOf(%s) is %s", (err, want) => {
    expect(endOf(err)).toBe(want);
  });

  it("counts each way a generation ends, with its lengths and times, under the model", async () => {
    const sm = createServiceMetrics("router", { defaultMetrics: false, model: "m" });
    const rec = (prompt: number) => new GenerationRecorder(sm.m, "m", prompt);
    const mid: GenerateEvent = { tokens: tok(2), text: "", finishReason: null };
    // stop after 2 + 1 tokens; length; a caller that leaves after the first event; an error after tokens;
    // a refusal before any token (not a generation); a refusal after tokens (an error).
    const r1 = rec(5);
    r1.prefillStarted(performance.now() - 50);
    await run(r1.track(events([mid, { tokens: tok(1), text: "", finishReason: "stop" }])));
    await run(rec(7).track(events([{ tokens: tok(4), text: "", finishReason: "length" }])));
    await run(rec(3).track(events([mid, mid, mid])), 1);
    await run(rec(2).track(events([mid], new UnavailableError("decode lost"))));
    await run(rec(9).track(events([], new InvalidArgumentError("too long"))));
    await run(rec(4).track(events([mid], new MoelaError("full", Code.RESOURCE_EXHAUSTED))));

    const ends = Object.fromEntries((await sm.m.routerGenerations.get()).values.map((v) => [v.labels.finish_reason, v.value]));
    expect(ends).toEqual({ stop: 1, length: 1, abort: 1, timeout: 0, error: 2 });
    const get = async (h: typeof sm.m.routerRequestPromptTokens, suffix: string) =>
      (await h.get()).values.find((v) => v.metricName?.endsWith(suffix) && v.labels.model === "m")?.value;
    expect(await get(sm.m.routerRequestPromptTokens, "_count")).toBe(5);
    expect(await get(sm.m.routerRequestPromptTokens, "_sum")).toBe(5 + 7 + 3 + 2 + 4);
    expect(await get(sm.m.routerRequestGenerationTokens, "_sum")).toBe(3 + 4 + 2 + 2 + 2);
    // Only the first started a prefill: one queue time of the 50 ms it waited, one prefill time after it.
    expect(await get(sm.m.routerQueueWait, "_count")).toBe(1);
    expect(await get(sm.m.routerQueueWait, "_sum")).toBeGreaterThanOrEqual(0.05);
    expect(await get(sm.m.routerRequestPrefill, "_count")).toBe(1);
    expect(await get(sm.m.routerRequestPrefill, "_sum")).toBeLessThan(0.05);
    expect(await get(sm.m.routerRequestDecode, "_count")).toBe(5);
  });

  it("finish() counts once, and a prefill that starts after the first token gives no prefill time", async () => {
    const sm = createServiceMetrics("router", { defaultMetrics: false, model: "m" });
    const r = new GenerationRecorder(sm.m, "m", 1);
    r.tokens(1, 100);
    r.prefillStarted(50, 120);
    r.tokens(2, 400);
    r.finish("length");
    r.finish("error");
    const ends = Object.fromEntries((await sm.m.routerGenerations.get()).values.map((v) => [v.labels.finish_reason, v.value]));
    expect(ends).toMatchObject({ length: 1, error: 0 });
    const decode = (await sm.m.routerRequestDecode.get()).values.find((v) => v.metricName?.endsWith("_sum"));
    expect(decode?.value).toBeCloseTo(0.3, 9);
    // The model's series exists from the start (at 0, so rate() sees a first observation); nothing was observed.
    expect((await sm.m.routerRequestPrefill.get()).values.filter((v) => v.metricName?.endsWith("_count")).map((v) => v.value)).toEqual([0]);
  });
});
