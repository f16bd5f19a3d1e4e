/**
 * The prefill service's integration tests: the tiny checkpoint's single-process engine, a decode side
 * (KvInbox behind a real KvTransfer gRPC server), a prefill job and an in-process prefill service's config.
 */
import { createLogger } from "@moela/core";
import { DeepseekModel, Engine, type EmittedToken, type Sequence } from "@moela/engine";
import { KvInbox, kvTransferService, type KvTransferMeta } from "@moela/kv-transfer";
import { checkpointModelId, createInProcessExperts } from "@moela/moe-dispatch";
import { KvTransferService } from "@moela/proto-gen";
import { createServer, drainAndClose, serve, type RpcServer } from "@moela/rpc";
import { PREFILL_JOB_VERSION, type PrefillJob } from "@moela/scheduler";
import type { PrefillConfig } from "../../services/prefill/src/config.js";

export const TINY_MODEL = new URL("../../models/tiny-v3", import.meta.url).pathname;
export const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const silent = createLogger("prefill-test", "silent");

/** The single-process engine `moela generate` runs: every routed expert through one in-process host. */
export function singleProcessEngine(): Engine {
  const model = DeepseekModel.load(TINY_MODEL);
  model.setExpertExecutor(createInProcessExperts(model, 1, "exact").executor);
  return new Engine(model, { blockSize: 16, numBlocks: 256 });
}

export interface Admitted {
  readonly seq: Sequence;
  readonly meta: KvTransferMeta;
}

/** The decode side: an engine, its KvInbox and a KvTransfer gRPC server; what was admitted, by request id. */
export class DecodeSide {
  readonly engine = singleProcessEngine();
  readonly admitted = new Map<string, Admitted>();
  /** The reasons of the transfers the inbox failed. */
  readonly failed: string[] = [];
  private waiters = new Map<string, () => void>();
  server!: RpcServer;
  address = "";

  async start(): Promise<this> {
    const inbox = new KvInbox({
      engine: this.engine,
      modelId: checkpointModelId(TINY_MODEL),
      onAdmit: (seq: Sequence, meta: KvTransferMeta) => {
        this.admitted.set(meta.requestId, { seq, meta });
        this.waiters.get(meta.requestId)?.();
      },
      onFail: (f) => this.failed.push(f.reason),
    });
    this.server = createServer({ logger: silent });
    this.server.addService(KvTransferService, kvTransferService(inbox));
    this.address = (await serve(this.server, "127.0.0.1:0")).address;
    return this;
  }

  /** What was admitted for `requestId`, once it is. */
  async admittedOf(requestId: string): Promise<Admitted> {
    if (!this.admitted.has(requestId)) await new Promise<void>((resolve) => this.waiters.set(requestId, resolve));
    return this.admitted.get(requestId)!;
  }

  /** Steps `seq` to its end and releases it; every token it emitted. */
  async decodeToEnd(seq: Sequence): Promise<EmittedToken[]> {
    while (!seq.finished) await this.engine.step([seq]);
    const out = [...seq.output];
    this.engine.release(seq);
    return out;
  }

  async close(): Promise<void> {
    await drainAndClose(this.server, 0, { flushMs: 100 });
  }
}

/** A greedy prefill job (two logprobs, EOS ignored, exact precision) due in `deadlineMs`, or that with `over` applied. */
export function prefillJob(
  requestId: string,
  prompt: number[],
  decodeAddress: string,
  { maxTokens, deadlineMs }: { maxTokens: number; deadlineMs: number },
  over: Partial<PrefillJob> = {},
): PrefillJob {
  return {
    version: PREFILL_JOB_VERSION,
    requestId,
    promptTokenIds: prompt,
    sampling: { temperature: 0, topP: 1, topK: -1, seed: 1, maxTokens, stopTokenIds: [], ignoreEos: true, logprobs: 2 },
    decodeAddress,
    deadlineUnixMs: Date.now() + deadlineMs,
    precision: "exact",
    enqueuedAtMs: Date.now(),
    ...over,
  };
}

/** A prefill service in this process on the tiny checkpoint and the local Redis, every address on 127.0.0.1:0, silent. */
export function prefillConfig(queuePrefix: string, over: Pick<PrefillConfig, "prefillChunk" | "concurrency"> & Partial<PrefillConfig>): PrefillConfig {
  return {
    model: TINY_MODEL,
    redisUrl: REDIS_URL,
    queuePrefix,
    grpcAddress: "127.0.0.1:0",
    metricsAddress: "127.0.0.1:0",
    expertHosts: [],
    precision: "exact",
    maxBatchTokens: 256,
    ...over,
    logLevel: "silent",
  };
}
