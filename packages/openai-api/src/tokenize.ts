/**
 * vLLM's POST /tokenize and POST /detokenize, validated into plain requests (the router runs the tokenizer).
 *
 * /tokenize takes either a prompt or chat messages (vLLM's TokenizeCompletionRequest / TokenizeChatRequest):
 *   {model?, prompt, add_special_tokens = true, return_token_strs = false}
 *   {model?, messages, add_generation_prompt = true, add_special_tokens = false, chat_template_kwargs?,
 *    return_token_strs = false}
 * and answers {count, max_model_len, tokens, token_strs} (token_strs null unless asked: the vocabulary's own
 * strings, as convert_ids_to_tokens gives them). /detokenize takes {model?, tokens} and answers {prompt}.
 * Unknown fields follow the generation endpoints: ignored and listed, or a 400 with strictApi.
 */
import { RequestValidationError } from "./errors.js";
import { defaultMaxPromptChars } from "./limits.js";
import { checkModel, parseChatMessages, type EncodeOp, type ModelLimits } from "./requests.js";

export interface TokenizeContext extends ModelLimits {
  /** false: this model has no tokenizer (both endpoints answer 400). */
  readonly hasTokenizer: boolean;
  readonly maxPromptChars?: number;
  readonly strictApi?: boolean;
}

export interface TokenizeRequest {
  /** The tokenizer operation: encode (prompt) or chat (messages). */
  readonly op: EncodeOp;
  readonly returnTokenStrs: boolean;
  readonly ignoredFields: readonly string[];
}

export interface TokenizeResponse {
  count: number;
  max_model_len: number;
  tokens: number[];
  token_strs: string[] | null;
}

export interface DetokenizeRequest {
  readonly tokens: readonly number[];
  readonly ignoredFields: readonly string[];
}

type Body = Record<string, unknown>;

const PROMPT_FIELDS: ReadonlySet<string> = new Set(["model", "prompt", "add_special_tokens", "return_token_strs"]);
const CHAT_FIELDS: ReadonlySet<string> = new Set([
  "model",
  "messages",
  "add_generation_prompt",
  "continue_final_message",
  "add_special_tokens",
  "chat_template_kwargs",
  "return_token_strs",
]);
const DETOKENIZE_FIELDS: ReadonlySet<string> = new Set(["model", "tokens"]);

function fail(param: string, message: string): never {
  throw new RequestValidationError(message, param);
}

function asBody(body: unknown): Body {
  if (typeof body !== "object" || body === null || Array.isArray(body)) fail("body", "the request body must be a JSON object");
  return body as Body;
}

function unknownFields(b: Body, allowed: ReadonlySet<string>, strict: boolean): string[] {
  const unknown = Object.keys(b).filter((k) => !allowed.has(k));
  if (strict && unknown.length > 0) fail(unknown[0]!, `unknown field${unknown.length > 1 ? "s" : ""}: ${unknown.join(", ")}`);
  return unknown;
}

function optBool(b: Body, name: string, fallback: boolean): boolean {
  const v = b[name];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== "boolean") fail(name, `${name} must be a boolean`);
  return v;
}

/** Validate a POST /tokenize body. Throws RequestValidationError (400) or ModelNotFoundError (404). */
export function parseTokenizeRequest(body: unknown, ctx: TokenizeContext): TokenizeRequest {
  const b = asBody(body);
  const strict = ctx.strictApi === true;
  checkModel(b, ctx);
  if (!ctx.hasTokenizer) fail(b.messages !== undefined ? "messages" : "prompt", "this model has no tokenizer");
  const maxChars = ctx.maxPromptChars ?? defaultMaxPromptChars(ctx.maxModelLen);
  const returnTokenStrs = optBool(b, "return_token_strs", false);
  if (b.messages !== undefined && b.messages !== null) {
    const ignoredFields = unknownFields(b, CHAT_FIELDS, strict);
    if (b.prompt !== undefined) fail("prompt", "give either prompt or messages, not both");
    const messages = parseChatMessages(b.messages, strict, ignoredFields, maxChars);
    if (optBool(b, "continue_final_message", false)) fail("continue_final_message", "continue_final_message is not supported by this server");
    const addGenerationPrompt = optBool(b, "add_generation_prompt", true);
    // The chat template writes its own special tokens (BOS); add_special_tokens true would add none here.
    optBool(b, "add_special_tokens", false);
    const kw = b.chat_template_kwargs;
    if (kw !== undefined && kw !== null && (typeof kw !== "object" || Array.isArray(kw)))
      fail("chat_template_kwargs", "chat_template_kwargs must be an object");
    const op: EncodeOp = {
      kind: "chat",
      messages,
      addGenerationPrompt,
      ...(kw !== undefined && kw !== null ? { templateVariables: kw as Record<string, unknown> } : {}),
    };
    return { op, returnTokenStrs, ignoredFields };
  }
  const ignoredFields = unknownFields(b, PROMPT_FIELDS, strict);
  const prompt = b.prompt;
  if (prompt === undefined || prompt === null) fail("prompt", "prompt (or messages) is required");
  if (typeof prompt !== "string") fail("prompt", "prompt must be a string");
  if (prompt.length > maxChars) fail("prompt", `the prompt has ${prompt.length} characters; this server takes at most ${maxChars}`);
  const addSpecialTokens = optBool(b, "add_special_tokens", true);
  return { op: { kind: "encode", text: prompt, addSpecialTokens }, returnTokenStrs, ignoredFields };
}

/** Validate a POST /detokenize body. Throws RequestValidationError (400) or ModelNotFoundError (404). */
export function parseDetokenizeRequest(body: unknown, ctx: TokenizeContext): DetokenizeRequest {
  const b = asBody(body);
  const ignoredFields = unknownFields(b, DETOKENIZE_FIELDS, ctx.strictApi === true);
  checkModel(b, ctx);
  if (!ctx.hasTokenizer) fail("tokens", "this model has no tokenizer");
  const tokens = b.tokens;
  if (!Array.isArray(tokens)) fail("tokens", "tokens must be a list of token ids");
  if (tokens.length > ctx.maxModelLen) fail("tokens", `tokens may hold at most ${ctx.maxModelLen} ids (the context length), got ${tokens.length}`);
  tokens.forEach((id, i) => {
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0 || id >= ctx.vocabSize) {
      fail("tokens", `tokens[${i}] must be a token id in 0..${ctx.vocabSize - 1}, got ${JSON.stringify(id)}`);
    }
  });
  return { tokens: tokens as number[], ignoredFields };
}
