/**
 * The router's two front doors over one pipeline: the OpenAI-compatible HTTP API (fastify) and the gRPC
 * Generate API. Request validation and response formatting are @moela/openai-api's; this file is glue:
 * parse, admit, run the pipeline per prompt, format, stream, and turn errors into OpenAI error objects
 * (HTTP) or statuses (gRPC).
 *
 * Streaming (SSE) answers only start once the first event of the generation is in, so a request the
 * cluster refuses at once (no decode instance: 503; Redis down: 503) still gets a plain HTTP error. An
 * error after that is sent as one `data: {"error": {...}}` event before `data: [DONE]`, as vLLM does.
 * A client that disconnects cancels its generations (Decode.Cancel frees their KV blocks).
 *
 * Request ids: a client may choose its request's id with an `x-request-id` header (1-128 of
 * A-Z a-z 0-9 . _ -); otherwise the router makes one. Every answer carries it in `x-request-id`; a request
 * with n prompts runs generations `<id>`, `<id>.1`, ..., `<id>.<n-1>`. GET /v1/routing/<id> returns how
 * the router placed each of them (candidates, scores, choice, reason).
 */
import { once } from "node:events";
import type { ServerResponse } from "node:http";
import { CancelledError, Code, InvalidArgumentError, MoelaError, newRequestId, requestLogger, type Logger } from "@moela/core";
import type { MetricsOf } from "@moela/metrics";
import {
  chatChunk,
  chatLogprobEntries,
  chatResponse,
  completionChunk,
  CompletionLogprobsBuilder,
  completionResponse,
  concatCompletionLogprobs,
  createdNow,
  newChatCompletionId,
  newCompletionId,
  openAIError,
  parseChatRequest,
  parseCompletionRequest,
  SSE_DONE,
  sseData,
  tokenRenderer,
  usageOf,
  type CompletionLogprobs,
  type FinishReason,
  type GeneratedToken,
  type GenerationRequest,
  type ModelNotFoundError,
  type TokenText,
  type ValidationContext,
} from "@moela/openai-api";
import {
  FinishReason as WireFinishReason,
  type GenerateRequest,
  type GenerateResponse,
  type GenerateService,
} from "@moela/proto-gen";
import type { AsyncServiceImplementation, CallContext } from "@moela/rpc";
import { MAX_PRIORITY, type AdmissionController, type DecisionLog, type DecodePool } from "@moela/scheduler";
import type { Tokenizer } from "@moela/tokenizer";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type { GenerateEvent, Pipeline } from "./pipeline.js";

export interface RouterContext {
  readonly validation: ValidationContext;
  /** null when the checkpoint has no tokenizer (token-id prompts only). */
  readonly tokenizer: Tokenizer | null;
  readonly pipeline: Pipeline;
  readonly pool: DecodePool;
  readonly admission: AdmissionController;
  /** Routing decisions by request id (GET /v1/routing/:requestId). */
  readonly decisions: DecisionLog;
  readonly metrics: MetricsOf<"router">;
  readonly logger: Logger;
  /** Seconds since the epoch when the router started (the model's `created`). */
  readonly startedAt: number;
  /** Aborts every request in flight when the router's shutdown grace period runs out. */
  readonly shutdown: AbortSignal;
  /** True once the router is shutting down (health answers 503). */
  readonly draining: () => boolean;
}

type Outcome = "ok" | "error" | "cancelled" | "rejected" | "timeout";

function outcomeOf(err: unknown): Outcome {
  if (!(err instanceof MoelaError)) return "error";
  switch (err.code) {
    case Code.CANCELLED:
      return "cancelled";
    case Code.DEADLINE_EXCEEDED:
      return "timeout";
    case Code.INVALID_ARGUMENT:
    case Code.NOT_FOUND:
    case Code.RESOURCE_EXHAUSTED:
      return "rejected";
    default:
      return "error";
  }
}

