/**
 * Prefill: takes prompt jobs from the BullMQ queue, runs them through the engine in batched chunks with
 * the routed experts on the expert-hosts, and streams each prompt's latent KV to the decode instance the
 * router chose. main() composes it from its configuration, prints the ready line, waits for
 * SIGTERM/SIGINT, stops taking jobs, finishes the active ones and exits 0; startPrefill() does the same
 * composition for tests and in-process clusters.
 */
import { basename, resolve } from "node:path";
import { createLogger, errorMessage, formatReadyLine, InvalidArgumentError, runService, splitHostPort, UnavailableError, withWeightLoadBar, type Logger } from "@moela/core";
import { DeepseekModel, Engine, PhaseTimes, configureKernels, readModelConfig, type ExpertExecutor } from "@moela/engine";
import { grpcKvConnector, KvLedger, type KvConnector, type KvSender } from "@moela/kv-transfer";
import { createServiceMetrics, rpcServerCallRecorder, startMetricsServer } from "@moela/metrics";
import {
  checkHostInfo,
  checkpointModelId,
  createInProcessExperts,
  ExpertShardSet,
  HostedExpertExecutor,
  parseShardReplicas,
  placementFor,
  precisionProfile,
  toWirePrecision,
} from "@moela/moe-dispatch";
import { PrefillService } from "@moela/proto-gen";
import { clientChannel, createServer, drainAndClose, serve } from "@moela/rpc";
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
  RegistryWatcher,
  shardReplicas,
} from "@moela/scheduler";
import { Queue, Worker } from "bullmq";
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

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new UnavailableError(`${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
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
  let cachedBlocks = (): number => 0;
  // The `model` label: the model folder's name, the router's default served name (names.ts).
  const modelName = basename(resolve(config.model));
  const { registry, m } = createServiceMetrics("prefill", {
    model: modelName,
    buildInfo: { precision: config.precision, kernels: config.kernels ?? "fast" },
    collect: { prefillKvBlocksUsed: () => ledger.heldBlocks, prefillPrefixCacheBlocks: () => cachedBlocks() },
  });

  const closers: (() => Promise<unknown>)[] = [];
  const closeAll = async (): Promise<void> => {
    for (const c of closers.splice(0).reverse()) await c().catch((err: unknown) => logger.warn({ err }, "error while closing"));
  };
  try {
    // Attention, dense layers, gates and shared experts here; routed experts on the hosts.
    // Process-wide: the in-process expert-host (no --expert-hosts) computes with the same kernels.
    configureKernels(config.kernels ?? "fast", config.threads ?? 1);
    // Decode (KvTransfer) and the expert-hosts are dialled with this instance's internal security (TLS, the secret).
    const channel = clientChannel(config.security);
    // Large products run off the event loop: health checks, Status and the KV streams are served while a chunk computes.
    const model = withWeightLoadBar("prefill: loading weights", (onProgress) =>
      DeepseekModel.load(config.model, { routedExperts: () => false, kvDtype: profile.kvDtype, threads: config.threads ?? 1, computeOffEventLoop: true, onProgress }),
    );
    let experts: ExpertExecutor;
    const expertShards = config.expertShards ?? config.expertHosts.length;
    if (expertShards > 0) {
      if (config.expertHosts.length > 0 && config.expertHosts.length !== expertShards) {
        throw new InvalidArgumentError(`--expert-hosts lists ${config.expertHosts.length} shards, --expert-shards says ${expertShards}`);
      }
      // Each shard's replicas: the static ones ("a|b" in --expert-hosts) plus those registered in Redis,
      // each checked against the placement before it takes traffic; a dispatch fails over between them.
      const placement = placementFor(modelConfig, expertShards);
      const want = { placement, profile, hidden: modelConfig.hiddenSize, layers: [...model.moeLayers().keys()].sort((a, b) => a - b), modelId };
      const waitMs = options.expertHostWaitMs ?? 30_000;
      const shards = new ExpertShardSet({
        credentials: channel.credentials,
        channelOptions: channel.options,
        shardCount: expertShards,
        staticReplicas: parseShardReplicas(config.expertHosts),
        validate: async (t, shard) => checkHostInfo(await t.info(), { ...want, shard }, t.name),
        validateWaitMs: waitMs,
        logger,
      });
      closers.push(async () => shards.close());
      const expertRedis = createRedisClient(config.redisUrl);
      expertRedis.on("error", (err: Error) => logger.debug({ err: err.message }, "registry Redis connection error"));
      closers.push(async () => expertRedis.quit().catch(() => expertRedis.disconnect()));
      const found = new RegistryWatcher(new InstanceRegistry(expertRedis, { prefix: config.queuePrefix, logger }), "expert-host", 1_000);
      found.onChange((records) => shards.update(shardReplicas(records, expertShards, config.precision)));
      await found.start();
      closers.push(() => found.close());
      await shards.waitReady(waitMs);
      experts = new HostedExpertExecutor({ placement, profile, hosts: shards.shards, hidden: modelConfig.hiddenSize, metrics: m });
      logger.info({ expertHosts: config.expertHosts, expertShards, replicas: shards.shards.map((sh) => sh.addresses) }, "routed experts on expert-hosts");
    } else {
      // No hosts configured: one in-process expert-host loading every routed expert from the checkpoint,
      // behind the same dispatcher and codecs, so the numbers are the cluster's with one host.
      experts = createInProcessExperts(config.model, 1, profile, { metrics: m, computeOffEventLoop: true }).executor;
      logger.warn("no --expert-hosts: routed experts run in this process (one in-process expert-host)");
    }
    model.setExpertExecutor(experts);
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
    cachedBlocks = () => engine.prefixCache?.size ?? 0;
    const batcher = new PrefillBatcher(engine, maxBatchTokens, m, logger, modelName);

    const connectors = new Map<string, KvConnector & { close?: () => void }>();
    closers.push(async () => connectors.forEach((c) => c.close?.()));
    const connectorFor =
      options.connectorFor ??
      ((address: string): KvConnector => {
        let c = connectors.get(address);
        if (c === undefined) {
          c = grpcKvConnector(address, { credentials: channel.credentials, channelOptions: channel.options });
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

    const grpc = createServer({ logger, onCallEnd: rpcServerCallRecorder(m), security: config.security });
    grpc.addService(PrefillService, {
      status: async () => ({
        modelId,
        precision: toWirePrecision(config.precision),
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

    // Prefix routing: this instance's own queue (the router sends it prompts whose prefix it holds) next
    // to the shared one, and the prefix keys it holds published for the router (scheduler prefill-routing.ts).
    const instanceId = config.instanceId ?? defaultInstanceId();
    const ownQueueName = instancePrefillQueue(instanceId);
    const redis = createRedisClient(config.redisUrl);
    redis.on("error", (err: Error) => logger.debug({ err: err.message }, "prefix/registry Redis connection error"));
    closers.push(async () => redis.quit().catch(() => redis.disconnect()));
    const publisher = new PrefixPublisher(redis, { prefix: config.queuePrefix, instanceId, keys: () => engine.prefixCache?.keys() ?? [], logger });
    if (engine.prefixCache !== null) engine.prefixCache.onChange = () => publisher.changed();
    closers.push(() => publisher.close());

    const makeWorker = (name: string): Worker => {
      const w = new Worker(
        name,
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
      w.on("error", (err) => logger.warn({ queue: name, err: err.message }, "prefill worker connection error"));
      return w;
    };
    const workers = [makeWorker(PREFILL_QUEUE), makeWorker(ownQueueName)];
    const ownQueue = new Queue(ownQueueName, { connection: redisConnection(config.redisUrl), prefix: config.queuePrefix, defaultJobOptions: { ...PREFILL_JOB_OPTIONS } });
    const sharedQueue = createPrefillQueue(config.redisUrl, config.queuePrefix);
    closers.push(async () => Promise.all([ownQueue.close(), sharedQueue.close()]));
    closers.push(async () => {
      accepting = false;
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
    await withTimeout(Promise.all([...workers.map((w) => w.waitUntilReady()), publisher.start()]), options.redisTimeoutMs ?? 10_000, `Redis at ${config.redisUrl}`);
    for (const w of workers) void w.run().catch((err: unknown) => logger.error({ err, queue: w.name }, "prefill worker stopped"));

    // The registry record (role prefill) is what routers choose among; registered last, deregistered first.
    const registration = await new InstanceRegistry(redis, { prefix: config.queuePrefix, logger }).register(
      { role: "prefill", id: instanceId, grpcAddress: grpcBound.address, metricsUrl: metricsServer.url, precision: config.precision, modelId },
      async () => ({
        runningSequences: running,
        waitingSequences: await ownQueue.getJobCountByTypes("waiting", "prioritized").catch(() => 0),
        pendingTransfers: activeTransfers.size,
        freeKvBlocks: engine.cache.freeBlocks + (engine.prefixCache?.evictableBlocks ?? 0),
        totalKvBlocks: engine.cache.numBlocks,
        blockSize: BLOCK_SIZE,
        accepting,
      }),
    );
    closers.push(() => registration.deregister());

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
        queues: [PREFILL_QUEUE, ownQueueName],
        prefixCacheBlocks,
      },
      "prefill serving",
    );
    let closing: Promise<void> | undefined;
    return {
      grpcAddress: grpcBound.address,
      metricsUrl: metricsServer.url,
      instanceId,
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
