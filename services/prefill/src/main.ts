/**
 * Prefill: takes prompt jobs from the BullMQ queue, runs them through the engine in batched chunks with
 * the routed experts on the expert-hosts, and streams each prompt's latent KV to the decode instance the
 * router chose. main() composes it from its configuration, prints the ready line, waits for
 * SIGTERM/SIGINT, stops taking jobs, finishes the active ones and exits 0; startPrefill() does the same
 * composition for tests and in-process clusters.
 */
import { basename, resolve } from "node:path";
import {
  createLogger,
  errorMessage,
  formatReadyLine,
  runService,
  ServiceLifecycle,
  splitHostPort,
  withTimeout,
  withWeightLoadBar,
  type Logger,
} from "@moela/core";
import { DeepseekModel, Engine, PhaseTimes, configureKernels, readModelConfig, type ExpertExecutor } from "@moela/engine";
import { grpcKvConnector, KvLedger, type KvConnector, type KvSender } from "@moela/kv-transfer";
import { createServiceMetrics, rpcServerCallRecorder, startMetricsServer, type MetricsOf, type ServiceMetrics } from "@moela/metrics";
import { checkpointModelId, connectExpertShards, createInProcessExperts, precisionProfile, toWirePrecision, type PrecisionProfile } from "@moela/moe-dispatch";
import { PrefillService } from "@moela/proto-gen";
import { clientChannel, createServer, drainAndClose, serve, type ClientChannel, type RpcServer } from "@moela/rpc";
import {
  createPrefillQueue,
  createRedisClient,
  instancePrefillQueue,
  InstanceRegistry,
  moveJobsToShared,
  PREFILL_JOB_OPTIONS,
  PREFILL_QUEUE,
  PREFILL_WORKER_OPTIONS,
  PrefixPublisher,
  redisConnection,
  registeredExpertHosts,
} from "@moela/scheduler";
import { Queue, Worker, type Job } from "bullmq";
import { tokenTextsOption } from "@moela/tokenizer";
import { DEFAULT_PREFIX_CACHE_BLOCKS, defaultInstanceId, parsePrefillArgs, USAGE, type PrefillConfig } from "./config.js";
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
  /** Registry id; names this instance's own queue and published prefix keys. */
  readonly instanceId: string;
  /** Jobs being processed now. */
  readonly runningJobs: () => number;
  /** Stop taking jobs, finish the active ones, close everything. */
  close(): Promise<void>;
}

/** What the parts of startPrefill share. */
interface PrefillParts {
  readonly config: PrefillConfig;
  readonly options: StartPrefillOptions;
  readonly logger: Logger;
  readonly m: MetricsOf<"prefill">;
  /** A clean-up step for shutdown and a failed start; a failing one is logged and the rest still run. */
  readonly defer: (step: () => unknown) => void;
}

/** What Prefill.Status and the registry record report. */
interface PrefillState {
  /** Jobs being processed now. */
  running: number;
  /** False once shutdown began. */
  accepting: boolean;
  /** Transfers in progress. */
  readonly activeTransfers: Set<KvSender>;
}