/** Yields the events of several generations as they come, tagged with their index. */
async function* mergeEvents(gens: AsyncGenerator<GenerateEvent>[]): AsyncGenerator<{ index: number; event: GenerateEvent }> {
  type Step = { index: number; r: IteratorResult<GenerateEvent> };
  const pending = new Map<number, Promise<Step>>();
  const pull = (index: number): void => {
    const p = gens[index]!.next().then((r) => ({ index, r }));
    p.catch(() => {});
    pending.set(index, p);
  };
  gens.forEach((_, i) => pull(i));
  try {
    while (pending.size > 0) {
      const { index, r } = await Promise.race(pending.values());
      if (r.done) {
        pending.delete(index);
        continue;
      }
      pull(index);
      yield { index, event: r.value };
    }
  } finally {
    // The caller aborts the generations' signal; their own cleanup then cancels them on decode.
    for (const g of gens) void g.return(undefined).catch(() => undefined);
  }
}

/** Write to a raw response, waiting for room; resolves false when the client is gone. */
async function writeRaw(raw: ServerResponse, chunk: string): Promise<boolean> {
  if (raw.destroyed || raw.writableEnded) return false;
  if (raw.write(chunk)) return true;
  await Promise.race([once(raw, "drain"), once(raw, "close")]);
  return !raw.destroyed;
}

function sseHeaders(requestId: string): Record<string, string> {
  return {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    connection: "keep-alive",
    "x-request-id": requestId,
  };
}

/** Token strings for logprobs: the tokenizer's text of each id, or token_id:<id> (asked for, or no tokenizer). */
function renderTokens(ctx: RouterContext, parsed: GenerationRequest): TokenText {
  const tokenizer = ctx.tokenizer;
  return tokenRenderer((tid) => tokenizer!.decode([tid]), parsed.returnTokensAsTokenIds || tokenizer === null);
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
  const m = ctx.metrics;
  let outcome: Outcome = "ok";
  let release: (() => void) | undefined;
  const ctl = requestController(req, reply, ctx.shutdown);
  const responseId = api === "completions" ? newCompletionId() : newChatCompletionId();
  const requestId = clientRequestId(req) ?? newRequestId();
  // Every line of this request carries its id, so one grep follows it through router, prefill and decode.
  const log = requestLogger(ctx.logger, requestId, { responseId, api });
  try {
    // On every answer, refusals included, so a client can look the request up.
    reply.header("x-request-id", requestId);
    const parsed = api === "completions" ? parseCompletionRequest(req.body, ctx.validation) : parseChatRequest(req.body, ctx.validation);
    release = ctx.admission.admit(parsed.prompts.length);
    const requestIds = parsed.prompts.map((_, i) => (i === 0 ? requestId : `${requestId}.${i}`));
    log.info({ requestIds, prompts: parsed.prompts.length, stream: parsed.stream }, "generation request");
    const gens = parsed.prompts.map((p, i) =>
      ctx.pipeline.generate(
        {
          requestId: requestIds[i]!,
          promptTokenIds: p.tokenIds,
          sampling: parsed.sampling[i]!,
          stop: parsed.stop,
          skipSpecialTokens: parsed.skipSpecialTokens,
          arrivedAt,
        },
        ctl.signal,
      ),
    );
    if (parsed.stream) await streamGeneration(api, ctx, parsed, gens, responseId, requestIds[0]!, reply);
    else await reply.header("x-request-id", requestIds[0]!).send(await fullResponse(api, ctx, parsed, gens, responseId));
  } catch (err) {
    outcome = outcomeOf(err);
    if (outcome === "error") log.error({ err }, "generation failed");
    else log.info({ outcome, err: err instanceof Error ? err.message : String(err) }, "generation did not complete");
    if (reply.sent || reply.raw.headersSent) {
      // Mid-stream: report in band, then end the stream.
      if (outcome !== "cancelled") await writeRaw(reply.raw, sseData(openAIError(err).body));
      if (!reply.raw.writableEnded) reply.raw.end(SSE_DONE);
    } else {
      throw err;
    }
  } finally {
    ctl.abort(new CancelledError("the request ended"));
    release?.();
    m.routerRequests.inc({ api: "openai", outcome });
    m.routerE2eLatency.observe((performance.now() - arrivedAt) / 1000);
  }
}

