/**
 * decode: receives prompts' latent KV from prefill (KvTransfer.Push) into a paged latent cache of
 * fixed capacity, runs continuous batching with MTP speculation (absorbed MLA, one dispatch per
 * expert-host per MoE layer for the whole batch) and streams each request's tokens to the router
 * (Decode.Stream / Cancel / Status), on one gRPC server with grpc.health.v1, reflection and /metrics.
 *
 * main() in order: config -> logger and metrics -> load the model WITHOUT routed experts and connect
 * the expert-hosts (their Info checked against the placement) -> serve -> ONE ready line on stdout
 * (JSON, the launcher parses it) -> wait for SIGTERM/SIGINT -> health NOT_SERVING, stop admitting,
 * let running sequences finish for --drain-grace-ms, end the rest with UNAVAILABLE, close -> exit 0.
 * Logs are JSON on stderr, with the request id on every line about a request.
 *
 * Ready line: {"event":"ready","role":"decode","pid":123,"grpc":"127.0.0.1:PORT","metrics":"http://127.0.0.1:PORT/metrics"}
 *
 * Without --expert-hosts the routed experts run in this process, through the same dispatcher over
 * one in-process expert-host (the profile's dispatch/combine roundings still apply).
 *
 * With --redis-url the instance registers in the registry (free/total KV blocks, running, waiting and
 * pending sequences, a heartbeat a second; deregistered first on shutdown) so routers find it, and the
 * replicas of each expert shard are also taken from the registry (--expert-shards H without
 * --expert-hosts: from the registry alone). Each shard may have several replicas ("a|b" in
 * --expert-hosts, or several registered): a dispatch fails over between them (moe-dispatch replicas.ts).
 */
import { basename, resolve } from "node:path";
import {
  type Clock,
  Code,
  DisposableStack,
  errorMessage,
  FailedPreconditionError,
  formatReadyLine,
  isEntryPoint,
  runService,
  splitHostPort,
  UnavailableError,
  withWeightLoadBar,
  type Logger,
} from "@moela/core";
import { configureKernels, DeepseekModel, Engine, PhaseTimes } from "@moela/engine";
import { KvInbox, KvLedger, kvTransferService } from "@moela/kv-transfer";
import {
  countDraftPositions,
  createServiceMetrics,
  grpcCodeName,
  rpcServerCallRecorder,
  startMetricsServer,
  type MetricsOf,
  type MetricsServer,
  type ServiceMetrics,
} from "@moela/metrics";
import {
  checkExpertShardsConfig,
  checkpointModelId,
  connectExpertShards,
  createInProcessExperts,
  precisionProfile,
  type PrecisionProfile,
} from "@moela/moe-dispatch";
import { advertisedAddress, createRedisClient, InstanceRegistry, registeredExpertHosts, type Registration } from "@moela/scheduler";
import { DecodeService, KvTransferService } from "@moela/proto-gen";
import { tokenTextsOption } from "@moela/tokenizer";
import { clientChannel, createServer, drainAndClose, serve, type RpcServer } from "@moela/rpc";
import { Batcher } from "./batcher.js";
import { parseConfig, USAGE, type DecodeConfig } from "./config.js";
import { decodeHandlers } from "./handlers.js";

export { parseConfig, USAGE, type DecodeConfig } from "./config.js";

/** How long start-up waits for the expert-hosts to answer Info. */
const EXPERT_HOSTS_WAIT_MS = 60_000;

export interface RunningDecode {
  /** Dialable "host:port" of the gRPC server (KvTransfer and Decode). */
  readonly grpcAddress: string;
  /** http://host:port/metrics */
  readonly metricsUrl: string;
  readonly config: DecodeConfig;
  readonly modelId: string;
  readonly engine: Engine;
  readonly inbox: KvInbox;
  readonly batcher: Batcher;
  readonly server: RpcServer;
  /** The line main() prints when ready. */
  readonly readyLine: string;
  /** Health NOT_SERVING, stop admitting, let sequences finish for up to graceMs, end the rest with UNAVAILABLE, close. */
  close(graceMs?: number): Promise<void>;
}

export interface DecodeDeps {
  /** A model to use as it is (tests): its expert executor is left alone and nothing is loaded. */
  readonly model?: DeepseekModel;
  /** The model identity KvBegin must carry (default checkpointModelId(--model)). */
  readonly modelId?: string;
  /** The time the batcher's and the KV receivers' timers run on (default: the real clock; tests pass their own). */
  readonly clock?: Clock;
}

