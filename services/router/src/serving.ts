/**
 * What the router (main.ts) and `moela serve --role all` (one-process.ts) compose the same way: the model's
 * limits and tokenizer, the tokenizer threads, the request validation settings, the gRPC Generate server
 * and the HTTP server with its graceful close. Each step registers its clean-up with the caller's `defer`.
 */
import type { Socket } from "node:net";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { InternalError, UnavailableError, type Logger } from "@moela/core";
import { checkJsonSchema, readModelConfig, type ModelConfig } from "@moela/engine";
import { rpcServerCallRecorder, type MetricsOf } from "@moela/metrics";
import { defaultMaxPromptChars } from "@moela/openai-api";
import { createServer, drainAndClose, serve } from "@moela/rpc";
import { TOKENIZER_JSON, Tokenizer } from "@moela/tokenizer";
import { readGenerationDefaults, resolveMaxPromptTokens } from "./config.js";
import { buildHttpApp, generateService, LENIENT_GENERATE_SERVICE, type RouterContext } from "./handlers.js";
import { TokenizerPool } from "./tokenize.js";

/** A clean-up step for shutdown and a failed start (loggedDefer: a failing one is logged and the rest still run). */
export type Defer = (step: () => unknown, what?: string) => void;

/** The checkpoint's config, the context length served, and its tokenizer (null: token-id prompts only). */
export function loadModelLimits(
  model: string,
  maxModelLenSetting: number | undefined,
  logger: Logger,
): { modelConfig: ModelConfig; maxModelLen: number; tokenizer: Tokenizer | null } {
  const modelConfig = readModelConfig(model);
  const maxModelLen = maxModelLenSetting ?? modelConfig.maxPositionEmbeddings;
  if (maxModelLen > modelConfig.maxPositionEmbeddings) {
    throw new InternalError(`--max-model-len ${maxModelLen} exceeds the model's max_position_embeddings (${modelConfig.maxPositionEmbeddings})`);
  }
  // A checkpoint without tokenizer files (the reference tests' random checkpoints) is served with token ids only.
  const tokenizer = existsSync(join(model, TOKENIZER_JSON)) ? Tokenizer.fromDir(model) : null;
  if (tokenizer === null) logger.warn({ model }, "no tokenizer.json: serving token-id prompts only (no chat, no stop strings, empty text)");
  return { modelConfig, maxModelLen, tokenizer };
}

/** Long prompts are tokenized on these threads, never on the event loop (tokenize.ts); closed by `defer`. */
export async function startEncoder(model: string, tokenizer: Tokenizer | null, threads: number, logger: Logger, defer: Defer): Promise<TokenizerPool> {
  const noTokenizer = { encode: () => [], encodeChat: () => [], decode: () => "" };
  const encoder = await TokenizerPool.start({ model, threads: tokenizer === null ? 0 : threads, inline: tokenizer ?? noTokenizer, logger });
  defer(() => encoder.close(), "tokenizer threads");
  return encoder;
}

/** How requests are validated against the model (RouterContext.validation). */
export function validationOf(
  config: {
    readonly model: string;
    readonly servedModelName: string;
    readonly maxPromptChars?: number | undefined;
    readonly maxPromptTokens?: number | undefined;
    readonly strictApi?: boolean | undefined;
  },
  modelConfig: ModelConfig,
  maxModelLen: number,
  tokenizer: Tokenizer | null,
): RouterContext["validation"] {
  return {
    servedModelName: config.servedModelName,
    maxModelLen,
    vocabSize: modelConfig.vocabSize,
    encoder: tokenizer,
    defaults: readGenerationDefaults(config.model),
    maxPromptChars: config.maxPromptChars ?? defaultMaxPromptChars(maxModelLen),
    maxPromptTokens: resolveMaxPromptTokens(config, maxModelLen),
    strictApi: config.strictApi ?? false,
    // Constrained decoding needs each token's text: prefill and decode read the same tokenizer.
    ...(tokenizer !== null ? { checkSchema: checkJsonSchema } : {}),
  };
}

/** The public gRPC Generate API on `address`; its messages are bounded like HTTP bodies (the rpc kit's default is 256 MiB). */
export async function serveGenerate(ctx: RouterContext, address: string, m: MetricsOf<"router">, graceMs: number, defer: Defer): Promise<string> {
  const grpc = createServer({ logger: ctx.logger, onCallEnd: rpcServerCallRecorder(m), maxMessageBytes: ctx.maxBodyBytes });
  grpc.addService(LENIENT_GENERATE_SERVICE, generateService(ctx));
  const bound = await serve(grpc, address);
  defer(() => drainAndClose(grpc, graceMs), "grpc server");
  return bound.address;
}

export interface HttpServeOptions {
  readonly host: string;
  readonly port: number;
  /** How long requests in flight may finish on close before `shutdown` is aborted with `reason`. */
  readonly graceMs: number;
  readonly shutdown: AbortController;
  readonly reason: string;
  /**
   * Also destroy, while closing, connections that never sent a request (a client's spare, pre-opened
   * socket): Node's closeIdleConnections leaves them open, and they would hold close() until the headers timeout.
   */
  readonly dropUnusedSockets?: boolean;
}

/** The OpenAI API over `ctx`, listening; resolves with its http://host:port. Closed by `defer`, gracefully. */
export async function serveHttp(ctx: RouterContext, o: HttpServeOptions, defer: Defer): Promise<string> {
  const app = buildHttpApp(ctx);
  const sockets = new Set<Socket>();
  if (o.dropUnusedSockets === true) {
    app.server.on("connection", (socket: Socket) => {
      sockets.add(socket);
      socket.once("close", () => sockets.delete(socket));
    });
  }
  await app.listen({ host: o.host, port: o.port });
  const addr = app.server.address();
  const port = typeof addr === "object" && addr !== null ? addr.port : o.port;
  const host = o.host.includes(":") ? `[${o.host}]` : o.host;
  defer(async () => {
    // Let requests in flight finish; past the grace period end them (their streams get an error event).
    const closed = app.close();
    const timer = setTimeout(() => o.shutdown.abort(new UnavailableError(o.reason)), o.graceMs);
    // A keep-alive connection whose stream ends after close() began would hold the server open until
    // the client's idle timeout; close such connections as they go idle.
    const idle = setInterval(() => {
      app.server.closeIdleConnections();
      for (const s of sockets) if (s.bytesRead === 0) s.destroy();
    }, 50);
    try {
      await closed;
    } finally {
      clearTimeout(timer);
      clearInterval(idle);
    }
  }, "http server");
  return `http://${host}:${port}`;
}
