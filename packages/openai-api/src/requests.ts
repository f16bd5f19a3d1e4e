/**
 * Validation of /v1/completions and /v1/chat/completions request bodies into one normalised request.
 *
 * Decisions (where OpenAI and vLLM differ, or leave room):
 * - Unknown fields are a 400 naming them (vLLM's strict mode); the harmless OpenAI fields (user, metadata,
 *   store, service_tier, parallel_tool_calls, ...) are accepted and ignored; fields that would change the
 *   output and that this server does not implement are accepted only at their no-op value (n = 1,
 *   best_of = 1, frequency/presence_penalty = 0, logit_bias empty, suffix null, ...), else 400.
 * - temperature in [0, 2], OpenAI's range (vLLM accepts any value >= 0); top_p in (0, 1]; top_k an integer,
 *   -1 or 0 meaning off; seed an integer in [0, 2^53 - 1] (the wire carries it as uint64 and TypeScript
 *   peers hold it as a number).
 * - max_tokens (completions) defaults to 16 as in OpenAI and vLLM; in chat it defaults to the rest of the
 *   context (max_model_len minus the prompt). It must be an integer >= 1, and prompt + max_tokens must fit
 *   max_model_len (400 "context_length_exceeded" otherwise).
 * - A token-id prompt is used exactly as given (no BOS); a string prompt gets BOS as tokenizer_config says;
 *   chat goes through the chat template (which writes its own BOS). An empty prompt (""/[]) is a 400.
 * - A list of prompts is a batch: one choice per prompt, `index` in list order (at most MAX_BATCH_PROMPTS).
 * - logprobs (completions): null or an integer 0..20. Chat: logprobs boolean, top_logprobs 0..20 and only
 *   with logprobs true.
 * - stop: a string or a list of non-empty strings (at most MAX_STOP_STRINGS); matched on detokenized text.
 * - stream_options only with stream = true (as vLLM); include_usage adds a final usage chunk.
 * - A checkpoint without a tokenizer (encoder null) takes token-id prompts only: text prompts, chat and stop
 *   strings are 400s, echoed prompt text is "".
 */
import { ModelNotFoundError, RequestValidationError } from "./errors.js";

/** Most top logprobs per token (OpenAI's limit; vLLM's default max_logprobs). */
export const MAX_LOGPROBS = 20;
/** Most prompts in one batched /v1/completions request. */
export const MAX_BATCH_PROMPTS = 64;
/** Most stop strings per request. */
export const MAX_STOP_STRINGS = 64;
/** OpenAI's upper bound on temperature. */
export const MAX_TEMPERATURE = 2;
/** max_tokens when a completions request does not say (OpenAI's and vLLM's default). */
export const DEFAULT_COMPLETION_MAX_TOKENS = 16;

/** What validation needs from the tokenizer (Tokenizer satisfies it). */
export interface PromptEncoder {
  /** Text to ids, BOS added per tokenizer_config. */
  encode(text: string): number[];
  /** Chat messages through the chat template, tokenized without adding special tokens again. */
  encodeChat(
    messages: readonly { role: string; content: string | null; [extra: string]: unknown }[],
    options?: { addGenerationPrompt?: boolean; templateVariables?: Record<string, unknown> },
  ): number[];
  /** Ids to text (for echoing a token-id prompt). */
  decode(ids: readonly number[]): string;
}

export interface ModelLimits {
  /** The name clients must use (or omit). */
  readonly servedModelName: string;
  /** Largest prompt + generated tokens. */
  readonly maxModelLen: number;
  /** The model's vocabulary size (config.json vocab_size): token ids must be below it. */
  readonly vocabSize: number;
}

/** Sampling defaults for fields a request leaves out (generation_config.json, as vLLM reads it). */
export interface SamplingDefaults {
  readonly temperature: number;
  readonly topP: number;
  readonly topK: number;
}

export interface ValidationContext extends ModelLimits {
  /** null for a checkpoint without a tokenizer: token-id prompts only, no chat, no stop strings. */
  readonly encoder: PromptEncoder | null;
  readonly defaults: SamplingDefaults;
}

