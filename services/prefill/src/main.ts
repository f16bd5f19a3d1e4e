/**
 * Prefill: takes prompt jobs from the BullMQ queue, runs them through the engine in batched chunks with
 * the routed experts on the expert-hosts, and streams each prompt's latent KV to the decode instance the
 * router chose. main() composes it from its configuration, prints the ready line, waits for
 * SIGTERM/SIGINT, stops taking jobs, finishes the active ones and exits 0; startPrefill() does the same
 * composition for tests and in-process clusters.
 */
import { Code, createLogger, MoelaError, UnavailableError, type Logger } from "@moela/core";
import { DeepseekModel, Engine, readModelConfig, type ExpertExecutor } from "@moela/engine";
import { grpcKvConnector, KvLedger, type KvConnector, type KvSender } from "@moela/kv-transfer";
import { createServiceMetrics, rpcServerCallRecorder, startMetricsServer } from "@moela/metrics";
import {
  checkHostInfo,
  checkpointModelId,
  connectExpertHosts,
  createInProcessExperts,
  HostedExpertExecutor,
  placementFor,
  precisionProfile,
  type GrpcExpertHostTransport,
} from "@moela/moe-dispatch";
import { Precision, PrefillService } from "@moela/proto-gen";
import { createServer, drainAndClose, serve } from "@moela/rpc";
import { PREFILL_JOB_OPTIONS, PREFILL_QUEUE, PREFILL_WORKER_OPTIONS, redisConnection } from "@moela/scheduler";
import { Worker } from "bullmq";
import { parsePrefillConfig, splitHostPort, type PrefillConfig } from "./config.js";
import { jobProcessor, PrefillBatcher } from "./worker.js";

export { parsePrefillConfig, type PrefillConfig } from "./config.js";

/** Tokens per KV block of prefill's own (transient) cache. */
const BLOCK_SIZE = 16;
/** The default --max-batch-tokens cap (prefill's cache is sized for it). */
const DEFAULT_MAX_BATCH_TOKENS = 32_768;

export interface StartPrefillOptions {
  readonly logger?: Logger;
  /** The KV connector of a decode address (default: gRPC KvTransfer.Push); tests and one-process clusters pass their own. */
  readonly connectorFor?: (decodeAddress: string) => KvConnector;
  /** How long startup waits for each expert-host to answer Info (default 30 s). */
  readonly expertHostWaitMs?: number;
  /** Give up starting when Redis does not answer within this (default 10 s). */
  readonly redisTimeoutMs?: number;
}

