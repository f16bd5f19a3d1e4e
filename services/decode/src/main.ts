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
import { realpathSync } from "node:fs";
import { basename, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { type Clock, Code, errorMessage, FailedPreconditionError, formatReadyLine, InvalidArgumentError, runService, splitHostPort, UnavailableError, withWeightLoadBar, type Logger } from "@moela/core";
import { configureKernels, DeepseekModel, Engine, PhaseTimes } from "@moela/engine";
import { KvInbox, KvLedger, kvTransferService } from "@moela/kv-transfer";
import { createServiceMetrics, grpcCodeName, rpcServerCallRecorder, startMetricsServer, type MetricsServer } from "@moela/metrics";
import {
  checkHostInfo,
  checkpointModelId,
  createInProcessExperts,
  ExpertShardSet,
  HostedExpertExecutor,
  parseShardReplicas,
  placementFor,
  precisionProfile,
} from "@moela/moe-dispatch";
import { advertisedAddress, createRedisClient, InstanceRegistry, RegistryWatcher, shardReplicas, type Registration } from "@moela/scheduler";
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

/** Load the model, connect the expert-hosts and serve: the whole service without the process lifecycle. */
export async function startDecode(cfg: DecodeConfig, logger: Logger, deps: DecodeDeps = {}): Promise<RunningDecode> {
  const t0 = performance.now();
  const profile = precisionProfile(cfg.precision);
  const modelId = deps.modelId ?? checkpointModelId(cfg.model);

  // Gauges read at scrape time, from objects made below.
  let engine: Engine | undefined;
  let batcher: Batcher | undefined;
  // Every block this instance holds for a request (transfer reservations, sequences), and the one path
  // that gives them back, counted by reason.
  const ledger = new KvLedger({
    onRelease: (reason, blocks) => {
      m.decodeKvReclaims.inc({ reason });
      m.decodeKvReclaimedBlocks.inc({ reason }, blocks);
    },
  });
  // The `model` label: the model folder's name, the router's default served name (names.ts).
  const modelName = basename(resolve(cfg.model));
  const metrics = createServiceMetrics("decode", {
    model: modelName,
    buildInfo: { precision: cfg.precision, kernels: cfg.kernels },
    collect: {
      decodeRunningSequences: () => batcher?.running ?? 0,
      decodeWaitingSequences: () => batcher?.waiting ?? 0,
      decodeKvBlocksUsed: () => engine?.cache.usedBlocks ?? 0,
      decodeKvBlocksCapacity: () => engine?.cache.numBlocks ?? 0,
      decodeKvUsage: () => (engine === undefined ? 0 : engine.cache.usedBlocks / engine.cache.numBlocks),
      decodeKvStrandedBlocks: () => ledger.strandedBlocks(),
    },
  });
  const m = metrics.m;

  // The registry: where this instance registers and finds expert-host replicas (with --redis-url).
  const redis = cfg.redisUrl === undefined ? undefined : createRedisClient(cfg.redisUrl);
  redis?.on("error", (err: Error) => logger.debug({ err: err.message }, "registry Redis connection error"));
  const registry = redis === undefined ? undefined : new InstanceRegistry(redis, { prefix: cfg.queuePrefix ?? "moela", logger });
  let model: DeepseekModel;
  // Process-wide, so the in-process expert-host (no --expert-hosts) computes with the same kernels.
  configureKernels(cfg.kernels, cfg.threads);
  // Closed last on shutdown (and on a failed start): expert-host channels, the registry watcher, Redis.
  let hosts: { close(): void }[] = redis === undefined ? [] : [{ close: () => void redis.quit().catch(() => redis.disconnect()) }];
  const expertShards = cfg.expertShards ?? cfg.expertHosts.length;
  if (deps.model !== undefined) {
    model = deps.model;
    if (model.kvDtype !== profile.kvDtype) {
      throw new FailedPreconditionError(`the model caches ${model.kvDtype} KV, precision ${profile.name} needs ${profile.kvDtype}`);
    }
  } else if (expertShards > 0) {
    if (cfg.expertHosts.length > 0 && cfg.expertHosts.length !== expertShards) {
      throw new InvalidArgumentError(`--expert-hosts lists ${cfg.expertHosts.length} shards, --expert-shards says ${expertShards}`);
    }
    if (cfg.expertHosts.length === 0 && registry === undefined) {
      throw new InvalidArgumentError("--expert-shards without --expert-hosts needs --redis-url (the hosts are found in the registry)");
    }
    // Attention, dense layers, gates and shared experts here; every routed expert on the hosts.
    model = withWeightLoadBar("decode: loading weights", (onProgress) => DeepseekModel.load(cfg.model, { routedExperts: () => false, kvDtype: profile.kvDtype, threads: cfg.threads, onProgress }));
    const placement = placementFor(model.config, expertShards);
    const want = {
      placement,
      profile,
      hidden: model.config.hiddenSize,
      layers: [...model.moeLayers().keys()].sort((a, b) => a - b),
      modelId,
      sharedExpert: cfg.sharedExpert === "hosts",
    };
    // The expert-hosts are dialled with this instance's internal security (TLS, the secret).
    const channel = clientChannel(cfg.security);
    const shards = new ExpertShardSet({
      credentials: channel.credentials,
      channelOptions: channel.options,
      shardCount: expertShards,
      staticReplicas: parseShardReplicas(cfg.expertHosts),
      validate: async (t, shard) => checkHostInfo(await t.info(), { ...want, shard }, t.name),
      validateWaitMs: EXPERT_HOSTS_WAIT_MS,
      logger,
    });
    hosts.push(shards);
    try {
      if (registry !== undefined) {
        const found = new RegistryWatcher(registry, "expert-host", 1_000);
        found.onChange((records) => shards.update(shardReplicas(records, expertShards, cfg.precision)));
        await found.start();
        hosts.push({ close: () => void found.close() });
      }
      await shards.waitReady(EXPERT_HOSTS_WAIT_MS);
    } catch (err) {
      for (const h of hosts.reverse()) h.close();
      throw err;
    }
    model.setExpertExecutor(
      new HostedExpertExecutor({ placement, profile, hosts: shards.shards, hidden: model.config.hiddenSize, metrics: m, sharedExpert: cfg.sharedExpert }),
    );
  } else {
    model = withWeightLoadBar("decode: loading weights", (onProgress) => DeepseekModel.load(cfg.model, { kvDtype: profile.kvDtype, threads: cfg.threads, onProgress }));
    model.setExpertExecutor(createInProcessExperts(model, 1, profile, { metrics: m }).executor);
  }
  const phaseTimes = new PhaseTimes();
  model.phaseTimes = phaseTimes;
  engine = new Engine(model, {
    blockSize: cfg.blockSize,
    numBlocks: cfg.kvBlocks,
    speculation: cfg.speculative,
    microBatches: cfg.microBatches,
    // Constrained decoding (response_format, forced tool calls): the grammar's mask needs each token's text.
    ...tokenTextsOption(cfg.model),
  });
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

  const b = new Batcher({
    engine,
    maxBatch: cfg.maxBatch,
    streamGraceMs: cfg.streamGraceMs,
    kvWaitMs: cfg.kvWaitMs,
    logger,
    clock: deps.clock,
    onStep: (seconds, tokens, drafted, accepted) => {
      m.decodeStep.observe(seconds);
      m.decodeGeneratedTokens.inc({ model: modelName }, tokens);
      // MTP drafts one token per sequence: every draft is position 0.
      m.decodeMtpDraftedTokens.inc({ position: "0" }, drafted);
      m.decodeMtpAcceptedTokens.inc({ position: "0" }, accepted);
      phaseTimes.drainInto(m.forwardPhase);
    },
  });
  batcher = b;
  const box = new KvInbox({
    engine,
    modelId,
    ledger,
    idleTimeoutMs: cfg.kvIdleMs,
    maxTransfersPerPeer: cfg.kvMaxTransfersPerPeer,
    clock: deps.clock,
    onBegin: (meta) => {
      b.beginTransfer(meta);
      logger.debug({ requestId: meta.requestId, transferId: meta.transferId, tokens: meta.numTokens, layers: meta.numLayers }, "KV transfer begun");
    },
    onAdmit: (seq, meta, stats, hold) => {
      b.admit(seq, meta, hold);
      m.decodeKvTransferDuration.observe(stats.seconds);
      // The token prefill sampled reaches the router through this instance too.
      m.decodeGeneratedTokens.inc({ model: modelName }, seq.output.length);
      logger.info({ requestId: meta.requestId, transferId: meta.transferId, bytes: stats.bytesReceived, chunks: stats.chunks, ms: Math.round(stats.seconds * 1000) }, "KV transfer complete");
    },
    onFail: (failure, meta, freed) => {
      // The blocks are back already (the ledger counted them); the request may wait for a retry.
      b.transferFailed(failure, meta);
      logger.warn({ requestId: meta?.requestId, transferId: meta?.transferId, code: grpcCodeName(failure.code), reason: failure.reason, freedBlocks: freed }, "KV transfer failed");
    },
    onChunk: (bytes) => m.decodeKvReceivedBytes.inc(bytes),
  });

  const server = createServer({
    logger,
    onCallEnd: rpcServerCallRecorder(m),
    // Decode.Stream, Cancel and KvTransfer.Push need the internal secret when one is set; TLS with a cert.
    security: cfg.security,
  });
  server.addService(KvTransferService, kvTransferService(box));
  server.addService(DecodeService, decodeHandlers({ batcher: b, engine, inbox: box, modelId, precision: cfg.precision, logger }));
  b.start();
  let address: string;
  let metricsServer: MetricsServer;
  try {
    ({ address } = await serve(server, cfg.grpcAddress));
  } catch (err) {
    for (const h of hosts) h.close();
    await b.drain(0);
    throw err;
  }
  try {
    metricsServer = await startMetricsServer(metrics.registry, splitHostPort(cfg.metricsAddress));
  } catch (err) {
    await drainAndClose(server, 0, { flushMs: 0 });
    for (const h of hosts) h.close();
    await b.drain(0);
    throw new UnavailableError(`cannot serve /metrics on ${cfg.metricsAddress}: ${errorMessage(err)}`, { cause: err });
  }
  const readyLine = formatReadyLine("decode", { grpc: address, metrics: metricsServer.url });
  const cache = engine.cache;
  const registration: Registration | undefined = await registry?.register(
    { role: "decode", grpcAddress: advertisedAddress(address, cfg.advertiseAddress), metricsUrl: metricsServer.url, precision: cfg.precision, modelId },
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
  const eng = engine;
  let closing: Promise<void> | undefined;
  return {
    grpcAddress: address,
    metricsUrl: metricsServer.url,
    config: cfg,
    modelId,
    engine: eng,
    inbox: box,
    batcher: b,
    server,
    readyLine,
    close(graceMs = cfg.drainGraceMs) {
      closing ??= (async () => {
        // Out of the registry first: no router picks this instance while it drains.
        await registration?.deregister();
        server.setServing(false);
        await b.drain(graceMs);
        box.abortAll({ code: Code.UNAVAILABLE, reason: "the decode instance is shutting down" });
        await drainAndClose(server, 1_000, { flushMs: 500 });
        await metricsServer.close();
        for (const h of hosts.reverse()) h.close();
      })();
      return closing;
    },
  };
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

function isEntryPoint(): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return import.meta.url === pathToFileURL(realpathSync(script)).href;
  } catch {
    return false;
  }
}

// `tsx services/decode/src/main.ts ...` runs the service; importing the module does not.
if (isEntryPoint()) process.exitCode = await main(process.argv.slice(2), process.env);
