/**
 * The router: OpenAI-compatible HTTP API and gRPC Generate API in front of the cluster. main() composes
 * it from its configuration, prints the ready line, waits for SIGTERM/SIGINT, drains and exits 0;
 * startRouter() does the same composition for tests and in-process clusters.
 */
import { createLogger, formatReadyLine, runService, ServiceLifecycle, splitHostPort, UnavailableError, withTimeout, type Logger } from "@moela/core";
import { createServiceMetrics, startMetricsServer, type MetricsOf, type MetricsServer } from "@moela/metrics";
import { toWirePrecision } from "@moela/moe-dispatch";
import { Precision, type DecodeStatusResponse } from "@moela/proto-gen";
import { unaryCall } from "@moela/rpc";
import {
  AdmissionController,
  createPrefillQueue,
  createRedisClient,
  DecisionLog,
  DecodePool,
  DEFAULT_POLICY,
  InstanceRegistry,
  Policy,
  PREFILL_QUEUE,
  PrefillRouter,
  redisConnection,
  RegistryWatcher,
  type DecodeReport,
} from "@moela/scheduler";
import type { Tokenizer } from "@moela/tokenizer";
import { hostname } from "node:os";
import { QueueEvents } from "bullmq";
import { DEFAULT_MAX_BODY_BYTES, parseRouterArgs, USAGE, type RouterConfig } from "./config.js";
import { ApiKeys, type RouterContext } from "./handlers.js";
import { distributedBackend } from "./backend.js";
import { JobWatcher, Pipeline } from "./pipeline.js";
import { loadModelLimits, serveGenerate, serveHttp, startEncoder, validationOf, type Defer } from "./serving.js";

export { parseRouterConfig, type RouterConfig } from "./config.js";

/** How long requests in flight may finish after SIGTERM before they are ended (StartRouterOptions.shutdownGraceMs). */
export const DEFAULT_SHUTDOWN_GRACE_MS = 30_000;

export interface StartRouterOptions {
  readonly logger?: Logger;
  /** How long shutdown lets requests in flight finish before ending them (default 30 s). */
  readonly shutdownGraceMs?: number;
  /** Between Decode.Status polls (default 300 ms). */
  readonly statusIntervalMs?: number;
  /** Registry heartbeat period and record TTL (defaults 1000 / 4000 ms). */
  readonly heartbeatMs?: number;
  readonly registryTtlMs?: number;
  /** Give up starting when Redis does not answer within this (default 10 s). */
  readonly redisTimeoutMs?: number;
  /** Between checks that a job waiting for prefill is still in Redis (default 2000 ms; pipeline.ts). */
  readonly jobCheckIntervalMs?: number;
}

export interface StartedRouter {
  /** http://host:port of the OpenAI API. */
  readonly httpUrl: string;
  /** host:port of the gRPC Generate API. */
  readonly grpcAddress: string;
  /** http://host:port/metrics */
  readonly metricsUrl: string;
  /** Stop taking requests, let those in flight finish (up to the grace period), close everything. */
  close(): Promise<void>;
}