export interface SamplingRequest {
  readonly temperature: number;
  readonly topP: number;
  /** -1 = off. */
  readonly topK: number;
  /** undefined = the router picks one. */
  readonly seed: number | undefined;
  readonly maxTokens: number;
  readonly stopTokenIds: readonly number[];
  readonly ignoreEos: boolean;
  /** null = none; N = the sampled token's logprob and N alternatives. */
  readonly logprobs: number | null;
}

export interface PromptInput {
  /** The ids the model sees. */
  readonly tokenIds: readonly number[];
  /** The prompt's text, for echo. */
  readonly text: string;
}

export interface GenerationRequest {
  readonly api: "completions" | "chat";
  readonly prompts: readonly PromptInput[];
  /** Sampling per prompt (max_tokens may differ per prompt in chat's default). */
  readonly sampling: readonly SamplingRequest[];
  readonly stop: readonly string[];
  readonly stream: boolean;
  readonly includeUsage: boolean;
  readonly echo: boolean;
  readonly returnTokensAsTokenIds: boolean;
  readonly skipSpecialTokens: boolean;
}

type Body = Record<string, unknown>;

function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  return typeof v;
}

function show(v: unknown): string {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 40 ? `${s.slice(0, 40)}...` : s;
}

function fail(param: string, message: string, code: string | null = null): never {
  throw new RequestValidationError(message, param, code);
}

/** Reads one field of the body; absent and null both mean "not given". */
class Fields {
  constructor(private readonly body: Body) {}

  has(name: string): boolean {
    return this.body[name] !== undefined && this.body[name] !== null;
  }

  raw(name: string): unknown {
    return this.body[name] ?? undefined;
  }

  number(name: string, range: { int?: boolean; min?: number; max?: number; gtMin?: boolean }): number | undefined {
    const v = this.raw(name);
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isFinite(v)) fail(name, `${name} must be a number, got ${show(v)}`);
    if (range.int && !Number.isSafeInteger(v)) fail(name, `${name} must be an integer, got ${show(v)}`);
    const lo = range.min;
    const hi = range.max;
    const belowMin = lo !== undefined && (range.gtMin ? v <= lo : v < lo);
    if (belowMin || (hi !== undefined && v > hi)) {
      const left = lo === undefined ? "(-inf" : `${range.gtMin ? "(" : "["}${lo}`;
      const right = hi === undefined ? "inf)" : `${hi}]`;
      fail(name, `${name} must be in ${left}, ${right}, got ${v}`);
    }
    return v;
  }

  boolean(name: string): boolean | undefined {
    const v = this.raw(name);
    if (v === undefined) return undefined;
    if (typeof v !== "boolean") fail(name, `${name} must be a boolean, got ${show(v)}`);
    return v;
  }

  string(name: string): string | undefined {
    const v = this.raw(name);
    if (v === undefined) return undefined;
    if (typeof v !== "string") fail(name, `${name} must be a string, got ${typeName(v)}`);
    return v;
  }

  object(name: string): Body | undefined {
    const v = this.raw(name);
    if (v === undefined) return undefined;
    if (typeof v !== "object" || Array.isArray(v)) fail(name, `${name} must be an object, got ${typeName(v)}`);
    return v as Body;
  }

  /** A field accepted only at its no-op value(s). */
  onlyNoOp(name: string, isNoOp: (v: unknown) => boolean, what: string): void {
    const v = this.raw(name);
    if (v !== undefined && !isNoOp(v)) fail(name, `${name} is not supported by this server (${what}), got ${show(v)}`);
  }
}

/** Fields both endpoints share. */
const COMMON_FIELDS = [
  "model",
  "max_tokens",
  "temperature",
  "top_p",
  "top_k",
  "seed",
  "stop",
  "stream",
  "stream_options",
  "n",
  "user",
  "frequency_penalty",
  "presence_penalty",
  "repetition_penalty",
  "min_p",
  "min_tokens",
  "logit_bias",
  "ignore_eos",
  "stop_token_ids",
  "skip_special_tokens",
  "return_tokens_as_token_ids",
  "metadata",
  "store",
  "service_tier",
  "logprobs",
] as const;