export async function startPrefill(config: PrefillConfig, options: StartPrefillOptions = {}): Promise<StartedPrefill> {
  const logger = options.logger ?? createLogger("prefill", config.logLevel);
  const profile = precisionProfile(config.precision);
  const modelConfig = readModelConfig(config.model);
  const maxBatchTokens = config.maxBatchTokens ?? Math.min(modelConfig.maxPositionEmbeddings, DEFAULT_MAX_BATCH_TOKENS);
  const modelId = checkpointModelId(config.model);
  // The `model` label: the model folder's name, the router's default served name (names.ts).
  const modelName = basename(resolve(config.model));
  const live: { engine?: Engine } = {};
  const { registry, m, ledger } = prefillMetrics(config, modelName, live);
  const life = new ServiceLifecycle(logger);
  const p: PrefillParts = { config, options, logger, m, defer: (step) => life.defer(step) };
  return life.start(async () => {
    // Process-wide: the in-process expert-host (no --expert-hosts) computes with the same kernels.
    configureKernels(config.kernels ?? "fast", config.threads ?? 1);
    // Decode (KvTransfer) and the expert-hosts are dialled with this instance's internal security (TLS, the secret).
    const channel = clientChannel(config.security);
    const { engine, prefixCacheBlocks } = await loadEngine(p, profile, modelId, maxBatchTokens, channel);
    live.engine = engine;
    const batcher = new PrefillBatcher(engine, maxBatchTokens, m, logger, modelName);
    const state: PrefillState = { running: 0, accepting: true, activeTransfers: new Set<KvSender>() };
    const processJob = jobProcessor({
      engine,
      batcher,
      precision: config.precision,
      modelId,
      maxPromptTokens: maxBatchTokens,
      connectorFor: options.connectorFor ?? kvConnectors(p, channel),
      metrics: m,
      logger,
      activeTransfers: state.activeTransfers,
      ledger,
    });
    const grpc = createServer({ logger, onCallEnd: rpcServerCallRecorder(m), security: config.security });
    grpc.addService(PrefillService, { status: async () => statusOf(config, modelId, batcher, state) });
    const grpcBound = await serve(grpc, config.grpcAddress);
    p.defer(() => drainAndClose(grpc, 5_000));
    const metricsAt = splitHostPort(config.metricsAddress);
    const metricsServer = await startMetricsServer(registry, { host: metricsAt.host, port: metricsAt.port });
    p.defer(() => metricsServer.close());
    const instanceId = config.instanceId ?? defaultInstanceId();
    const { redis, ownQueue } = await startWorkers(p, instanceId, engine, grpc, state, processJob);
    // The registry record (role prefill) is what routers choose among; registered last, deregistered first.
    const registration = await new InstanceRegistry(redis, { prefix: config.queuePrefix, logger }).register(
      { role: "prefill", id: instanceId, grpcAddress: grpcBound.address, metricsUrl: metricsServer.url, precision: config.precision, modelId },
      async () => ({
        runningSequences: state.running,
        waitingSequences: await ownQueue.getJobCountByTypes("waiting", "prioritized").catch(() => 0),
        pendingTransfers: state.activeTransfers.size,
        freeKvBlocks: engine.cache.freeBlocks + (engine.prefixCache?.evictableBlocks ?? 0),
        totalKvBlocks: engine.cache.numBlocks,
        blockSize: BLOCK_SIZE,
        accepting: state.accepting,
      }),
    );
    p.defer(() => registration.deregister());
    logger.info(
      {
        grpc: grpcBound.address,
        metrics: metricsServer.url,
        modelId,
        precision: config.precision,
        maxBatchTokens,
        concurrency: config.concurrency,
        attempts: PREFILL_JOB_OPTIONS.attempts,
        instance: instanceId,
        queues: [PREFILL_QUEUE, ownQueue.name],
        prefixCacheBlocks,
      },
      "prefill serving",
    );
    return { grpcAddress: grpcBound.address, metricsUrl: metricsServer.url, instanceId, runningJobs: () => state.running, close: life.close };
  });
}

/** The service's metrics and the KV ledger, whose releases they count. */
function prefillMetrics(config: PrefillConfig, modelName: string, live: { readonly engine?: Engine }): ServiceMetrics<"prefill"> & { ledger: KvLedger } {
  // Every block a job holds, and the one way it goes back (counted by reason).
  const ledger = new KvLedger({
    onRelease: (reason, blocks) => {
      metrics.m.prefillKvReclaims.inc({ reason });
      metrics.m.prefillKvReclaimedBlocks.inc({ reason }, blocks);
    },
  });
  const metrics = createServiceMetrics("prefill", {
    model: modelName,
    buildInfo: { precision: config.precision, kernels: config.kernels ?? "fast" },
    collect: { prefillKvBlocksUsed: () => ledger.heldBlocks, prefillPrefixCacheBlocks: () => live.engine?.prefixCache?.size ?? 0 },
  });
  return { ...metrics, ledger };
}