/** What the parts of startDecode share. */
interface DecodeParts {
  readonly cfg: DecodeConfig;
  readonly logger: Logger;
  readonly deps: DecodeDeps;
  readonly modelId: string;
  /** The `model` label: the model folder's name, the router's default served name (names.ts). */
  readonly modelName: string;
  readonly m: MetricsOf<"decode">;
  /** Every block this instance holds for a request (transfer reservations, sequences), and the one path that gives them back. */
  readonly ledger: KvLedger;
  /** Closed last on shutdown (and on a failed start): expert-host channels, the registry watcher, Redis. */
  readonly hosts: DisposableStack;
}

/** Load the model, connect the expert-hosts and serve: the whole service without the process lifecycle. */
export async function startDecode(cfg: DecodeConfig, logger: Logger, deps: DecodeDeps = {}): Promise<RunningDecode> {
  const t0 = performance.now();
  const profile = precisionProfile(cfg.precision);
  // Gauges read at scrape time, from objects made below.
  const live: { engine?: Engine; batcher?: Batcher } = {};
  const { metrics, ledger } = decodeMetrics(cfg, live);
  const hosts = new DisposableStack();
  const p: DecodeParts = {
    cfg,
    logger,
    deps,
    modelId: deps.modelId ?? checkpointModelId(cfg.model),
    modelName: basename(resolve(cfg.model)),
    m: metrics.m,
    ledger,
    hosts,
  };
  try {
    const registry = openRegistry(cfg, logger, hosts);
    // Process-wide, so the in-process expert-host (no --expert-hosts) computes with the same kernels.
    configureKernels(cfg.kernels, cfg.threads);
    const model = await loadModel(p, profile, registry);
    const phaseTimes = new PhaseTimes();
    model.phaseTimes = phaseTimes;
    const engine = new Engine(model, {
      blockSize: cfg.blockSize,
      numBlocks: cfg.kvBlocks,
      speculation: cfg.speculative,
      ...(cfg.draftVocab !== undefined ? { draftVocab: cfg.draftVocab } : {}),
      speculativeTokens: cfg.speculativeTokens,
      microBatches: cfg.microBatches,
      // Constrained decoding (response_format, forced tool calls): the grammar's mask needs each token's text.
      ...tokenTextsOption(cfg.model),
    });
    live.engine = engine;
    const { modelId } = p;
    logger.info(
      {
        model: cfg.model,
        modelId,
        precision: profile.name,
        expertHosts: cfg.expertHosts,
        weightBytes: model.weightBytes,
        kvBlocks: cfg.kvBlocks,
        blockSize: cfg.blockSize,
        maxBatch: cfg.maxBatch,
        speculation: engine.speculation,
        loadMs: Math.round(performance.now() - t0),
      },
      "model loaded",
    );
    const b = newBatcher(p, engine, phaseTimes);
    live.batcher = b;
    const box = newInbox(p, engine, b);
    const server = createServer({
      logger,
      onCallEnd: rpcServerCallRecorder(p.m),
      // Decode.Stream, Cancel and KvTransfer.Push need the internal secret when one is set; TLS with a cert.
      security: cfg.security,
    });
    server.addService(KvTransferService, kvTransferService(box));
    server.addService(DecodeService, decodeHandlers({ batcher: b, engine, inbox: box, modelId, precision: cfg.precision, logger }));
    const { address, metricsServer } = await serveDecode(cfg, server, b, metrics.registry);
    const registration = await register(cfg, registry, { address, metricsUrl: metricsServer.url, modelId }, engine, b, box);
    let closing: Promise<void> | undefined;
    return {
      grpcAddress: address,
      metricsUrl: metricsServer.url,
      config: cfg,
      modelId,
      engine,
      inbox: box,
      batcher: b,
      server,
      readyLine: formatReadyLine("decode", { grpc: address, metrics: metricsServer.url }),
      close(graceMs = cfg.drainGraceMs) {
        closing ??= (async () => {
          // Out of the registry first: no router picks this instance while it drains.
          await registration?.deregister();
          server.setServing(false);
          await b.drain(graceMs);
          box.abortAll({ code: Code.UNAVAILABLE, reason: "the decode instance is shutting down" });
          await drainAndClose(server, 1_000, { flushMs: 500 });
          await metricsServer.close();
          await hosts.disposeAll();
        })();
        return closing;
      },
    };
  } catch (err) {
    await hosts.disposeAll();
    throw err;
  }
}

