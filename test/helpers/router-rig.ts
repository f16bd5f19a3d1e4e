/**
 * The set-up the router's integration tests share: the router's config against the tiny model, Redis and
 * stand-in decode instances on 127.0.0.1:0, a decode stand-in's Status, a BullMQ worker standing in for
 * prefill, and the teardown of all of it. Each test file scripts its own decode stand-in (what it streams
 * is what that file checks) on ScriptedDecode.
 */
import {
  DecodeService,
  FinishReason,
  Precision,
  type DecodeCancelRequest,
  type DecodeStatusResponse,
  type StreamRequest,
  type StreamResponse,
  type Usage,
} from "@moela/proto-gen";
import { createServer, drainAndClose, serve, type AsyncServiceImplementation, type CallContext, type RpcServer } from "@moela/rpc";
import { PREFILL_QUEUE, redisConnection, type PrefillJob } from "@moela/scheduler";
import { Worker, type Queue } from "bullmq";
import { CancelledError, type Logger } from "@moela/core";
import type { RouterConfig } from "../../services/router/src/config.js";
import type { StartedRouter } from "../../services/router/src/main.js";

/** The tiny checkpoint (models/tiny-v3). */
export const TINY_MODEL_DIR = new URL("../../models/tiny-v3", import.meta.url).pathname;
export const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";

/**
 * A router config for a test: the tiny model served as "tiny-v3", every address on 127.0.0.1:0, Redis at
 * REDIS_URL under `queuePrefix`, `decode` as its seed instances, exact precision, a 60 s request timeout,
 * 64 requests in flight, a silent log; `over` changes any of it.
 */
export function testRouterConfig(queuePrefix: string, decode: readonly string[], over: Partial<RouterConfig> = {}): RouterConfig {
  return {
    model: TINY_MODEL_DIR,
    httpAddress: "127.0.0.1:0",
    grpcAddress: "127.0.0.1:0",
    metricsAddress: "127.0.0.1:0",
    redisUrl: REDIS_URL,
    queuePrefix,
    decode,
    servedModelName: "tiny-v3",
    maxModelLen: undefined,
    precision: "exact",
    requestTimeoutMs: 60_000,
    maxInFlight: 64,
    logLevel: "silent",
    ...over,
  };
}

/** Decode.Status of a stand-in decode instance: idle, with room for everything (1000 free blocks of 16). */
export function idleDecodeStatus(over: Partial<DecodeStatusResponse> = {}): DecodeStatusResponse {
  return {
    freeKvBlocks: 1000,
    totalKvBlocks: 1000,
    blockSize: 16,
    runningSequences: 0,
    waitingSequences: 0,
    pendingTransfers: 0,
    modelId: "tiny-v3",
    precision: Precision.PRECISION_EXACT,
    accepting: true,
    ...over,
  };
}

/** A stand-in decode instance: the Decode service `impl` served on 127.0.0.1:0. */
export async function serveDecode(impl: AsyncServiceImplementation<typeof DecodeService>, logger: Logger): Promise<{ server: RpcServer; address: string }> {
  const server = createServer({ logger });
  server.addService(DecodeService, impl);
  return { server, address: (await serve(server, "127.0.0.1:0")).address };
}

/**
 * Decode.Cancel of a stand-in whose streams register an AbortController in `live` by request id: the
 * request is recorded in `cancels` and its stream aborted; found when it was streaming.
 */
export function cancelLive(live: Map<string, AbortController>, cancels: DecodeCancelRequest[]): (req: DecodeCancelRequest) => Promise<{ found: boolean }> {
  return async (req) => {
    cancels.push(req);
    const c = live.get(req.requestId);
    c?.abort(new CancelledError("cancelled"));
    return { found: c !== undefined };
  };
}

/**
 * What a scripted decode stand-in streams for a request once its job has arrived. `signal` aborts when the
 * caller goes away or Decode.Cancel ends the request; `decode` is the stand-in (its delayMs, say).
 */
export type DecodeScript = (job: PrefillJob, req: StreamRequest, signal: AbortSignal, decode: ScriptedDecode) => AsyncIterable<StreamResponse>;

/**
 * A stand-in decode instance: each Decode.Stream waits for its request's job (handed over with
 * `job(id).resolve`, by a stand-in prefill) and then streams what `script` makes of it; Decode.Cancel is
 * recorded and aborts the request's stream (cancelLive).
 */
