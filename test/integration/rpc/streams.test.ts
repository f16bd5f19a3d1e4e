/**
 * Streams end the way the protocol needs: a client that cancels (break, AbortSignal or deadline)
 * fires the handler's signal and runs its cleanup; a draining server lets a finite stream finish
 * within the grace period and ends an endless one with UNAVAILABLE.
 */
import { CancelledError, Code, DataLossError, MoelaError, UnavailableError } from "@moela/core";
import {
  DecodeClient,
  DecodeService,
  ExpertHostClient,
  ExpertHostService,
  KvTransferClient,
  KvBegin,
  KvTransferService,
  type PushRequest,
  type StreamResponse,
} from "@moela/proto-gen";
import { type AsyncServiceImplementation, clientStreamCall, connect, drainAndClose, serverStreamCall, unaryCall } from "@moela/rpc";
import { describe, expect, it, vi } from "vitest";
import { deferred, sleep, startServer } from "./harness.js";

interface HandlerEnd {
  /** The handler's signal reason when it aborted. */
  reason: unknown;
  /** Whether the generator's finally block ran. */
  cleanedUp: boolean;
  /** Tokens it yielded. */
  yielded: number;
}

/**
 * A Decode service whose Stream yields one token every `periodMs` (forever, or `limit` tokens),
 * waiting on the call's signal, and reports how it ended through `ended`.
 */
function tokenDecode(periodMs: number, limit = Infinity) {
  const ended = deferred<HandlerEnd>();
  const started = deferred();
  const impl: AsyncServiceImplementation<typeof DecodeService> = {
    async *stream(_request, ctx) {
      const end: HandlerEnd = { reason: undefined, cleanedUp: false, yielded: 0 };
      ctx.signal.addEventListener("abort", () => (end.reason = ctx.signal.reason), { once: true });
      started.resolve();
      try {
        for (let i = 0; i < limit; i++) {
          await sleep(periodMs, ctx.signal);
          yield { tokens: [{ index: i, tokenId: 100 + i }], finishReason: 0 } satisfies StreamResponse;
          end.yielded++;
        }
      } finally {
        end.cleanedUp = true;
        ended.resolve(end);
      }
    },
    async cancel() {
      return { found: false };
    },
    async status() {
      return {
        freeKvBlocks: 0,
        totalKvBlocks: 0,
        blockSize: 0,
        runningSequences: 0,
        waitingSequences: 0,
        pendingTransfers: 0,
        modelId: "tiny",
        precision: 0,
        accepting: true,
      };
    },
  };
  return { impl, ended: ended.promise, started: started.promise };
}

describe("a server stream cancelled by the client", () => {
  it("breaking out of the loop cancels the call: the handler's signal fires and its finally runs", async () => {
    const decode = tokenDecode(5);
    const { server, address } = await startServer((s) => s.addService(DecodeService, decode.impl));
    const client = connect(DecodeClient, address);
    try {
      const got: number[] = [];
      for await (const message of serverStreamCall<StreamResponse>((md, o) => client.stream({ requestId: "req-1", startIndex: 0 }, md, o))) {
        got.push(message.tokens[0]!.tokenId);
        if (got.length === 3) break;
      }
      expect(got).toEqual([100, 101, 102]);
      const end = await decode.ended;
      expect(end.reason).toBeInstanceOf(CancelledError);
      expect(end.cleanedUp).toBe(true);
      await vi.waitFor(() => expect(server.activeCalls).toBe(0), { timeout: 60_000, interval: 5 });
    } finally {
      client.close();
    }
  });

  it("aborting the client's AbortSignal cancels the call and the loop rejects with the abort reason", async () => {
    const decode = tokenDecode(5);
    const { address } = await startServer((s) => s.addService(DecodeService, decode.impl));
    const client = connect(DecodeClient, address);
    const controller = new AbortController();
    const reason = new CancelledError("user closed the tab");
    try {
      let count = 0;
      const error = await (async () => {
        for await (const _ of serverStreamCall((md, o) => client.stream({ requestId: "req-2", startIndex: 0 }, md, o), {
          signal: controller.signal,
        })) {
          if (++count === 2) controller.abort(reason);
        }
      })().catch((e: unknown) => e);
      expect(error).toBe(reason);
      const end = await decode.ended;
      expect(end.reason).toBeInstanceOf(CancelledError);
      expect(end.cleanedUp).toBe(true);
    } finally {
      client.close();
    }
  });

  it("a client deadline ends the stream with DEADLINE_EXCEEDED on both sides", async () => {
    const decode = tokenDecode(20);
    const { address } = await startServer((s) => s.addService(DecodeService, decode.impl));
    const client = connect(DecodeClient, address);
    try {
      const error = await (async () => {
        for await (const _ of serverStreamCall((md, o) => client.stream({ requestId: "req-3", startIndex: 0 }, md, o), { timeoutMs: 150 })) {
          // keep reading until the deadline
        }
      })().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(MoelaError);
      expect((error as MoelaError).code).toBe(Code.DEADLINE_EXCEEDED);
      const end = await decode.ended;
      expect((end.reason as MoelaError).code).toBe(Code.DEADLINE_EXCEEDED);
      expect(end.cleanedUp).toBe(true);
    } finally {
      client.close();
    }
  });
});

