/**
 * `moela serve --role all`: router, prefill, decode and the experts in ONE process, with the OpenAI API on
 * it. What a user with one machine and a small model wants, and the baseline the cluster is measured
 * against (scripts/bench/cluster.ts --one-process-server). The HTTP surface is the router's own
 * (handlers.ts: the same routes, validation, formatting, SSE, errors, API keys); behind it runs the
 * EngineBackend (engine-backend.ts): the engine's continuous-batching loop in this process, the experts in
 * process too (the model's own, or the in-process expert-hosts of --expert-hosts / --precision paper, as
 * `moela generate` does). No gRPC, no Redis, no KV transfer. /metrics is on the API port.
 *
 * Every setting is a flag with an env twin MOELA_ALL_<NAME> (the flag wins):
 *   --model DIR              checkpoint folder                          (the bundled models/moela-v3-deep)
 *   --host H / --port N      the OpenAI API (and /metrics, /health)     (127.0.0.1 / 8000; port 0: any free)
 *   --grpc-address H:P       also the gRPC Generate API (@moela/client) (off)
 *   --served-model-name S    the model name clients use                 (the model folder's name)
 *   --max-model-len N        prompt + completion tokens at most         (config max_position_embeddings)
 *   --max-num-seqs N         sequences in the running batch; more wait  (32)
 *   --max-in-flight N        generations admitted (running + waiting) before 429 (256)
 *   --kv-blocks N            latent KV cache capacity, 16-token blocks  (2048)
 *   --prefill-chunk N        prompt tokens per prefill forward call     (256, as `moela generate`)
 *   --max-prefill-tokens N   prompt tokens prefilled per loop turn      (2048)
 *   --prefix-cache / --no-prefix-cache   reuse cached prompt prefixes    (on, as the cluster's prefill)
 *   --threads N              kernel threads                             (every core)
 *   --kernels K              fast | portable | reference                (fast)
 *   --precision P            exact | paper | paper-logfmt8              (exact)
 *   --expert-hosts H         routed experts split over H in-process hosts (1)
 *   --speculative M          MTP drafting: auto | on | off              (auto)
 *   --draft-vocab N          drafts choose among the first N token ids  (all)
 *   --speculative-tokens N   drafts per step with --speculative on      (1)
 *   --request-timeout-s N    a request's deadline, waiting included     (600)
 *   --api-key KEY[,KEY...]   as the router's                            (none: open)
 *   --max-body-bytes, --max-prompt-chars, --max-prompt-tokens, --tokenizer-threads, --strict-api, --log-level: as the router's
 */
import { availableParallelism } from "node:os";
import { basename } from "node:path";
import { fileURLToPath } from "node:url";
import {
  checkpointFolderOf,
  ConfigError,
  createLogger,
  envNameOf,
  errorMessage,
  flagList,
  hostPortSetting,
  parseSettings,
  runService,
  ServiceLifecycle,
  settingsFromKeys,
  usageLines,
  withWeightLoadBar,
  type Logger,
} from "@moela/core";
import { configureKernels, DeepseekModel, Engine, MAX_SPECULATIVE_TOKENS, parseKernelsName } from "@moela/engine";
import { countDraftPositions, createServiceMetrics, type ServiceMetrics } from "@moela/metrics";
import { createInProcessExperts, PRECISION_NAMES, precisionProfile, type PrecisionName } from "@moela/moe-dispatch";
import { AdmissionController } from "@moela/scheduler";
import { tokenTexts, type Tokenizer } from "@moela/tokenizer";
import { z } from "zod";
import { apiLimitsOf, DEFAULT_MAX_BODY_BYTES, parseApiKeys } from "./config.js";
import { EngineBackend } from "./engine-backend.js";
import { ApiKeys, type RouterContext } from "./handlers.js";
import { loadModelLimits, serveGenerate, serveHttp, startEncoder, validationOf } from "./serving.js";

/** The bundled model `npm start` serves (services/router/src -> the repository root). */
const DEFAULT_MODEL = fileURLToPath(new URL("../../../models/moela-v3-deep", import.meta.url));

