/**
 * The OpenAI-compatible HTTP API (fastify): its routes, the generation requests (streamed answers are
 * sse.ts's), and OpenAI-shaped errors for everything, malformed JSON and unknown routes included.
 */
import { CancelledError, Code, errorMessage, InternalError, InvalidArgumentError, MoelaError, newRequestId, requestLogger, type Logger } from "@moela/core";
import {
  chatLogprobEntries,
  chatResponse,
  extractToolCalls,
  CompletionLogprobsBuilder,
  completionResponse,
  concatCompletionLogprobs,
  createdNow,
  newChatCompletionId,
  jsonDepthExceeds,
  MAX_JSON_DEPTH,
  ModelNotFoundError,
  newCompletionId,
  openAIError,
  parseDetokenizeRequest,
  parseTokenizeRequest,
  planChatRequest,
  planCompletionRequest,
  RequestValidationError,
  runPlanAsync,
  SSE_DONE,
  sseData,
  usageOf,
  type CompletionLogprobs,
  type EncodeResult,
  type FinishReason,
  type GeneratedToken,
  type GenerationRequest,
  type TokenizeContext,
  type TokenizeResponse,
} from "@moela/openai-api";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import {
  choiceSampling,
  IGNORED_FIELDS_HEADER,
  INTERNAL_ID_HEADER,
  MOELA_VERSION,
  namespacedRequestId,
  outcomeOf,
  publicError,
  recordRequest,
  renderTokens,
  REQUEST_ID,
  type Outcome,
  type RouterContext,
} from "./api-common.js";
import type { GenerateEvent } from "./backend.js";
import { streamGeneration, writeRaw } from "./sse.js";

/** The fastify app: routes, OpenAI-shaped errors for everything (malformed JSON and unknown routes included). */
export function buildHttpApp(ctx: RouterContext): FastifyInstance {
  // bodyLimit: token-id prompts of long contexts are large JSON bodies; --max-body-bytes bounds them.
  const app = Fastify({ logger: false, bodyLimit: ctx.maxBodyBytes, return503OnClosing: true });
  parseJsonBounded(app);
  authenticateRequests(app, ctx);
  answerErrors(app, ctx);
  serveModels(app, ctx);
  serveTokenizer(app, ctx);
  serveInfo(app, ctx);
  app.post("/v1/completions", (req, reply) => handleGeneration("completions", ctx, req, reply));
  app.post("/v1/chat/completions", (req, reply) => handleGeneration("chat", ctx, req, reply));
  return app;
}

/** JSON bodies as fastify parses them, refused first when they nest deeper than MAX_JSON_DEPTH. */
function parseJsonBounded(app: FastifyInstance): void {
  // JSON as fastify parses it (prototype poisoning refused), after a linear check of the nesting depth:
  // JSON.parse recurses, and a body of a million "[" would otherwise end in a stack overflow (a 500).
  // fastify's default JSON parser is the callback form (it answers through done and returns nothing); its type is the
  // union of the callback and the promise forms, so name the form it is: there is no promise to await.
  type CallbackParser = Exclude<ReturnType<FastifyInstance["getDefaultJsonParser"]>, (...args: never[]) => Promise<unknown>>;
  const parseJson = app.getDefaultJsonParser("error", "error") as CallbackParser;
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "string" }, (req, body, done) => {
    if (typeof body === "string" && jsonDepthExceeds(body, MAX_JSON_DEPTH)) {
      done(new RequestValidationError(`the JSON body nests arrays and objects deeper than ${MAX_JSON_DEPTH} levels`, "body"), undefined);
      return;
    }
    parseJson(req, body as string, done);
  });
}

/** With API keys, every request but the health check must carry one. */
function authenticateRequests(app: FastifyInstance, ctx: RouterContext): void {
  // API keys: everything but the health check (a load balancer's probe carries none).
  app.addHook("onRequest", async (req, reply) => {
    if (ctx.apiKeys === null) return;
    if ((req.method === "GET" || req.method === "HEAD") && req.url.split("?")[0] === "/health") return;
    try {
      ctx.apiKeys.authenticate(req.headers.authorization);
    } catch (err) {
      return sendError(ctx, reply, err);
    }
  });
}