async function fullResponse(
  api: "completions" | "chat",
  ctx: RouterContext,
  parsed: GenerationRequest,
  gens: AsyncGenerator<GenerateEvent>[],
  id: string,
): Promise<unknown> {
  const results = await Promise.all(gens.map(collect));
  const created = createdNow();
  const model = ctx.validation.servedModelName;
  const render = renderTokens(ctx, parsed);
  const promptTokens = parsed.prompts.reduce((n, p) => n + p.tokenIds.length, 0);
  const completionTokens = results.reduce((n, r) => n + r.completionTokens, 0);
  const usage = usageOf(promptTokens, completionTokens, results.reduce((n, r) => n + r.cachedPromptTokens, 0));
  const wantLogprobs = parsed.sampling[0]!.logprobs !== null;
  if (api === "chat") {
    const r = results[0]!;
    return chatResponse(
      id,
      created,
      model,
      [
        {
          index: 0,
          message: { role: "assistant", content: r.text },
          logprobs: wantLogprobs ? { content: chatLogprobEntries(r.tokens, render) } : null,
          finish_reason: r.finishReason,
        },
      ],
      usage,
    );
  }
  const choices = results.map((r, index) => {
    const prompt = parsed.prompts[index]!;
    let logprobs: CompletionLogprobs | null = null;
    if (wantLogprobs) {
      const builder = new CompletionLogprobsBuilder(render);
      logprobs = concatCompletionLogprobs([...(parsed.echo ? [builder.prompt(prompt.tokenIds)] : []), builder.generated(r.tokens)]);
    }
    return { index, text: (parsed.echo ? prompt.text : "") + r.text, logprobs, finish_reason: r.finishReason };
  });
  return completionResponse(id, created, model, choices, usage);
}