const int = (min: number) => z.coerce.number().int("must be an integer").min(min, `must be at least ${min}`);

const schema = z.strictObject({
  model: z.string().min(1).default(DEFAULT_MODEL),
  host: z.string().min(1).default("127.0.0.1"),
  port: int(0).max(65_535, "must be at most 65535").default(8000),
  grpcAddress: hostPortSetting.optional(),
  servedModelName: z.string().min(1).optional(),
  maxModelLen: int(2).optional(),
  maxNumSeqs: int(1).max(4096).default(32),
  maxInFlight: int(1).default(256),
  kvBlocks: int(1)
    .max(1 << 24)
    .default(2048),
  prefillChunk: int(1).default(256),
  maxPrefillTokens: int(1).default(2048),
  prefixCache: z
    .enum(["true", "false"], { message: "must be true or false" })
    .default("true")
    .transform((v) => v === "true"),
  threads: int(1).max(256).optional(),
  kernels: z.enum(["fast", "portable", "reference"], { message: "must be fast, portable or reference" }).default("fast"),
  precision: z.enum(PRECISION_NAMES, { error: `must be one of ${PRECISION_NAMES.join(", ")}` }).default("exact"),
  expertHosts: int(1).max(64).default(1),
  speculative: z.enum(["auto", "on", "off"]).default("auto"),
  draftVocab: int(1).optional(),
  speculativeTokens: int(1).max(MAX_SPECULATIVE_TOKENS).default(1),
  requestTimeoutS: z.coerce.number().positive("must be positive").max(86_400).default(600),
  apiKey: z.string().optional(),
  maxBodyBytes: int(1024)
    .max(2 ** 31 - 1)
    .default(DEFAULT_MAX_BODY_BYTES),
  maxPromptChars: int(1).optional(),
  maxPromptTokens: int(1).optional(),
  tokenizerThreads: int(0).max(64).default(1),
  strictApi: z
    .enum(["true", "false", "1", "0", "on", "off"], { error: "must be true or false" })
    .default("false")
    .transform((v) => v === "true" || v === "1" || v === "on"),
  logLevel: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
});

const HELP = {
  model: "checkpoint folder (default the bundled models/moela-v3-deep)",
  host: "interface of the OpenAI API, /health and /metrics (default 127.0.0.1)",
  port: "port of the OpenAI API; 0 picks a free one (default 8000)",
  grpcAddress: "also serve the gRPC Generate API (@moela/client) on host:port; port 0 picks a free one (default off)",
  servedModelName: "the model name clients use (default the model folder's name)",
  maxModelLen: "prompt + completion tokens at most (default config max_position_embeddings)",
  maxNumSeqs: "sequences in the running batch; more wait for a slot (default 32)",
  maxInFlight: "generations admitted (running + waiting) before 429 (default 256)",
  kvBlocks: "latent KV cache capacity in 16-token blocks (default 2048)",
  prefillChunk: "prompt tokens per prefill forward call (default 256)",
  maxPrefillTokens: "prompt tokens prefilled per turn of the batching loop; the first request always goes (default 2048)",
  prefixCache: "reuse the latent KV of cached prompt prefixes (default on)",
  threads: "kernel threads, same bits for any count (default every core)",
  kernels: "fast (native SIMD) | portable (TypeScript) | reference (float64) (default fast)",
  precision: "exact (f32 KV, dispatch, combine) | paper (bf16 KV, fp8 dispatch, bf16 combine) | paper-logfmt8 (as paper, LogFMT-8 dispatch) (default exact)",
  expertHosts: "split the routed experts over H in-process expert-hosts, as the cluster does (default 1)",
  speculative: "MTP drafting: auto (while it pays) | on | off (default auto)",
  draftVocab: "drafts choose among the first N token ids, so drafting reads that part of the MTP head alone; outputs are the same (default all)",
  speculativeTokens: "tokens drafted per step with --speculative on, the MTP layer chained on its own output; outputs are the same (default 1)",
  requestTimeoutS: "a request's deadline, waiting included (default 600)",
  apiKey: "KEY[,KEY...] clients must send as Authorization: Bearer KEY; prefer the env twin (default none: open)",
  maxBodyBytes: "largest HTTP request body (default 32 MiB)",
  maxPromptChars: "most prompt characters per request before tokenizing (default 16 per context token, at least 65536)",
  maxPromptTokens: "longest prompt in tokens (default min(max-model-len - 1, 32768))",
  tokenizerThreads: "threads that tokenize prompts over 4096 characters; 0 = on the event loop (default 1)",
  strictApi: "unknown request fields are a 400 instead of ignored with a warning header (default off)",
  logLevel: "pino level (default info)",
} as const satisfies Record<keyof typeof schema.shape, string>;

