/**
 * OpenAI response bodies and SSE chunks for completions and chat, and the two logprobs formats.
 *
 * Completions logprobs (legacy format): {tokens, token_logprobs, top_logprobs, text_offset}, one entry per
 * token. top_logprobs[i] is a dict token -> logprob of the requested alternatives plus the sampled token
 * (so up to logprobs + 1 entries, as OpenAI documents and vLLM does). Echoed prompt tokens carry null
 * logprob and null top_logprobs (prompt logprobs are not computed). text_offset is each token's start in
 * the choice's text (after the echoed prompt, when echoing), counted in UTF-16 code units of the token
 * strings, as vLLM counts it.
 * Chat logprobs: {content: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}, top list
 * best first, exactly top_logprobs long.
 * With return_tokens_as_token_ids (vLLM) every token string is "token_id:<id>".
 * Logprobs of -Infinity (a token the model rules out) become -9999.0, as vLLM does, since JSON has no
 * infinity.
 */
import { randomUUID } from "node:crypto";
import type { ToolCall } from "./structured.js";

export type FinishReason = "stop" | "length";

/** One generated token as the router has it from decode. */
export interface GeneratedToken {
  readonly id: number;
  /** Present when the request asked for logprobs. */
  readonly logprob?: number;
  /** The best alternatives, best first (as many as asked for). */
  readonly top?: readonly { readonly id: number; readonly logprob: number }[];
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** Present when some prompt tokens' KV came from prefill's prefix cache. */
  prompt_tokens_details?: { cached_tokens: number };
}

export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

