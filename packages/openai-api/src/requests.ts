/**
 * Validation of /v1/completions and /v1/chat/completions request bodies into one normalised request.
 *
 * Decisions (where OpenAI and vLLM differ, or leave room):
 * - Unknown fields (top level, stream_options, chat messages) are ignored, as vLLM does by default: the
 *   request lists them (GenerationRequest.ignoredFields, "stream_options.foo", "messages[0].mood") and the
 *   router logs them and names them in an `x-moela-ignored-fields` header. With ValidationContext.strictApi
 *   (the router's --strict-api) they are a 400 naming the first. The harmless OpenAI fields (user,
 *   metadata, store, service_tier, parallel_tool_calls, ...) are accepted and ignored; fields that would
 *   change the output and that this server does not implement are accepted only at their no-op value
 *   (suffix ""), else 400.
 * - response_format (json_object, json_schema; chat and completions) and tools/tool_choice (chat): structured.ts
 *   (constrained decoding).
 * - Penalties and filters with vLLM's ranges and semantics (the engine's sampler applies them, see
 *   packages/engine/src/sampler-penalties.ts): presence_penalty and frequency_penalty in [-2, 2],
 *   repetition_penalty in [1e-6, 2] (vLLM: (0, 2]; a smaller one can overflow a logit), min_p in [0, 1],
 *   min_tokens an integer in [0, max_tokens], logit_bias
 *   an object of token id (a decimal string) -> bias in [-100, 100], at most MAX_LOGIT_BIAS entries, ids
 *   inside the vocabulary. Each out-of-range value is a 400 naming the field.
 * - n (choices per prompt) an integer >= 1; prompts x n at most MAX_CHOICES. Choice `index` is
 *   prompt index x n + k, as OpenAI and vLLM number them. best_of (completions): at least n, not streamed;
 *   best_of candidates per prompt are generated and the n with the highest cumulative logprob (the sum of
 *   their tokens' logprobs) are returned, best first; usage counts every candidate's tokens (as OpenAI
 *   bills them). prompts x best_of at most MAX_CHOICES.
 * - Values the cluster carries as float32 (temperature, top_p, the penalties, logit_bias) are rounded to float32
 *   here, once, so prefill and decode sample with the same numbers; top_p that rounds to 0 is a 400.
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
 * - stream_options only with stream = true (as vLLM); include_usage adds a final usage chunk;
 *   continuous_usage_stats (vLLM's, with include_usage) adds the usage so far to every chunk.
 * - A checkpoint without a tokenizer (encoder null) takes token-id prompts only: text prompts, chat and stop
 *   strings are 400s, echoed prompt text is "".
 * - Bounds (limits.ts): prompt text in characters before tokenizing (ValidationContext.maxPromptChars, all
 *   prompts of a request together), prompt tokens (maxPromptTokens: prefill's limit), stop strings (count
 *   and length), stop_token_ids, chat messages and content parts, cache_salt; each a 400 naming the field.
 *   top_k at or past the vocabulary size means off (-1), as it selects every token.
 * - cache_salt (vLLM's): an optional non-empty string mixed into the prompt's prefix-cache keys, so only
 *   requests with the same salt share cached prefixes (a tenant cannot probe another's prompts by timing or
 *   cached_tokens).
 *
 * Tokenizing is the one costly step, so validation runs in three phases: plan*Request checks every field
 * and lists the tokenizer operations the request needs (EncodeOp: encode a text, render and encode a chat,
 * decode ids for echo); the caller runs them, inline (runPlan, with a PromptEncoder) or elsewhere
 * (runPlanAsync: the router's worker threads); plan.finish checks the results (context length, vocabulary).
 * parseCompletionRequest / parseChatRequest do all three inline.
 */
import { Code, InternalError, MoelaError } from "@moela/core";
import { ModelNotFoundError, RequestValidationError } from "./errors.js";
import { parseResponseFormat, parseStructuredOutput, type SchemaChecker } from "./structured.js";
import { defaultMaxPromptChars, MAX_CACHE_SALT_CHARS, MAX_CHAT_MESSAGES, MAX_CONTENT_PARTS, MAX_STOP_STRING_CHARS, MAX_STOP_TOKEN_IDS } from "./limits.js";