const COMPLETION_FIELDS = new Set<string>([...COMMON_FIELDS, "prompt", "echo", "best_of", "suffix"]);
const CHAT_FIELDS = new Set<string>([
  ...COMMON_FIELDS,
  "messages",
  "max_completion_tokens",
  "top_logprobs",
  "response_format",
  "tools",
  "tool_choice",
  "parallel_tool_calls",
  "add_generation_prompt",
  "chat_template_kwargs",
]);

function asBody(body: unknown): Body {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    fail("body", `the request body must be a JSON object, got ${typeName(body)}`);
  }
  return body as Body;
}

function rejectUnknown(body: Body, allowed: ReadonlySet<string>): void {
  const unknown = Object.keys(body).filter((k) => !allowed.has(k));
  if (unknown.length > 0) {
    fail(unknown[0]!, `unknown field${unknown.length > 1 ? "s" : ""}: ${unknown.join(", ")}`);
  }
}

/** 404 unless `model` is absent or the served name. */
export function checkModel(f: Fields | Body, limits: ModelLimits): void {
  const fields = f instanceof Fields ? f : new Fields(f);
  const model = fields.string("model");
  if (model !== undefined && model !== limits.servedModelName) throw new ModelNotFoundError(model);
}

function checkTokenIds(ids: readonly unknown[], param: string, vocabSize: number): number[] {
  ids.forEach((id, i) => {
    if (typeof id !== "number" || !Number.isInteger(id)) fail(param, `${param}[${i}] must be an integer token id, got ${show(id)}`);
    if (id < 0 || id >= vocabSize) {
      fail(param, `${param}[${i}] = ${id} is outside the vocabulary (token ids are 0..${vocabSize - 1})`);
    }
  });
  return ids as number[];
}

function parseStop(f: Fields, hasTokenizer: boolean): string[] {
  const v = f.raw("stop");
  if (v === undefined) return [];
  if (!hasTokenizer) fail("stop", "stop strings need a tokenizer and this model has none; use stop_token_ids");
  const list = typeof v === "string" ? [v] : v;
  if (!Array.isArray(list) || list.some((s) => typeof s !== "string")) {
    fail("stop", `stop must be a string or a list of strings, got ${show(v)}`);
  }
  if (list.length > MAX_STOP_STRINGS) fail("stop", `stop may hold at most ${MAX_STOP_STRINGS} strings, got ${list.length}`);
  if (list.some((s) => s === "")) fail("stop", "stop strings must not be empty");
  return [...new Set(list as string[])];
}

function parseStreamOptions(f: Fields, stream: boolean): boolean {
  const opts = f.object("stream_options");
  if (opts === undefined) return false;
  if (!stream) fail("stream_options", "stream_options can only be given when stream is true");
  rejectUnknown(opts, new Set(["include_usage", "continuous_usage_stats"]));
  const inner = new Fields(opts);
  const include = inner.boolean("include_usage");
  inner.boolean("continuous_usage_stats");
  return include ?? false;
}