const ENV_PREFIX = "MOELA_ALL_";
const SETTINGS = settingsFromKeys(Object.keys(schema.shape) as (keyof typeof schema.shape)[], ENV_PREFIX, ["prefixCache", "strictApi"], HELP);

export const USAGE = [
  "usage: moela serve --role all [--model DIR] [--port N] [options]",
  "",
  "Router, prefill, decode and the experts in this process, with the OpenAI API on --host:--port.",
  "",
  ...usageLines(SETTINGS),
].join("\n");

export interface OneProcessConfig {
  readonly model: string;
  readonly host: string;
  readonly port: number;
  /** host:port of the gRPC Generate API; undefined: not served. */
  readonly grpcAddress: string | undefined;
  readonly servedModelName: string;
  readonly maxModelLen: number | undefined;
  readonly maxNumSeqs: number;
  readonly maxInFlight: number;
  readonly kvBlocks: number;
  readonly prefillChunk: number;
  readonly maxPrefillTokens: number;
  readonly prefixCache: boolean;
  readonly threads: number;
  readonly kernels: "fast" | "portable" | "reference";
  readonly precision: PrecisionName;
  readonly expertHosts: number;
  readonly speculative: "auto" | "on" | "off";
  readonly draftVocab: number | undefined;
  readonly speculativeTokens: number;
  readonly requestTimeoutMs: number;
  readonly apiKeys: readonly string[];
  readonly maxBodyBytes: number;
  readonly maxPromptChars: number | undefined;
  readonly maxPromptTokens: number | undefined;
  readonly tokenizerThreads: number;
  readonly strictApi: boolean;
  readonly logLevel: string;
}

/** Parse flags over env twins (null: --help); throws ConfigError naming the flag and its env twin. */
export function parseOneProcessArgs(argv: readonly string[], env: NodeJS.ProcessEnv): OneProcessConfig | null {
  const o = { name: "serve --role all", error: ConfigError, argvErrorSuffix: `; flags: ${flagList(SETTINGS)}`, report: "first", help: true } as const;
  const c = parseSettings(SETTINGS, argv, env, schema, o);
  if (c === null) return null;
  const model = checkpointFolderOf(c.model, SETTINGS.model, o);
  let apiKeys: readonly string[];
  try {
    apiKeys = parseApiKeys(c.apiKey);
  } catch (err) {
    // The router's check, renamed: its message names the router's flag and env twin.
    throw new ConfigError(errorMessage(err).replace(/^router: --api-key \(env \w+\)/, `serve --role all: --api-key (env ${envNameOf(ENV_PREFIX, "apiKey")})`));
  }
  return Object.freeze({
    model,
    host: c.host,
    port: c.port,
    grpcAddress: c.grpcAddress,
    servedModelName: c.servedModelName ?? basename(model),
    maxModelLen: c.maxModelLen,
    maxNumSeqs: c.maxNumSeqs,
    maxInFlight: c.maxInFlight,
    kvBlocks: c.kvBlocks,
    prefillChunk: c.prefillChunk,
    maxPrefillTokens: c.maxPrefillTokens,
    prefixCache: c.prefixCache,
    threads: c.threads ?? availableParallelism(),
    kernels: c.kernels,
    precision: c.precision,
    expertHosts: c.expertHosts,
    speculative: c.speculative,
    draftVocab: c.draftVocab,
    speculativeTokens: c.speculativeTokens,
    requestTimeoutMs: Math.round(c.requestTimeoutS * 1000),
    apiKeys,
    ...apiLimitsOf(c),
    logLevel: c.logLevel,
  });
}

