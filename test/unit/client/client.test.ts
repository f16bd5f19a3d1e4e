/**
 * MoelaClient against a real grpc-js server on 127.0.0.1 that implements moela.v1.Generate with
 * scripted behaviours: streaming, stalling, failing with a given status, failing after a token.
 */
import { Metadata, Server, ServerCredentials, status, type sendUnaryData, type ServerUnaryCall, type ServerWritableStream } from "@grpc/grpc-js";
import { afterEach, describe, expect, it, vi } from "vitest";
import { ManualClock } from "../../helpers/clock.js";
import {
  CancelledError,
  Code,
  DataLossError,
  DEFAULT_GENERATE_DEADLINE_MS,
  DeadlineExceededError,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  MoelaClient,
  MoelaError,
  ResourceExhaustedError,
  UnauthenticatedError,
  UnavailableError,
  UnimplementedError,
  retryAfterMs,
  type GenerateEvent,
} from "@moela/client";
import { FinishReason, GenerateService, GenerateResponse, type GenerateRequest, type ListModelsRequest, type ListModelsResponse } from "@moela/proto-gen";

type Call = ServerWritableStream<GenerateRequest, GenerateResponse>;

interface CallRecord {
  readonly request: GenerateRequest;
  /** Resolves when the client cancelled (or its deadline passed): grpc-js's 'cancelled' event. */
  readonly cancelled: Promise<void>;
  wasCancelled: boolean;
}

interface FakeRouter {
  readonly address: string;
  readonly calls: CallRecord[];
  close(): Promise<void>;
}

