/**
 * expert-host: holds shard `--shard-index` of `--shard-count` of the routed experts of every MoE
 * layer (never the experts it does not own) and answers ExpertHost.Dispatch / Info over gRPC, with
 * grpc.health.v1, reflection and /metrics.
 *
 * main() in order: config -> logger and metrics -> load the shard -> serve -> ONE ready line on
 * stdout (JSON, the launcher parses it) -> wait for SIGTERM/SIGINT -> health NOT_SERVING, drain,
 * close -> exit code 0. Logs are JSON on stderr.
 *
 * Ready line: {"event":"ready","role":"expert-host","pid":123,"grpc":"127.0.0.1:PORT",
 *              "metrics":"http://127.0.0.1:PORT/metrics","shard":0}
 *
 * With --redis-url it registers in the instance registry (role expert-host, its shard of the count,
 * calls in flight as its load, a heartbeat a second) once it serves, and deregisters first on shutdown,
 * so prefill and decode add it to (and drop it from) the shard's replicas.
 */
import { getPriority, setPriority } from "node:os";
import { basename, resolve } from "node:path";
import { errorMessage, formatReadyLine, isEntryPoint, runService, splitHostPort, UnavailableError, withWeightLoadBar, type Logger } from "@moela/core";
import { configureKernels, loadExpertShard, readModelConfig } from "@moela/engine";
import { createServiceMetrics, rpcServerCallRecorder, startMetricsServer, type MetricsServer } from "@moela/metrics";
import { checkpointModelId, ExpertHostCore, ExpertHostWireService, placementFor } from "@moela/moe-dispatch";
import { advertisedAddress, createRedisClient, InstanceRegistry, type Registration } from "@moela/scheduler";
import { createServer, drainAndClose, serve, type RpcServer } from "@moela/rpc";
import { parseConfig, USAGE, type ExpertHostConfig } from "./config.js";
import { expertHostHandlers } from "./handlers.js";

export { parseConfig, type ExpertHostConfig } from "./config.js";

export interface RunningExpertHost {
  /** Dialable "host:port" of the gRPC server. */
  readonly grpcAddress: string;
  /** http://host:port/metrics */
  readonly metricsUrl: string;
  readonly config: ExpertHostConfig;
  readonly core: ExpertHostCore;
  readonly server: RpcServer;
  /** Bytes of expert weights resident in this process. */
  readonly residentBytes: number;
  /** The line main() prints when ready. */
  readonly readyLine: string;
  /** Its registry record (with --redis-url). */
  readonly registration: Registration | undefined;
  /** Deregister, health NOT_SERVING, let running calls finish for up to graceMs, close gRPC and /metrics. */
  close(graceMs?: number): Promise<{ forced: boolean }>;
}

/** Load the shard and serve it: the whole service without the process lifecycle (tests, launchers). */
export async function startExpertHost(cfg: ExpertHostConfig, logger: Logger): Promise<RunningExpertHost> {
  const t0 = performance.now();
  configureKernels(cfg.kernels, cfg.threads);
  const model = readModelConfig(cfg.model);
  const placement = placementFor(model, cfg.shardCount);
  const shard = withWeightLoadBar(`expert-host ${cfg.shardIndex}: loading experts`, (onProgress) =>
    loadExpertShard(cfg.model, model, (_layer, e) => placement.hostOfExpert[e] === cfg.shardIndex, onProgress, cfg.sharedExpert),
  );
  const core = new ExpertHostCore({
    expertsByLayer: shard.expertsByLayer,
    sharedByLayer: shard.sharedByLayer,
    hidden: model.hiddenSize,
    profile: cfg.precision,
    shardIndex: cfg.shardIndex,
    shardCount: cfg.shardCount,
    modelId: checkpointModelId(cfg.model),
  });
  logger.info(
    {
      model: cfg.model,
      modelId: core.modelId,
      shard: cfg.shardIndex,
      shards: cfg.shardCount,
      experts: placement.expertsOfHost[cfg.shardIndex],
      layers: core.layers,
      bytes: shard.bytes,
      precision: cfg.precision,
      loadMs: Math.round(performance.now() - t0),
    },
    "expert shard loaded",
  );

  const metrics = createServiceMetrics("expert-host", {
    perExpertSeries: cfg.perExpertMetrics,
    // The model folder's name, as prefill and decode label theirs (names.ts).
    model: basename(resolve(cfg.model)),
    buildInfo: { precision: cfg.precision, kernels: cfg.kernels },
  });
  const m = metrics.m;
  const server = createServer({
    logger,
    onCallEnd: rpcServerCallRecorder(m),
    // Dispatch, DispatchStream and Info need the internal secret when one is set; TLS with a cert.
    security: cfg.security,
  });
  server.addService(ExpertHostWireService, expertHostHandlers({ core, logger, metrics: m }));
  const { address } = await serve(server, cfg.grpcAddress);
  let metricsServer: MetricsServer;
  try {
    metricsServer = await startMetricsServer(metrics.registry, splitHostPort(cfg.metricsAddress));
  } catch (err) {
    await drainAndClose(server, 0, { flushMs: 0 });
    throw new UnavailableError(`cannot serve /metrics on ${cfg.metricsAddress}: ${errorMessage(err)}`, { cause: err });
  }
  const readyLine = formatReadyLine("expert-host", { grpc: address, metrics: metricsServer.url, shard: cfg.shardIndex });
  const registered = cfg.redisUrl === undefined ? undefined : await register(cfg, address, metricsServer.url, core.modelId, server, logger);
  return {
    grpcAddress: address,
    metricsUrl: metricsServer.url,
    config: cfg,
    core,
    server,
    residentBytes: shard.bytes,
    readyLine,
    registration: registered?.registration,
    async close(graceMs = cfg.drainGraceMs) {
      // Out of the registry first, so no new caller picks this replica while it drains.
      await registered?.close();
      const result = await drainAndClose(server, graceMs);
      await metricsServer.close();
      return result;
    },
  };
}