export interface StartedOneProcess {
  /** http://host:port of the OpenAI API (also /health and /metrics). */
  readonly httpUrl: string;
  readonly metricsUrl: string;
  /** host:port of the gRPC Generate API, when --grpc-address asked for it. */
  readonly grpcAddress: string | undefined;
  /** Stop taking requests, let those in flight finish (up to the grace period), stop the engine. */
  close(): Promise<void>;
}

/** How long requests in flight may finish after SIGTERM before they are ended. */
const SHUTDOWN_GRACE_MS = 30_000;

export async function startOneProcess(config: OneProcessConfig, options: { logger?: Logger; shutdownGraceMs?: number } = {}): Promise<StartedOneProcess> {
  const logger = options.logger ?? createLogger("all", config.logLevel);
  const { modelConfig, maxModelLen, tokenizer } = loadModelLimits(config.model, config.maxModelLen, logger);
  const model = loadModel(config);
  // Closed in reverse order: the HTTP server (requests in flight finish), the tokenizer threads, the engine loop, the model.
  const life = new ServiceLifecycle(logger);
  const defer = life.defer;
  defer(async () => model.close(), "model");
  return life.start(async () => {
    const engine = new Engine(model, {
      blockSize: 16,
      numBlocks: config.kvBlocks,
      prefillChunk: config.prefillChunk,
      speculation: config.speculative,
      ...(config.draftVocab !== undefined ? { draftVocab: config.draftVocab } : {}),
      speculativeTokens: config.speculativeTokens,
      prefixCache: config.prefixCache,
      // Constrained decoding (response_format, forced tool calls): the grammar's mask needs each token's text.
      ...(tokenizer !== null ? { tokenTexts: () => tokenTexts(tokenizer) } : {}),
    });
    const admission = new AdmissionController(config.maxInFlight);
    const { backend, router, registry } = startEngineBackend(config, engine, tokenizer, admission, logger);
    defer(() => backend.close(), "engine loop");
    const encoder = await startEncoder(config.model, tokenizer, config.tokenizerThreads, logger, defer);
    const apiKeys = config.apiKeys.length > 0 ? new ApiKeys(config.apiKeys) : null;
    if (apiKeys === null && !/^(127\.|::1$|localhost$)/.test(config.host)) {
      logger.warn({ host: config.host }, "no --api-key: the API answers anyone who can reach it (docs/SECURITY.md)");
    }
    const shutdown = new AbortController();
    const ctx: RouterContext = {
      validation: validationOf(config, modelConfig, maxModelLen, tokenizer),
      tokenizer,
      encoder,
      apiKeys,
      maxBodyBytes: config.maxBodyBytes,
      // One process: no other instance's address to hide; the model folder stays out of messages.
      internalNames: () => [config.model],
      backend,
      admission,
      metrics: router.m,
      registry,
      logger,
      startedAt: Math.floor(Date.now() / 1000),
      shutdown: shutdown.signal,
      draining: life.draining,
    };
    const graceMs = options.shutdownGraceMs ?? SHUTDOWN_GRACE_MS;
    // The router's public gRPC front door over the same backend, when asked for.
    const grpcAddress = config.grpcAddress === undefined ? undefined : await serveGenerate(ctx, config.grpcAddress, router.m, graceMs, defer);
    const httpUrl = await serveHttp(
      ctx,
      { host: config.host, port: config.port, graceMs, shutdown, reason: "the server is shutting down", dropUnusedSockets: true },
      defer,
    );
    logger.info(
      {
        http: httpUrl,
        grpc: grpcAddress ?? "off",
        model: config.servedModelName,
        maxModelLen,
        maxNumSeqs: config.maxNumSeqs,
        maxInFlight: config.maxInFlight,
        kvBlocks: config.kvBlocks,
        precision: config.precision,
        kernels: `${model.kernels.name} (${model.kernels.isa})`,
        threads: model.threads,
        speculation: engine.speculation,
        prefixCache: config.prefixCache,
      },
      "serving in one process",
    );
    return {
      httpUrl,
      metricsUrl: `${httpUrl}/metrics`,
      grpcAddress,
      close: life.close,
    };
  });
}