describe("drainAndClose", () => {
  it("lets a finite stream finish within the grace period (not forced)", async () => {
    const decode = tokenDecode(10, 5);
    const { server, address } = await startServer((s) => s.addService(DecodeService, decode.impl));
    const client = connect(DecodeClient, address);
    try {
      const got: number[] = [];
      const reading = (async () => {
        for await (const message of serverStreamCall<StreamResponse>((md, o) => client.stream({ requestId: "req-4", startIndex: 0 }, md, o))) {
          got.push(message.tokens[0]!.tokenId);
        }
      })();
      await decode.started;
      const result = await drainAndClose(server, 30_000);
      await reading;
      expect(result).toEqual({ forced: false });
      expect(got).toEqual([100, 101, 102, 103, 104]);
      expect((await decode.ended).reason).toBeUndefined();
    } finally {
      client.close();
    }
  });

  it("ends an endless stream with UNAVAILABLE after the grace period, and fires the handler's signal", async () => {
    const decode = tokenDecode(5);
    const { server, address } = await startServer((s) => s.addService(DecodeService, decode.impl));
    const client = connect(DecodeClient, address);
    try {
      let count = 0;
      const reading = (async () => {
        for await (const _ of serverStreamCall((md, o) => client.stream({ requestId: "req-5", startIndex: 0 }, md, o))) count++;
      })().catch((e: unknown) => e);
      await decode.started;
      const result = await drainAndClose(server, 100);
      const error = await reading;
      expect(result).toEqual({ forced: true });
      expect(error).toBeInstanceOf(UnavailableError);
      expect((error as Error).message).toBe("server is shutting down");
      expect(count).toBeGreaterThan(0);
      const end = await decode.ended;
      expect(end.reason).toBeInstanceOf(UnavailableError);
      expect(end.cleanedUp).toBe(true);
    } finally {
      client.close();
    }
  });

  it("refuses new calls once drained", async () => {
    const decode = tokenDecode(5);
    const { server, address } = await startServer((s) => s.addService(DecodeService, decode.impl));
    const client = connect(DecodeClient, address);
    try {
      await unaryCall((md, o, cb) => client.status({}, md, o, cb), { timeoutMs: 5_000 });
      await drainAndClose(server, 1_000);
      const error = await unaryCall((md, o, cb) => client.status({}, md, o, cb), { timeoutMs: 5_000 }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(UnavailableError);
    } finally {
      client.close();
    }
  });
});

describe("a client stream cancelled by the client", () => {
  // A cancelling grpc-js client half-closes before it resets the stream (handlers.ts, requestsOf), so
  // a handler that is pulling at that moment may see the iteration end quietly or fail, depending on
  // which frame its next pull meets. Each test sets up one of the two situations exactly.

  it("fails the handler's next pull after the cancel with the cancel reason, and fires its signal", async () => {
    const outcome = deferred<{ received: string[]; error: unknown; reason: unknown }>();
    const firstReceived = deferred();
    const { address } = await startServer((s) =>
      s.addService(KvTransferService, {
        async push(requests, ctx) {
          const aborted = new Promise((resolve) => ctx.signal.addEventListener("abort", () => resolve(ctx.signal.reason), { once: true }));
          const received: string[] = [];
          let error: unknown;
          try {
            for await (const request of requests) {
              received.push(request.chunk?.$case ?? "none");
              firstReceived.resolve();
              // Pull again only once the cancel has arrived: whatever the stream holds by then, the
              // iteration must fail with the signal's reason rather than end as if complete.
              await aborted;
            }
          } catch (e) {
            error = e;
          }
          outcome.resolve({ received, error, reason: await aborted });
          throw error ?? new Error("the iteration ended quietly after the cancel");
        },
      }),
    );
    const client = connect(KvTransferClient, address);
    const controller = new AbortController();
    // KvBegin, then the sender gives up (prefill lost its job) without sending the rest.
    async function* chunks(): AsyncGenerator<PushRequest> {
      yield { chunk: { $case: "begin", value: KvBegin.fromPartial({ transferId: "t-1", requestId: "req-1", numTokens: 1 }) } };
      await sleep(60_000, controller.signal).catch(() => {});
    }
    try {
      const sending = clientStreamCall((md, o, cb) => client.push(md, o, cb), chunks(), { signal: controller.signal }).catch((e: unknown) => e);
      await firstReceived.promise;
      controller.abort(new CancelledError("prefill lost its job"));
      const { received, error, reason } = await outcome.promise;
      expect(received).toEqual(["begin"]);
      expect(error).toBeInstanceOf(CancelledError);
      expect((error as MoelaError).code).toBe(Code.CANCELLED);
      expect(reason).toBeInstanceOf(CancelledError);
      expect(((await sending) as Error).message).toBe("prefill lost its job");
    } finally {
      client.close();
    }
  });

  it("ends the iteration without the protocol's end marker when the stream only half-closed, so the handler reports DATA_LOSS", async () => {
    const outcome = deferred<{ received: string[]; error: unknown }>();
    const { address } = await startServer((s) =>
      s.addService(KvTransferService, {
        async push(requests) {
          const received: string[] = [];
          let error: unknown;
          try {
            for await (const request of requests) received.push(request.chunk?.$case ?? "none");
            // A stream that ended is no proof of completeness: the protocol's own end marker is.
            if (received.at(-1) !== "end") throw new DataLossError("stream ended before KvEnd");
          } catch (e) {
            error = e;
          }
          outcome.resolve({ received, error });
          throw error ?? new Error("unreachable: the transfer looked complete");
        },
      }),
    );
    const client = connect(KvTransferClient, address);
    // KvBegin, then the half-close a cancelling client sends first, without the reset that follows it.
    async function* chunks(): AsyncGenerator<PushRequest> {
      yield { chunk: { $case: "begin", value: KvBegin.fromPartial({ transferId: "t-1", requestId: "req-1", numTokens: 1 }) } };
    }
    try {
      const sending = clientStreamCall((md, o, cb) => client.push(md, o, cb), chunks()).catch((e: unknown) => e);
      const { received, error } = await outcome.promise;
      expect(received).toEqual(["begin"]);
      expect(error).toBeInstanceOf(DataLossError);
      expect((error as MoelaError).code).toBe(Code.DATA_LOSS);
      expect(await sending).toBeInstanceOf(DataLossError);
    } finally {
      client.close();
    }
  });
});

describe("a unary handler that ignores its signal", () => {
  it("is answered UNAVAILABLE when the drain grace period runs out", async () => {
    const entered = deferred();
    const { server, address } = await startServer((s) =>
      s.addService(ExpertHostService, {
        async dispatch() {
          entered.resolve();
          // A stuck expert kernel: never looks at ctx.signal, never returns.
          return new Promise(() => {});
        },
        async *dispatchStream() {
          throw new MoelaError("not used", Code.UNIMPLEMENTED);
        },
        async *attachSharedMemory() {
          throw new MoelaError("not used", Code.UNIMPLEMENTED);
        },
        async info() {
          throw new Error("not used");
        },
      }),
    );
    const client = connect(ExpertHostClient, address);
    try {
      const calling = unaryCall((md, o, cb) =>
        client.dispatch({ layer: 3, expertIds: [], tokenExpertCounts: [], weights: [], requestId: "r", sharedExpertRows: [] }, md, o, cb),
      ).catch((e: unknown) => e);
      await entered.promise;
      const result = await drainAndClose(server, 100, { flushMs: 200 });
      expect(result.forced).toBe(true);
      expect(await calling).toBeInstanceOf(UnavailableError);
    } finally {
      client.close();
    }
  });
});