async function streamGeneration(
  api: "completions" | "chat",
  ctx: RouterContext,
  parsed: GenerationRequest,
  gens: AsyncGenerator<GenerateEvent>[],
  id: string,
  requestId: string,
  reply: FastifyReply,
): Promise<void> {
  const created = createdNow();
  const model = ctx.validation.servedModelName;
  const render = renderTokens(ctx, parsed);
  const wantLogprobs = parsed.sampling[0]!.logprobs !== null;
  const events = mergeEvents(gens);
  // Nothing is written before the first event: an immediate refusal is still a plain HTTP error.
  let next = await events.next();
  reply.hijack();
  const raw = reply.raw;
  raw.writeHead(200, sseHeaders(requestId));
  const promptTokens = parsed.prompts.reduce((n, p) => n + p.tokenIds.length, 0);
  let completionTokens = 0;
  let cachedPromptTokens = 0;
  if (api === "completions") {
    const builders = parsed.prompts.map(() => new CompletionLogprobsBuilder(render));
    if (parsed.echo) {
      for (const [index, p] of parsed.prompts.entries()) {
        const logprobs = wantLogprobs ? builders[index]!.prompt(p.tokenIds) : null;
        await writeRaw(raw, sseData(completionChunk(id, created, model, { index, text: p.text, logprobs, finish_reason: null })));
      }
    }
    for (; !next.done; next = await events.next()) {
      const { index, event } = next.value;
      if (event.usage) completionTokens += event.usage.completionTokens;
      cachedPromptTokens += event.usage?.cachedPromptTokens ?? 0;
      const logprobs = wantLogprobs ? builders[index]!.generated(event.tokens) : null;
      const choice = { index, text: event.text, logprobs, finish_reason: event.finishReason };
      if (!(await writeRaw(raw, sseData(completionChunk(id, created, model, choice))))) return;
    }
    if (parsed.includeUsage) await writeRaw(raw, sseData(completionChunk(id, created, model, null, usageOf(promptTokens, completionTokens, cachedPromptTokens))));
  } else {
    const include = parsed.includeUsage;
    await writeRaw(raw, sseData(chatChunk(id, created, model, { index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }, include)));
    for (; !next.done; next = await events.next()) {
      const { event } = next.value;
      if (event.usage) completionTokens += event.usage.completionTokens;
      cachedPromptTokens += event.usage?.cachedPromptTokens ?? 0;
      if (event.text.length > 0 || (wantLogprobs && event.tokens.length > 0)) {
        const logprobs = wantLogprobs ? { content: chatLogprobEntries(event.tokens, render) } : null;
        const chunk = chatChunk(id, created, model, { index: 0, delta: { content: event.text }, logprobs, finish_reason: null }, include);
        if (!(await writeRaw(raw, sseData(chunk)))) return;
      }
      if (event.finishReason !== null) {
        await writeRaw(raw, sseData(chatChunk(id, created, model, { index: 0, delta: {}, logprobs: null, finish_reason: event.finishReason }, include)));
      }
    }
    if (include) await writeRaw(raw, sseData(chatChunk(id, created, model, null, true, usageOf(promptTokens, completionTokens, cachedPromptTokens))));
  }
  raw.end(SSE_DONE);
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

function sendError(reply: FastifyReply, err: unknown): FastifyReply {
  const { status, body } = openAIError(err);
  // Over the admission bound, or nothing to serve it with right now (no decode instance, Redis or an
  // expert shard down, migrations exhausted): the client may come back shortly.
  if (status === 429 || status === 503) reply.header("retry-after", "1");
  return reply.code(status).header("content-type", "application/json; charset=utf-8").send(body);
}

/** The fastify app: routes, OpenAI-shaped errors for everything (malformed JSON and unknown routes included). */
export function buildHttpApp(ctx: RouterContext): FastifyInstance {
  // Token-id prompts of long contexts are large JSON bodies.
  const app = Fastify({ logger: false, bodyLimit: 64 * 1024 * 1024, return503OnClosing: true });

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, _req, reply) => {
    if (err instanceof MoelaError) return sendError(reply, err);
    // fastify's own 4xx: malformed or empty JSON, wrong content type, body too large.
    const status = err.statusCode;
    if (status !== undefined && status >= 400 && status < 500) {
      const message = err.code === "FST_ERR_CTP_INVALID_JSON_BODY" || err instanceof SyntaxError ? `malformed JSON body: ${err.message}` : err.message;
      return reply.code(status).send({ error: { message, type: "invalid_request_error", param: null, code: null } });
    }
    ctx.logger.error({ err }, "unhandled error in an HTTP handler");
    return sendError(reply, err);
  });
  app.setNotFoundHandler((req, reply) =>
    reply.code(404).send({ error: { message: `no route for ${req.method} ${req.url}`, type: "invalid_request_error", param: null, code: "not_found" } }),
  );

  app.get("/health", async (_req, reply) => {
    const decode = ctx.pool.candidates();
    const healthy = decode.filter((c) => c.healthy).length;
    return reply.code(ctx.draining() ? 503 : 200).send({ status: ctx.draining() ? "draining" : "ok", decode: { healthy, total: decode.length } });
  });

  app.get("/v1/models", async () => ({
    object: "list",
    data: [
      {
        id: ctx.validation.servedModelName,
        object: "model",
        created: ctx.startedAt,
        owned_by: "moela",
        root: ctx.validation.servedModelName,
        parent: null,
        max_model_len: ctx.validation.maxModelLen,
      },
    ],
  }));

  // How the router placed a request: every decision kept for it (a retried or migrated request has several).
  app.get<{ Params: { requestId: string } }>("/v1/routing/:requestId", async (req, reply) => {
    const { requestId } = req.params;
    // Up to 140: a batch's later generations are "<id>.<n>".
    if (!/^[A-Za-z0-9._-]{1,140}$/.test(requestId)) throw new InvalidArgumentError("a request id is letters, digits and . _ -");
    // A migrated request's later attempts run as "<id>.m1", "<id>.m2", ... (pipeline.ts): theirs belong here too.
    const decisions = await ctx.decisions.lookup(requestId);
    for (let n = 1; decisions.length > 0 && n <= 16; n++) {
      const more = await ctx.decisions.lookup(`${requestId}.m${n}`);
      if (more.length === 0) break;
      decisions.push(...more);
    }
    if (decisions.length === 0) {
      return reply.code(404).send({
        error: { message: `no routing decision is kept for request ${requestId} (unknown, or older than the retention)`, type: "invalid_request_error", param: null, code: "not_found" },
      });
    }
    return reply.send({ object: "routing", request_id: requestId, decisions });
  });

  app.post("/v1/completions", (req, reply) => handleGeneration("completions", ctx, req, reply));
  app.post("/v1/chat/completions", (req, reply) => handleGeneration("chat", ctx, req, reply));
  return app;
}

// ---- gRPC Generate ---------------------------------------------------------------------------

/**
 * A GenerateRequest as the equivalent /v1/completions body, so both APIs share one validation (a 0 or
 * unset field means "not given"). Errors come back as INVALID_ARGUMENT, an unknown model included.
 */