/** Most top logprobs per token (OpenAI's limit; vLLM's default max_logprobs). */
export const MAX_LOGPROBS = 20;
/** Most prompts in one batched /v1/completions request. */
export const MAX_BATCH_PROMPTS = 64;
/** Most stop strings per request. */
export const MAX_STOP_STRINGS = 64;
/** Most generations one request makes: prompts x n. */
export const MAX_CHOICES = 64;
/** Most entries of logit_bias. */
export const MAX_LOGIT_BIAS = 1024;
/** Largest |logit_bias| value (OpenAI's range, which vLLM clamps to). */
export const MAX_LOGIT_BIAS_VALUE = 100;
/** OpenAI's and vLLM's bounds on presence_penalty and frequency_penalty. */
export const MAX_PENALTY = 2;
/** vLLM's upper bound on repetition_penalty (its lower bound is exclusive 0). */
export const MAX_REPETITION_PENALTY = 2;
/**
 * The smallest repetition_penalty taken (vLLM's bound is exclusive 0): the sampler divides positive logits by
 * it in float32, and a smaller one can turn a logit into Infinity, which fails the request inside prefill.
 */
export const MIN_REPETITION_PENALTY = 1e-6;
/** OpenAI's upper bound on temperature. */
export const MAX_TEMPERATURE = 2;
/** max_tokens when a completions request does not say (OpenAI's and vLLM's default). */
export const DEFAULT_COMPLETION_MAX_TOKENS = 16;

/** A chat message as validation passes it to the chat template. */
export interface ChatMessageInput {
  role: string;
  content: string | null;
  [extra: string]: unknown;
}

/** What validation needs from the tokenizer (Tokenizer satisfies it). */
export interface PromptEncoder {
  /** Text to ids, BOS added per tokenizer_config (unless addSpecialTokens is false). */
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[];
  /** Chat messages through the chat template, tokenized without adding special tokens again. */
  encodeChat(messages: readonly ChatMessageInput[], options?: { addGenerationPrompt?: boolean; templateVariables?: Record<string, unknown> }): number[];
  /** Ids to text (for echoing a token-id prompt). */
  decode(ids: readonly number[]): string;
}

/** One tokenizer operation a request needs; plain data, so it can be posted to a worker thread. */
export type EncodeOp =
  | { readonly kind: "encode"; readonly text: string; readonly addSpecialTokens?: boolean }
  | {
      readonly kind: "chat";
      readonly messages: readonly ChatMessageInput[];
      readonly addGenerationPrompt: boolean;
      readonly templateVariables?: Record<string, unknown>;
    }
  | { readonly kind: "decode"; readonly ids: readonly number[] };

/** encode and chat give token ids, decode gives text. */
export type EncodeResult = readonly number[] | string;

/** Runs EncodeOps somewhere else (the router's tokenizer threads). Rejects with a MoelaError. */
export interface AsyncPromptEncoder {
  run(op: EncodeOp, signal?: AbortSignal): Promise<EncodeResult>;
}

/** Run one op with a PromptEncoder (the same code on the caller's thread and in a worker). */
export function runEncodeOp(encoder: PromptEncoder, op: EncodeOp): EncodeResult {
  switch (op.kind) {
    case "encode":
      return op.addSpecialTokens === false ? encoder.encode(op.text, { addSpecialTokens: false }) : encoder.encode(op.text);
    case "chat":
      return encoder.encodeChat(op.messages, {
        addGenerationPrompt: op.addGenerationPrompt,
        ...(op.templateVariables !== undefined ? { templateVariables: op.templateVariables } : {}),
      });
    case "decode":
      return encoder.decode(op.ids);
  }
}

/** What an op costs, in characters of text (a decoded id counts as 4): decides where it runs. */
export function encodeOpCost(op: EncodeOp): number {
  switch (op.kind) {
    case "encode":
      return op.text.length;
    case "chat":
      return chatChars(op.messages);
    case "decode":
      return 4 * op.ids.length;
  }
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
  /**
   * Most characters of prompt text one request may bring before tokenizing: all text prompts of a batch,
   * or all message contents of a chat (default defaultMaxPromptChars(maxModelLen)).
   */
  readonly maxPromptChars?: number;
  /** Most tokens of one prompt (prefill's limit); unset: only the context length bounds it. */
  readonly maxPromptTokens?: number;
  /** Unknown fields are a 400 (the router's --strict-api); default: ignored and listed in ignoredFields. */
  readonly strictApi?: boolean;
  /**
   * Checks a JSON schema of response_format or a tool's parameters against what the engine can constrain
   * (structured.ts); absent: json_object, json_schema and forced tool calls are refused.
   */
  readonly checkSchema?: SchemaChecker;
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
  /** vLLM's presence_penalty, subtracted once from each token already in the output; absent = 0. */
  readonly presencePenalty?: number;
  /** vLLM's frequency_penalty, subtracted per occurrence in the output; absent = 0. */
  readonly frequencyPenalty?: number;
  /** vLLM's repetition_penalty over prompt and output tokens (divides positive logits, multiplies others); absent = 1. */
  readonly repetitionPenalty?: number;
  /** [token id, bias] pairs added to the logits, ascending ids; absent or empty = none. */
  readonly logitBias?: readonly (readonly [number, number])[];
  /** Drop tokens less likely than min_p times the most likely one (after temperature); absent = 0. */
  readonly minP?: number;
  /** EOS and stop_token_ids cannot end the output before this many tokens; absent = 0. */
  readonly minTokens?: number;
  /** Constrained decoding (response_format, forced tool calls): a grammar spec's JSON text; absent = free. */
  readonly grammar?: string;
}