export async function startRouter(config: RouterConfig, options: StartRouterOptions = {}): Promise<StartedRouter> {
  const logger = options.logger ?? createLogger("router", config.logLevel);
  const { modelConfig, maxModelLen, tokenizer } = loadModelLimits(config.model, config.maxModelLen, logger);
  const validation = validationOf(config, modelConfig, maxModelLen, tokenizer);
  const admission = new AdmissionController(config.maxInFlight);
  const apiKeys = (config.apiKeys ?? []).length > 0 ? new ApiKeys(config.apiKeys!) : null;
  const maxBodyBytes = config.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  if (apiKeys === null && !/^(127\.|\[::1\]|localhost:)/.test(config.httpAddress)) {
    logger.warn({ http: config.httpAddress }, "no --api-key: the API answers anyone who can reach it (docs/SECURITY.md)");
  }
  const life = new ServiceLifecycle(logger);
  const defer: Defer = (step) => life.defer(step);
  return life.start(async () => {
    const encoder = await startEncoder(config.model, tokenizer, config.tokenizerThreads ?? 1, logger, defer);
    const { queue, events, connection } = await openQueues(config, options, logger, defer);
    const { registry, m } = createServiceMetrics("router", {
      model: config.servedModelName,
      // The router computes nothing itself: kernels none; its precision is the one it asks of the cluster.
      buildInfo: { precision: config.precision },
      collect: {
        routerRequestsInFlight: () => admission.inFlight,
        routerQueueDepth: () => queue.getJobCountByTypes("waiting", "prioritized"),
        routerQueueActive: () => queue.getActiveCount(),
      },
    });
    const cluster = await watchCluster(config, options, logger, defer, { queue, events, connection });
    const { pipeline, pool } = await startPipeline(config, options, logger, defer, { queue, events, m, tokenizer, cluster });
    const shutdown = new AbortController();
    const ctx: RouterContext = {
      validation,
      tokenizer,
      encoder,
      apiKeys,
      maxBodyBytes,
      internalNames: internalNamesOf(config, pool, cluster),
      backend: distributedBackend(pipeline, pool, cluster.decisions),
      admission,
      metrics: m,
      logger,
      startedAt: Math.floor(Date.now() / 1000),
      shutdown: shutdown.signal,
      draining: life.draining,
      registry,
    };
    const metricsAt = splitHostPort(config.metricsAddress);
    const metricsServer: MetricsServer = await startMetricsServer(registry, { host: metricsAt.host, port: metricsAt.port });
    defer(() => metricsServer.close());
    const graceMs = options.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS;
    const grpcAddress = await serveGenerate(ctx, config.grpcAddress, m, graceMs, defer);
    const httpAt = splitHostPort(config.httpAddress);
    const httpUrl = await serveHttp(ctx, { host: httpAt.host, port: httpAt.port, graceMs, shutdown, reason: "the router is shutting down" }, defer);
    // Registered last, deregistered first: the record exists exactly while the router takes requests.
    const registration = await cluster.instances.register(
      { role: "router", grpcAddress, metricsUrl: metricsServer.url, httpUrl, precision: config.precision, modelId: config.servedModelName },
      async () => {
        const [waiting, active] = await Promise.all([queue.getJobCountByTypes("waiting", "prioritized"), queue.getActiveCount()]);
        return { runningSequences: admission.inFlight, accepting: !life.draining(), queues: { prefill_waiting: waiting, prefill_active: active } };
      },
      options.heartbeatMs !== undefined ? { intervalMs: options.heartbeatMs } : {},
    );
    defer(() => registration.deregister());
    const auth = apiKeys === null ? "none" : `${config.apiKeys!.length} API key(s)`;
    const limits = { maxBodyBytes, maxPromptChars: validation.maxPromptChars, maxPromptTokens: validation.maxPromptTokens, tokenizerThreads: encoder.threads };
    logger.info(
      { http: httpUrl, grpc: grpcAddress, metrics: metricsServer.url, model: config.servedModelName, maxModelLen, instance: registration.id, auth, limits },
      "router serving",
    );
    return { httpUrl, grpcAddress, metricsUrl: metricsServer.url, close: life.close };
  });
}

type PrefillQueue = ReturnType<typeof createPrefillQueue>;

/** The shared prefill queue and its events; resolves once Redis answered. */
async function openQueues(
  config: RouterConfig,
  options: StartRouterOptions,
  logger: Logger,
  defer: Defer,
): Promise<{ queue: PrefillQueue; events: QueueEvents; connection: ReturnType<typeof redisConnection> }> {
  const connection = redisConnection(config.redisUrl);
  const queue = createPrefillQueue(config.redisUrl, config.queuePrefix);
  queue.on("error", (err) => logger.warn({ err: err.message }, "prefill queue connection error"));
  defer(() => queue.close());
  const events = new QueueEvents(PREFILL_QUEUE, { connection, prefix: config.queuePrefix });
  events.on("error", (err) => logger.warn({ err: err.message }, "queue events connection error"));
  defer(() => events.close());
  const redisTimeoutMs = options.redisTimeoutMs ?? 10_000;
  await withTimeout(Promise.all([queue.waitUntilReady(), events.waitUntilReady()]), redisTimeoutMs, `Redis at ${config.redisUrl}`);
  return { queue, events, connection };
}

/** The registry (decode and prefill instances to choose from, this router's own record) and the routing decisions. */
interface ClusterView {
  readonly instances: InstanceRegistry;
  readonly decodeMembers: RegistryWatcher;
  readonly prefillMembers: RegistryWatcher;
  readonly decisions: DecisionLog;
  readonly prefillRouter: PrefillRouter;
}

async function watchCluster(
  config: RouterConfig,
  options: StartRouterOptions,
  logger: Logger,
  defer: Defer,
  q: { queue: PrefillQueue; events: QueueEvents; connection: ReturnType<typeof redisConnection> },
): Promise<ClusterView> {
  const redis = createRedisClient(config.redisUrl);
  redis.on("error", (err: Error) => logger.debug({ err: err.message }, "registry Redis connection error"));
  defer(async () => redis.quit().catch(() => redis.disconnect()));
  const instances = new InstanceRegistry(redis, {
    prefix: config.queuePrefix,
    logger,
    ...(options.registryTtlMs !== undefined ? { ttlMs: options.registryTtlMs } : {}),
  });
  const decodeMembers = new RegistryWatcher(instances, "decode", options.statusIntervalMs ?? 300);
  await decodeMembers.start();
  defer(() => decodeMembers.close());
  const decisions = new DecisionLog({ redis, prefix: config.queuePrefix, ttlS: config.decisionTtlS ?? 3_600, logger });
  defer(() => decisions.flush());
  // Prefill jobs go to the queue of the prefill instance holding the longest cached prefix of the prompt
  // (scheduler prefill-routing.ts); their events come back through the shared queue's `events`.
  const prefillMembers = new RegistryWatcher(instances, "prefill", options.statusIntervalMs ?? 300);
  await prefillMembers.start();
  defer(() => prefillMembers.close());
  const prefillRouter = new PrefillRouter({
    redis,
    connection: q.connection,
    prefix: config.queuePrefix,
    shared: q.queue,
    instances: () => prefillMembers.snapshot(),
    precision: config.precision,
    onDecision: (d) => decisions.record(d),
    forwardEventsTo: q.events,
    logger,
  });
  defer(() => prefillRouter.close());
  return { instances, decodeMembers, prefillMembers, decisions, prefillRouter };
}

