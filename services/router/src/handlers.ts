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
 * A-Z a-z 0-9 . _ -) or GenerateRequest.request_id; otherwise the router makes one (`req-<uuid>`). Every
 * answer carries the client's own id back (`x-request-id`, GenerateResponse.request_id). Inside the
 * cluster a client-chosen id is namespaced: the request runs as `<client id>-<12 random hex>` (as vLLM
 * makes external ids unique), so two clients that send the same id never touch each other's requests,
 * and an id may be reused as soon as (or before) its request ends. That internal id is the one in every
 * service's logs (it starts with the client's id, so a grep finds it), in HTTP answers' `x-moela-request-id`,
 * and the key of GET /v1/routing/<id>, which returns how the router placed each generation (candidates,
 * scores, choice, reason). A request with n prompts runs generations `<id>`, `<id>.1`, ..., `<id>.<n-1>`.
 *
 * Authentication (with --api-key, as vLLM's): every HTTP route but GET /health needs `Authorization:
 * Bearer <key>`, and Generate the same as gRPC metadata; otherwise 401 / UNAUTHENTICATED. Keys are
 * compared in constant time. /metrics (its own port) and gRPC health stay open.
 *
 * Errors: what a client is told names no internal address, host or instance id (publicError: the
 * router's own wording for its refusals, everything else scrubbed; details go to the log). Bodies deeper
 * than MAX_JSON_DEPTH are refused before parsing, bodies over --max-body-bytes with 413, and prompts are
 * tokenized through the TokenizerPool (long ones off the event loop).
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import type { ServerResponse } from "node:http";
import type { Metadata } from "@grpc/grpc-js";
import { CancelledError, Code, errorForCode, errorMessage, InternalError, InvalidArgumentError, MoelaError, newRequestId, requestLogger, UnauthenticatedError, type Logger } from "@moela/core";
import type { MetricsOf } from "@moela/metrics";
import {
  chatChunk,
  chatLogprobEntries,
  chatResponse,
  extractToolCalls,
  streamableContent,
  completionChunk,
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
  planChatRequest,
  planCompletionRequest,
  RequestValidationError,
  runPlanAsync,
  SSE_DONE,
  sseData,
  tokenRenderer,
  usageOf,
  type CompletionLogprobs,
  type EncodeResult,
  type FinishReason,
  parseDetokenizeRequest,
  parseTokenizeRequest,
  type TokenizeContext,
  type TokenizeResponse,
  type PromptInput,
  type SamplingRequest,
  type Usage,
  type GeneratedToken,
  type AsyncPromptEncoder,
  type GenerationRequest,
  type TokenText,
  type ValidationContext,
} from "@moela/openai-api";
import {
  FinishReason as WireFinishReason,
  GenerateRequest,
  GenerateService,
  type ChatMessage,
  type GenerateResponse,
  type ListModelsRequest,
  type ListModelsResponse,
} from "@moela/proto-gen";
import type { AsyncServiceImplementation, CallContext } from "@moela/rpc";
import { MAX_PRIORITY, type AdmissionController } from "@moela/scheduler";
import type { Tokenizer } from "@moela/tokenizer";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type { GenerateEvent, GenerationBackend } from "./backend.js";

export interface RouterContext {
  readonly validation: ValidationContext;
  /** null when the checkpoint has no tokenizer (token-id prompts only). */
  readonly tokenizer: Tokenizer | null;
  /** Runs the requests' tokenizer operations (the TokenizerPool: long prompts off the event loop). */
  readonly encoder: AsyncPromptEncoder;
  /** The API keys clients must present; null: no authentication. */
  readonly apiKeys: ApiKeys | null;
  /** Largest HTTP body (fastify's bodyLimit). */
  readonly maxBodyBytes: number;
  /** Addresses, hosts and instance ids of the cluster right now: scrubbed from what clients are told. */
  readonly internalNames: () => Iterable<string>;
  /** What runs the generations: the cluster (pipeline.ts) or this process's engine (engine-backend.ts). */
  readonly backend: GenerationBackend;
  readonly admission: AdmissionController;
  readonly metrics: MetricsOf<"router">;
  readonly logger: Logger;
  /** Seconds since the epoch when the router started (the model's `created`). */
  readonly startedAt: number;
  /** Aborts every request in flight when the router's shutdown grace period runs out. */
  readonly shutdown: AbortSignal;
  /** True once the router is shutting down (health answers 503). */
  readonly draining: () => boolean;
  /** The router's metrics registry, served at GET /metrics on the API port too; absent: no such route. */
  readonly registry?: { metrics(): Promise<string>; readonly contentType: string };
}

/** The platform's version (the repository's package.json, as `moela --version`), for GET /version. */
export const MOELA_VERSION: string = (() => {
  const pkg = JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version?: unknown };
  return typeof pkg.version === "string" ? pkg.version : "unknown";
})();

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
    case Code.UNAUTHENTICATED:
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

/** The response header naming the unknown request fields that were ignored (comma-separated paths). */
export const IGNORED_FIELDS_HEADER = "x-moela-ignored-fields";

/** Unknown fields a lenient router ignored: one warning line, and the header on the answer. */
function reportIgnored(fields: readonly string[], reply: FastifyReply, log: Logger): void {
  if (fields.length === 0) return;
  log.warn({ ignoredFields: fields }, "the request has unknown fields; ignored (--strict-api refuses them)");
  // Header values are ASCII without control characters: anything else in a field name becomes "?".
  reply.header(IGNORED_FIELDS_HEADER, fields.map((f) => f.replace(/[^\x20-\x7e]|,/g, "?").slice(0, 128)).slice(0, 32).join(", "));
}

/**
 * Choice k of a prompt: the prompt's sampling, with seed + k for k > 0 when the client chose a seed (so
 * n seeded choices differ from each other and are each reproducible); without a seed the pipeline picks
 * one per generation.
 */
function choiceSampling(s: SamplingRequest, k: number): SamplingRequest {
  if (k === 0 || s.seed === undefined) return s;
  // seed + k modulo 2^53, without forming seed + k past 2^53 (where doubles skip odd numbers: two choices
  // would share a seed).
  const room = Number.MAX_SAFE_INTEGER - s.seed;
  return { ...s, seed: k <= room ? s.seed + k : k - room - 1 };
}

/** Write to a raw response, waiting for room; resolves false when the client is gone. */
async function writeRaw(raw: ServerResponse, chunk: string): Promise<boolean> {
  if (raw.destroyed || raw.writableEnded) return false;
  if (raw.write(chunk)) return true;
  await Promise.race([once(raw, "drain"), once(raw, "close")]);
  return !raw.destroyed;
}

function sseHeaders(publicId: string, requestId: string): Record<string, string> {
  return {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    connection: "keep-alive",
    "x-request-id": publicId,
    [INTERNAL_ID_HEADER]: requestId,
  };
}

/**
 * Token strings for logprobs: the tokenizer's text of each id ("" for an id it has no token for: a padded
 * vocabulary slot), or token_id:<id> (asked for, or no tokenizer).
 */
function renderTokens(ctx: RouterContext, parsed: GenerationRequest): TokenText {
  const tokenizer = ctx.tokenizer;
  return tokenRenderer((tid) => (tokenizer!.idToToken(tid) === undefined ? "" : tokenizer!.decode([tid])), parsed.returnTokensAsTokenIds || tokenizer === null);
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
  const m = ctx.metrics;
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
    const model = ctx.validation.servedModelName;
    m.routerRequests.inc({ model, api: "openai", outcome });
    m.routerE2eLatency.observe({ model }, (performance.now() - arrivedAt) / 1000);
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
  const usage = usageOf(promptTokens, completionTokens, candidates.reduce((n, r) => n + r.cachedPromptTokens, 0));
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

async function streamGeneration(
  api: "completions" | "chat",
  ctx: RouterContext,
  parsed: GenerationRequest,
  gens: AsyncGenerator<GenerateEvent>[],
  id: string,
  publicId: string,
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
  const ignored = reply.getHeader(IGNORED_FIELDS_HEADER);
  raw.writeHead(200, { ...sseHeaders(publicId, requestId), ...(typeof ignored === "string" ? { [IGNORED_FIELDS_HEADER]: ignored } : {}) });
  const promptTokens = parsed.prompts.reduce((n, p) => n + p.tokenIds.length, 0);
  let completionTokens = 0;
  let cachedPromptTokens = 0;
  const n = parsed.n;
  const choices = gens.length;
  const promptOf = (g: number): PromptInput => parsed.prompts[Math.floor(g / n)]!;
  // stream_options.continuous_usage_stats: each chunk carries its choice's usage so far (as vLLM counts it).
  const sent = new Array<number>(choices).fill(0);
  const usageSoFar = (g: number): Usage | null => (parsed.continuousUsage ? usageOf(promptOf(g).tokenIds.length, sent[g]!) : null);
  if (api === "completions") {
    const builders = gens.map(() => new CompletionLogprobsBuilder(render));
    if (parsed.echo) {
      for (let index = 0; index < choices; index++) {
        const p = promptOf(index);
        const logprobs = wantLogprobs ? builders[index]!.prompt(p.tokenIds) : null;
        await writeRaw(raw, sseData(completionChunk(id, created, model, { index, text: p.text, logprobs, finish_reason: null }, usageSoFar(index))));
      }
    }
    for (; !next.done; next = await events.next()) {
      const { index, event } = next.value;
      if (event.usage) completionTokens += event.usage.completionTokens;
      cachedPromptTokens += event.usage?.cachedPromptTokens ?? 0;
      sent[index] = event.usage?.completionTokens ?? sent[index]! + event.tokens.length;
      const logprobs = wantLogprobs ? builders[index]!.generated(event.tokens) : null;
      const choice = { index, text: event.text, logprobs, finish_reason: event.finishReason };
      if (!(await writeRaw(raw, sseData(completionChunk(id, created, model, choice, usageSoFar(index)))))) return;
    }
    if (parsed.includeUsage) await writeRaw(raw, sseData(completionChunk(id, created, model, null, usageOf(promptTokens, completionTokens, cachedPromptTokens))));
  } else {
    const include = parsed.includeUsage;
    for (let index = 0; index < choices; index++) {
      const role = { index, delta: { role: "assistant" as const, content: "" }, logprobs: null, finish_reason: null };
      await writeRaw(raw, sseData(chatChunk(id, created, model, role, include, usageSoFar(index))));
    }
    // Tools offered: text that may be (the start of) a tool call is held back until the choice ends, then its
    // calls go out whole in one delta.tool_calls chunk (structured.ts).
    const toolText = parsed.parseToolCalls === true ? new Array<string>(choices).fill("") : null;
    const toolSent = new Array<number>(choices).fill(0);
    for (; !next.done; next = await events.next()) {
      const { index, event } = next.value;
      if (event.usage) completionTokens += event.usage.completionTokens;
      cachedPromptTokens += event.usage?.cachedPromptTokens ?? 0;
      sent[index] = event.usage?.completionTokens ?? sent[index]! + event.tokens.length;
      let text = event.text;
      if (toolText !== null) {
        const all = (toolText[index] += event.text);
        const upTo = event.finishReason !== null && extractToolCalls(all) === null ? all.length : streamableContent(all);
        text = all.slice(toolSent[index], Math.max(upTo, toolSent[index]!));
        toolSent[index] = Math.max(upTo, toolSent[index]!);
      }
      if (text.length > 0 || (wantLogprobs && event.tokens.length > 0)) {
        const logprobs = wantLogprobs ? { content: chatLogprobEntries(event.tokens, render) } : null;
        const chunk = chatChunk(id, created, model, { index, delta: { content: text }, logprobs, finish_reason: null }, include, usageSoFar(index));
        if (!(await writeRaw(raw, sseData(chunk)))) return;
      }
      if (event.finishReason !== null) {
        const calls = toolText === null ? null : extractToolCalls(toolText[index]!);
        if (calls !== null) {
          const delta = { tool_calls: calls.calls.map((c, i) => ({ index: i, ...c })) };
          if (!(await writeRaw(raw, sseData(chatChunk(id, created, model, { index, delta, logprobs: null, finish_reason: null }, include, usageSoFar(index)))))) return;
        }
        const finish = calls === null ? event.finishReason : "tool_calls";
        await writeRaw(raw, sseData(chatChunk(id, created, model, { index, delta: {}, logprobs: null, finish_reason: finish }, include, usageSoFar(index))));
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

function sendError(ctx: RouterContext, reply: FastifyReply, err: unknown): FastifyReply {
  const { status, body } = openAIError(publicError(err, ctx));
  if (status === 401) reply.header("www-authenticate", 'Bearer realm="moela"');
  // Over the admission bound, or nothing to serve it with right now (no decode instance, Redis or an
  // expert shard down, migrations exhausted): the client may come back shortly.
  if (status === 429 || status === 503) reply.header("retry-after", "1");
  return reply.code(status).header("content-type", "application/json; charset=utf-8").send(body);
}

/** The fastify app: routes, OpenAI-shaped errors for everything (malformed JSON and unknown routes included). */
export function buildHttpApp(ctx: RouterContext): FastifyInstance {
  // bodyLimit: token-id prompts of long contexts are large JSON bodies; --max-body-bytes bounds them.
  const app = Fastify({ logger: false, bodyLimit: ctx.maxBodyBytes, return503OnClosing: true });

  // JSON as fastify parses it (prototype poisoning refused), after a linear check of the nesting depth:
  // JSON.parse recurses, and a body of a million "[" would otherwise end in a stack overflow (a 500).
  const parseJson = app.getDefaultJsonParser("error", "error");
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "string" }, (req, body, done) => {
    if (typeof body === "string" && jsonDepthExceeds(body, MAX_JSON_DEPTH)) {
      done(new RequestValidationError(`the JSON body nests arrays and objects deeper than ${MAX_JSON_DEPTH} levels`, "body"), undefined);
      return;
    }
    parseJson(req, body as string, done);
  });

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
    if (s.presencePenalty !== undefined) body.presence_penalty = s.presencePenalty;
    if (s.frequencyPenalty !== undefined) body.frequency_penalty = s.frequencyPenalty;
    if (s.repetitionPenalty !== undefined) body.repetition_penalty = s.repetitionPenalty;
    if (s.logitBias !== undefined) {
      const bias: Record<string, number> = {};
      for (const b of s.logitBias.entries) {
        if (Object.hasOwn(bias, String(b.tokenId))) throw new InvalidArgumentError(`sampling.logit_bias names token ${b.tokenId} twice`);
        bias[String(b.tokenId)] = b.bias;
      }
      body.logit_bias = bias;
    }
    if (s.minP !== undefined) body.min_p = s.minP;
    if (s.minTokens !== undefined) body.min_tokens = s.minTokens;
    if (s.n !== undefined && s.n !== 0) body.n = s.n;
    // prior_output_tokens is the cluster's own (migrations); a client cannot set it.
    if (s.priorOutputTokens !== undefined && s.priorOutputTokens !== 0) throw new InvalidArgumentError("sampling.prior_output_tokens is internal to the cluster; leave it 0");
  }
  if (req.cacheSalt !== "") body.cache_salt = req.cacheSalt;
  setJsonField(body, "response_format", req.responseFormat);
  if (req.prompt?.$case !== "messages" && ((req.tools ?? "") !== "" || (req.toolChoice ?? "") !== "")) {
    throw new InvalidArgumentError("tools and tool_choice need a chat prompt (messages)");
  }
  return body;
}

/** body[name] = a GenerateRequest field that carries JSON text, parsed; nothing when unset or empty. */
function setJsonField(body: Record<string, unknown>, name: string, text: string | undefined): void {
  if (text === undefined || text === "") return;
  try {
    body[name] = JSON.parse(text) as unknown;
  } catch (err) {
    throw new InvalidArgumentError(`${name} is not JSON: ${errorMessage(err)}`, { cause: err });
  }
}

/**
 * A GenerateRequest whose prompt is chat messages, as the equivalent /v1/chat/completions body: the
 * completions body with `messages` for `prompt`, and logprobs N as chat's `logprobs: true, top_logprobs: N`.
 */
function chatRequestBody(req: GenerateRequest, messages: readonly ChatMessage[]): Record<string, unknown> {
  const body = generateRequestBody(req);
  body.messages = messages.map((m) => ({
    role: m.role,
    // DeepSeek-V3's template renders an assistant turn's tool calls only when its content is none.
    content: m.toolCalls.length > 0 && m.content === "" ? null : m.content,
    ...(m.toolCalls.length > 0 ? { tool_calls: m.toolCalls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } })) } : {}),
    ...(m.toolCallId !== "" ? { tool_call_id: m.toolCallId } : {}),
  }));
  setJsonField(body, "tools", req.tools);
  setJsonField(body, "tool_choice", req.toolChoice);
  if (typeof body.logprobs === "number") {
    body.top_logprobs = body.logprobs;
    body.logprobs = true;
  }
  return body;
}

const REQUEST_ID = /^[A-Za-z0-9._-]{1,128}$/;

function wireFinish(f: FinishReason | null): WireFinishReason {
  if (f === "stop") return WireFinishReason.FINISH_REASON_STOP;
  if (f === "length") return WireFinishReason.FINISH_REASON_LENGTH;
  return WireFinishReason.FINISH_REASON_UNSPECIFIED;
}

/**
 * GenerateService with a lenient request decoder: a message that does not decode (a seed past 2^53, the
 * one 64-bit field, which TypeScript holds as a number) reaches the handler marked, to be answered
 * INVALID_ARGUMENT naming the field, instead of grpc-js's bare INTERNAL "Error deserializing request".
 */
export const LENIENT_GENERATE_SERVICE = {
  generate: {
    ...GenerateService.generate,
    requestDeserialize: (bytes: Buffer): GenerateRequest => {
      try {
        return GenerateService.generate.requestDeserialize(bytes);
      } catch (err) {
        return Object.assign(GenerateRequest.fromPartial({}), { [UNDECODABLE]: errorMessage(err) });
      }
    },
  },
  listModels: GenerateService.listModels,
} as const;

const UNDECODABLE = Symbol("undecodable");

export function generateService(ctx: RouterContext): AsyncServiceImplementation<typeof LENIENT_GENERATE_SERVICE> {
  return {
    async *generate(req: GenerateRequest, call: CallContext): AsyncGenerator<GenerateResponse> {
      const arrivedAt = performance.now();
      let outcome: Outcome = "ok";
      let release: (() => void) | undefined;
      let log: Logger = ctx.logger.child({ api: "grpc" });
      const signal = AbortSignal.any([call.signal, ctx.shutdown]);
      try {
        ctx.apiKeys?.authenticate(bearerOfMetadata(call.metadata));
        const undecodable = (req as GenerateRequest & { [UNDECODABLE]?: string })[UNDECODABLE];
        if (undecodable !== undefined) {
          throw new InvalidArgumentError(`the request does not decode (${undecodable}): sampling.seed, its one 64-bit field, must be at most 2^53 - 1`);
        }
        if (req.prompt === undefined) throw new InvalidArgumentError("prompt is required (text, token_ids or messages)");
        if (req.requestId !== "" && !REQUEST_ID.test(req.requestId)) {
          throw new InvalidArgumentError("request_id may hold 1-128 letters, digits and . _ - only");
        }
        if (req.priority > MAX_PRIORITY) throw new InvalidArgumentError(`priority must be at most ${MAX_PRIORITY}, got ${req.priority}`);
        let parsed: GenerationRequest;
        try {
          const plan =
            req.prompt.$case === "messages"
              ? planChatRequest(chatRequestBody(req, req.prompt.value.messages), ctx.validation)
              : planCompletionRequest(generateRequestBody(req), ctx.validation);
          parsed = await runPlanAsync(plan, ctx.encoder, signal);
        } catch (err) {
          // The proto names an unknown model INVALID_ARGUMENT (HTTP's 404 has no gRPC twin here).
          if (err instanceof ModelNotFoundError) throw new InvalidArgumentError(err.message);
          throw err;
        }
        const n = parsed.n;
        release = ctx.admission.admit(n);
        const publicId = req.requestId !== "" ? req.requestId : newRequestId();
        const requestId = req.requestId !== "" ? namespacedRequestId(req.requestId) : publicId;
        log = requestLogger(ctx.logger, requestId, { api: "grpc", ...(req.requestId !== "" ? { clientRequestId: req.requestId } : {}) });
        const wantLogprobs = parsed.sampling[0]!.logprobs !== null;
        log.info("generation request");
        // n choices: generations <id>, <id>.1, ..., their messages interleaved, each with its index.
        const gens = Array.from({ length: n }, (_, k) =>
          ctx.backend.generate(
            {
              requestId: k === 0 ? requestId : `${requestId}.${k}`,
              promptTokenIds: parsed.prompts[0]!.tokenIds,
              sampling: choiceSampling(parsed.sampling[0]!, k),
              stop: parsed.stop,
              skipSpecialTokens: true,
              priority: req.priority,
              ...(parsed.cacheSalt !== undefined ? { cacheSalt: parsed.cacheSalt } : {}),
              arrivedAt,
            },
            signal,
          ),
        );
        // Tools offered: each choice's whole text is parsed for calls when it ends (the text goes out as written).
        const texts = parsed.parseToolCalls === true ? new Array<string>(n).fill("") : null;
        for await (const { index, event: ev } of mergeEvents(gens)) {
          if (texts !== null) texts[index] += ev.text;
          const calls = texts !== null && ev.finishReason !== null ? (extractToolCalls(texts[index]!)?.calls ?? []) : [];
          yield {
            requestId: publicId,
            index,
            tokenIds: ev.tokens.map((t) => t.id),
            text: ev.text,
            logprobs: wantLogprobs
              ? ev.tokens.map((t) => ({ logprob: t.logprob ?? 0, top: (t.top ?? []).map((a) => ({ tokenId: a.id, logprob: a.logprob })) }))
              : [],
            finishReason: wireFinish(ev.finishReason),
            usage: ev.usage ? { promptTokens: ev.usage.promptTokens, completionTokens: ev.usage.completionTokens, cachedPromptTokens: ev.usage.cachedPromptTokens ?? 0, draftTokens: 0, acceptedDraftTokens: 0 } : undefined,
            toolCalls: calls.map((c) => ({ id: c.id, name: c.function.name, arguments: c.function.arguments })),
          };
        }
      } catch (err) {
        outcome = outcomeOf(err);
        if (outcome === "error") log.error({ err }, "generation failed");
        // A refused key is not logged per call (HTTP's 401s are not either): a flood of them would flood the log.
        else if (!(err instanceof MoelaError && err.code === Code.UNAUTHENTICATED)) {
          log.info({ outcome, err: errorMessage(err) }, "generation did not complete");
        }
        throw publicError(err, ctx);
      } finally {
        release?.();
        const model = ctx.validation.servedModelName;
        ctx.metrics.routerRequests.inc({ model, api: "grpc", outcome });
        ctx.metrics.routerE2eLatency.observe({ model }, (performance.now() - arrivedAt) / 1000);
      }
    },

    /** GET /v1/models over gRPC: the served model (behind the same API key as Generate). */
    async listModels(_req: ListModelsRequest, call: CallContext): Promise<ListModelsResponse> {
      ctx.apiKeys?.authenticate(bearerOfMetadata(call.metadata));
      const id = ctx.validation.servedModelName;
      return { models: [{ id, created: ctx.startedAt, ownedBy: "moela", maxModelLen: ctx.validation.maxModelLen }] };
    },
  };
}

// ---- request ids, API keys, what clients are told ---------------------------------------------

/** The response header with the id the cluster knows a request by (logs, GET /v1/routing/<id>). */
export const INTERNAL_ID_HEADER = "x-moela-request-id";

/**
 * The id a request with a client-chosen id runs under: `<client id>-<12 random hex>`. Unique whatever
 * the clients choose (48 random bits per request), still found by grepping for the client's id.
 */
export function namespacedRequestId(clientId: string): string {
  return `${clientId}-${randomBytes(6).toString("hex")}`;
}

/** The token of an `Authorization: Bearer <token>` value (scheme case-insensitive), else undefined. */
export function bearerToken(authorization: string | undefined): string | undefined {
  if (authorization === undefined) return undefined;
  const m = /^\s*Bearer\s+(\S+)\s*$/i.exec(authorization);
  return m === null ? undefined : m[1];
}

function bearerOfMetadata(md: Metadata): string | undefined {
  const v = md.get("authorization")[0];
  return typeof v === "string" ? v : undefined;
}

/** The router's API keys (--api-key): checked in constant time, never logged. */
export class ApiKeys {
  private readonly digests: readonly Buffer[];

  constructor(keys: readonly string[]) {
    if (keys.length === 0) throw new InvalidArgumentError("ApiKeys needs at least one key");
    this.digests = keys.map(digest);
  }

  /**
   * Throws UNAUTHENTICATED unless `authorization` (the header or metadata value) is `Bearer <a key>`.
   * Every key is compared, each in constant time, so the time taken says nothing about any key.
   */
  authenticate(authorization: string | undefined): void {
    const token = bearerToken(authorization);
    if (token === undefined) {
      throw new UnauthenticatedError(
        authorization === undefined
          ? "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
          : "The Authorization value must be 'Bearer <key>'.",
      );
    }
    const d = digest(token);
    let ok = false;
    for (const k of this.digests) ok = timingSafeEqual(d, k) || ok;
    if (!ok) throw new UnauthenticatedError("Incorrect API key provided.");
  }
}

function digest(key: string): Buffer {
  return createHash("sha256").update(key, "utf8").digest();
}

const INTERNAL = "<internal>";
/** Shapes of internal names in messages: URLs, [IPv6]:port, IPv4[:port], host:port, registry instance ids. */
const INTERNAL_PATTERNS: readonly RegExp[] = [
  /\b[a-z][a-z0-9+.-]*:\/\/[^\s"'<>()]+/gi,
  /\[[0-9A-Fa-f:.]+\](?::\d{1,5})?/g,
  /\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b/g,
  /\b[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*:\d{1,5}\b/g,
  /\b(?:router|prefill|decode|expert-host)-[A-Za-z0-9.-]+-\d+-[0-9a-f]{6}\b/g,
];

/** `message` with every internal address, host and instance id replaced by "<internal>". */
export function redactInternal(message: string, names: Iterable<string>): string {
  // URLs whole first (credentials, host and path go together), then the names the router knows (longest
  // first, so an address goes whole before its host alone), then whatever else looks like an address.
  let out = message.replace(INTERNAL_PATTERNS[0]!, INTERNAL);
  const known = [...new Set(names)].filter((n) => n.length >= 3).sort((a, b) => b.length - a.length);
  for (const n of known) out = out.split(n).join(INTERNAL);
  for (const re of INTERNAL_PATTERNS.slice(1)) out = out.replace(re, INTERNAL);
  return out;
}

/**
 * What a client may be told of `err`. The router's own refusals (validation, unknown model) are built from
 * the client's input and our limits: as they are. A server-side failure's details stay in the log: its
 * message is scrubbed of internal names (INTERNAL, UNKNOWN and DATA_LOSS say only "internal error"). Not
 * a MoelaError: left to the edges' "internal error".
 */
export function publicError(err: unknown, ctx: Pick<RouterContext, "internalNames">): unknown {
  if (!(err instanceof MoelaError) || err instanceof RequestValidationError || err instanceof ModelNotFoundError) return err;
  if (err.code === Code.INTERNAL || err.code === Code.UNKNOWN || err.code === Code.DATA_LOSS) return errorForCode(err.code, "internal error");
  const message = redactInternal(err.message, ctx.internalNames());
  return message === err.message ? err : errorForCode(err.code, message);
}