export class ScriptedDecode {
  readonly cancels: DecodeCancelRequest[] = [];
  /** An AbortController per request whose Stream opened, by request id. */
  readonly live = new Map<string, AbortController>();
  /** A pause between messages, for the scripts that take one (slow streams). */
  delayMs = 0;
  server!: RpcServer;
  address = "";
  private readonly jobs = new Map<string, ReturnType<typeof deferred<PrefillJob>>>();

  constructor(
    private readonly script: DecodeScript,
    private readonly statusOf: (decode: ScriptedDecode) => DecodeStatusResponse = () => idleDecodeStatus(),
  ) {}

  /** The job of `requestId`, to resolve when it arrives; its Stream waits for it. */
  job(requestId: string): ReturnType<typeof deferred<PrefillJob>> {
    let d = this.jobs.get(requestId);
    if (d === undefined) this.jobs.set(requestId, (d = deferred<PrefillJob>()));
    return d;
  }

  async start(logger: Logger): Promise<this> {
    const self = this;
    const decode = await serveDecode(
      {
        async *stream(req: StreamRequest, ctx: CallContext): AsyncGenerator<StreamResponse> {
          const ctl = new AbortController();
          self.live.set(req.requestId, ctl);
          const signal = AbortSignal.any([ctx.signal, ctl.signal]);
          const job = await Promise.race([
            self.job(req.requestId).promise,
            new Promise<never>((_, reject) => signal.addEventListener("abort", () => reject(signal.reason))),
          ]);
          yield* self.script(job, req, signal, self);
        },
        cancel: cancelLive(self.live, self.cancels),
        async status() {
          return self.statusOf(self);
        },
      },
      logger,
    );
    return Object.assign(this, decode);
  }

  /** The first Decode.Cancel matching `predicate`, waited for up to `ms`. */
  async waitForCancel(predicate: (c: DecodeCancelRequest) => boolean, ms = 10_000): Promise<DecodeCancelRequest> {
    const until = Date.now() + ms;
    for (;;) {
      const c = this.cancels.find(predicate);
      if (c !== undefined) return c;
      if (Date.now() > until) throw new Error(`no matching Decode.Cancel within ${ms} ms; got ${JSON.stringify(this.cancels)}`);
      await sleep(20);
    }
  }
}

/** The usage a stand-in decode reports with a stream's last message: nothing cached, no speculation. */
export function streamUsage(job: PrefillJob, completionTokens: number): Usage {
  return { promptTokens: job.promptTokenIds.length, completionTokens, cachedPromptTokens: 0, draftTokens: 0, acceptedDraftTokens: 0 };
}

/** One message per token, `tokenAt(k)` for k up to the job's max_tokens; the last ends the stream with LENGTH and its usage. */
export function* lengthStream(job: PrefillJob, tokenAt: (k: number) => number): Generator<StreamResponse> {
  const n = job.sampling.maxTokens;
  for (let k = 0; k < n; k++) {
    const last = k === n - 1;
    yield {
      tokens: [{ index: k, tokenId: tokenAt(k) }],
      finishReason: last ? FinishReason.FINISH_REASON_LENGTH : FinishReason.FINISH_REASON_UNSPECIFIED,
      ...(last ? { usage: streamUsage(job, n) } : {}),
    };
  }
}

/** A BullMQ worker standing in for prefill on the shared queue under `prefix`: `take` gets each job's data. */
export function standInPrefill(prefix: string, take: (data: unknown) => void | Promise<void>, concurrency = 8): Worker {
  return new Worker(
    PREFILL_QUEUE,
    async (j) => {
      await take(j.data);
      return {};
    },
    { connection: redisConnection(REDIS_URL), prefix, concurrency, autorun: true },
  );
}

/** A promise with its resolve, for a value a test hands over later. */
export function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** Resolves after `ms`; rejects with `signal`'s reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      reject(signal.reason);
    });
  });
}

/** Tears a router test's set-up down, whichever parts of it exist: the router, the worker, the queue (obliterated), the decode servers. */
export async function closeRouterRig(rig: {
  router?: StartedRouter | undefined;
  worker?: Worker | undefined;
  queue?: Queue | undefined;
  decode?: readonly (RpcServer | undefined)[];
}): Promise<void> {
  await rig.router?.close();
  await rig.worker?.close();
  await rig.queue?.obliterate({ force: true }).catch(() => undefined);
  await rig.queue?.close();
  for (const server of rig.decode ?? []) if (server !== undefined) await drainAndClose(server, 0, { flushMs: 100 });
}
