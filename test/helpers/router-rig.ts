/**
 * The set-up the router's integration tests share: the router's config against the tiny model, Redis and
 * stand-in decode instances on 127.0.0.1:0, a decode stand-in's Status, a BullMQ worker standing in for
 * prefill, and the teardown of all of it. Each test file keeps its own scripted decode (what it streams is
 * what that file checks).
 */
import { DecodeService, Precision, type DecodeCancelRequest, type DecodeStatusResponse } from "@moela/proto-gen";
import { createServer, drainAndClose, serve, type AsyncServiceImplementation, type RpcServer } from "@moela/rpc";
import { PREFILL_QUEUE, redisConnection } from "@moela/scheduler";
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