export interface ChatLogprobEntry {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

export interface ChatLogprobs {
  content: ChatLogprobEntry[];
}

/** Token id -> its text (the tokenizer's decode of that one id, special tokens shown). */
export type TokenText = (id: number) => string;

/** How token strings are rendered in logprobs. */
export function tokenRenderer(tokenText: TokenText, returnTokensAsTokenIds: boolean): TokenText {
  return returnTokensAsTokenIds ? (id) => `token_id:${id}` : tokenText;
}

export function newCompletionId(): string {
  return `cmpl-${randomUUID().replaceAll("-", "")}`;
}

export function newChatCompletionId(): string {
  return `chatcmpl-${randomUUID().replaceAll("-", "")}`;
}

/** Seconds since the epoch, as OpenAI's `created`. */
export function createdNow(): number {
  return Math.floor(Date.now() / 1000);
}

/** vLLM's stand-in for -Infinity. */
const MIN_LOGPROB = -9999.0;

export function jsonLogprob(lp: number): number {
  return Number.isFinite(lp) ? lp : MIN_LOGPROB;
}

export function usageOf(promptTokens: number, completionTokens: number, cachedPromptTokens = 0): Usage {
  const usage: Usage = { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
  if (cachedPromptTokens > 0) usage.prompt_tokens_details = { cached_tokens: cachedPromptTokens };
  return usage;
}

/**
 * Builds completions logprobs across the chunks of one choice (text_offset runs on from chunk to chunk).
 * `startOffset` is where the first token starts in the choice's text (0; or the echoed prompt's length
 * when the prompt's own tokens are not listed).
 */
export class CompletionLogprobsBuilder {
  private offset: number;
  constructor(
    private readonly render: TokenText,
    startOffset = 0,
  ) {
    this.offset = startOffset;
  }

  /** Entries for prompt tokens (echo): null logprobs. */
  prompt(ids: readonly number[]): CompletionLogprobs {
    return this.build(
      ids.map((id) => ({ id })),
      true,
    );
  }

  /** Entries for generated tokens. */
  generated(tokens: readonly GeneratedToken[]): CompletionLogprobs {
    return this.build(tokens, false);
  }

  private build(tokens: readonly GeneratedToken[], isPrompt: boolean): CompletionLogprobs {
    const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
    for (const t of tokens) {
      const text = this.render(t.id);
      out.tokens.push(text);
      out.text_offset.push(this.offset);
      this.offset += text.length;
      if (isPrompt || t.logprob === undefined) {
        out.token_logprobs.push(null);
        out.top_logprobs.push(null);
        continue;
      }
      out.token_logprobs.push(jsonLogprob(t.logprob));
      const top: Record<string, number> = {};
      for (const alt of t.top ?? []) {
        const key = this.render(alt.id);
        // Two ids can render to the same string; the better (earlier) one keeps the key.
        if (!Object.hasOwn(top, key)) top[key] = jsonLogprob(alt.logprob);
      }
      if (!Object.hasOwn(top, text)) top[text] = jsonLogprob(t.logprob);
      out.top_logprobs.push(top);
    }
    return out;
  }
}

/** Concatenate completions logprobs of consecutive chunks (for a non-streamed response). */
export function concatCompletionLogprobs(parts: readonly CompletionLogprobs[]): CompletionLogprobs {
  return {
    tokens: parts.flatMap((p) => p.tokens),
    token_logprobs: parts.flatMap((p) => p.token_logprobs),
    top_logprobs: parts.flatMap((p) => p.top_logprobs),
    text_offset: parts.flatMap((p) => p.text_offset),
  };
}

function utf8Bytes(s: string): number[] {
  return [...Buffer.from(s, "utf8")];
}

/** Chat logprobs entries for generated tokens (they must carry logprobs). */
export function chatLogprobEntries(tokens: readonly GeneratedToken[], render: TokenText): ChatLogprobEntry[] {
  return tokens.map((t) => {
    const token = render(t.id);
    return {
      token,
      logprob: jsonLogprob(t.logprob ?? 0),
      bytes: utf8Bytes(token),
      top_logprobs: (t.top ?? []).map((alt) => {
        const s = render(alt.id);
        return { token: s, logprob: jsonLogprob(alt.logprob), bytes: utf8Bytes(s) };
      }),
    };
  });
}

// ---- completions -------------------------------------------------------------------------------

export interface CompletionChoice {
  index: number;
  text: string;
  logprobs: CompletionLogprobs | null;
  finish_reason: FinishReason | null;
}

export interface CompletionResponse {
  id: string;
  object: "text_completion";
  created: number;
  model: string;
  choices: CompletionChoice[];
  usage: Usage | null;
}

export function completionResponse(id: string, created: number, model: string, choices: CompletionChoice[], usage: Usage): CompletionResponse {
  return { id, object: "text_completion", created, model, choices, usage };
}

/** One streamed chunk: a choice's delta (usage null), or the final usage chunk (choices empty). */
export function completionChunk(id: string, created: number, model: string, choice: CompletionChoice | null, usage: Usage | null = null): CompletionResponse {
  return { id, object: "text_completion", created, model, choices: choice === null ? [] : [choice], usage };
}

// ---- chat --------------------------------------------------------------------------------------

/** A chat choice also ends in "tool_calls" when its output held tool calls (structured.ts). */
export type ChatFinishReason = FinishReason | "tool_calls";

export interface ChatChoice {
  index: number;
  /** content null: the message is tool calls only. */
  message: { role: "assistant"; content: string | null; tool_calls?: ToolCall[] };
  logprobs: ChatLogprobs | null;
  finish_reason: ChatFinishReason;
}

export interface ChatResponse {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  choices: ChatChoice[];
  usage: Usage;
}

export function chatResponse(id: string, created: number, model: string, choices: ChatChoice[], usage: Usage): ChatResponse {
  return { id, object: "chat.completion", created, model, choices, usage };
}

/** A streamed tool call: each call comes whole, in one chunk (its arguments complete). */
export interface ToolCallDelta extends ToolCall {
  index: number;
}

export interface ChatChunkChoice {
  index: number;
  delta: { role?: "assistant"; content?: string; tool_calls?: ToolCallDelta[] };
  logprobs: ChatLogprobs | null;
  finish_reason: ChatFinishReason | null;
}

export interface ChatChunk {
  id: string;
  object: "chat.completion.chunk";
  created: number;
  model: string;
  choices: ChatChunkChoice[];
  /** Present (null) on every chunk when the client asked for usage; set on the final usage chunk. */
  usage?: Usage | null;
}

/**
 * One chat chunk. `includeUsage` adds `usage: null` to ordinary chunks (OpenAI: "all other chunks will also
 * include a usage field, but with a null value"); a usage chunk has no choices.
 */
export function chatChunk(
  id: string,
  created: number,
  model: string,
  choice: ChatChunkChoice | null,
  includeUsage: boolean,
  usage: Usage | null = null,
): ChatChunk {
  const chunk: ChatChunk = { id, object: "chat.completion.chunk", created, model, choices: choice === null ? [] : [choice] };
  if (includeUsage) chunk.usage = usage;
  return chunk;
}

// ---- SSE ---------------------------------------------------------------------------------------

/** One server-sent event carrying `value` as JSON. */
export function sseData(value: unknown): string {
  return `data: ${JSON.stringify(value)}\n\n`;
}

/** The terminator OpenAI streams end with. */
export const SSE_DONE = "data: [DONE]\n\n";