export interface PromptInput {
  /** The ids the model sees. */
  readonly tokenIds: readonly number[];
  /** The prompt's text, for echo: a text prompt's own text; a token-id prompt's decoded only when echo is asked, else "". */
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
  /** vLLM's cache_salt: prefix-cache keys of this request are salted with it; undefined = none. */
  readonly cacheSalt: string | undefined;
  /** Choices per prompt (n): generation k of prompt i is choice i * n + k. */
  readonly n: number;
  /** Candidates per prompt (best_of, >= n; n when not given): the best n of them are the choices. */
  readonly bestOf: number;
  /** stream_options.continuous_usage_stats (with include_usage): every chunk carries the usage so far. */
  readonly continuousUsage: boolean;
  /** Unknown fields that were ignored (paths like "foo", "stream_options.bar", "messages[0].baz"). */
  readonly ignoredFields: readonly string[];
  /** Chat with tools (tool_choice not "none"): tool calls in the output become the message's tool_calls. */
  readonly parseToolCalls?: boolean;
}

/** A validated request waiting for its tokenizer operations (see the module comment). */
export interface RequestPlan {
  readonly ops: readonly EncodeOp[];
  /** Unknown fields ignored so far (known before tokenizing, so a refusal can still name them). */
  readonly ignoredFields: readonly string[];
  /** Checks the ops' results (one per op, in order) and returns the request; throws RequestValidationError. */
  finish(results: readonly EncodeResult[]): GenerationRequest;
}

type Body = Record<string, unknown>;

function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  return typeof v;
}

function show(v: unknown): string {
  if (typeof v === "number" && !Number.isFinite(v)) return String(v);
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
  "cache_salt",
] as const;

const COMPLETION_FIELDS = new Set<string>([...COMMON_FIELDS, "prompt", "echo", "best_of", "suffix", "response_format"]);
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

/**
 * Unknown keys of `body`: with `strict` a 400 naming the first (param `prefix` + key), else appended to
 * `ignored` (as prefix + key) for the caller to report.
 */
function checkUnknown(body: Body, allowed: ReadonlySet<string>, strict: boolean, ignored: string[], prefix = "", where = ""): void {
  const unknown = Object.keys(body).filter((k) => !allowed.has(k));
  if (unknown.length === 0) return;
  if (strict) fail(`${prefix}${unknown[0]!}`, `unknown field${unknown.length > 1 ? "s" : ""}${where}: ${unknown.join(", ")}`);
  for (const k of unknown) ignored.push(`${prefix}${k}`);
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
  const long = (list as string[]).findIndex((s) => s.length > MAX_STOP_STRING_CHARS);
  if (long >= 0) fail("stop", `a stop string may hold at most ${MAX_STOP_STRING_CHARS} characters; stop[${long}] has ${(list as string[])[long]!.length}`);
  return [...new Set(list as string[])];
}

/** stream_options: include_usage, and continuous_usage_stats (which counts only with include_usage, as in vLLM). */
function parseStreamOptions(f: Fields, stream: boolean, strict: boolean, ignored: string[]): { includeUsage: boolean; continuousUsage: boolean } {
  const opts = f.object("stream_options");
  if (opts === undefined) return { includeUsage: false, continuousUsage: false };
  if (!stream) fail("stream_options", "stream_options can only be given when stream is true");
  // Unknown options are named bare in strict mode (param "foo"), as they always were; prefixed when ignored.
  checkUnknown(opts, new Set(["include_usage", "continuous_usage_stats", "include_obfuscation"]), strict, ignored, strict ? "" : "stream_options.");
  const inner = new Fields(opts);
  const include = inner.boolean("include_usage") ?? false;
  const continuous = inner.boolean("continuous_usage_stats") ?? false;
  inner.boolean("include_obfuscation");
  return { includeUsage: include, continuousUsage: include && continuous };
}