/** The sampling fields both endpoints share; max_tokens and logprobs are the caller's. */
function parseCommonSampling(f: Fields, ctx: ValidationContext): Omit<SamplingRequest, "maxTokens" | "logprobs"> {
  f.onlyNoOp("n", (v) => v === 1, "one choice per prompt: n must be 1");
  f.onlyNoOp("frequency_penalty", (v) => v === 0, "no penalties");
  f.onlyNoOp("presence_penalty", (v) => v === 0, "no penalties");
  f.onlyNoOp("repetition_penalty", (v) => v === 1, "no penalties");
  f.onlyNoOp("min_p", (v) => v === 0, "no min_p sampling");
  f.onlyNoOp("min_tokens", (v) => v === 0, "no min_tokens");
  f.onlyNoOp("logit_bias", (v) => typeof v === "object" && !Array.isArray(v) && Object.keys(v as object).length === 0, "no logit_bias");
  f.string("user");
  f.object("metadata");
  f.boolean("store");
  f.string("service_tier");
  const temperature = f.number("temperature", { min: 0, max: MAX_TEMPERATURE }) ?? ctx.defaults.temperature;
  const topP = f.number("top_p", { min: 0, max: 1, gtMin: true }) ?? ctx.defaults.topP;
  const topKRaw = f.number("top_k", { int: true, min: -1 }) ?? ctx.defaults.topK;
  const seed = f.number("seed", { int: true, min: 0, max: Number.MAX_SAFE_INTEGER });
  const ignoreEos = f.boolean("ignore_eos") ?? false;
  const stopIdsRaw = f.raw("stop_token_ids");
  let stopTokenIds: number[] = [];
  if (stopIdsRaw !== undefined) {
    if (!Array.isArray(stopIdsRaw)) fail("stop_token_ids", `stop_token_ids must be a list of token ids, got ${show(stopIdsRaw)}`);
    stopTokenIds = checkTokenIds(stopIdsRaw, "stop_token_ids", ctx.vocabSize);
  }
  return { temperature, topP, topK: topKRaw === 0 ? -1 : topKRaw, seed, stopTokenIds, ignoreEos };
}

function checkContext(promptTokens: number, maxTokens: number, limits: ModelLimits, promptParam: string): void {
  if (promptTokens >= limits.maxModelLen) {
    fail(
      promptParam,
      `This model's maximum context length is ${limits.maxModelLen} tokens. However, your prompt has ${promptTokens} tokens, leaving no room for a completion. Please reduce the length of the prompt.`,
      "context_length_exceeded",
    );
  }
  if (promptTokens + maxTokens > limits.maxModelLen) {
    fail(
      "max_tokens",
      `This model's maximum context length is ${limits.maxModelLen} tokens. However, you requested ${promptTokens + maxTokens} tokens (${promptTokens} in the prompt, ${maxTokens} in the completion). Please reduce the length of the prompt or completion.`,
      "context_length_exceeded",
    );
  }
}

function parseMaxTokens(f: Fields, name: string): number | undefined {
  return f.number(name, { int: true, min: 1 });
}

/** Prompts of a completions request: string | ids | list of strings | list of id lists. */
function parsePrompts(f: Fields, ctx: ValidationContext): PromptInput[] {
  const v = f.raw("prompt");
  if (v === undefined) fail("prompt", "prompt is required");
  const fromText = (text: string, param: string): PromptInput => {
    if (text.length === 0) fail(param, `${param} must not be empty`);
    if (ctx.encoder === null) fail(param, `this model has no tokenizer: send ${param} as a list of token ids`);
    return { tokenIds: ctx.encoder.encode(text), text };
  };
  const fromIds = (ids: unknown[], param: string): PromptInput => {
    if (ids.length === 0) fail(param, `${param} must not be empty`);
    const tokenIds = checkTokenIds(ids, param, ctx.vocabSize);
    return { tokenIds, text: ctx.encoder?.decode(tokenIds) ?? "" };
  };
  if (typeof v === "string") return [fromText(v, "prompt")];
  if (!Array.isArray(v)) fail("prompt", `prompt must be a string, a list of token ids, or a list of either, got ${typeName(v)}`);
  if (v.length === 0) fail("prompt", "prompt must not be empty");
  if (v.every((x) => typeof x === "number")) return [fromIds(v, "prompt")];
  if (v.length > MAX_BATCH_PROMPTS) fail("prompt", `a batch may hold at most ${MAX_BATCH_PROMPTS} prompts, got ${v.length}`);
  if (v.every((x) => typeof x === "string")) return v.map((x, i) => fromText(x as string, `prompt[${i}]`));
  if (v.every((x) => Array.isArray(x))) return v.map((x, i) => fromIds(x as unknown[], `prompt[${i}]`));
  return fail("prompt", "prompt must be a string, a list of token ids, a list of strings or a list of token-id lists (not a mix)");
}