/** The decode pool (polled with Decode.Status) and the pipeline that runs requests through prefill and decode. */
async function startPipeline(
  config: RouterConfig,
  options: StartRouterOptions,
  logger: Logger,
  defer: Defer,
  o: { queue: PrefillQueue; events: QueueEvents; m: MetricsOf<"router">; tokenizer: Tokenizer | null; cluster: ClusterView },
): Promise<{ pipeline: Pipeline; pool: DecodePool }> {
  const { decisions, decodeMembers } = o.cluster;
  let pipeline: Pipeline | undefined;
  const wantPrecision = toWirePrecision(config.precision);
  const pool = new DecodePool({
    addresses: config.decode,
    discover: () => decodeMembers.snapshot().map((r) => ({ id: r.id, address: r.grpcAddress, precision: r.precision, modelId: r.modelId })),
    intervalMs: options.statusIntervalMs ?? 300,
    policy: new Policy(config.policy ?? DEFAULT_POLICY, "--policy"),
    precision: config.precision,
    onDecision: (d) => decisions.record(d),
    logger,
    fetchStatus: async (address, { timeoutMs }): Promise<DecodeReport> => {
      const client = pipeline!.decodeClient(address);
      const s = await unaryCall<DecodeStatusResponse>((md, o, cb) => client.status({}, md, o, cb), { timeoutMs });
      if (s.precision !== Precision.PRECISION_UNSPECIFIED && s.precision !== wantPrecision) {
        throw new UnavailableError(`decode ${address} runs another precision profile (${Precision[s.precision]}) than the router (${config.precision})`);
      }
      // Past the check above: the router's own profile, or a decode that did not say.
      const precision = s.precision === Precision.PRECISION_UNSPECIFIED ? undefined : config.precision;
      return { ...s, precision, modelId: s.modelId === "" ? undefined : s.modelId };
    },
  });
  const built = new Pipeline({
    tokenizer: o.tokenizer,
    pool,
    queue: o.queue,
    jobs: new JobWatcher(o.events),
    prefillRouter: o.cluster.prefillRouter,
    precision: config.precision,
    requestTimeoutMs: config.requestTimeoutMs,
    logger,
    metrics: o.m,
    model: config.servedModelName,
    ...(config.security !== undefined ? { security: config.security } : {}),
    ...(options.jobCheckIntervalMs !== undefined ? { jobCheckIntervalMs: options.jobCheckIntervalMs } : {}),
  });
  pipeline = built;
  defer(async () => built.close());
  await pool.start();
  defer(() => pool.close());
  const healthy = pool.candidates().filter((c) => c.healthy).length;
  logger.info({ decode: pool.addresses, static: config.decode, healthy, policy: pool.policy.summary }, "decode instances polled");
  return { pipeline: built, pool };
}

/** What clients must never be told: every address, host and instance id the router knows of. */
function internalNamesOf(config: RouterConfig, pool: DecodePool, cluster: ClusterView): () => string[] {
  const redisHost = (() => {
    try {
      return new URL(config.redisUrl).host;
    } catch {
      return "";
    }
  })();
  return () => {
    const names = [...pool.addresses, ...config.decode, redisHost, hostname()];
    for (const r of [...cluster.decodeMembers.snapshot(), ...cluster.prefillMembers.snapshot()]) names.push(r.id, r.grpcAddress, r.hostname);
    return names.filter((n) => n !== "");
  };
}

/** `moela serve --role router [flags]`: returns the process exit code. */
export function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return runService<RouterConfig, StartedRouter>(
    {
      name: "router",
      parse: parseRouterArgs,
      usage: USAGE,
      start: (config, logger) => startRouter(config, { logger }),
      readyLine: (router) => formatReadyLine("router", { http: router.httpUrl, grpc: router.grpcAddress, metrics: router.metricsUrl }),
      shutdownMessage: "shutting down",
      close: (router) => router.close(),
    },
    argv,
    env,
  );
}