function generateRequestBody(req: GenerateRequest): Record<string, unknown> {
  const s = req.sampling;
  const body: Record<string, unknown> = {};
  if (req.model !== "") body.model = req.model;
  if (req.prompt?.$case === "text") body.prompt = req.prompt.value;
  else if (req.prompt?.$case === "tokenIds") body.prompt = req.prompt.value.ids;
  if (s !== undefined) {
    if (s.temperature !== undefined) body.temperature = s.temperature;
    if (s.topP !== undefined) body.top_p = s.topP;
    if (s.topK !== 0) body.top_k = s.topK;
    if (s.seed !== undefined) body.seed = s.seed;
    if (s.maxTokens !== 0) body.max_tokens = s.maxTokens;
    if (s.stop.length > 0) body.stop = s.stop;
    if (s.stopTokenIds.length > 0) body.stop_token_ids = s.stopTokenIds;
    if (s.logprobs !== undefined) body.logprobs = s.logprobs;
    if (s.ignoreEos) body.ignore_eos = true;
  }
  return body;
}

const REQUEST_ID = /^[A-Za-z0-9._-]{1,128}$/;

function wireFinish(f: FinishReason | null): WireFinishReason {
  if (f === "stop") return WireFinishReason.FINISH_REASON_STOP;
  if (f === "length") return WireFinishReason.FINISH_REASON_LENGTH;
  return WireFinishReason.FINISH_REASON_UNSPECIFIED;
}

export function generateService(ctx: RouterContext): AsyncServiceImplementation<typeof GenerateService> {
  return {
    async *generate(req: GenerateRequest, call: CallContext): AsyncGenerator<GenerateResponse> {
      const arrivedAt = performance.now();
      let outcome: Outcome = "ok";
      let release: (() => void) | undefined;
      let log: Logger = ctx.logger.child({ api: "grpc" });
      const signal = AbortSignal.any([call.signal, ctx.shutdown]);
      try {
        if (req.prompt === undefined) throw new InvalidArgumentError("prompt is required (text or token_ids)");
        if (req.requestId !== "" && !REQUEST_ID.test(req.requestId)) {
          throw new InvalidArgumentError("request_id may hold 1-128 letters, digits and . _ - only");
        }
        if (req.priority > MAX_PRIORITY) throw new InvalidArgumentError(`priority must be at most ${MAX_PRIORITY}, got ${req.priority}`);
        let parsed: GenerationRequest;
        try {
          parsed = parseCompletionRequest(generateRequestBody(req), ctx.validation);
        } catch (err) {
          // The proto names an unknown model INVALID_ARGUMENT (HTTP's 404 has no gRPC twin here).
          if (err instanceof MoelaError && err.code === Code.NOT_FOUND) throw new InvalidArgumentError((err as ModelNotFoundError).message);
          throw err;
        }
        release = ctx.admission.admit(1);
        const requestId = req.requestId !== "" ? req.requestId : newRequestId();
        log = requestLogger(ctx.logger, requestId, { api: "grpc" });
        const wantLogprobs = parsed.sampling[0]!.logprobs !== null;
        log.info("generation request");
        const gen = ctx.pipeline.generate(
          {
            requestId,
            promptTokenIds: parsed.prompts[0]!.tokenIds,
            sampling: parsed.sampling[0]!,
            stop: parsed.stop,
            skipSpecialTokens: true,
            priority: req.priority,
            arrivedAt,
          },
          signal,
        );
        for await (const ev of gen) {
          yield {
            requestId,
            tokenIds: ev.tokens.map((t) => t.id),
            text: ev.text,
            logprobs: wantLogprobs
              ? ev.tokens.map((t) => ({ logprob: t.logprob ?? 0, top: (t.top ?? []).map((a) => ({ tokenId: a.id, logprob: a.logprob })) }))
              : [],
            finishReason: wireFinish(ev.finishReason),
            usage: ev.usage ? { promptTokens: ev.usage.promptTokens, completionTokens: ev.usage.completionTokens, cachedPromptTokens: ev.usage.cachedPromptTokens ?? 0, draftTokens: 0, acceptedDraftTokens: 0 } : undefined,
          };
        }
      } catch (err) {
        outcome = outcomeOf(err);
        if (outcome === "error") log.error({ err }, "generation failed");
        else log.info({ outcome, err: err instanceof Error ? err.message : String(err) }, "generation did not complete");
        throw err;
      } finally {
        release?.();
        ctx.metrics.routerRequests.inc({ api: "grpc", outcome });
        ctx.metrics.routerE2eLatency.observe((performance.now() - arrivedAt) / 1000);
      }
    },
  };
}
