/**
 * The gRPC Generate API: a GenerateRequest becomes the equivalent OpenAI request body, so both APIs share
 * one validation; its generations stream back as GenerateResponses, n choices interleaved.
 */
import type { Metadata } from "@grpc/grpc-js";
import { Code, errorMessage, InvalidArgumentError, MoelaError, newRequestId, requestLogger, type Logger } from "@moela/core";
import {
  extractToolCalls,
  ModelNotFoundError,
  planChatRequest,
  planCompletionRequest,
  runPlanAsync,
  type FinishReason,
  type GenerationRequest,
  type ToolCall,
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
import { MAX_PRIORITY } from "@moela/scheduler";
import {
  choiceSampling,
  mergeEvents,
  namespacedRequestId,
  outcomeOf,
  publicError,
  recordRequest,
  REQUEST_ID,
  type Outcome,
  type RouterContext,
} from "./api-common.js";
import type { GenerateEvent } from "./backend.js";

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
    if (s.priorOutputTokens !== undefined && s.priorOutputTokens !== 0)
      throw new InvalidArgumentError("sampling.prior_output_tokens is internal to the cluster; leave it 0");
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
    ...(m.toolCalls.length > 0
      ? { tool_calls: m.toolCalls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } })) }
      : {}),
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

/**
 * A Generate call checked (its API key, a message the lenient decoder marked, the prompt, request id and
 * priority) and validated as the equivalent OpenAI request.
 */
async function parseGenerate(ctx: RouterContext, req: GenerateRequest, call: CallContext, signal: AbortSignal): Promise<GenerationRequest> {
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
  try {
    const plan =
      req.prompt.$case === "messages"
        ? planChatRequest(chatRequestBody(req, req.prompt.value.messages), ctx.validation)
        : planCompletionRequest(generateRequestBody(req), ctx.validation);
    return await runPlanAsync(plan, ctx.encoder, signal);
  } catch (err) {
    // The proto names an unknown model INVALID_ARGUMENT (HTTP's 404 has no gRPC twin here).
    if (err instanceof ModelNotFoundError) throw new InvalidArgumentError(err.message);
    throw err;
  }
}

/** The GenerateResponse of choice `index`'s event `ev`; `calls`: the tool calls its choice ended with. */
function generateResponse(publicId: string, index: number, ev: GenerateEvent, wantLogprobs: boolean, calls: readonly ToolCall[]): GenerateResponse {
  return {
    requestId: publicId,
    index,
    tokenIds: ev.tokens.map((t) => t.id),
    text: ev.text,
    logprobs: wantLogprobs ? ev.tokens.map((t) => ({ logprob: t.logprob ?? 0, top: (t.top ?? []).map((a) => ({ tokenId: a.id, logprob: a.logprob })) })) : [],
    finishReason: wireFinish(ev.finishReason),
    usage: ev.usage
      ? {
          promptTokens: ev.usage.promptTokens,
          completionTokens: ev.usage.completionTokens,
          cachedPromptTokens: ev.usage.cachedPromptTokens ?? 0,
          draftTokens: 0,
          acceptedDraftTokens: 0,
        }
      : undefined,
    toolCalls: calls.map((c) => ({ id: c.id, name: c.function.name, arguments: c.function.arguments })),
  };
}

export function generateService(ctx: RouterContext): AsyncServiceImplementation<typeof LENIENT_GENERATE_SERVICE> {
  return {
    async *generate(req: GenerateRequest, call: CallContext): AsyncGenerator<GenerateResponse> {
      const arrivedAt = performance.now();
      let outcome: Outcome = "ok";
      let release: (() => void) | undefined;
      let log: Logger = ctx.logger.child({ api: "grpc" });
      const signal = AbortSignal.any([call.signal, ctx.shutdown]);
      try {
        const parsed = await parseGenerate(ctx, req, call, signal);
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
          yield generateResponse(publicId, index, ev, wantLogprobs, calls);
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
        recordRequest(ctx, "grpc", outcome, arrivedAt);
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

function bearerOfMetadata(md: Metadata): string | undefined {
  const v = md.get("authorization")[0];
  return typeof v === "string" ? v : undefined;
}