/** OpenAI-shaped errors for everything: MoelaErrors, fastify's own 4xx, unknown routes. */
function answerErrors(app: FastifyInstance, ctx: RouterContext): void {
  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, _req, reply) => {
    if (err instanceof MoelaError) return sendError(ctx, reply, err);
    // fastify's own 4xx: malformed or empty JSON, wrong content type, body too large.
    const status = err.statusCode;
    if (status !== undefined && status >= 400 && status < 500) {
      if (err.code === "FST_ERR_CTP_BODY_TOO_LARGE") {
        const message = `the request body is larger than this server's limit of ${ctx.maxBodyBytes} bytes`;
        return reply.code(413).send({ error: { message, type: "invalid_request_error", param: null, code: "request_too_large" } });
      }
      const message = err.code === "FST_ERR_CTP_INVALID_JSON_BODY" || err instanceof SyntaxError ? `malformed JSON body: ${err.message}` : err.message;
      return reply.code(status).send({ error: { message, type: "invalid_request_error", param: null, code: null } });
    }
    ctx.logger.error({ err }, "unhandled error in an HTTP handler");
    return sendError(ctx, reply, err);
  });
  app.setNotFoundHandler((req, reply) =>
    reply.code(404).send({ error: { message: `no route for ${req.method} ${req.url}`, type: "invalid_request_error", param: null, code: "not_found" } }),
  );
}

/** GET /health and the served model: GET /v1/models and /v1/models/<id>. */
function serveModels(app: FastifyInstance, ctx: RouterContext): void {
  app.get("/health", async (_req, reply) => {
    return reply.code(ctx.draining() ? 503 : 200).send({ status: ctx.draining() ? "draining" : "ok", ...ctx.backend.health() });
  });

  const modelCard = (): Record<string, unknown> => ({
    id: ctx.validation.servedModelName,
    object: "model",
    created: ctx.startedAt,
    owned_by: "moela",
    root: ctx.validation.servedModelName,
    parent: null,
    max_model_len: ctx.validation.maxModelLen,
  });
  app.get("/v1/models", async () => ({ object: "list", data: [modelCard()] }));
  // OpenAI's retrieve: the served model, else 404 model_not_found. Ids may hold "/" (HF names): the wildcard takes them.
  app.get<{ Params: { "*": string } }>("/v1/models/*", async (req) => {
    const id = req.params["*"];
    if (id !== ctx.validation.servedModelName) throw new ModelNotFoundError(id);
    return modelCard();
  });
}

/** vLLM's POST /tokenize and /detokenize. */
function serveTokenizer(app: FastifyInstance, ctx: RouterContext): void {
  // vLLM's tokenizer endpoints (packages/openai-api/src/tokenize.ts has the shapes).
  const tokenizeCtx = (): TokenizeContext => ({
    servedModelName: ctx.validation.servedModelName,
    maxModelLen: ctx.validation.maxModelLen,
    vocabSize: ctx.validation.vocabSize,
    hasTokenizer: ctx.tokenizer !== null,
    ...(ctx.validation.maxPromptChars !== undefined ? { maxPromptChars: ctx.validation.maxPromptChars } : {}),
    ...(ctx.validation.strictApi !== undefined ? { strictApi: ctx.validation.strictApi } : {}),
  });
  app.post("/tokenize", async (req, reply): Promise<TokenizeResponse> => {
    const r = parseTokenizeRequest(req.body, tokenizeCtx());
    reportIgnored(r.ignoredFields, reply, ctx.logger);
    let result: EncodeResult;
    try {
      result = await ctx.encoder.run(r.op);
    } catch (err) {
      // The chat template refusing the conversation is the client's 400, as on /v1/chat/completions.
      if (r.op.kind === "chat" && err instanceof MoelaError && err.code === Code.INVALID_ARGUMENT && !(err instanceof RequestValidationError)) {
        throw new RequestValidationError(err.message, "messages");
      }
      throw err;
    }
    if (typeof result === "string") throw new InternalError("tokenizer returned text for an encode");
    const tokens = Array.from(result);
    const tokenizer = ctx.tokenizer!;
    const token_strs = r.returnTokenStrs ? tokens.map((t) => tokenizer.idToToken(t) ?? "") : null;
    return { count: tokens.length, max_model_len: ctx.validation.maxModelLen, tokens, token_strs };
  });
  app.post("/detokenize", async (req, reply) => {
    const r = parseDetokenizeRequest(req.body, tokenizeCtx());
    reportIgnored(r.ignoredFields, reply, ctx.logger);
    const text = await ctx.encoder.run({ kind: "decode", ids: r.tokens });
    if (typeof text !== "string") throw new InternalError("tokenizer returned ids for a decode");
    return { prompt: text };
  });
}