/** The service's metrics (gauges read from `live` at scrape time) and the KV ledger, whose releases they count. */
function decodeMetrics(
  cfg: DecodeConfig,
  live: { readonly engine?: Engine; readonly batcher?: Batcher },
): { metrics: ServiceMetrics<"decode">; ledger: KvLedger } {
  // Every block this instance holds for a request (transfer reservations, sequences), and the one path
  // that gives them back, counted by reason.
  const ledger = new KvLedger({
    onRelease: (reason, blocks) => {
      metrics.m.decodeKvReclaims.inc({ reason });
      metrics.m.decodeKvReclaimedBlocks.inc({ reason }, blocks);
    },
  });
  const metrics = createServiceMetrics("decode", {
    // The `model` label: the model folder's name, the router's default served name (names.ts).
    model: basename(resolve(cfg.model)),
    buildInfo: { precision: cfg.precision, kernels: cfg.kernels },
    collect: {
      decodeRunningSequences: () => live.batcher?.running ?? 0,
      decodeWaitingSequences: () => live.batcher?.waiting ?? 0,
      decodeKvBlocksUsed: () => live.engine?.cache.usedBlocks ?? 0,
      decodeKvBlocksCapacity: () => live.engine?.cache.numBlocks ?? 0,
      decodeKvUsage: () => (live.engine === undefined ? 0 : live.engine.cache.usedBlocks / live.engine.cache.numBlocks),
      decodeKvStrandedBlocks: () => ledger.strandedBlocks(),
    },
  });
  return { metrics, ledger };
}

/** The registry: where this instance registers and finds expert-host replicas (with --redis-url); its Redis goes on `hosts`. */
function openRegistry(cfg: DecodeConfig, logger: Logger, hosts: DisposableStack): InstanceRegistry | undefined {
  if (cfg.redisUrl === undefined) return undefined;
  const redis = createRedisClient(cfg.redisUrl);
  redis.on("error", (err: Error) => logger.debug({ err: err.message }, "registry Redis connection error"));
  hosts.defer(() => redis.quit().catch(() => redis.disconnect()));
  return new InstanceRegistry(redis, { prefix: cfg.queuePrefix ?? "moela", logger });
}

/** The model (deps.model as it is), its routed experts on the expert-hosts or, without any, in this process. */
async function loadModel(p: DecodeParts, profile: PrecisionProfile, registry: InstanceRegistry | undefined): Promise<DeepseekModel> {
  const { cfg } = p;
  const expertShards = cfg.expertShards ?? cfg.expertHosts.length;
  if (p.deps.model !== undefined) {
    const model = p.deps.model;
    if (model.kvDtype !== profile.kvDtype) {
      throw new FailedPreconditionError(`the model caches ${model.kvDtype} KV, precision ${profile.name} needs ${profile.kvDtype}`);
    }
    return model;
  }
  if (expertShards === 0) {
    const model = withWeightLoadBar("decode: loading weights", (onProgress) =>
      DeepseekModel.load(cfg.model, { kvDtype: profile.kvDtype, threads: cfg.threads, onProgress }),
    );
    model.setExpertExecutor(createInProcessExperts(model, 1, profile, { metrics: p.m }).executor);
    return model;
  }
  checkExpertShardsConfig({ expertHosts: cfg.expertHosts, shardCount: expertShards, discoverable: registry !== undefined });
  // Attention, dense layers, gates and shared experts here; every routed expert on the hosts.
  const model = withWeightLoadBar("decode: loading weights", (onProgress) =>
    DeepseekModel.load(cfg.model, { routedExperts: () => false, kvDtype: profile.kvDtype, threads: cfg.threads, onProgress }),
  );
  const experts = await connectExpertShards({
    expertHosts: cfg.expertHosts,
    shardCount: expertShards,
    discover: registry === undefined ? undefined : registeredExpertHosts(registry, expertShards, cfg.precision),
    modelConfig: model.config,
    moeLayers: model.moeLayers().keys(),
    modelId: p.modelId,
    profile,
    sharedExpert: cfg.sharedExpert,
    sharedMemory: cfg.sharedMemory,
    channel: clientChannel(cfg.security),
    waitMs: EXPERT_HOSTS_WAIT_MS,
    metrics: p.m,
    logger: p.logger,
  });
  p.hosts.defer(() => experts.close());
  model.setExpertExecutor(experts.executor);
  return model;
}

/** The continuous-batching loop, its steps counted in the metrics. */
function newBatcher(p: DecodeParts, engine: Engine, phaseTimes: PhaseTimes): Batcher {
  const { cfg, m } = p;
  return new Batcher({
    engine,
    maxBatch: cfg.maxBatch,
    streamGraceMs: cfg.streamGraceMs,
    kvWaitMs: cfg.kvWaitMs,
    logger: p.logger,
    clock: p.deps.clock,
    onStep: (seconds, tokens, drafted, accepted) => {
      m.decodeStep.observe(seconds);
      m.decodeGeneratedTokens.inc({ model: p.modelName }, tokens);
      countDraftPositions(m, drafted, accepted);
      phaseTimes.drainInto(m.forwardPhase);
    },
  });
}