/** Validate a POST /v1/completions body. Throws RequestValidationError (400) or ModelNotFoundError (404). */
export function parseCompletionRequest(body: unknown, ctx: ValidationContext): GenerationRequest {
  const b = asBody(body);
  rejectUnknown(b, COMPLETION_FIELDS);
  const f = new Fields(b);
  checkModel(f, ctx);
  f.onlyNoOp("best_of", (v) => v === 1, "one choice per prompt: best_of must be 1");
  f.onlyNoOp("suffix", (v) => v === "", "no insertion");
  const common = parseCommonSampling(f, ctx);
  const maxTokens = parseMaxTokens(f, "max_tokens") ?? DEFAULT_COMPLETION_MAX_TOKENS;
  const logprobsRaw = f.raw("logprobs");
  if (typeof logprobsRaw === "boolean") fail("logprobs", `logprobs must be an integer in [0, ${MAX_LOGPROBS}] for completions, got ${logprobsRaw}`);
  const logprobs = f.number("logprobs", { int: true, min: 0, max: MAX_LOGPROBS }) ?? null;
  const stream = f.boolean("stream") ?? false;
  const includeUsage = parseStreamOptions(f, stream);
  const stop = parseStop(f, ctx.encoder !== null);
  const echo = f.boolean("echo") ?? false;
  const returnTokensAsTokenIds = f.boolean("return_tokens_as_token_ids") ?? false;
  const skipSpecialTokens = f.boolean("skip_special_tokens") ?? true;
  const prompts = parsePrompts(f, ctx);
  prompts.forEach((p, i) => checkContext(p.tokenIds.length, maxTokens, ctx, prompts.length === 1 ? "prompt" : `prompt[${i}]`));
  const sampling: SamplingRequest = { ...common, maxTokens, logprobs };
  return {
    api: "completions",
    prompts,
    sampling: prompts.map(() => sampling),
    stop,
    stream,
    includeUsage,
    echo,
    returnTokensAsTokenIds,
    skipSpecialTokens,
  };
}

const CHAT_ROLES = new Set(["system", "developer", "user", "assistant", "tool"]);

/** One chat message with content normalised to a string (text parts joined with "\n", as vLLM). */
function parseMessage(m: unknown, i: number): { role: string; content: string | null; [k: string]: unknown } {
  const param = `messages[${i}]`;
  if (typeof m !== "object" || m === null || Array.isArray(m)) fail(param, `${param} must be an object, got ${typeName(m)}`);
  const msg = m as Body;
  const role = msg.role;
  if (typeof role !== "string" || !CHAT_ROLES.has(role)) {
    fail(`${param}.role`, `${param}.role must be one of ${[...CHAT_ROLES].join(", ")}, got ${show(role)}`);
  }
  const allowed = new Set(["role", "content", "name", "tool_calls", "tool_call_id", "refusal"]);
  const unknown = Object.keys(msg).filter((k) => !allowed.has(k));
  if (unknown.length > 0) fail(`${param}.${unknown[0]}`, `unknown field${unknown.length > 1 ? "s" : ""} in ${param}: ${unknown.join(", ")}`);
  const c = msg.content;
  let content: string | null;
  if (c === undefined || c === null) {
    if (role !== "assistant") fail(`${param}.content`, `${param}.content is required for role ${role}`);
    content = null;
  } else if (typeof c === "string") {
    content = c;
  } else if (Array.isArray(c)) {
    const texts = c.map((part, j) => {
      const pp = `${param}.content[${j}]`;
      if (typeof part !== "object" || part === null || (part as Body).type !== "text" || typeof (part as Body).text !== "string") {
        fail(pp, `${pp} must be {"type": "text", "text": ...}; this model takes text only`);
      }
      return (part as Body).text as string;
    });
    content = texts.join("\n");
  } else {
    fail(`${param}.content`, `${param}.content must be a string or a list of text parts, got ${typeName(c)}`);
  }
  const out: { role: string; content: string | null; [k: string]: unknown } = { role, content };
  if (typeof msg.name === "string") out.name = msg.name;
  if (msg.tool_calls !== undefined && msg.tool_calls !== null) out.tool_calls = msg.tool_calls;
  if (typeof msg.tool_call_id === "string") out.tool_call_id = msg.tool_call_id;
  return out;
}