/** logit_bias: {"<token id>": bias}, bias in [-100, 100]; as ascending [id, bias] pairs. */
function parseLogitBias(f: Fields, vocabSize: number): [number, number][] {
  const o = f.object("logit_bias");
  if (o === undefined) return [];
  const entries = Object.entries(o);
  if (entries.length > MAX_LOGIT_BIAS) fail("logit_bias", `logit_bias may hold at most ${MAX_LOGIT_BIAS} entries, got ${entries.length}`);
  const out: [number, number][] = entries.map(([key, v]) => {
    if (!/^(0|[1-9][0-9]{0,9})$/.test(key)) fail("logit_bias", `logit_bias keys must be token ids (decimal integers), got ${show(key)}`);
    const id = Number(key);
    if (id >= vocabSize) fail("logit_bias", `logit_bias token id ${id} is outside the vocabulary (token ids are 0..${vocabSize - 1})`);
    if (typeof v !== "number" || !Number.isFinite(v)) fail("logit_bias", `logit_bias[${show(key)}] must be a number, got ${show(v)}`);
    if (v < -MAX_LOGIT_BIAS_VALUE || v > MAX_LOGIT_BIAS_VALUE) {
      fail("logit_bias", `logit_bias[${show(key)}] must be in [-${MAX_LOGIT_BIAS_VALUE}, ${MAX_LOGIT_BIAS_VALUE}], got ${v}`);
    }
    return [id, Math.fround(v)];
  });
  return out.sort((a, b) => a[0] - b[0]);
}

/** n: choices per prompt; prompts x n at most MAX_CHOICES. */
function parseN(f: Fields, prompts: number): number {
  const n = f.number("n", { int: true, min: 1 }) ?? 1;
  if (n * prompts > MAX_CHOICES) {
    fail("n", prompts > 1 ? `n x prompts may be at most ${MAX_CHOICES}, got ${n} x ${prompts}` : `n must be in [1, ${MAX_CHOICES}], got ${n}`);
  }
  return n;
}

/** min_tokens, checked against the request's max_tokens (vLLM: min_tokens <= max_tokens). */
function checkMinTokens(minTokens: number, maxTokens: number): void {
  if (minTokens > maxTokens) fail("min_tokens", `min_tokens must be at most max_tokens (${maxTokens}), got ${minTokens}`);
}

/**
 * A value the cluster carries as float32 (SamplingParams' temperature, top_p, penalties and logit_bias, on
 * every hop to decode), rounded once here so that prefill samples its first token with exactly the value
 * decode continues with (a temperature of 1e-5 would otherwise be sampled by prefill and greedy in decode,
 * which refuses the transfer). A positive value that float32 rounds to 0 (1e-46) is refused, naming `name`.
 */
function float32(name: string, v: number, positive = false): number {
  const r = Math.fround(v);
  if (positive && r === 0) fail(name, `${name} must be positive as a float32 (at least ${2 ** -149}), got ${v}`);
  return r;
}

/** The sampling fields both endpoints share; max_tokens and logprobs are the caller's. */
function parseCommonSampling(f: Fields, ctx: ValidationContext): Omit<SamplingRequest, "maxTokens" | "logprobs"> {
  const presencePenalty = float32("presence_penalty", f.number("presence_penalty", { min: -MAX_PENALTY, max: MAX_PENALTY }) ?? 0);
  const frequencyPenalty = float32("frequency_penalty", f.number("frequency_penalty", { min: -MAX_PENALTY, max: MAX_PENALTY }) ?? 0);
  const repetitionPenalty = float32("repetition_penalty", f.number("repetition_penalty", { min: MIN_REPETITION_PENALTY, max: MAX_REPETITION_PENALTY }) ?? 1);
  const minP = f.number("min_p", { min: 0, max: 1 }) ?? 0;
  const minTokens = f.number("min_tokens", { int: true, min: 0 }) ?? 0;
  const logitBias = parseLogitBias(f, ctx.vocabSize);
  f.string("user");
  f.object("metadata");
  f.boolean("store");
  f.string("service_tier");
  const temperature = float32("temperature", f.number("temperature", { min: 0, max: MAX_TEMPERATURE }) ?? ctx.defaults.temperature);
  const topP = float32("top_p", f.number("top_p", { min: 0, max: 1, gtMin: true }) ?? ctx.defaults.topP, true);
  const topKRaw = f.number("top_k", { int: true, min: -1 }) ?? ctx.defaults.topK;
  const seed = f.number("seed", { int: true, min: 0, max: Number.MAX_SAFE_INTEGER });
  const ignoreEos = f.boolean("ignore_eos") ?? false;
  const stopIdsRaw = f.raw("stop_token_ids");
  let stopTokenIds: number[] = [];
  if (stopIdsRaw !== undefined) {
    if (!Array.isArray(stopIdsRaw)) fail("stop_token_ids", `stop_token_ids must be a list of token ids, got ${show(stopIdsRaw)}`);
    if (stopIdsRaw.length > MAX_STOP_TOKEN_IDS) fail("stop_token_ids", `stop_token_ids may hold at most ${MAX_STOP_TOKEN_IDS} ids, got ${stopIdsRaw.length}`);
    stopTokenIds = [...new Set(checkTokenIds(stopIdsRaw, "stop_token_ids", ctx.vocabSize))];
  }
  // top_k of the whole vocabulary (or more) keeps every token: off. The wire carries top_k as uint32.
  const topK = topKRaw === 0 || topKRaw >= ctx.vocabSize ? -1 : topKRaw;
  // Only what changes sampling is carried (the wire and the job leave the no-op values out).
  return {
    temperature,
    topP,
    topK,
    seed,
    stopTokenIds,
    ignoreEos,
    ...(presencePenalty !== 0 ? { presencePenalty } : {}),
    ...(frequencyPenalty !== 0 ? { frequencyPenalty } : {}),
    ...(repetitionPenalty !== 1 ? { repetitionPenalty } : {}),
    ...(logitBias.length > 0 ? { logitBias } : {}),
    ...(minP !== 0 ? { minP } : {}),
    ...(minTokens !== 0 ? { minTokens } : {}),
  };
}