/** Where prefill's KV transfers arrive: each admitted sequence joins the batcher. */
function newInbox(p: DecodeParts, engine: Engine, b: Batcher): KvInbox {
  const { cfg, m, logger } = p;
  return new KvInbox({
    engine,
    modelId: p.modelId,
    ledger: p.ledger,
    idleTimeoutMs: cfg.kvIdleMs,
    maxTransfersPerPeer: cfg.kvMaxTransfersPerPeer,
    clock: p.deps.clock,
    onBegin: (meta) => {
      b.beginTransfer(meta);
      logger.debug({ requestId: meta.requestId, transferId: meta.transferId, tokens: meta.numTokens, layers: meta.numLayers }, "KV transfer begun");
    },
    onAdmit: (seq, meta, stats, hold) => {
      b.admit(seq, meta, hold);
      m.decodeKvTransferDuration.observe(stats.seconds);
      // The token prefill sampled reaches the router through this instance too.
      m.decodeGeneratedTokens.inc({ model: p.modelName }, seq.output.length);
      logger.info(
        { requestId: meta.requestId, transferId: meta.transferId, bytes: stats.bytesReceived, chunks: stats.chunks, ms: Math.round(stats.seconds * 1000) },
        "KV transfer complete",
      );
    },
    onFail: (failure, meta, freed) => {
      // The blocks are back already (the ledger counted them); the request may wait for a retry.
      b.transferFailed(failure, meta);
      logger.warn(
        { requestId: meta?.requestId, transferId: meta?.transferId, code: grpcCodeName(failure.code), reason: failure.reason, freedBlocks: freed },
        "KV transfer failed",
      );
    },
    onChunk: (bytes) => m.decodeKvReceivedBytes.inc(bytes),
  });
}

/** Start the batcher, serve gRPC and /metrics; a failure stops what started before it. */
async function serveDecode(
  cfg: DecodeConfig,
  server: RpcServer,
  b: Batcher,
  registry: ServiceMetrics<"decode">["registry"],
): Promise<{ address: string; metricsServer: MetricsServer }> {
  const started = new DisposableStack();
  try {
    b.start();
    started.defer(() => b.drain(0));
    const { address } = await serve(server, cfg.grpcAddress);
    started.defer(() => drainAndClose(server, 0, { flushMs: 0 }));
    const metricsServer = await startMetricsServer(registry, splitHostPort(cfg.metricsAddress)).catch((err: unknown) => {
      throw new UnavailableError(`cannot serve /metrics on ${cfg.metricsAddress}: ${errorMessage(err)}`, { cause: err });
    });
    return { address, metricsServer };
  } catch (err) {
    await started.disposeAll();
    throw err;
  }
}

/** The registry record routers choose by (with --redis-url): free blocks, running, waiting and pending sequences. */
function register(
  cfg: DecodeConfig,
  registry: InstanceRegistry | undefined,
  at: { address: string; metricsUrl: string; modelId: string },
  engine: Engine,
  b: Batcher,
  box: KvInbox,
): Promise<Registration> | undefined {
  const cache = engine.cache;
  return registry?.register(
    {
      role: "decode",
      grpcAddress: advertisedAddress(at.address, cfg.advertiseAddress),
      metricsUrl: at.metricsUrl,
      precision: cfg.precision,
      modelId: at.modelId,
    },
    () => ({
      freeKvBlocks: cache.freeBlocks,
      totalKvBlocks: cache.numBlocks,
      blockSize: cache.blockSize,
      runningSequences: b.running,
      waitingSequences: b.waiting,
      pendingTransfers: box.pending,
      accepting: b.accepting,
    }),
  );
}

/** The service's entry point; resolves with the process exit code. */
export function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return runService<DecodeConfig, RunningDecode>(
    {
      name: "decode",
      parse: parseConfig,
      usage: USAGE,
      // Signals are caught before the (possibly long) model load, so a SIGTERM during it still stops cleanly.
      signalsDuringStart: true,
      start: startDecode,
      readyLine: (running) => running.readyLine,
      onReady: (running, _cfg, logger) => logger.info({ grpc: running.grpcAddress, metrics: running.metricsUrl }, "ready"),
      shutdownMessage: "draining",
      shutdownFields: (running) => ({ running: running.batcher.running, waiting: running.batcher.waiting }),
      close: (running, cfg) => running.close(cfg.drainGraceMs),
    },
    argv,
    env,
  );
}

// `tsx services/decode/src/main.ts ...` runs the service; importing the module does not.
if (isEntryPoint(import.meta.url)) process.exitCode = await main(process.argv.slice(2), process.env);