/** GET /version, /metrics (when the router has a registry) and /v1/routing/<id>. */
function serveInfo(app: FastifyInstance, ctx: RouterContext): void {
  // vLLM's /version: the platform's version (the repository's package.json).
  app.get("/version", async () => ({ version: MOELA_VERSION }));
  // The router's own registry, as on --metrics-address (also here, where the API is: vLLM serves it so).
  const registry = ctx.registry;
  if (registry !== undefined) {
    app.get("/metrics", async (_req, reply) => reply.header("content-type", registry.contentType).send(await registry.metrics()));
  }

  // How the router placed a request: every decision kept for it (a retried or migrated request has several).
  app.get<{ Params: { requestId: string } }>("/v1/routing/:requestId", async (req, reply) => {
    const { requestId } = req.params;
    // The internal id (x-moela-request-id, the logs'): a client's id plus 13, a batch's "<id>.<n>" more.
    if (!/^[A-Za-z0-9._-]{1,192}$/.test(requestId)) throw new InvalidArgumentError("a request id is 1-192 letters, digits and . _ -");
    const decisions = await ctx.backend.routing(requestId);
    if (decisions.length === 0) {
      return reply.code(404).send({
        error: {
          message: `no routing decision is kept for request ${requestId} (unknown, or older than the retention)`,
          type: "invalid_request_error",
          param: null,
          code: "not_found",
        },
      });
    }
    return reply.send({ object: "routing", request_id: requestId, decisions });
  });
}

/** Unknown fields a lenient router ignored: one warning line, and the header on the answer. */
function reportIgnored(fields: readonly string[], reply: FastifyReply, log: Logger): void {
  if (fields.length === 0) return;
  log.warn({ ignoredFields: fields }, "the request has unknown fields; ignored (--strict-api refuses them)");
  // Header values are ASCII without control characters: anything else in a field name becomes "?".
  reply.header(
    IGNORED_FIELDS_HEADER,
    fields
      .map((f) => f.replace(/[^\x20-\x7e]|,/g, "?").slice(0, 128))
      .slice(0, 32)
      .join(", "),
  );
}

interface ChoiceResult {
  text: string;
  tokens: GeneratedToken[];
  finishReason: FinishReason;
  completionTokens: number;
  cachedPromptTokens: number;
}

async function collect(gen: AsyncGenerator<GenerateEvent>): Promise<ChoiceResult> {
  const out: ChoiceResult = { text: "", tokens: [], finishReason: "length", completionTokens: 0, cachedPromptTokens: 0 };
  for await (const ev of gen) {
    out.text += ev.text;
    out.tokens.push(...ev.tokens);
    if (ev.finishReason !== null) {
      out.finishReason = ev.finishReason;
      out.completionTokens = ev.usage?.completionTokens ?? out.tokens.length;
      out.cachedPromptTokens = ev.usage?.cachedPromptTokens ?? 0;
    }
  }
  return out;
}

/**
 * best_of: of each prompt's `c` candidates (prompt i's are [i * c, (i + 1) * c)), the `n` with the highest
 * cumulative logprob (the sum of their tokens' logprobs, vLLM's ranking), best first; ties keep the earlier.
 */