/** The whole model, its routed experts in this process (through the cluster's dispatcher unless one exact host would do). */
function loadModel(config: OneProcessConfig): DeepseekModel {
  const profile = precisionProfile(config.precision);
  // Process-wide: the model, and the in-process expert-hosts, compute with these kernels on these threads.
  configureKernels(parseKernelsName(config.kernels), config.threads);
  const model = withWeightLoadBar("loading weights", (onProgress) =>
    DeepseekModel.load(config.model, { kvDtype: profile.kvDtype, threads: config.threads, onProgress }),
  );
  // As `moela generate`: one host under the exact profile computes what the model's own experts do, so the
  // model keeps them; otherwise the routed experts go through the cluster's dispatcher, in process.
  if (config.expertHosts > 1 || profile.dispatch !== "f32" || profile.combine !== "f32") {
    model.setExpertExecutor(createInProcessExperts(model, config.expertHosts, profile).executor);
  }
  return model;
}

/**
 * The engine's continuous-batching loop behind the router's API, and the metrics: the router's series,
 * then the engine's under decode's names, in one exposition (GET /metrics on the API port).
 */
function startEngineBackend(
  config: OneProcessConfig,
  engine: Engine,
  tokenizer: Tokenizer | null,
  admission: AdmissionController,
  logger: Logger,
): { backend: EngineBackend; router: ServiceMetrics<"router">; registry: NonNullable<RouterContext["registry"]> } {
  let backend: EngineBackend | undefined;
  const router = createServiceMetrics("router", {
    model: config.servedModelName,
    // One process computes everything with the process-wide kernels.
    buildInfo: { precision: config.precision, kernels: config.kernels },
    collect: {
      routerRequestsInFlight: () => admission.inFlight,
      routerQueueDepth: () => backend?.waitingCount ?? 0,
      routerQueueActive: () => 0,
    },
  });
  const decode = createServiceMetrics("decode", {
    defaultMetrics: false,
    // Served in the same exposition as the router's registry, whose moela_build_info speaks for the process.
    buildInfo: false,
    model: config.servedModelName,
    collect: {
      decodeRunningSequences: () => backend?.runningCount ?? 0,
      decodeWaitingSequences: () => backend?.waitingCount ?? 0,
      decodeKvBlocksUsed: () => engine.cache.usedBlocks,
      decodeKvBlocksCapacity: () => engine.cache.numBlocks,
      decodeKvUsage: () => engine.cache.usedBlocks / engine.cache.numBlocks,
    },
  });
  const dm = decode.m;
  backend = new EngineBackend({
    engine,
    tokenizer,
    maxBatch: config.maxNumSeqs,
    maxPrefillTokens: config.maxPrefillTokens,
    requestTimeoutMs: config.requestTimeoutMs,
    logger,
    metrics: router.m,
    model: config.servedModelName,
    onStep: (seconds, _batch, tokens, drafted, accepted) => {
      dm.decodeStep.observe(seconds);
      dm.decodeGeneratedTokens.inc({ model: config.servedModelName }, tokens);
      countDraftPositions(dm, drafted, accepted);
    },
  });
  // GET /metrics on the API port: the router's series, then the engine's (decode's names).
  const registry = { contentType: router.registry.contentType, metrics: async () => (await router.registry.metrics()) + (await decode.registry.metrics()) };
  return { backend, router, registry };
}

/** `moela serve --role all [flags]`: returns the process exit code. */
export function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return runService<OneProcessConfig, StartedOneProcess>(
    {
      name: "all",
      parse: parseOneProcessArgs,
      usage: USAGE,
      signalsDuringStart: true,
      start: (config, logger) => startOneProcess(config, { logger }),
      readyLine: (s) =>
        JSON.stringify({
          event: "ready",
          role: "all",
          pid: process.pid,
          http: s.httpUrl,
          metrics: s.metricsUrl,
          ...(s.grpcAddress !== undefined ? { grpc: s.grpcAddress } : {}),
        }),
      shutdownMessage: "shutting down",
      close: (s) => s.close(),
    },
    argv,
    env,
  );
}