/** The model with its routed experts on the expert-hosts (or in this process), in an engine sized for one batch plus the prefix cache. */
async function loadEngine(
  p: PrefillParts,
  profile: PrecisionProfile,
  modelId: string,
  maxBatchTokens: number,
  channel: ClientChannel,
): Promise<{ engine: Engine; prefixCacheBlocks: number }> {
  const { config } = p;
  // Attention, dense layers, gates and shared experts here; routed experts on the hosts.
  // Large products run off the event loop: health checks, Status and the KV streams are served while a chunk computes.
  const model = withWeightLoadBar("prefill: loading weights", (onProgress) =>
    DeepseekModel.load(config.model, {
      routedExperts: () => false,
      kvDtype: profile.kvDtype,
      threads: config.threads ?? 1,
      computeOffEventLoop: true,
      onProgress,
    }),
  );
  model.setExpertExecutor(await expertExecutor(p, profile, modelId, model, channel));
  model.phaseTimes = new PhaseTimes();
  // One batch's blocks at a time, plus the blocks the prefix cache may keep between batches.
  const prefixCacheBlocks = config.prefixCache === false ? 0 : (config.prefixCacheBlocks ?? DEFAULT_PREFIX_CACHE_BLOCKS);
  const numBlocks = Math.ceil((maxBatchTokens + config.concurrency) / BLOCK_SIZE) + config.concurrency + prefixCacheBlocks;
  const engine = new Engine(model, {
    blockSize: BLOCK_SIZE,
    numBlocks,
    prefillChunk: config.prefillChunk,
    prefixCache: prefixCacheBlocks > 0 ? { capacityBlocks: prefixCacheBlocks } : false,
    // Constrained decoding (response_format, forced tool calls) samples the first token here.
    ...tokenTextsOption(config.model),
  });
  return { engine, prefixCacheBlocks };
}

/** The routed experts: on the expert-hosts (static and registered replicas), or with none configured in this process. */
async function expertExecutor(
  p: PrefillParts,
  profile: PrecisionProfile,
  modelId: string,
  model: DeepseekModel,
  channel: ClientChannel,
): Promise<ExpertExecutor> {
  const { config, logger } = p;
  const expertShards = config.expertShards ?? config.expertHosts.length;
  if (expertShards === 0) {
    // No hosts configured: one in-process expert-host loading every routed expert from the checkpoint,
    // behind the same dispatcher and codecs, so the numbers are the cluster's with one host.
    const experts = createInProcessExperts(config.model, 1, profile, { metrics: p.m, computeOffEventLoop: true }).executor;
    logger.warn("no --expert-hosts: routed experts run in this process (one in-process expert-host)");
    return experts;
  }
  const expertRedis = createRedisClient(config.redisUrl);
  expertRedis.on("error", (err: Error) => logger.debug({ err: err.message }, "registry Redis connection error"));
  p.defer(async () => expertRedis.quit().catch(() => expertRedis.disconnect()));
  const experts = await connectExpertShards({
    expertHosts: config.expertHosts,
    shardCount: expertShards,
    discover: registeredExpertHosts(new InstanceRegistry(expertRedis, { prefix: config.queuePrefix, logger }), expertShards, config.precision),
    modelConfig: model.config,
    moeLayers: model.moeLayers().keys(),
    modelId,
    profile,
    channel,
    sharedMemory: config.sharedMemory,
    waitMs: p.options.expertHostWaitMs ?? 30_000,
    metrics: p.m,
    logger,
  });
  p.defer(() => experts.close());
  logger.info({ expertHosts: config.expertHosts, expertShards, replicas: experts.shards.shards.map((sh) => sh.addresses) }, "routed experts on expert-hosts");
  return experts.executor;
}

/** One gRPC KvTransfer connector per decode address, reused; closed on shutdown. */
function kvConnectors(p: PrefillParts, channel: ClientChannel): (address: string) => KvConnector {
  const connectors = new Map<string, KvConnector & { close?: () => void }>();
  p.defer(async () => connectors.forEach((c) => c.close?.()));
  return (address) => {
    let c = connectors.get(address);
    if (c === undefined) {
      c = grpcKvConnector(address, { credentials: channel.credentials, channelOptions: channel.options });
      connectors.set(address, c);
    }
    return c;
  };
}

/** Prefill.Status. */
function statusOf(config: PrefillConfig, modelId: string, batcher: PrefillBatcher, state: PrefillState) {
  return {
    modelId,
    precision: toWirePrecision(config.precision),
    runningJobs: state.running,
    maxConcurrentJobs: config.concurrency,
    pendingPromptTokens: batcher.pendingTokens,
    chunkSize: config.prefillChunk,
    activeTransfers: state.activeTransfers.size,
    accepting: state.accepting,
  };
}

