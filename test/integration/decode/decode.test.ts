/**
 * The decode service over real gRPC on 127.0.0.1, with two real expert-host servers: KV pushed by a
 * KvSender driven by a real engine.prefill (the prefill side runs the same dispatcher over in-process
 * hosts, as `moela generate --expert-hosts 2` does), tokens read from Decode.Stream and compared with
 * that single-process engine.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Code, createLogger } from "@moela/core";
import type { EmittedToken, Engine, GenerationParams } from "@moela/engine";
import { grpcKvConnector, KvPoll, type KvConnector, type KvFrame } from "@moela/kv-transfer";
import { DecodeClient, FinishReason, Precision, type DecodeCancelResponse, type DecodeStatusResponse, type StreamResponse } from "@moela/proto-gen";
import { checkHealth, connect, serverStreamCall, unaryCall } from "@moela/rpc";
import type { RunningDecode } from "@moela/decode";
import { ManualClock } from "../../helpers/clock.js";
import { startDecodeRig, type DecodeRig } from "../../helpers/decode-rig.js";
import { GREEDY, prefillAndSend, referenceRun, SAMPLED } from "../../helpers/kv.js";

const PROMPT = [0, 399, 332, 17, 256, 901, 44, 12, 730, 5, 66, 120, 7];
const silent = createLogger("test", process.env.MOELA_TEST_LOG_LEVEL ?? "silent");

/** vi.waitFor's options here: retry every 20 ms, fail the test after 20 s. */
const EVENTUALLY = { timeout: 20_000, interval: 20 };

interface Collected {
  messages: StreamResponse[];
  error: (Error & { code?: number }) | null;
}

