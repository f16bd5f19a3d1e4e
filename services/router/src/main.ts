/**
 * The router: OpenAI-compatible HTTP API and gRPC Generate API in front of the cluster. main() composes
 * it from its configuration, prints the ready line, waits for SIGTERM/SIGINT, drains and exits 0;
 * startRouter() does the same composition for tests and in-process clusters.
 */
import { createLogger, formatReadyLine, InternalError, runService, splitHostPort, UnavailableError, type Logger } from "@moela/core";
import { checkJsonSchema, readModelConfig } from "@moela/engine";
import { createServiceMetrics, rpcServerCallRecorder, startMetricsServer, type MetricsServer } from "@moela/metrics";
import { toWirePrecision } from "@moela/moe-dispatch";
import { defaultMaxPromptChars } from "@moela/openai-api";
import { Precision, type DecodeStatusResponse } from "@moela/proto-gen";
import { createServer, drainAndClose, serve, unaryCall } from "@moela/rpc";
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
import { TOKENIZER_JSON, Tokenizer } from "@moela/tokenizer";
import { existsSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { QueueEvents } from "bullmq";
import { DEFAULT_MAX_BODY_BYTES, parseRouterArgs, readGenerationDefaults, resolveMaxPromptTokens, USAGE, type RouterConfig } from "./config.js";
import { ApiKeys, buildHttpApp, generateService, LENIENT_GENERATE_SERVICE, type RouterContext } from "./handlers.js";
import { distributedBackend } from "./backend.js";
import { JobWatcher, Pipeline } from "./pipeline.js";
import { TokenizerPool } from "./tokenize.js";

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

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new UnavailableError(`${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

export async function startRouter(config: RouterConfig, options: StartRouterOptions = {}): Promise<StartedRouter> {
  const logger = options.logger ?? createLogger("router", config.logLevel);
  const modelConfig = readModelConfig(config.model);
  const maxModelLen = config.maxModelLen ?? modelConfig.maxPositionEmbeddings;
  if (maxModelLen > modelConfig.maxPositionEmbeddings) {
    throw new InternalError(
      `--max-model-len ${maxModelLen} exceeds the model's max_position_embeddings (${modelConfig.maxPositionEmbeddings})`,
    );
  }
  // A checkpoint without tokenizer files (the reference tests' random checkpoints) is served with token ids only.
  const tokenizer = existsSync(join(config.model, TOKENIZER_JSON)) ? Tokenizer.fromDir(config.model) : null;
  if (tokenizer === null) logger.warn({ model: config.model }, "no tokenizer.json: serving token-id prompts only (no chat, no stop strings, empty text)");
  const defaults = readGenerationDefaults(config.model);
  const admission = new AdmissionController(config.maxInFlight);
  const apiKeys = (config.apiKeys ?? []).length > 0 ? new ApiKeys(config.apiKeys!) : null;
  const maxBodyBytes = config.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const maxPromptChars = config.maxPromptChars ?? defaultMaxPromptChars(maxModelLen);
  const maxPromptTokens = resolveMaxPromptTokens(config, maxModelLen);
  if (apiKeys === null && !/^(127\.|\[::1\]|localhost:)/.test(config.httpAddress)) {
    logger.warn({ http: config.httpAddress }, "no --api-key: the API answers anyone who can reach it (docs/SECURITY.md)");
  }

  const closers: (() => Promise<unknown>)[] = [];
  const closeAll = async (): Promise<void> => {
    for (const c of closers.splice(0).reverse()) await c().catch((err: unknown) => logger.warn({ err }, "error while closing"));
  };
  try {
    // Long prompts are tokenized on these threads, never on the event loop (tokenize.ts).
    const noTokenizer = { encode: () => [], encodeChat: () => [], decode: () => "" };
    const encoder = await TokenizerPool.start({
      model: config.model,
      threads: tokenizer === null ? 0 : (config.tokenizerThreads ?? 1),
      inline: tokenizer ?? noTokenizer,
      logger,
    });
    closers.push(() => encoder.close());
    const connection = redisConnection(config.redisUrl);
    const queue = createPrefillQueue(config.redisUrl, config.queuePrefix);
    queue.on("error", (err) => logger.warn({ err: err.message }, "prefill queue connection error"));
    closers.push(() => queue.close());
    const events = new QueueEvents(PREFILL_QUEUE, { connection, prefix: config.queuePrefix });
    events.on("error", (err) => logger.warn({ err: err.message }, "queue events connection error"));
    closers.push(() => events.close());
    const redisTimeoutMs = options.redisTimeoutMs ?? 10_000;
    await withTimeout(Promise.all([queue.waitUntilReady(), events.waitUntilReady()]), redisTimeoutMs, `Redis at ${config.redisUrl}`);

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

    // The registry (decode instances to choose from, this router's own record) and the routing decisions.
    const redis = createRedisClient(config.redisUrl);
    redis.on("error", (err: Error) => logger.debug({ err: err.message }, "registry Redis connection error"));
    closers.push(async () => redis.quit().catch(() => redis.disconnect()));
    const instances = new InstanceRegistry(redis, { prefix: config.queuePrefix, logger, ...(options.registryTtlMs !== undefined ? { ttlMs: options.registryTtlMs } : {}) });
    const decodeMembers = new RegistryWatcher(instances, "decode", options.statusIntervalMs ?? 300);
    await decodeMembers.start();
    closers.push(() => decodeMembers.close());
    const decisions = new DecisionLog({ redis, prefix: config.queuePrefix, ttlS: config.decisionTtlS ?? 3_600, logger });
    closers.push(() => decisions.flush());
    // Prefill jobs go to the queue of the prefill instance holding the longest cached prefix of the prompt
    // (scheduler prefill-routing.ts); their events come back through the shared queue's `events`.
    const prefillMembers = new RegistryWatcher(instances, "prefill", options.statusIntervalMs ?? 300);
    await prefillMembers.start();
    closers.push(() => prefillMembers.close());
    const prefillRouter = new PrefillRouter({
      redis,
      connection,
      prefix: config.queuePrefix,
      shared: queue,
      instances: () => prefillMembers.snapshot(),
      precision: config.precision,
      onDecision: (d) => decisions.record(d),
      forwardEventsTo: events,
      logger,
    });
    closers.push(() => prefillRouter.close());

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
    pipeline = new Pipeline({
      tokenizer,
      pool,
      queue,
      jobs: new JobWatcher(events),
      prefillRouter,
      precision: config.precision,
      requestTimeoutMs: config.requestTimeoutMs,
      logger,
      metrics: m,
      model: config.servedModelName,
      ...(config.security !== undefined ? { security: config.security } : {}),
      ...(options.jobCheckIntervalMs !== undefined ? { jobCheckIntervalMs: options.jobCheckIntervalMs } : {}),
    });
    const pipelineRef = pipeline;
    closers.push(async () => pipelineRef.close());
    await pool.start();
    closers.push(() => pool.close());
    const healthy = pool.candidates().filter((c) => c.healthy).length;
    logger.info({ decode: pool.addresses, static: config.decode, healthy, policy: pool.policy.summary }, "decode instances polled");

    const shutdown = new AbortController();
    let draining = false;
    // What clients must never be told: every address, host and instance id the router knows of.
    const redisHost = (() => {
      try {
        return new URL(config.redisUrl).host;
      } catch {
        return "";
      }
    })();
    const internalNames = (): string[] => {
      const names = [...pool.addresses, ...config.decode, redisHost, hostname()];
      for (const r of [...decodeMembers.snapshot(), ...prefillMembers.snapshot()]) names.push(r.id, r.grpcAddress, r.hostname);
      return names.filter((n) => n !== "");
    };
    const ctx: RouterContext = {
      validation: {
        servedModelName: config.servedModelName,
        maxModelLen,
        vocabSize: modelConfig.vocabSize,
        encoder: tokenizer,
        defaults,
        maxPromptChars,
        maxPromptTokens,
        strictApi: config.strictApi ?? false,
        // Constrained decoding needs each token's text: prefill and decode read the same tokenizer.
        ...(tokenizer !== null ? { checkSchema: checkJsonSchema } : {}),
      },
      tokenizer,
      encoder,
      apiKeys,
      maxBodyBytes,
      internalNames,
      backend: distributedBackend(pipeline, pool, decisions),
      admission,
      metrics: m,
      logger,
      startedAt: Math.floor(Date.now() / 1000),
      shutdown: shutdown.signal,
      draining: () => draining,
      registry,
    };

    const metricsAt = splitHostPort(config.metricsAddress);
    const metricsServer: MetricsServer = await startMetricsServer(registry, { host: metricsAt.host, port: metricsAt.port });
    closers.push(() => metricsServer.close());

    // A public server: its messages are bounded like HTTP bodies (the rpc kit's default is 256 MiB).
    const grpc = createServer({ logger, onCallEnd: rpcServerCallRecorder(m), maxMessageBytes: maxBodyBytes });
    grpc.addService(LENIENT_GENERATE_SERVICE, generateService(ctx));
    const grpcBound = await serve(grpc, config.grpcAddress);
    const graceMs = options.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS;
    closers.push(() => drainAndClose(grpc, graceMs));

    const app = buildHttpApp(ctx);
    const httpAt = splitHostPort(config.httpAddress);
    await app.listen({ host: httpAt.host, port: httpAt.port });
    const addr = app.server.address();
    const port = typeof addr === "object" && addr !== null ? addr.port : httpAt.port;
    const httpHost = httpAt.host.includes(":") ? `[${httpAt.host}]` : httpAt.host;
    const httpUrl = `http://${httpHost}:${port}`;
    closers.push(async () => {
      // Let requests in flight finish; past the grace period end them (their streams get an error event).
      const closed = app.close();
      const timer = setTimeout(() => shutdown.abort(new UnavailableError("the router is shutting down")), graceMs);
      // A keep-alive connection whose stream ends after close() began would hold the server open until
      // the client's idle timeout; close such connections as they go idle.
      const idle = setInterval(() => app.server.closeIdleConnections(), 50);
      try {
        await closed;
      } finally {
        clearTimeout(timer);
        clearInterval(idle);
      }
    });

    // Registered last, deregistered first: the record exists exactly while the router takes requests.
    const registration = await instances.register(
      { role: "router", grpcAddress: grpcBound.address, metricsUrl: metricsServer.url, httpUrl, precision: config.precision, modelId: config.servedModelName },
      async () => {
        const [waiting, active] = await Promise.all([queue.getJobCountByTypes("waiting", "prioritized"), queue.getActiveCount()]);
        return { runningSequences: admission.inFlight, accepting: !draining, queues: { prefill_waiting: waiting, prefill_active: active } };
      },
      options.heartbeatMs !== undefined ? { intervalMs: options.heartbeatMs } : {},
    );
    closers.push(() => registration.deregister());

    logger.info(
      {
        http: httpUrl,
        grpc: grpcBound.address,
        metrics: metricsServer.url,
        model: config.servedModelName,
        maxModelLen,
        instance: registration.id,
        auth: apiKeys === null ? "none" : `${config.apiKeys!.length} API key(s)`,
        limits: { maxBodyBytes, maxPromptChars, maxPromptTokens, tokenizerThreads: encoder.threads },
      },
      "router serving",
    );
    let closing: Promise<void> | undefined;
    return {
      httpUrl,
      grpcAddress: grpcBound.address,
      metricsUrl: metricsServer.url,
      close: () => {
        draining = true;
        closing ??= closeAll();
        return closing;
      },
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
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