/** Validate a POST /v1/chat/completions body. Throws RequestValidationError (400) or ModelNotFoundError (404). */
export function parseChatRequest(body: unknown, ctx: ValidationContext): GenerationRequest {
  const b = asBody(body);
  rejectUnknown(b, CHAT_FIELDS);
  const f = new Fields(b);
  checkModel(f, ctx);
  const rawMessages = f.raw("messages");
  if (rawMessages === undefined) fail("messages", "messages is required");
  if (!Array.isArray(rawMessages)) fail("messages", `messages must be a list, got ${typeName(rawMessages)}`);
  if (rawMessages.length === 0) fail("messages", "messages must not be empty");
  const messages = rawMessages.map(parseMessage);
  const common = parseCommonSampling(f, ctx);
  f.onlyNoOp("response_format", (v) => typeof v === "object" && v !== null && (v as Body).type === "text", 'only {"type": "text"}');
  f.onlyNoOp("tools", (v) => Array.isArray(v) && v.length === 0, "no tool calling");
  f.onlyNoOp("tool_choice", (v) => v === "none" || v === "auto", "no tool calling");
  f.boolean("parallel_tool_calls");
  const logprobsFlag = f.boolean("logprobs") ?? false;
  const topLogprobs = f.number("top_logprobs", { int: true, min: 0, max: MAX_LOGPROBS });
  if (topLogprobs !== undefined && !logprobsFlag) fail("top_logprobs", "top_logprobs requires logprobs to be true");
  const stream = f.boolean("stream") ?? false;
  const includeUsage = parseStreamOptions(f, stream);
  const stop = parseStop(f, ctx.encoder !== null);
  const returnTokensAsTokenIds = f.boolean("return_tokens_as_token_ids") ?? false;
  const skipSpecialTokens = f.boolean("skip_special_tokens") ?? true;
  const addGenerationPrompt = f.boolean("add_generation_prompt") ?? true;
  const templateVariables = f.object("chat_template_kwargs");
  // max_completion_tokens is OpenAI's newer name; it wins when both are given.
  const maxCompletionTokens = parseMaxTokens(f, "max_completion_tokens");
  const legacyMaxTokens = parseMaxTokens(f, "max_tokens");
  const maxTokensGiven = maxCompletionTokens ?? legacyMaxTokens;
  if (ctx.encoder === null) fail("messages", "this model has no tokenizer (and no chat template): use /v1/completions with token ids");
  let tokenIds: number[];
  try {
    tokenIds = ctx.encoder.encodeChat(messages, { addGenerationPrompt, ...(templateVariables ? { templateVariables } : {}) });
  } catch (err) {
    // The template rejects conversations it cannot render (roles out of order, ...).
    fail("messages", err instanceof Error ? err.message : String(err));
  }
  if (tokenIds.length === 0) fail("messages", "the chat template rendered an empty prompt");
  checkTokenIds(tokenIds, "messages", ctx.vocabSize);
  const maxTokens = maxTokensGiven ?? ctx.maxModelLen - tokenIds.length;
  checkContext(tokenIds.length, maxTokens, ctx, "messages");
  const sampling: SamplingRequest = { ...common, maxTokens, logprobs: logprobsFlag ? (topLogprobs ?? 0) : null };
  return {
    api: "chat",
    prompts: [{ tokenIds, text: ctx.encoder.decode(tokenIds) }],
    sampling: [sampling],
    stop,
    stream,
    includeUsage,
    echo: false,
    returnTokensAsTokenIds,
    skipSpecialTokens,
  };
}