export function bestOfEach<T extends { tokens: readonly GeneratedToken[] }>(candidates: readonly T[], c: number, n: number): T[] {
  const out: T[] = [];
  for (let i = 0; i < candidates.length; i += c) {
    const scored = candidates.slice(i, i + c).map((r, k) => ({ r, k, score: r.tokens.reduce((sum, t) => sum + (t.logprob ?? 0), 0) }));
    scored.sort((a, b) => b.score - a.score || a.k - b.k);
    out.push(...scored.slice(0, n).map((x) => x.r));
  }
  return out;
}

/** An AbortController that follows the client connection and the router's shutdown. */
function requestController(req: FastifyRequest, reply: FastifyReply, shutdown: AbortSignal): AbortController {
  const ctl = new AbortController();
  reply.raw.on("close", () => {
    if (!reply.raw.writableFinished) ctl.abort(new CancelledError("the client disconnected"));
  });
  req.raw.on("aborted", () => ctl.abort(new CancelledError("the client disconnected")));
  const onShutdown = (): void => ctl.abort(shutdown.reason);
  if (shutdown.aborted) onShutdown();
  else shutdown.addEventListener("abort", onShutdown, { once: true });
  ctl.signal.addEventListener("abort", () => shutdown.removeEventListener("abort", onShutdown), { once: true });
  return ctl;
}

/** POST /v1/completions and /v1/chat/completions. */
async function handleGeneration(api: "completions" | "chat", ctx: RouterContext, req: FastifyRequest, reply: FastifyReply): Promise<void> {
  const arrivedAt = performance.now();
  let outcome: Outcome = "ok";
  let release: (() => void) | undefined;
  const ctl = requestController(req, reply, ctx.shutdown);
  const responseId = api === "completions" ? newCompletionId() : newChatCompletionId();
  const clientId = clientRequestId(req);
  const publicId = clientId ?? newRequestId();
  const requestId = clientId === undefined ? publicId : namespacedRequestId(clientId);
  // Every line of this request carries its id, so one grep follows it through router, prefill and decode.
  const log = requestLogger(ctx.logger, requestId, { responseId, api, ...(clientId !== undefined ? { clientRequestId: clientId } : {}) });
  try {
    // On every answer, refusals included: the client's own id, and the one the cluster knows it by.
    reply.header("x-request-id", publicId).header(INTERNAL_ID_HEADER, requestId);
    const plan = api === "completions" ? planCompletionRequest(req.body, ctx.validation) : planChatRequest(req.body, ctx.validation);
    reportIgnored(plan.ignoredFields, reply, log);
    const parsed = await runPlanAsync(plan, ctx.encoder, ctl.signal);
    // Generation g = prompt i * c + k, c candidates per prompt: n (choice g is then OpenAI's and vLLM's
    // numbering), or best_of, whose candidates carry logprobs to be ranked by (fullResponse picks the n best).
    const c = parsed.bestOf;
    const ranked = c > parsed.n;
    const generations = parsed.prompts.length * c;
    release = ctx.admission.admit(generations);
    const requestIds = Array.from({ length: generations }, (_, g) => (g === 0 ? requestId : `${requestId}.${g}`));
    log.info({ requestIds, prompts: parsed.prompts.length, n: parsed.n, bestOf: c, stream: parsed.stream }, "generation request");
    const gens = requestIds.map((rid, g) => {
      const s = choiceSampling(parsed.sampling[Math.floor(g / c)]!, g % c);
      return ctx.backend.generate(
        {
          requestId: rid,
          promptTokenIds: parsed.prompts[Math.floor(g / c)]!.tokenIds,
          sampling: ranked && s.logprobs === null ? { ...s, logprobs: 0 } : s,
          stop: parsed.stop,
          skipSpecialTokens: parsed.skipSpecialTokens,
          ...(parsed.cacheSalt !== undefined ? { cacheSalt: parsed.cacheSalt } : {}),
          arrivedAt,
        },
        ctl.signal,
      );
    });
    if (parsed.stream) await streamGeneration(api, ctx, parsed, gens, responseId, publicId, requestId, reply);
    else await reply.send(await fullResponse(api, ctx, parsed, gens, responseId));
  } catch (err) {
    outcome = outcomeOf(err);
    if (outcome === "error") log.error({ err }, "generation failed");
    else log.info({ outcome, err: errorMessage(err) }, "generation did not complete");
    if (reply.sent || reply.raw.headersSent) {
      // Mid-stream: report in band, then end the stream.
      if (outcome !== "cancelled") await writeRaw(reply.raw, sseData(openAIError(publicError(err, ctx)).body));
      if (!reply.raw.writableEnded) reply.raw.end(SSE_DONE);
    } else {
      throw err;
    }
  } finally {
    ctl.abort(new CancelledError("the request ended"));
    release?.();
    recordRequest(ctx, "openai", outcome, arrivedAt);
  }
}