describe.each(["exact", "paper"] as const)("decode over gRPC with two expert-hosts, %s profile", (precision) => {
  let rig: DecodeRig | undefined;
  let decode: RunningDecode;
  let prefill: Engine;
  let connector: KvConnector & { close(): void };
  let client: InstanceType<typeof DecodeClient>;
  let transfers = 0;
  /** Decode's clock: its timers (the Stream grace period above all) fire only when a test moves it. */
  const clock = new ManualClock();

  beforeAll(async () => {
    rig = await startDecodeRig(silent, { precision, deps: { clock } });
    ({ decode, prefill } = rig);
    connector = grpcKvConnector(decode.grpcAddress);
    client = connect(DecodeClient, decode.grpcAddress);
  });

  afterAll(async () => {
    client?.close();
    connector?.close();
    await rig?.close();
  });

  function push(requestId: string, params: GenerationParams, prompt: readonly number[] = PROMPT, via: KvConnector = connector) {
    return prefillAndSend(prefill, via, prompt, params, { transferId: `t-${++transfers}`, requestId, modelId: decode.modelId });
  }

  /** Open Decode.Stream and collect every message until it ends (or `stopAfter` messages, then cancel). */
  function openStream(requestId: string, startIndex = 0, stopAfter = Infinity): Promise<Collected> {
    return (async () => {
      const out: Collected = { messages: [], error: null };
      try {
        for await (const m of serverStreamCall<StreamResponse>((md, o) => client.stream({ requestId, startIndex }, md, o))) {
          out.messages.push(m);
          if (out.messages.length >= stopAfter) break;
        }
      } catch (err) {
        out.error = err as Error & { code?: number };
      }
      return out;
    })();
  }

  /** The gRPC connector with each transfer's frames sent through `send` (made per transfer, given the real one). */
  function sendingThrough(send: (inner: ReturnType<KvConnector["open"]>) => (f: KvFrame) => Promise<void>): KvConnector {
    return {
      open(transferId, requestId) {
        const inner = connector.open(transferId, requestId);
        return { outcome: inner.outcome, end: () => inner.end(), cancel: (r) => inner.cancel(r), send: send(inner) };
      },
    };
  }

  function status(): Promise<DecodeStatusResponse> {
    return unaryCall((md, o, cb) => client.status({}, md, o, cb), { timeoutMs: 5_000 });
  }

  /** Open a stream and wait until the instance has registered it; `done` settles when the stream ends. */
  async function openedStream(requestId: string, startIndex = 0, stopAfter = Infinity): Promise<{ done: Promise<Collected> }> {
    const done = openStream(requestId, startIndex, stopAfter);
    // By id, not by count: a previous test's abandoned request may leave the batcher meanwhile.
    await vi.waitFor(() => expect(decode.batcher.has(requestId), `the Stream of ${requestId} to register`).toBe(true), EVENTUALLY);
    // Wrapped: an async function returning the promise itself would wait for the whole stream.
    return { done };
  }

  const tokensOf = (c: Collected) => c.messages.flatMap((m) => m.tokens);
  const asWire = (ref: EmittedToken[]) =>
    ref.map((t, index) => ({
      index,
      tokenId: t.id,
      logprobs: { logprob: Math.fround(t.logprob), top: (t.top ?? []).map(([tokenId, lp]) => ({ tokenId, logprob: Math.fround(lp) })) },
    }));

  it("serves health and reflection for KvTransfer and Decode", async () => {
    expect(await checkHealth(decode.grpcAddress, { service: "moela.v1.Decode" })).toBe("SERVING");
    expect(await checkHealth(decode.grpcAddress, { service: "moela.v1.KvTransfer" })).toBe("SERVING");
    const s = await status();
    expect(s).toMatchObject({
      freeKvBlocks: 128,
      totalKvBlocks: 128,
      blockSize: 4,
      runningSequences: 0,
      waitingSequences: 0,
      pendingTransfers: 0,
      accepting: true,
      modelId: decode.modelId,
    });
    expect(s.precision).toBe(precision === "exact" ? Precision.PRECISION_EXACT : Precision.PRECISION_PAPER);
  });

  it.each([
    ["greedy", GREEDY],
    ["seeded sampling", SAMPLED],
  ])("%s: Stream opened first, KV pushed over gRPC, gives exactly the single-process engine's tokens", async (_kind, params) => {
    const reference = await referenceRun(prefill, PROMPT, params);
    const stream = await openedStream(`req-eq-${_kind}`);
    const { outcome } = await push(`req-eq-${_kind}`, params);
    expect(outcome.ok).toBe(true);
    const got = await stream.done;
    expect(got.error).toBeNull();
    expect(tokensOf(got)).toEqual(asWire(reference));
    const last = got.messages[got.messages.length - 1]!;
    expect(last.finishReason).toBe(FinishReason.FINISH_REASON_LENGTH);
    expect(last.usage).toMatchObject({ promptTokens: PROMPT.length, completionTokens: params.maxTokens });
    // MTP speculation ran on the decode side (the draft and the MTP block's KV came over).
    expect(last.usage!.draftTokens).toBeGreaterThan(0);
    await vi.waitFor(async () => expect((await status()).freeKvBlocks).toBe(128), EVENTUALLY);
  });

  it("a Stream opened after the KV arrived gets every token; a reopened one resumes at start_index", async () => {
    const reference = await referenceRun(prefill, PROMPT, GREEDY);
    const { outcome } = await push("req-late", GREEDY);
    expect(outcome.ok).toBe(true);
    // Read the first message only, then go away (the client cancels its call).
    const first = await openStream("req-late", 0, 1);
    expect(first.error).toBeNull();
    const seen = tokensOf(first).length;
    expect(seen).toBeGreaterThan(0);
    const rest = await openStream("req-late", seen);
    expect(rest.error).toBeNull();
    expect([...tokensOf(first), ...tokensOf(rest)]).toEqual(asWire(reference));
    await vi.waitFor(async () => expect((await status()).freeKvBlocks).toBe(128), EVENTUALLY);
  });

  it("continuous batching: concurrent requests of different lengths all come back right", async () => {
    const prompts = [PROMPT, PROMPT.slice(0, 5), [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11], [42]];
    const params = prompts.map((_, i) => ({ ...GREEDY, maxTokens: 6 + 4 * i }));
    const refs: EmittedToken[][] = [];
    for (const [i, p] of prompts.entries()) refs.push(await referenceRun(prefill, p, params[i]!));
    const streams = await Promise.all(prompts.map((_, i) => openedStream(`req-batch-${i}`)));
    // The prefill engine serves one call at a time; decode steps the admitted ones meanwhile.
    for (const [i, p] of prompts.entries()) expect((await push(`req-batch-${i}`, params[i]!, p)).outcome.ok).toBe(true);
    const got = await Promise.all(streams.map((s) => s.done));
    for (const [i, g] of got.entries()) {
      expect(g.error).toBeNull();
      expect(tokensOf(g).map((t) => t.tokenId)).toEqual(refs[i]!.map((t) => t.id));
    }
    await vi.waitFor(async () => expect((await status()).freeKvBlocks).toBe(128), EVENTUALLY);
  });

  it("Cancel stops a running request, ends its Stream with CANCELLED and frees its blocks", async () => {
    const long = { ...GREEDY, maxTokens: 400 };
    const stream = await openedStream("req-cancel");
    expect((await push("req-cancel", long)).outcome.ok).toBe(true);
    await vi.waitFor(async () => expect((await status()).runningSequences).toBe(1), EVENTUALLY);
    expect((await status()).freeKvBlocks).toBe(128 - Math.ceil((PROMPT.length + 400 + 1) / 4));
    const res = await unaryCall<DecodeCancelResponse>((md, o, cb) => client.cancel({ requestId: "req-cancel", reason: "stop string" }, md, o, cb));
    expect(res.found).toBe(true);
    // Cancel answers once the blocks are back.
    expect(await status()).toMatchObject({ freeKvBlocks: 128, runningSequences: 0 });
    const got = await stream.done;
    expect(got.error?.code).toBe(Code.CANCELLED);
    expect(tokensOf(got).length).toBeLessThan(400);
    const again = await unaryCall<DecodeCancelResponse>((md, o, cb) => client.cancel({ requestId: "req-cancel", reason: "" }, md, o, cb));
    expect(again.found).toBe(false);
  });

  it("refuses huge ids and reasons on Cancel, Stream and KvBegin, before keeping anything", async () => {
    const huge = "x".repeat(1 << 20);
    const fail = (p: Promise<unknown>) =>
      p.then(
        () => null,
        (e: unknown) => e as { code?: number; message?: string },
      );
    const cancelId = await fail(unaryCall((md, o, cb) => client.cancel({ requestId: huge, reason: "" }, md, o, cb)));
    expect(cancelId?.code).toBe(Code.INVALID_ARGUMENT);
    expect(cancelId?.message).toMatch(/request_id has 1048576 characters, at most 256/);
    const cancelReason = await fail(unaryCall((md, o, cb) => client.cancel({ requestId: "req-x", reason: huge }, md, o, cb)));
    expect(cancelReason?.code).toBe(Code.INVALID_ARGUMENT);
    expect(cancelReason?.message).toMatch(/reason has 1048576 characters, at most 1024/);
    const streamErr = await openStream(huge);
    expect(streamErr.error?.code).toBe(Code.INVALID_ARGUMENT);
    // 300 characters here: the transport also carries the id in metadata, where a megabyte fails as a header.
    const { outcome } = await push("y".repeat(300), GREEDY);
    expect(outcome.ok === false && outcome.failure.code).toBe(Code.INVALID_ARGUMENT);
    expect(outcome.ok === false && outcome.failure.reason).toMatch(/at most 256 characters/);
    expect(outcome.ok === false && outcome.failure.reason.length).toBeLessThan(200);
    expect(await status()).toMatchObject({ freeKvBlocks: 128, pendingTransfers: 0 });
  });

  it("a router whose Stream goes away and does not come back within the grace period frees the blocks", async () => {
    // The request outlives the 2 s grace whatever the machine's speed: each of its 400 steps takes 10 ms on
    // decode's clock, which moves only 100 ms at a time here, so at most one step ends per 100 ms.
    const step = decode.engine.step.bind(decode.engine);
    const slowed = vi.spyOn(decode.engine, "step").mockImplementation(async (seqs) => {
      await new Promise<void>((resolve) => clock.setTimeout(resolve, 10));
      return step(seqs);
    });
    try {
      const stream = await openedStream("req-gone", 0, 1);
      expect((await push("req-gone", { ...GREEDY, maxTokens: 400 })).outcome.ok).toBe(true);
      expect((await stream.done).messages).toHaveLength(1);
      await vi.waitFor(async () => {
        clock.advance(100);
        expect((await status()).freeKvBlocks).toBe(128);
      }, EVENTUALLY);
    } finally {
      slowed.mockRestore();
    }
    // The request is gone for good: a late Stream is told so.
    const late = await openStream("req-gone");
    expect(late.error?.code).toBe(Code.CANCELLED);
  });

  it("a full cache refuses the transfer with RESOURCE_EXHAUSTED, nothing leaks, and the request waits for prefill's retry", async () => {
    const stream = await openedStream("req-huge");
    // 13 + 600 + 1 positions need 154 blocks of 4; the cache has 128.
    const { outcome, sender } = await push("req-huge", { ...GREEDY, maxTokens: 600 });
    expect(outcome).toEqual({
      ok: false,
      failure: { code: Code.RESOURCE_EXHAUSTED, reason: expect.stringMatching(/KV cache full: need 154 more blocks, 128 free of 128/) },
    });
    expect(sender.poll()).toBe(KvPoll.Failed);
    expect(await status()).toMatchObject({ freeKvBlocks: 128, pendingTransfers: 0, runningSequences: 0 });
    // A full cache is transient: the Stream stays open for the next attempt; the router's Cancel ends it.
    await unaryCall((md, o, cb) => client.cancel({ requestId: "req-huge", reason: "prefill failed for good" }, md, o, cb));
    expect((await stream.done).error?.code).toBe(Code.CANCELLED);
    expect(await status()).toMatchObject({ freeKvBlocks: 128, pendingTransfers: 0, runningSequences: 0 });
  });

  it("a corrupted chunk fails the transfer with DATA_LOSS and frees its blocks; prefill's retry (a new transfer id) completes the Stream exactly", async () => {
    const corrupting = sendingThrough((inner) => {
      let n = 0;
      return (f) => {
        if (f.kind === "layer" && ++n === 4) {
          const data = f.data.slice();
          data[0] = data[0]! ^ 1;
          return inner.send({ ...f, data });
        }
        return inner.send(f);
      };
    });
    const reference = await referenceRun(prefill, PROMPT, GREEDY);
    const stream = await openedStream("req-corrupt");
    const { outcome } = await push("req-corrupt", GREEDY, PROMPT, corrupting);
    expect(outcome.ok === false && outcome.failure.code).toBe(Code.DATA_LOSS);
    expect(outcome.ok === false && outcome.failure.reason).toMatch(/checksum mismatch in chunk 3/);
    expect(await status()).toMatchObject({ freeKvBlocks: 128, pendingTransfers: 0 });
    // As BullMQ retries the job (or hands a dead worker's job to another): same request, new transfer id.
    expect((await push("req-corrupt", GREEDY)).outcome.ok).toBe(true);
    const got = await stream.done;
    expect(got.error).toBeNull();
    expect(tokensOf(got)).toEqual(asWire(reference));
    await vi.waitFor(async () => expect((await status()).freeKvBlocks).toBe(128), EVENTUALLY);
  });

  it("a transfer whose sender dies mid-way (the stream breaks before KvEnd) frees its blocks; the rerun's KV is admitted", async () => {
    const reference = await referenceRun(prefill, PROMPT, GREEDY);
    const killing = sendingThrough((inner) => {
      let n = 0;
      return (f) => {
        // The process "dies" after a few layers: the call is cut without KvEnd.
        if (f.kind === "layer" && ++n === 3) inner.cancel("prefill worker killed");
        return n >= 3 ? Promise.resolve() : inner.send(f);
      };
    });
    const stream = await openedStream("req-killed");
    const { outcome } = await push("req-killed", GREEDY, PROMPT, killing);
    expect(outcome.ok).toBe(false);
    await vi.waitFor(async () => expect(await status()).toMatchObject({ freeKvBlocks: 128, pendingTransfers: 0 }), EVENTUALLY);
    expect((await push("req-killed", GREEDY)).outcome.ok).toBe(true);
    const got = await stream.done;
    expect(got.error).toBeNull();
    expect(tokensOf(got)).toEqual(asWire(reference));
    await vi.waitFor(async () => expect((await status()).freeKvBlocks).toBe(128), EVENTUALLY);
  });

  it("a late duplicate transfer for a request already delivered is refused with ALREADY_EXISTS without taking blocks", async () => {
    const stream = await openedStream("req-dup");
    expect((await push("req-dup", GREEDY)).outcome.ok).toBe(true);
    expect((await stream.done).error).toBeNull();
    const late = await push("req-dup", GREEDY);
    expect(late.outcome.ok === false && late.outcome.failure.code).toBe(Code.ALREADY_EXISTS);
    expect(await status()).toMatchObject({ freeKvBlocks: 128, pendingTransfers: 0 });
  });

  it("the same request id pushed twice is refused the second time", async () => {
    const stream = await openedStream("req-twice");
    expect((await push("req-twice", { ...GREEDY, maxTokens: 200 })).outcome.ok).toBe(true);
    const second = await push("req-twice", GREEDY);
    expect(second.outcome.ok === false && second.outcome.failure.code).toBe(Code.ALREADY_EXISTS);
    await unaryCall((md, o, cb) => client.cancel({ requestId: "req-twice", reason: "test over" }, md, o, cb));
    expect((await stream.done).error?.code).toBe(Code.CANCELLED);
    expect(await status()).toMatchObject({ freeKvBlocks: 128 });
  });
});