/** cache_salt: absent, or a non-empty string of at most MAX_CACHE_SALT_CHARS (vLLM refuses an empty one). */
function parseCacheSalt(f: Fields): string | undefined {
  const salt = f.string("cache_salt");
  if (salt === undefined) return undefined;
  if (salt.length === 0) fail("cache_salt", "cache_salt must be a non-empty string");
  if (salt.length > MAX_CACHE_SALT_CHARS) fail("cache_salt", `cache_salt may hold at most ${MAX_CACHE_SALT_CHARS} characters, got ${salt.length}`);
  return salt;
}

/** Characters of chat text the template will render: contents and names. */
function chatChars(messages: readonly ChatMessageInput[]): number {
  let n = 0;
  for (const m of messages) {
    n += m.content?.length ?? 0;
    if (typeof m.name === "string") n += m.name.length;
  }
  return n;
}

function checkPromptChars(chars: number, ctx: ValidationContext, param: string): void {
  const max = ctx.maxPromptChars ?? defaultMaxPromptChars(ctx.maxModelLen);
  if (chars > max) {
    fail(
      param,
      `the prompt text has ${chars} characters; this server takes at most ${max} characters per request before tokenizing. Please reduce the length of the prompt.`,
      "context_length_exceeded",
    );
  }
}

function checkContext(promptTokens: number, maxTokens: number, limits: ValidationContext, promptParam: string, maxTokensParam = "max_tokens"): void {
  if (limits.maxPromptTokens !== undefined && promptTokens > limits.maxPromptTokens && promptTokens < limits.maxModelLen) {
    fail(
      promptParam,
      `This server takes prompts of at most ${limits.maxPromptTokens} tokens. However, your prompt has ${promptTokens} tokens. Please reduce the length of the prompt.`,
      "context_length_exceeded",
    );
  }
  if (promptTokens >= limits.maxModelLen) {
    fail(
      promptParam,
      `This model's maximum context length is ${limits.maxModelLen} tokens. However, your prompt has ${promptTokens} tokens, leaving no room for a completion. Please reduce the length of the prompt.`,
      "context_length_exceeded",
    );
  }
  if (promptTokens + maxTokens > limits.maxModelLen) {
    fail(
      maxTokensParam,
      `This model's maximum context length is ${limits.maxModelLen} tokens. However, you requested ${promptTokens + maxTokens} tokens (${promptTokens} in the prompt, ${maxTokens} in the completion). Please reduce the length of the prompt or completion.`,
      "context_length_exceeded",
    );
  }
}

function parseMaxTokens(f: Fields, name: string): number | undefined {
  return f.number(name, { int: true, min: 1 });
}

/** One prompt of a completions request as given: text (tokenized later) or token ids (checked now). */
type PromptSource =
  { readonly kind: "text"; readonly text: string; readonly param: string } | { readonly kind: "ids"; readonly ids: number[]; readonly param: string };