export interface StartedPrefill {
  /** host:port of health and Prefill.Status. */
  readonly grpcAddress: string;
  /** http://host:port/metrics */
  readonly metricsUrl: string;
  /** Jobs being processed now. */
  readonly runningJobs: () => number;
  /** Stop taking jobs, finish the active ones, close everything. */
  close(): Promise<void>;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new UnavailableError(`${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

async function waitForInfo(host: GrpcExpertHostTransport, ms: number): Promise<Awaited<ReturnType<GrpcExpertHostTransport["info"]>>> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await host.info();
    } catch (err) {
      if (Date.now() >= deadline || !(err instanceof MoelaError && err.code === Code.UNAVAILABLE)) throw err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

export async function startPrefill(config: PrefillConfig, options: StartPrefillOptions = {}): Promise<StartedPrefill> {
  const logger = options.logger ?? createLogger("prefill", config.logLevel);
  const profile = precisionProfile(config.precision);
  const modelConfig = readModelConfig(config.model);
  const maxBatchTokens = config.maxBatchTokens ?? Math.min(modelConfig.maxPositionEmbeddings, DEFAULT_MAX_BATCH_TOKENS);
  const modelId = checkpointModelId(config.model);
  // Every block a job holds, and the one way it goes back (counted by reason).
  const ledger = new KvLedger({
    onRelease: (reason, blocks) => {
      m.prefillKvReclaims.inc({ reason });
      m.prefillKvReclaimedBlocks.inc({ reason }, blocks);
    },
  });
  const { registry, m } = createServiceMetrics("prefill", { collect: { prefillKvBlocksUsed: () => ledger.heldBlocks } });

  const closers: (() => Promise<unknown>)[] = [];
  const closeAll = async (): Promise<void> => {
    for (const c of closers.splice(0).reverse()) await c().catch((err: unknown) => logger.warn({ err }, "error while closing"));
  };
  try {
    // Attention, dense layers, gates and shared experts here; routed experts on the hosts.
    const model = DeepseekModel.load(config.model, { routedExperts: () => false, kvDtype: profile.kvDtype });
    let experts: ExpertExecutor;
    if (config.expertHosts.length > 0) {
      const hosts = connectExpertHosts(config.expertHosts);
      closers.push(async () => hosts.forEach((h) => h.close()));
      const placement = placementFor(modelConfig, hosts.length);
      const layers = [...model.moeLayers().keys()].sort((a, b) => a - b);
      const waitMs = options.expertHostWaitMs ?? 30_000;
      await Promise.all(
        hosts.map(async (h, shard) => checkHostInfo(await waitForInfo(h, waitMs), { shard, placement, profile, hidden: modelConfig.hiddenSize, layers, modelId }, h.name)),
      );
      experts = new HostedExpertExecutor({ placement, profile, hosts, hidden: modelConfig.hiddenSize, metrics: m });
      logger.info({ expertHosts: config.expertHosts }, "routed experts on expert-hosts");
    } else {
      // No hosts configured: one in-process expert-host loading every routed expert from the checkpoint,
      // behind the same dispatcher and codecs, so the numbers are the cluster's with one host.
      experts = createInProcessExperts(config.model, 1, profile, { metrics: m }).executor;
      logger.warn("no --expert-hosts: routed experts run in this process (one in-process expert-host)");
    }
    model.setExpertExecutor(experts);
    const numBlocks = Math.ceil((maxBatchTokens + config.concurrency) / BLOCK_SIZE) + config.concurrency;
    const engine = new Engine(model, { blockSize: BLOCK_SIZE, numBlocks, prefillChunk: config.prefillChunk });
    const batcher = new PrefillBatcher(engine, maxBatchTokens, m, logger);

    const connectors = new Map<string, KvConnector & { close?: () => void }>();
    closers.push(async () => connectors.forEach((c) => c.close?.()));
    const connectorFor =
      options.connectorFor ??
      ((address: string): KvConnector => {
        let c = connectors.get(address);
        if (c === undefined) {
          c = grpcKvConnector(address);
          connectors.set(address, c);
        }
        return c;
      });

    const activeTransfers = new Set<KvSender>();
    let running = 0;
    let accepting = true;
    const processJob = jobProcessor({
      engine,
      batcher,
      precision: config.precision,
      modelId,
      maxPromptTokens: maxBatchTokens,
      connectorFor,
      metrics: m,
      logger,
      activeTransfers,
      ledger,
    });

    const grpc = createServer({ logger, onCallEnd: rpcServerCallRecorder(m) });
    grpc.addService(PrefillService, {
      status: async () => ({
        modelId,
        precision: config.precision === "paper" ? Precision.PRECISION_PAPER : Precision.PRECISION_EXACT,
        runningJobs: running,
        maxConcurrentJobs: config.concurrency,
        pendingPromptTokens: batcher.pendingTokens,
        chunkSize: config.prefillChunk,
        activeTransfers: activeTransfers.size,
        accepting,
      }),
    });
    const grpcBound = await serve(grpc, config.grpcAddress);
    closers.push(() => drainAndClose(grpc, 5_000));

    const metricsAt = splitHostPort(config.metricsAddress);
    const metricsServer = await startMetricsServer(registry, { host: metricsAt.host, port: metricsAt.port });
    closers.push(() => metricsServer.close());

    const worker = new Worker(
      PREFILL_QUEUE,
      async (job) => {
        running++;
        try {
          return await processJob(job);
        } finally {
          running--;
        }
      },
      {
        connection: redisConnection(config.redisUrl),
        prefix: config.queuePrefix,
        concurrency: config.concurrency,
        // A dead worker's jobs go back to the queue within lockDuration + stalledInterval (queues.ts).
        ...PREFILL_WORKER_OPTIONS,
        autorun: false,
      },
    );
    worker.on("error", (err) => logger.warn({ err: err.message }, "prefill worker connection error"));
    closers.push(async () => {
      accepting = false;
      grpc.setServing(false);
      // Stop fetching; wait for the active jobs to finish (their KV reaches decode).
      await worker.close();
    });
    await withTimeout(worker.waitUntilReady(), options.redisTimeoutMs ?? 10_000, `Redis at ${config.redisUrl}`);
    void worker.run().catch((err: unknown) => logger.error({ err }, "prefill worker stopped"));

    logger.info(
      { grpc: grpcBound.address, metrics: metricsServer.url, modelId, precision: config.precision, maxBatchTokens, concurrency: config.concurrency, attempts: PREFILL_JOB_OPTIONS.attempts },
      "prefill serving",
    );
    let closing: Promise<void> | undefined;
    return {
      grpcAddress: grpcBound.address,
      metricsUrl: metricsServer.url,
      runningJobs: () => running,
      close: () => {
        closing ??= closeAll();
        return closing;
      },
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}

function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (sig: NodeJS.Signals): void => {
      process.off("SIGTERM", on);
      process.off("SIGINT", on);
      resolve(sig);
    };
    process.on("SIGTERM", on);
    process.on("SIGINT", on);
  });
}

/** `moela serve --role prefill [flags]`: returns the process exit code. */
export async function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  let config: PrefillConfig;
  try {
    config = parsePrefillConfig(argv, env);
  } catch (err) {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    return 2;
  }
  const logger = createLogger("prefill", config.logLevel);
  let prefill: StartedPrefill;
  try {
    prefill = await startPrefill(config, { logger });
  } catch (err) {
    logger.fatal({ err }, "prefill failed to start");
    process.stderr.write(`prefill: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
  process.stdout.write(`${JSON.stringify({ event: "ready", role: "prefill", pid: process.pid, grpc: prefill.grpcAddress, metrics: prefill.metricsUrl })}\n`);
  const signal = await waitForSignal();
  logger.info({ signal, runningJobs: prefill.runningJobs() }, "shutting down: finishing active jobs");
  await prefill.close();
  logger.info("stopped");
  return 0;
}