/** The registry record of this replica: its shard and, as its load, the calls in flight. */
async function register(
  cfg: ExpertHostConfig,
  bound: string,
  metricsUrl: string,
  modelId: string,
  server: RpcServer,
  logger: Logger,
): Promise<{ registration: Registration; close: () => Promise<void> }> {
  const redis = createRedisClient(cfg.redisUrl!);
  redis.on("error", (err: Error) => logger.debug({ err: err.message }, "registry Redis connection error"));
  const registry = new InstanceRegistry(redis, { prefix: cfg.queuePrefix ?? "moela", logger });
  const registration = await registry.register(
    {
      role: "expert-host",
      grpcAddress: advertisedAddress(bound, cfg.advertiseAddress),
      metricsUrl,
      precision: cfg.precision,
      modelId,
      shardIndex: cfg.shardIndex,
      shardCount: cfg.shardCount,
    },
    () => ({ runningSequences: server.activeCalls }),
  );
  logger.info({ instance: registration.id, shard: cfg.shardIndex }, "registered in the instance registry");
  return {
    registration,
    close: async () => {
      await registration.deregister();
      await redis.quit().catch(() => redis.disconnect());
    },
  };
}

/** The service's entry point; resolves with the process exit code. */
export function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return runService<ExpertHostConfig, RunningExpertHost>(
    {
      name: "expert-host",
      parse: parseConfig,
      usage: USAGE,
      // Signals are caught before the (possibly long) weight load, so a SIGTERM during it still drains cleanly.
      signalsDuringStart: true,
      start: (cfg, logger) => {
        // Here and not in startExpertHost, which tests run inside their own process. Added to the niceness the process
        // started with, as `nice -n` does. On Linux it is the calling thread's, and the kernel threads made after it
        // (configureKernels) inherit it.
        if (cfg.nice > 0) {
          try {
            setPriority(0, Math.min(19, getPriority(0) + cfg.nice));
          } catch (err) {
            logger.warn({ nice: cfg.nice, err: errorMessage(err) }, "could not lower this process's priority");
          }
        }
        return startExpertHost(cfg, logger);
      },
      readyLine: (host) => host.readyLine,
      onReady: (host, cfg, logger) => logger.info({ grpc: host.grpcAddress, metrics: host.metricsUrl, shard: cfg.shardIndex }, "ready"),
      shutdownMessage: "draining",
      shutdownFields: (host) => ({ activeCalls: host.server.activeCalls }),
      close: async (host, cfg) => {
        const { forced } = await host.close(cfg.drainGraceMs);
        return { forced };
      },
    },
    argv,
    env,
  );
}

// `tsx services/expert-host/src/main.ts ...` runs the service; importing the module does not.
if (isEntryPoint(import.meta.url)) process.exitCode = await main(process.argv.slice(2), process.env);