/** Prompts of a completions request: string | ids | list of strings | list of id lists. */
function parsePrompts(f: Fields, ctx: ValidationContext): PromptSource[] {
  const v = f.raw("prompt");
  if (v === undefined) fail("prompt", "prompt is required");
  const fromText = (text: string, param: string): PromptSource => {
    if (text.length === 0) fail(param, `${param} must not be empty`);
    if (ctx.encoder === null) fail(param, `this model has no tokenizer: send ${param} as a list of token ids`);
    return { kind: "text", text, param };
  };
  const fromIds = (ids: unknown[], param: string): PromptSource => {
    if (ids.length === 0) fail(param, `${param} must not be empty`);
    return { kind: "ids", ids: checkTokenIds(ids, param, ctx.vocabSize), param };
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

/** Results of the ops as the kinds their ops promise (a worker that answered otherwise is a bug). */
function idsResult(r: EncodeResult | undefined): readonly number[] {
  if (!Array.isArray(r)) throw new InternalError("tokenizer returned no token ids");
  return r as readonly number[];
}

function textResult(r: EncodeResult | undefined): string {
  if (typeof r !== "string") throw new InternalError("tokenizer returned no text");
  return r;
}

/** Validate a POST /v1/completions body up to tokenizing. Throws RequestValidationError (400) or ModelNotFoundError (404). */
export function planCompletionRequest(body: unknown, ctx: ValidationContext): RequestPlan {
  const b = asBody(body);
  const strict = ctx.strictApi === true;
  const ignoredFields: string[] = [];
  checkUnknown(b, COMPLETION_FIELDS, strict, ignoredFields);
  const f = new Fields(b);
  checkModel(f, ctx);
  f.onlyNoOp("suffix", (v) => v === "", "no insertion");
  const common = parseCommonSampling(f, ctx);
  // vLLM takes response_format on completions too (structured.ts).
  const grammar = parseResponseFormat(f.raw("response_format"), ctx.checkSchema, fail);
  const maxTokens = parseMaxTokens(f, "max_tokens") ?? DEFAULT_COMPLETION_MAX_TOKENS;
  const logprobsRaw = f.raw("logprobs");
  if (typeof logprobsRaw === "boolean") fail("logprobs", `logprobs must be an integer in [0, ${MAX_LOGPROBS}] for completions, got ${logprobsRaw}`);
  const logprobs = f.number("logprobs", { int: true, min: 0, max: MAX_LOGPROBS }) ?? null;
  const stream = f.boolean("stream") ?? false;
  const { includeUsage, continuousUsage } = parseStreamOptions(f, stream, strict, ignoredFields);
  const stop = parseStop(f, ctx.encoder !== null);
  const echo = f.boolean("echo") ?? false;
  const returnTokensAsTokenIds = f.boolean("return_tokens_as_token_ids") ?? false;
  const skipSpecialTokens = f.boolean("skip_special_tokens") ?? true;
  const cacheSalt = parseCacheSalt(f);
  const sources = parsePrompts(f, ctx);
  const n = parseN(f, sources.length);
  const bestOfRaw = f.number("best_of", { int: true, min: 1 });
  if (bestOfRaw !== undefined && bestOfRaw < n) fail("best_of", `best_of must be at least n (${n}), got ${bestOfRaw}`);
  if (bestOfRaw !== undefined && bestOfRaw > n && stream)
    fail("best_of", "best_of greater than n cannot be streamed (the best candidates are known only at the end)");
  if (bestOfRaw !== undefined && bestOfRaw * sources.length > MAX_CHOICES) {
    fail("best_of", `best_of x prompts may be at most ${MAX_CHOICES}, got ${bestOfRaw} x ${sources.length}`);
  }
  const bestOf = bestOfRaw ?? n;
  checkMinTokens(common.minTokens ?? 0, maxTokens);
  checkPromptChars(
    sources.reduce((n, p) => n + (p.kind === "text" ? p.text.length : 0), 0),
    ctx,
    "prompt",
  );
  // Every text is encoded; a token-id prompt is decoded only to echo it (and only with a tokenizer).
  const ops: EncodeOp[] = [];
  const opOf = sources.map((p) => {
    if (p.kind === "text") return ops.push({ kind: "encode", text: p.text }) - 1;
    if (echo && ctx.encoder !== null) return ops.push({ kind: "decode", ids: p.ids }) - 1;
    return -1;
  });
  return {
    ops,
    ignoredFields,
    finish(results: readonly EncodeResult[]): GenerationRequest {
      const prompts: PromptInput[] = sources.map((p, i) => {
        const k = opOf[i]!;
        if (p.kind === "text") return { tokenIds: idsResult(results[k]), text: p.text };
        return { tokenIds: p.ids, text: k < 0 ? "" : textResult(results[k]) };
      });
      prompts.forEach((p, i) => checkContext(p.tokenIds.length, maxTokens, ctx, prompts.length === 1 ? "prompt" : `prompt[${i}]`));
      const sampling: SamplingRequest = { ...common, maxTokens, logprobs, ...(grammar !== undefined ? { grammar } : {}) };
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
        cacheSalt,
        n,
        bestOf,
        continuousUsage,
        ignoredFields,
      };
    },
  };
}

/** A chat op's INVALID_ARGUMENT is the template refusing the conversation: a 400 on messages. */
function opFailure(op: EncodeOp, err: unknown): unknown {
  if (op.kind === "chat" && err instanceof MoelaError && err.code === Code.INVALID_ARGUMENT && !(err instanceof RequestValidationError)) {
    return new RequestValidationError(err.message, "messages");
  }
  return err;
}

/** Run a plan's ops with `encoder` on this thread and finish it. */
export function runPlan(plan: RequestPlan, encoder: PromptEncoder | null): GenerationRequest {
  const results = plan.ops.map((op) => {
    if (encoder === null) throw new InternalError("no tokenizer to run the request's tokenizer operations");
    try {
      return runEncodeOp(encoder, op);
    } catch (err) {
      throw opFailure(op, err);
    }
  });
  return plan.finish(results);
}

/** Run a plan's ops with `encoder` (e.g. on worker threads), all at once, and finish it. */
export async function runPlanAsync(plan: RequestPlan, encoder: AsyncPromptEncoder, signal?: AbortSignal): Promise<GenerationRequest> {
  const results = await Promise.all(plan.ops.map((op) => encoder.run(op, signal).catch((err: unknown) => Promise.reject(opFailure(op, err)))));
  return plan.finish(results);
}

/** Validate a POST /v1/completions body, tokenizing on this thread. Throws RequestValidationError (400) or ModelNotFoundError (404). */
export function parseCompletionRequest(body: unknown, ctx: ValidationContext): GenerationRequest {
  return runPlan(planCompletionRequest(body, ctx), ctx.encoder);
}

const CHAT_ROLES = new Set(["system", "developer", "user", "assistant", "tool"]);
const MESSAGE_FIELDS: ReadonlySet<string> = new Set(["role", "content", "name", "tool_calls", "tool_call_id", "refusal"]);

/** One chat message with content normalised to a string (text parts joined with "\n", as vLLM). */
function parseMessage(m: unknown, i: number, strict: boolean, ignored: string[]): ChatMessageInput {
  const param = `messages[${i}]`;
  if (typeof m !== "object" || m === null || Array.isArray(m)) fail(param, `${param} must be an object, got ${typeName(m)}`);
  const msg = m as Body;
  const role = msg.role;
  if (typeof role !== "string" || !CHAT_ROLES.has(role)) {
    fail(`${param}.role`, `${param}.role must be one of ${[...CHAT_ROLES].join(", ")}, got ${show(role)}`);
  }
  checkUnknown(msg, MESSAGE_FIELDS, strict, ignored, `${param}.`, ` in ${param}`);
  const c = msg.content;
  let content: string | null;
  if (c === undefined || c === null) {
    if (role !== "assistant") fail(`${param}.content`, `${param}.content is required for role ${role}`);
    content = null;
  } else if (typeof c === "string") {
    content = c;
  } else if (Array.isArray(c)) {
    if (c.length > MAX_CONTENT_PARTS) fail(`${param}.content`, `${param}.content may hold at most ${MAX_CONTENT_PARTS} parts, got ${c.length}`);
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
  const out: ChatMessageInput = { role, content };
  if (typeof msg.name === "string") out.name = msg.name;
  if (msg.tool_calls !== undefined && msg.tool_calls !== null) out.tool_calls = msg.tool_calls;
  if (typeof msg.tool_call_id === "string") out.tool_call_id = msg.tool_call_id;
  return out;
}

/**
 * Chat messages as given (`raw`: the body's messages), each normalised; unknown message fields go to
 * `ignored` (or are a 400 with `strict`). With `maxChars`, more characters of text than that is a 400.
 */
export function parseChatMessages(raw: unknown, strict: boolean, ignored: string[], maxChars?: number): ChatMessageInput[] {
  if (raw === undefined || raw === null) fail("messages", "messages is required");
  if (!Array.isArray(raw)) fail("messages", `messages must be a list, got ${typeName(raw)}`);
  if (raw.length === 0) fail("messages", "messages must not be empty");
  if (raw.length > MAX_CHAT_MESSAGES) fail("messages", `messages may hold at most ${MAX_CHAT_MESSAGES} messages, got ${raw.length}`);
  const messages = raw.map((m, i) => parseMessage(m, i, strict, ignored));
  if (maxChars !== undefined) {
    const chars = chatChars(messages);
    if (chars > maxChars) fail("messages", `the messages hold ${chars} characters of text; this server takes at most ${maxChars}`, "context_length_exceeded");
  }
  return messages;
}

/** Validate a POST /v1/chat/completions body up to rendering and tokenizing. Throws RequestValidationError (400) or ModelNotFoundError (404). */
export function planChatRequest(body: unknown, ctx: ValidationContext): RequestPlan {
  const b = asBody(body);
  const strict = ctx.strictApi === true;
  const ignoredFields: string[] = [];
  checkUnknown(b, CHAT_FIELDS, strict, ignoredFields);
  const f = new Fields(b);
  checkModel(f, ctx);
  const messages = parseChatMessages(f.raw("messages"), strict, ignoredFields);
  const common = parseCommonSampling(f, ctx);
  const structured = parseStructuredOutput(
    { responseFormat: f.raw("response_format"), tools: f.raw("tools"), toolChoice: f.raw("tool_choice") },
    ctx.checkSchema,
    fail,
  );
  f.boolean("parallel_tool_calls");
  const logprobsFlag = f.boolean("logprobs") ?? false;
  const topLogprobs = f.number("top_logprobs", { int: true, min: 0, max: MAX_LOGPROBS });
  if (topLogprobs !== undefined && !logprobsFlag) fail("top_logprobs", "top_logprobs requires logprobs to be true");
  const stream = f.boolean("stream") ?? false;
  const { includeUsage, continuousUsage } = parseStreamOptions(f, stream, strict, ignoredFields);
  const n = parseN(f, 1);
  const stop = parseStop(f, ctx.encoder !== null);
  const returnTokensAsTokenIds = f.boolean("return_tokens_as_token_ids") ?? false;
  const skipSpecialTokens = f.boolean("skip_special_tokens") ?? true;
  const addGenerationPrompt = f.boolean("add_generation_prompt") ?? true;
  const kwargs = f.object("chat_template_kwargs");
  // The tools go to the template as `tools` (transformers' convention), unless chat_template_kwargs sets it.
  const toolsVariable = structured.tools.map((t) => ({
    type: "function",
    function: { name: t.name, ...(t.description !== undefined ? { description: t.description } : {}), parameters: t.parameters },
  }));
  const templateVariables = toolsVariable.length > 0 ? { tools: toolsVariable, ...kwargs } : kwargs;
  const cacheSalt = parseCacheSalt(f);
  // max_completion_tokens is OpenAI's newer name; it wins when both are given.
  const maxCompletionTokens = parseMaxTokens(f, "max_completion_tokens");
  const legacyMaxTokens = parseMaxTokens(f, "max_tokens");
  const maxTokensGiven = maxCompletionTokens ?? legacyMaxTokens;
  if (ctx.encoder === null) fail("messages", "this model has no tokenizer (and no chat template): use /v1/completions with token ids");
  checkPromptChars(chatChars(messages), ctx, "messages");
  // The template rejects conversations it cannot render (roles out of order, ...): a 400 on messages (opFailure).
  const op: EncodeOp = { kind: "chat", messages, addGenerationPrompt, ...(templateVariables ? { templateVariables } : {}) };
  return {
    ops: [op],
    ignoredFields,
    finish(results: readonly EncodeResult[]): GenerationRequest {
      const tokenIds = idsResult(results[0]);
      if (tokenIds.length === 0) fail("messages", "the chat template rendered an empty prompt");
      checkTokenIds(tokenIds, "messages", ctx.vocabSize);
      const maxTokens = maxTokensGiven ?? ctx.maxModelLen - tokenIds.length;
      // The field the client used: max_completion_tokens wins over max_tokens.
      checkContext(tokenIds.length, maxTokens, ctx, "messages", maxCompletionTokens !== undefined ? "max_completion_tokens" : "max_tokens");
      checkMinTokens(common.minTokens ?? 0, maxTokens);
      const sampling: SamplingRequest = {
        ...common,
        maxTokens,
        logprobs: logprobsFlag ? (topLogprobs ?? 0) : null,
        ...(structured.grammar !== undefined ? { grammar: structured.grammar } : {}),
      };
      return {
        api: "chat",
        // Chat has no echo: the rendered prompt's text is not needed.
        prompts: [{ tokenIds, text: "" }],
        sampling: [sampling],
        stop,
        stream,
        includeUsage,
        echo: false,
        returnTokensAsTokenIds,
        skipSpecialTokens,
        cacheSalt,
        n,
        bestOf: n,
        continuousUsage,
        ignoredFields,
        ...(structured.parseToolCalls ? { parseToolCalls: true } : {}),
      };
    },
  };
}

/** Validate a POST /v1/chat/completions body, rendering and tokenizing on this thread. Throws RequestValidationError (400) or ModelNotFoundError (404). */
export function parseChatRequest(body: unknown, ctx: ValidationContext): GenerationRequest {
  return runPlan(planChatRequest(body, ctx), ctx.encoder);
}