async function fullResponse(
  api: "completions" | "chat",
  ctx: RouterContext,
  parsed: GenerationRequest,
  gens: AsyncGenerator<GenerateEvent>[],
  id: string,
): Promise<unknown> {
  const candidates = await Promise.all(gens.map(collect));
  const created = createdNow();
  const model = ctx.validation.servedModelName;
  const render = renderTokens(ctx, parsed);
  const n = parsed.n;
  const promptTokens = parsed.prompts.reduce((n, p) => n + p.tokenIds.length, 0);
  // Every candidate's tokens count (best_of's losers were generated too).
  const completionTokens = candidates.reduce((n, r) => n + r.completionTokens, 0);
  const usage = usageOf(
    promptTokens,
    completionTokens,
    candidates.reduce((n, r) => n + r.cachedPromptTokens, 0),
  );
  const results = parsed.bestOf > n ? bestOfEach(candidates, parsed.bestOf, n) : candidates;
  const wantLogprobs = parsed.sampling[0]!.logprobs !== null;
  if (api === "chat") {
    return chatResponse(
      id,
      created,
      model,
      results.map((r, index) => {
        // Tools offered: calls in the output become tool_calls (DeepSeek-V3's format; structured.ts).
        const tools = parsed.parseToolCalls === true ? extractToolCalls(r.text) : null;
        return {
          index,
          message: tools === null ? { role: "assistant", content: r.text } : { role: "assistant", content: tools.content, tool_calls: tools.calls },
          logprobs: wantLogprobs ? { content: chatLogprobEntries(r.tokens, render) } : null,
          finish_reason: tools === null ? r.finishReason : "tool_calls",
        };
      }),
      usage,
    );
  }
  const choices = results.map((r, index) => {
    const prompt = parsed.prompts[Math.floor(index / n)]!;
    let logprobs: CompletionLogprobs | null = null;
    if (wantLogprobs) {
      const builder = new CompletionLogprobsBuilder(render);
      logprobs = concatCompletionLogprobs([...(parsed.echo ? [builder.prompt(prompt.tokenIds)] : []), builder.generated(r.tokens)]);
    }
    return { index, text: (parsed.echo ? prompt.text : "") + r.text, logprobs, finish_reason: r.finishReason };
  });
  return completionResponse(id, created, model, choices, usage);
}

/** The client's x-request-id, when it sent one (InvalidArgumentError when it is malformed). */
function clientRequestId(req: FastifyRequest): string | undefined {
  const v = req.headers["x-request-id"];
  if (v === undefined) return undefined;
  if (typeof v !== "string" || !REQUEST_ID.test(v)) {
    throw new InvalidArgumentError("the x-request-id header must be 1-128 letters, digits and . _ - (one header)");
  }
  return v;
}

function sendError(ctx: RouterContext, reply: FastifyReply, err: unknown): FastifyReply {
  const { status, body } = openAIError(publicError(err, ctx));
  if (status === 401) reply.header("www-authenticate", 'Bearer realm="moela"');
  // Over the admission bound, or nothing to serve it with right now (no decode instance, Redis or an
  // expert shard down, migrations exhausted): the client may come back shortly.
  if (status === 429 || status === 503) reply.header("retry-after", "1");
  return reply.code(status).header("content-type", "application/json; charset=utf-8").send(body);
}