/** `behave(call, n)` runs for the n-th call (0-based). */
async function startFakeRouter(behave: (call: Call, n: number, record: CallRecord) => void | Promise<void>): Promise<FakeRouter> {
  const server = new Server();
  const calls: CallRecord[] = [];
  server.addService(GenerateService, {
    generate: (call: Call) => {
      let resolveCancelled!: () => void;
      const record: CallRecord = {
        request: call.request,
        cancelled: new Promise<void>((r) => (resolveCancelled = r)),
        wasCancelled: false,
      };
      call.on("cancelled", () => {
        record.wasCancelled = true;
        resolveCancelled();
      });
      calls.push(record);
      void Promise.resolve(behave(call, calls.length - 1, record)).catch((err: unknown) => {
        call.destroy(err as Error);
      });
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  return {
    address: `127.0.0.1:${port}`,
    calls,
    // Force: a call the client failed to cancel must not keep the test waiting.
    close: async () => server.forceShutdown(),
  };
}

function msg(requestId: string, tokens: number[], text: string, last = false): GenerateResponse {
  return GenerateResponse.fromPartial({
    requestId,
    tokenIds: tokens,
    text,
    logprobs: tokens.map((t) => ({ logprob: -0.5, top: [{ tokenId: t, logprob: -0.5 }] })),
    finishReason: last ? FinishReason.FINISH_REASON_LENGTH : FinishReason.FINISH_REASON_UNSPECIFIED,
    usage: last ? { promptTokens: 3, completionTokens: 3, cachedPromptTokens: 0, draftTokens: 2, acceptedDraftTokens: 1 } : undefined,
  });
}

/** Three messages, "a" "b" "c" for tokens 1, 2, 3, then OK. */
function streamAbc(call: Call): void {
  const id = call.request.requestId;
  call.write(msg(id, [1], "a"));
  call.write(msg(id, [2], "b"));
  call.write(msg(id, [3], "c", true));
  call.end();
}

/** A token every 10 ms until the client goes away. */
function streamForever(call: Call): void {
  let i = 0;
  const timer = setInterval(() => {
    if (call.cancelled) return clearInterval(timer);
    call.write(msg(call.request.requestId, [i], `t${i}`));
    i++;
  }, 10);
  call.on("cancelled", () => clearInterval(timer));
}

function failWith(code: status, details: string) {
  return (call: Call): void => {
    call.emit("error", { code, details, metadata: new Metadata() });
  };
}

async function collect(stream: AsyncIterable<GenerateEvent>): Promise<GenerateEvent[]> {
  const out: GenerateEvent[] = [];
  for await (const ev of stream) out.push(ev);
  return out;
}

/** The error an async function throws (fails the test when it does not throw). */
async function thrown(work: () => Promise<unknown>): Promise<unknown> {
  try {
    await work();
  } catch (err) {
    return err;
  }
  throw new Error("expected an error");
}

const cleanup: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function setup(behave: Parameters<typeof startFakeRouter>[0], clientOptions: Partial<ConstructorParameters<typeof MoelaClient>[0]> = {}) {
  const router = await startFakeRouter(behave);
  cleanup.push(() => router.close());
  const client = new MoelaClient({ address: router.address, initialBackoffMs: 1, maxBackoffMs: 5, ...clientOptions });
  cleanup.push(() => client.close());
  return { router, client };
}

describe("MoelaClient.generate: streaming", () => {
  it("yields every message in order with text, tokens, logprobs, finish reason and usage", async () => {
    const { router, client } = await setup(streamAbc);
    const stream = client.generate({ prompt: "hello", maxTokens: 3, temperature: 0, stop: ["\n"], logprobs: 1, seed: 7 });
    const events = await collect(stream);
    expect(events.map((e) => e.text).join("")).toBe("abc");
    expect(events.flatMap((e) => e.tokenIds)).toEqual([1, 2, 3]);
    expect(events.every((e) => e.requestId === stream.requestId)).toBe(true);
    expect(events[0]!.logprobs).toEqual([{ logprob: -0.5, top: [{ tokenId: 1, logprob: -0.5 }] }]);
    expect(events[0]!.finishReason).toBeUndefined();
    expect(events[2]!.finishReason).toBe("length");
    expect(events[2]!.usage).toEqual({ promptTokens: 3, completionTokens: 3, cachedPromptTokens: 0, draftTokens: 2, acceptedDraftTokens: 1 });
    // What went over the wire.
    const req = router.calls[0]!.request;
    expect(req.prompt).toEqual({ $case: "text", value: "hello" });
    expect(req.requestId).toMatch(/^req-[0-9a-f-]{36}$/);
    expect(req.requestId).toBe(stream.requestId);
    expect(req.sampling).toMatchObject({ maxTokens: 3, temperature: 0, stop: ["\n"], logprobs: 1, seed: 7, topK: 0, ignoreEos: false });
    expect(req.sampling!.topP).toBeUndefined();
  });

  it("sends token-id prompts as token ids and keeps a caller's request id", async () => {
    const { router, client } = await setup(streamAbc);
    const done = await client.complete({ prompt: [0, 17, 42], requestId: "req-mine", model: "tiny", priority: 2 });
    expect(done).toEqual({
      requestId: "req-mine",
      text: "abc",
      tokenIds: [1, 2, 3],
      finishReason: "length",
      usage: { promptTokens: 3, completionTokens: 3, cachedPromptTokens: 0, draftTokens: 2, acceptedDraftTokens: 1 },
      toolCalls: [],
    });
    expect(router.calls[0]!.request).toMatchObject({
      prompt: { $case: "tokenIds", value: { ids: [0, 17, 42] } },
      requestId: "req-mine",
      model: "tiny",
      priority: 2,
    });
  });

  it("sends penalties, logit_bias, min_p, min_tokens and n; events carry their choice's index", async () => {
    const { router, client } = await setup(streamAbc);
    const events = await collect(
      client.generate({
        prompt: "x",
        presencePenalty: -1,
        frequencyPenalty: 0.5,
        repetitionPenalty: 1.25,
        logitBias: { 7: -100, 3: 2.5 },
        minP: 0.1,
        minTokens: 2,
        n: 2,
      }),
    );
    expect(events.every((e) => e.index === 0)).toBe(true);
    const sampling = router.calls[0]!.request.sampling!;
    expect(sampling).toMatchObject({ presencePenalty: -1, frequencyPenalty: 0.5, repetitionPenalty: 1.25, minP: 0.1, minTokens: 2, n: 2 });
    expect(sampling.logitBias!.entries).toEqual([
      { tokenId: 3, bias: 2.5 },
      { tokenId: 7, bias: -100 },
    ]);
    // Unset: not on the wire (the server's "off").
    await collect(client.generate({ prompt: "x" }));
    expect(router.calls[1]!.request.sampling).toMatchObject({ presencePenalty: undefined, logitBias: undefined, minTokens: undefined, n: undefined });
    await expect(client.complete({ prompt: "x", n: 2 })).rejects.toThrow(/complete\(\) collects one choice/);
  });

  it("sends responseFormat, tools, toolChoice and tool-call messages as the wire's JSON fields; the last event carries the calls", async () => {
    const call = { id: "call_1", name: "f", arguments: '{"a":1}' };
    const { router, client } = await setup((c) => {
      c.write(GenerateResponse.fromPartial({ requestId: c.request.requestId, tokenIds: [1], text: "x" }));
      c.write(
        GenerateResponse.fromPartial({
          requestId: c.request.requestId,
          tokenIds: [2],
          text: "y",
          finishReason: FinishReason.FINISH_REASON_STOP,
          toolCalls: [call],
        }),
      );
      c.end();
    });
    const done = await client.complete({
      messages: [
        { role: "user", content: "hi" },
        { role: "assistant", content: "", toolCalls: [call] },
        { role: "tool", content: "ok", toolCallId: "call_1" },
      ],
      responseFormat: { type: "json_object" },
      tools: [{ name: "f", parameters: { type: "object", properties: { a: { type: "integer" } } } }, { name: "g" }],
      toolChoice: { name: "f" },
    });
    expect(done.toolCalls).toEqual([call]);
    const req = router.calls[0]!.request;
    expect(JSON.parse(req.responseFormat!)).toEqual({ type: "json_object" });
    expect(JSON.parse(req.tools!)).toEqual([
      { type: "function", function: { name: "f", parameters: { type: "object", properties: { a: { type: "integer" } } } } },
      { type: "function", function: { name: "g" } },
    ]);
    expect(JSON.parse(req.toolChoice!)).toEqual({ type: "function", function: { name: "f" } });
    const messages = req.prompt?.$case === "messages" ? req.prompt.value.messages : [];
    expect(messages.map((m) => [m.role, m.toolCalls, m.toolCallId])).toEqual([
      ["user", [], ""],
      ["assistant", [call], ""],
      ["tool", [], "call_1"],
    ]);
    // Unset: the JSON fields stay off the wire.
    await client.complete({ prompt: "x" });
    expect(router.calls[1]!.request).toMatchObject({ responseFormat: undefined, tools: undefined, toolChoice: undefined });
  });

  it("refuses malformed requests and options before calling", async () => {
    const { router, client } = await setup(streamAbc);
    expect(() => client.generate({ prompt: [1, -2] })).toThrow(InvalidArgumentError);
    expect(() => client.generate({ prompt: 5 as unknown as string })).toThrow(/prompt must be a string or an array of token ids/);
    expect(() => client.generate({ prompt: "x", maxTokens: 1.5 })).toThrow(/maxTokens/);
    expect(() => client.generate({ prompt: "x" }, { deadlineMs: 0 })).toThrow(/deadlineMs/);
    expect(() => new MoelaClient({ address: "" })).toThrow(InvalidArgumentError);
    expect(router.calls).toHaveLength(0);
  });

  it("can be iterated only once", async () => {
    const { client } = await setup(streamAbc);
    const stream = client.generate({ prompt: "x" });
    await collect(stream);
    expect(() => stream[Symbol.asyncIterator]()).toThrow(/only once/);
  });
});

describe("MoelaClient.generate: cancellation", () => {
  it("breaking out of the loop cancels the call on the server", async () => {
    const { router, client } = await setup(streamForever);
    const seen: GenerateEvent[] = [];
    for await (const ev of client.generate({ prompt: "x" })) {
      seen.push(ev);
      if (seen.length === 2) break;
    }
    expect(seen.map((e) => e.text)).toEqual(["t0", "t1"]);
    await seenCancelled(router.calls[0]!);
    expect(router.calls[0]!.wasCancelled).toBe(true);
  });

  it("a throw inside the loop body cancels the call too", async () => {
    const { router, client } = await setup(streamForever);
    const err = await thrown(async () => {
      for await (const _ of client.generate({ prompt: "x" })) throw new Error("consumer failed");
    });
    expect((err as Error).message).toBe("consumer failed");
    await seenCancelled(router.calls[0]!);
    expect(router.calls[0]!.wasCancelled).toBe(true);
  });

  it("aborting the AbortSignal mid-stream cancels the call and throws CancelledError", async () => {
    const { router, client } = await setup(streamForever);
    const ac = new AbortController();
    const seen: string[] = [];
    const err = await thrown(async () => {
      for await (const ev of client.generate({ prompt: "x" }, { signal: ac.signal })) {
        seen.push(ev.text);
        if (seen.length === 3) ac.abort(new Error("user closed the tab"));
      }
    });
    expect(err).toBeInstanceOf(CancelledError);
    expect((err as CancelledError).code).toBe(Code.CANCELLED);
    expect((err as Error).message).toMatch(/user closed the tab/);
    expect(seen).toEqual(["t0", "t1", "t2"]);
    await seenCancelled(router.calls[0]!);
    expect(router.calls[0]!.wasCancelled).toBe(true);
  });

  it("aborting while the consumer waits for the next message wakes it with CancelledError", async () => {
    // The server never answers, so the consumer is parked in next() when the abort comes.
    const { router, client } = await setup(() => {});
    const ac = new AbortController();
    const iterating = collect(client.generate({ prompt: "x" }, { signal: ac.signal }));
    await vi.waitFor(() => expect(router.calls).toHaveLength(1), { timeout: 5_000, interval: 5 });
    ac.abort();
    expect(await thrown(() => iterating)).toBeInstanceOf(CancelledError);
    await seenCancelled(router.calls[0]!);
  });

  it("stream.abort() works like the signal", async () => {
    const { router, client } = await setup(streamForever);
    const stream = client.generate({ prompt: "x" });
    const err = await thrown(async () => {
      for await (const _ of stream) stream.abort();
    });
    expect(err).toBeInstanceOf(CancelledError);
    await seenCancelled(router.calls[0]!);
  });

  it("an already aborted signal never reaches the server", async () => {
    const { router, client } = await setup(streamAbc);
    const err = await thrown(() => collect(client.generate({ prompt: "x" }, { signal: AbortSignal.abort() })));
    expect(err).toBeInstanceOf(CancelledError);
    expect(router.calls).toHaveLength(0);
  });
});

describe("MoelaClient.generate: deadlines", () => {
  it("a call that outlives its deadline fails with DeadlineExceededError and the server sees it end", async () => {
    const { router, client } = await setup(() => {}); // never answers
    const err = await thrown(() => collect(client.generate({ prompt: "x" }, { deadlineMs: 200 })));
    expect(err).toBeInstanceOf(DeadlineExceededError);
    expect((err as MoelaError).code).toBe(Code.DEADLINE_EXCEEDED);
    expect((err as Error).message).toMatch(/deadline of 200 ms exceeded/);
    await seenCancelled(router.calls[0]!);
  });

  it("the deadline also ends a stream that already delivered tokens", async () => {
    const { client } = await setup(streamForever);
    const seen: string[] = [];
    const err = await thrown(async () => {
      for await (const ev of client.generate({ prompt: "x" }, { deadlineMs: 1_000 })) seen.push(ev.text);
    });
    expect(err).toBeInstanceOf(DeadlineExceededError);
    expect(seen.length).toBeGreaterThan(0);
  });

  it("the client's default deadline applies when the call sets none", async () => {
    const { client } = await setup(() => {}, { deadlineMs: 150 });
    expect(await thrown(() => collect(client.generate({ prompt: "x" })))).toBeInstanceOf(DeadlineExceededError);
  });
});

describe("MoelaClient.generate: retries on UNAVAILABLE", () => {
  it("retries before the first message, with the same request id, and delivers the tokens once", async () => {
    const { router, client } = await setup((call, n) => {
      if (n < 2) failWith(status.UNAVAILABLE, "draining")(call);
      else streamAbc(call);
    });
    const stream = client.generate({ prompt: "x" });
    const events = await collect(stream);
    expect(events.flatMap((e) => e.tokenIds)).toEqual([1, 2, 3]);
    expect(router.calls).toHaveLength(3);
    expect(new Set(router.calls.map((c) => c.request.requestId))).toEqual(new Set([stream.requestId]));
  });

  it("never retries once a message has arrived (no duplicated tokens)", async () => {
    const { router, client } = await setup((call) => {
      call.write(msg(call.request.requestId, [1], "a"));
      setTimeout(() => failWith(status.UNAVAILABLE, "decode died")(call), 20);
    });
    const seen: number[] = [];
    const err = await thrown(async () => {
      for await (const ev of client.generate({ prompt: "x" })) seen.push(...ev.tokenIds);
    });
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toBe("decode died");
    expect(seen).toEqual([1]);
    expect(router.calls).toHaveLength(1);
  });

  it("gives up after maxRetries with the last UnavailableError", async () => {
    const { router, client } = await setup(failWith(status.UNAVAILABLE, "no decode instance"), { maxRetries: 2 });
    const err = await thrown(() => collect(client.generate({ prompt: "x" })));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(router.calls).toHaveLength(3);
    // Per-call override.
    await thrown(() => collect(client.generate({ prompt: "x" }, { maxRetries: 0 })));
    expect(router.calls).toHaveLength(4);
  });

  it("stops retrying at the deadline", async () => {
    // The backoffs wait on a clock that moves only by them: the minute of retries passes in virtual time,
    // long before grpc's own (wall-clock) deadline could end an attempt in flight.
    const clock = new ManualClock({ auto: true });
    const { router, client } = await setup(failWith(status.UNAVAILABLE, "no decode instance"), {
      maxRetries: 1000,
      initialBackoffMs: 10_000,
      maxBackoffMs: 10_000,
      clock,
    });
    const start = clock.now();
    const err = await thrown(() => collect(client.generate({ prompt: "x" }, { deadlineMs: 60_000 })));
    expect(err).toBeInstanceOf(DeadlineExceededError);
    // Out of time while backing off: the last UNAVAILABLE is the cause, and the next backoff was not waited for.
    expect((err as Error).cause).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toMatch(/^deadline of 60000 ms exceeded after \d+ attempt\(s\); the last failed with UNAVAILABLE: no decode instance$/);
    expect(router.calls.length).toBeGreaterThan(1);
    expect(clock.now() - start).toBeLessThan(60_000);
    expect(clock.pending).toBe(0);
  });

  it("retries a refused connection, then reports UnavailableError", async () => {
    const gone = await startFakeRouter(streamAbc);
    await gone.close();
    const client = new MoelaClient({ address: gone.address, maxRetries: 2, initialBackoffMs: 1 });
    cleanup.push(() => client.close());
    const err = await thrown(() => collect(client.generate({ prompt: "x" })));
    expect(err).toBeInstanceOf(UnavailableError);
  });

  it("does not retry other codes", async () => {
    const { router, client } = await setup(failWith(status.INVALID_ARGUMENT, "bad prompt"));
    expect(await thrown(() => collect(client.generate({ prompt: "x" })))).toBeInstanceOf(InvalidArgumentError);
    expect(router.calls).toHaveLength(1);
  });
});

/** Fails the call with RESOURCE_EXHAUSTED and `retry-after: <retryAfter>` trailing metadata (none when undefined). */
function queueFull(retryAfter: string | undefined) {
  return (call: Call): void => {
    const metadata = new Metadata();
    if (retryAfter !== undefined) metadata.set("retry-after", retryAfter);
    call.emit("error", { code: status.RESOURCE_EXHAUSTED, details: "queue full", metadata });
  };
}

describe("MoelaClient.generate: retries on RESOURCE_EXHAUSTED honour retry-after", () => {
  it("waits the retry-after of the trailing metadata, not the (1-5 ms) backoff, then delivers", async () => {
    const at: number[] = [];
    const { router, client } = await setup((call, n) => {
      at.push(Date.now());
      if (n === 0) queueFull("0.4")(call);
      else streamAbc(call);
    });
    const events = await collect(client.generate({ prompt: "x" }));
    expect(events.flatMap((e) => e.tokenIds)).toEqual([1, 2, 3]);
    expect(router.calls).toHaveLength(2);
    expect(at[1]! - at[0]!).toBeGreaterThanOrEqual(380);
    expect(at[1]! - at[0]!).toBeLessThan(3_000);
  });

  it("without retry-after it retries after the backoff", async () => {
    const at: number[] = [];
    const { router, client } = await setup((call, n) => {
      at.push(Date.now());
      if (n < 2) queueFull(undefined)(call);
      else streamAbc(call);
    });
    await collect(client.generate({ prompt: "x" }));
    expect(router.calls).toHaveLength(3);
    expect(at[2]! - at[0]!).toBeLessThan(300);
  });

  it("gives up at once with ResourceExhaustedError when retry-after would pass the deadline", async () => {
    const { router, client } = await setup(queueFull("5"));
    const started = Date.now();
    const err = await thrown(() => collect(client.generate({ prompt: "x" }, { deadlineMs: 2_000 })));
    expect(err).toBeInstanceOf(ResourceExhaustedError);
    expect((err as Error).message).toBe("queue full");
    expect(router.calls).toHaveLength(1);
    expect(Date.now() - started).toBeLessThan(1_500);
  });

  it("does not wait for a retry-after past maxRetryAfterMs, and stops after maxRetries", async () => {
    const long = await setup(queueFull("2"), { maxRetryAfterMs: 1_000 });
    expect(await thrown(() => collect(long.client.generate({ prompt: "x" })))).toBeInstanceOf(ResourceExhaustedError);
    expect(long.router.calls).toHaveLength(1);
    const short = await setup(queueFull("0.01"), { maxRetries: 2 });
    expect(await thrown(() => collect(short.client.generate({ prompt: "x" })))).toBeInstanceOf(ResourceExhaustedError);
    expect(short.router.calls).toHaveLength(3);
  });

  it.each([
    ["1", 1_000],
    ["0.25", 250],
    [" 2 ", 2_000],
    ["soon", undefined],
    ["", undefined],
  ])("retryAfterMs reads retry-after %j as %j ms", (value, expected) => {
    const metadata = new Metadata();
    metadata.set("retry-after", value);
    expect(retryAfterMs({ metadata })).toBe(expected);
  });

  it("retryAfterMs reads an HTTP date, and nothing from an error without metadata", () => {
    const metadata = new Metadata();
    const now = Date.parse("2026-01-01T00:00:00Z");
    metadata.set("retry-after", new Date(now + 3_000).toUTCString());
    expect(retryAfterMs({ metadata }, now)).toBe(3_000);
    expect(retryAfterMs(new Error("plain"))).toBeUndefined();
  });
});

describe("MoelaClient: default deadlines", () => {
  it("generate() carries the 600 s default deadline when none is set, and none with Infinity", async () => {
    const deadlines: number[] = [];
    const { client } = await setup((call) => {
      deadlines.push(Number(call.getDeadline()));
      streamAbc(call);
    });
    const before = Date.now();
    await collect(client.generate({ prompt: "x" }));
    await collect(client.generate({ prompt: "x" }, { deadlineMs: Infinity }));
    expect(DEFAULT_GENERATE_DEADLINE_MS).toBe(600_000);
    expect(deadlines[0]).toBeGreaterThanOrEqual(before + DEFAULT_GENERATE_DEADLINE_MS - 1_000);
    expect(deadlines[0]).toBeLessThanOrEqual(Date.now() + DEFAULT_GENERATE_DEADLINE_MS + 1_000);
    expect(deadlines[1]).toBe(Infinity);
  });

  it("refuses a deadline that is not a positive number", async () => {
    const { client } = await setup(streamAbc);
    expect(() => client.generate({ prompt: "x" }, { deadlineMs: 0 })).toThrow(InvalidArgumentError);
    expect(() => client.generate({ prompt: "x" }, { deadlineMs: Number.NaN })).toThrow(InvalidArgumentError);
    expect(() => new MoelaClient({ address: "127.0.0.1:1", deadlineMs: -1 })).toThrow(InvalidArgumentError);
  });
});

describe("MoelaClient: chat messages", () => {
  it("sends messages as the wire's messages prompt", async () => {
    const { router, client } = await setup(streamAbc);
    const done = await client.complete({
      messages: [
        { role: "system", content: "Be brief." },
        { role: "user", content: "Hi" },
      ],
      maxTokens: 3,
      logprobs: 2,
    });
    expect(done.text).toBe("abc");
    const wire = router.calls[0]!.request;
    expect(wire.prompt).toEqual({
      $case: "messages",
      value: {
        messages: [
          { role: "system", content: "Be brief.", toolCalls: [], toolCallId: "" },
          { role: "user", content: "Hi", toolCalls: [], toolCallId: "" },
        ],
      },
    });
    expect(wire.sampling?.maxTokens).toBe(3);
    expect(wire.sampling?.logprobs).toBe(2);
  });

  it("refuses empty or malformed messages before calling", async () => {
    const { router, client } = await setup(streamAbc);
    expect(() => client.generate({ messages: [] })).toThrow(InvalidArgumentError);
    // @ts-expect-error a role the chat template does not know
    expect(() => client.generate({ messages: [{ role: "wizard", content: "x" }] })).toThrow(/messages\[0\]/);
    // @ts-expect-error prompt and messages together
    expect(() => client.generate({ prompt: "x", messages: [{ role: "user", content: "x" }] })).toThrow(/not both/);
    expect(router.calls).toHaveLength(0);
  });
});

describe("MoelaClient.listModels", () => {
  async function modelsServer(check: (md: Metadata) => void): Promise<string> {
    const server = new Server();
    server.addService(GenerateService, {
      generate: (call: Call) => call.emit("error", { code: status.UNIMPLEMENTED, details: "not here", metadata: new Metadata() }),
      listModels: (call: ServerUnaryCall<ListModelsRequest, ListModelsResponse>, callback: sendUnaryData<ListModelsResponse>) => {
        try {
          check(call.metadata);
        } catch (err) {
          return callback({ code: status.UNAUTHENTICATED, details: (err as Error).message });
        }
        callback(null, { models: [{ id: "tiny-v3", created: 1_700_000_000, ownedBy: "moela", maxModelLen: 4096 }] });
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    cleanup.push(() => server.forceShutdown());
    return `127.0.0.1:${port}`;
  }

  it("returns the router's models, sending the API key", async () => {
    const address = await modelsServer((md) => {
      if (md.get("authorization")[0] !== "Bearer k1") throw new Error("wrong key");
    });
    const client = new MoelaClient({ address, apiKey: "k1" });
    cleanup.push(() => client.close());
    expect(await client.listModels()).toEqual([{ id: "tiny-v3", created: 1_700_000_000, ownedBy: "moela", maxModelLen: 4096 }]);
    const anonymous = new MoelaClient({ address });
    cleanup.push(() => anonymous.close());
    expect(await thrown(() => anonymous.listModels())).toBeInstanceOf(UnauthenticatedError);
  });

  it("fails with UnavailableError when nothing listens and CancelledError when aborted", async () => {
    const gone = await startFakeRouter(streamAbc);
    await gone.close();
    const client = new MoelaClient({ address: gone.address });
    cleanup.push(() => client.close());
    expect(await thrown(() => client.listModels({ deadlineMs: 5_000 }))).toBeInstanceOf(UnavailableError);
    expect(await thrown(() => client.listModels({ signal: AbortSignal.abort() }))).toBeInstanceOf(CancelledError);
  });
});

describe("MoelaClient.generate: errors by status code", () => {
  it.each([
    [status.INVALID_ARGUMENT, InvalidArgumentError, Code.INVALID_ARGUMENT],
    [status.RESOURCE_EXHAUSTED, ResourceExhaustedError, Code.RESOURCE_EXHAUSTED],
    [status.UNAVAILABLE, UnavailableError, Code.UNAVAILABLE],
    [status.DATA_LOSS, DataLossError, Code.DATA_LOSS],
    [status.CANCELLED, CancelledError, Code.CANCELLED],
    [status.DEADLINE_EXCEEDED, DeadlineExceededError, Code.DEADLINE_EXCEEDED],
    [status.INTERNAL, InternalError, Code.INTERNAL],
    [status.FAILED_PRECONDITION, FailedPreconditionError, Code.FAILED_PRECONDITION],
    [status.UNIMPLEMENTED, UnimplementedError, Code.UNIMPLEMENTED],
  ])("status %i -> %O", async (code, Class, expectedCode) => {
    const { client } = await setup(failWith(code, `server says ${code}`), { maxRetries: 0 });
    const err = await thrown(() => collect(client.generate({ prompt: "x" })));
    expect(err).toBeInstanceOf(Class);
    expect(err).toBeInstanceOf(MoelaError);
    expect((err as MoelaError).code).toBe(expectedCode);
    expect((err as Error).message).toBe(`server says ${code}`);
    expect((err as Error).name).toBe(Class.name);
  });
});

/** Resolves once the server saw the call end early; fails the test after 5 s. */
async function seenCancelled(record: CallRecord): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error("the server never saw the call cancelled")), 5_000)));
  try {
    await Promise.race([record.cancelled, late]);
  } finally {
    clearTimeout(timer);
  }
  expect(record.wasCancelled).toBe(true);
}