/**
 * Prefix routing and the job workers: this instance's own queue (the router sends it prompts whose prefix
 * it holds) next to the shared one, and the prefix keys it holds published for the router (scheduler
 * prefill-routing.ts). Resolves once Redis answered, with the workers running.
 */
async function startWorkers(
  p: PrefillParts,
  instanceId: string,
  engine: Engine,
  grpc: RpcServer,
  state: PrefillState,
  processJob: (job: Job) => Promise<unknown>,
): Promise<{ redis: ReturnType<typeof createRedisClient>; ownQueue: Queue }> {
  const { config, logger } = p;
  const ownQueueName = instancePrefillQueue(instanceId);
  const redis = createRedisClient(config.redisUrl);
  redis.on("error", (err: Error) => logger.debug({ err: err.message }, "prefix/registry Redis connection error"));
  p.defer(async () => redis.quit().catch(() => redis.disconnect()));
  const publisher = new PrefixPublisher(redis, { prefix: config.queuePrefix, instanceId, keys: () => engine.prefixCache?.keys() ?? [], logger });
  if (engine.prefixCache !== null) engine.prefixCache.onChange = () => publisher.changed();
  p.defer(() => publisher.close());
  const workers = [newWorker(p, PREFILL_QUEUE, state, processJob), newWorker(p, ownQueueName, state, processJob)];
  const ownQueue = new Queue(ownQueueName, {
    connection: redisConnection(config.redisUrl),
    prefix: config.queuePrefix,
    defaultJobOptions: { ...PREFILL_JOB_OPTIONS },
  });
  const sharedQueue = createPrefillQueue(config.redisUrl, config.queuePrefix);
  p.defer(async () => Promise.all([ownQueue.close(), sharedQueue.close()]));
  p.defer(async () => {
    state.accepting = false;
    grpc.setServing(false);
    // Stop fetching; wait for the active jobs to finish (their KV reaches decode).
    await Promise.all(workers.map((w) => w.close()));
    // What the router sent here and nobody took goes to the shared queue for the other instances.
    const moved = await moveJobsToShared(redis, config.queuePrefix, ownQueue, sharedQueue, { activeToo: false, logger }).catch((err: unknown) => {
      logger.warn({ err: errorMessage(err) }, "could not hand this instance's queued jobs to the shared queue (routers move them once its record expires)");
      return 0;
    });
    if (moved > 0) logger.info({ moved }, "queued jobs handed to the shared queue");
  });
  await withTimeout(
    Promise.all([...workers.map((w) => w.waitUntilReady()), publisher.start()]),
    p.options.redisTimeoutMs ?? 10_000,
    `Redis at ${config.redisUrl}`,
  );
  for (const w of workers) void w.run().catch((err: unknown) => logger.error({ err, queue: w.name }, "prefill worker stopped"));
  return { redis, ownQueue };
}

/** A BullMQ worker of queue `name` (not yet running), counting its jobs in `state.running`. */
function newWorker(p: PrefillParts, name: string, state: PrefillState, processJob: (job: Job) => Promise<unknown>): Worker {
  const { config, logger } = p;
  const w = new Worker(
    name,
    async (job) => {
      state.running++;
      try {
        return await processJob(job);
      } finally {
        state.running--;
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
  w.on("error", (err) => logger.warn({ queue: name, err: err.message }, "prefill worker connection error"));
  return w;
}

/** `moela serve --role prefill [flags]`: returns the process exit code. */
export function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return runService<PrefillConfig, StartedPrefill>(
    {
      name: "prefill",
      parse: parsePrefillArgs,
      usage: USAGE,
      start: (config, logger) => startPrefill(config, { logger }),
      readyLine: (prefill) => formatReadyLine("prefill", { grpc: prefill.grpcAddress, metrics: prefill.metricsUrl }),
      shutdownMessage: "shutting down: finishing active jobs",
      shutdownFields: (prefill) => ({ runningJobs: prefill.runningJobs() }),
      close: (prefill) => prefill.close(),
    },
    argv,
    env,
  );
}
