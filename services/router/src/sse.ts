/**
 * The streamed (SSE) answers of /v1/completions and /v1/chat/completions. Nothing is written before the
 * first event of the generation is in, so a request the cluster refuses at once still gets a plain HTTP
 * error; an error after that is sent in band (http-handlers.ts) before `data: [DONE]`, as vLLM does.
 */
import { once } from "node:events";
import type { ServerResponse } from "node:http";
import {
  chatChunk,
  chatLogprobEntries,
  extractToolCalls,
  streamableContent,
  completionChunk,
  CompletionLogprobsBuilder,
  createdNow,
  SSE_DONE,
  sseData,
  usageOf,
  type FinishReason,
  type GenerationRequest,
  type PromptInput,
  type TokenText,
  type Usage,
} from "@moela/openai-api";
import type { FastifyReply } from "fastify";
import { IGNORED_FIELDS_HEADER, INTERNAL_ID_HEADER, mergeEvents, renderTokens, type RouterContext } from "./api-common.js";
import type { GenerateEvent } from "./backend.js";

/** Write to a raw response, waiting for room; resolves false when the client is gone. */
export async function writeRaw(raw: ServerResponse, chunk: string): Promise<boolean> {
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
 * Streams the generations' events as SSE chunks of the completions or chat format, then `data: [DONE]`.
 * Ends early, without [DONE], when the client is gone.
 */
export async function streamGeneration(
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
  const events = mergeEvents(gens);
  // Nothing is written before the first event: an immediate refusal is still a plain HTTP error.
  const first = await events.next();
  reply.hijack();
  const raw = reply.raw;
  const ignored = reply.getHeader(IGNORED_FIELDS_HEADER);
  raw.writeHead(200, { ...sseHeaders(publicId, requestId), ...(typeof ignored === "string" ? { [IGNORED_FIELDS_HEADER]: ignored } : {}) });
  const answer = new SseAnswer(raw, id, created, ctx, parsed, gens.length);
  const whole = api === "completions" ? await streamCompletions(answer, first, events) : await streamChat(answer, first, events);
  if (whole) raw.end(SSE_DONE);
}

type Events = AsyncGenerator<{ index: number; event: GenerateEvent }>;

/** One streamed answer: where its chunks go, what they share, and the tokens counted so far. */
class SseAnswer {
  readonly model: string;
  readonly render: TokenText;
  readonly wantLogprobs: boolean;
  private completionTokens = 0;
  private cachedPromptTokens = 0;
  /** Tokens sent so far, per choice. */
  private readonly sent: number[];

  constructor(
    private readonly raw: ServerResponse,
    private readonly id: string,
    private readonly created: number,
    ctx: RouterContext,
    readonly parsed: GenerationRequest,
    readonly choices: number,
  ) {
    this.model = ctx.validation.servedModelName;
    this.render = renderTokens(ctx, parsed);
    this.wantLogprobs = parsed.sampling[0]!.logprobs !== null;
    this.sent = new Array<number>(choices).fill(0);
  }

  promptOf(g: number): PromptInput {
    return this.parsed.prompts[Math.floor(g / this.parsed.n)]!;
  }

  /** Counts choice `index`'s event: the usage totals and the choice's tokens so far. */
  count(index: number, event: GenerateEvent): void {
    if (event.usage) this.completionTokens += event.usage.completionTokens;
    this.cachedPromptTokens += event.usage?.cachedPromptTokens ?? 0;
    this.sent[index] = event.usage?.completionTokens ?? this.sent[index]! + event.tokens.length;
  }

  /** stream_options.continuous_usage_stats: each chunk carries its choice's usage so far (as vLLM counts it). */
  usageSoFar(g: number): Usage | null {
    return this.parsed.continuousUsage ? usageOf(this.promptOf(g).tokenIds.length, this.sent[g]!) : null;
  }

  /** The whole request's usage, for the last chunk. */
  totalUsage(): Usage {
    const promptTokens = this.parsed.prompts.reduce((n, p) => n + p.tokenIds.length, 0);
    return usageOf(promptTokens, this.completionTokens, this.cachedPromptTokens);
  }

  /** Writes a completions chunk; false when the client is gone. */
  completion(choice: Parameters<typeof completionChunk>[3], usage: Usage | null): Promise<boolean> {
    return writeRaw(this.raw, sseData(completionChunk(this.id, this.created, this.model, choice, usage)));
  }

  /** Writes a chat chunk; false when the client is gone. */
  chat(choice: Parameters<typeof chatChunk>[3], includeUsage: boolean, usage: Usage | null): Promise<boolean> {
    return writeRaw(this.raw, sseData(chatChunk(this.id, this.created, this.model, choice, includeUsage, usage)));
  }
}

/** The completions format: the echoed prompts first, then a chunk per event. False when the client went away. */
async function streamCompletions(a: SseAnswer, first: IteratorResult<{ index: number; event: GenerateEvent }>, events: Events): Promise<boolean> {
  const builders = Array.from({ length: a.choices }, () => new CompletionLogprobsBuilder(a.render));
  if (a.parsed.echo) {
    for (let index = 0; index < a.choices; index++) {
      const p = a.promptOf(index);
      const logprobs = a.wantLogprobs ? builders[index]!.prompt(p.tokenIds) : null;
      await a.completion({ index, text: p.text, logprobs, finish_reason: null }, a.usageSoFar(index));
    }
  }
  for (let next = first; !next.done; next = await events.next()) {
    const { index, event } = next.value;
    a.count(index, event);
    const logprobs = a.wantLogprobs ? builders[index]!.generated(event.tokens) : null;
    const choice = { index, text: event.text, logprobs, finish_reason: event.finishReason };
    if (!(await a.completion(choice, a.usageSoFar(index)))) return false;
  }
  if (a.parsed.includeUsage) await a.completion(null, a.totalUsage());
  return true;
}

/** The chat format: each choice's role, a chunk per event with text or logprobs, its end. False when the client went away. */
async function streamChat(a: SseAnswer, first: IteratorResult<{ index: number; event: GenerateEvent }>, events: Events): Promise<boolean> {
  const include = a.parsed.includeUsage;
  for (let index = 0; index < a.choices; index++) {
    const role = { index, delta: { role: "assistant" as const, content: "" }, logprobs: null, finish_reason: null };
    await a.chat(role, include, a.usageSoFar(index));
  }
  // Tools offered: text that may be (the start of) a tool call is held back until the choice ends, then its
  // calls go out whole in one delta.tool_calls chunk (structured.ts).
  const tools = a.parsed.parseToolCalls === true ? new ToolCallHoldback(a.choices) : null;
  for (let next = first; !next.done; next = await events.next()) {
    const { index, event } = next.value;
    a.count(index, event);
    const text = tools === null ? event.text : tools.release(index, event);
    if (text.length > 0 || (a.wantLogprobs && event.tokens.length > 0)) {
      const logprobs = a.wantLogprobs ? { content: chatLogprobEntries(event.tokens, a.render) } : null;
      if (!(await a.chat({ index, delta: { content: text }, logprobs, finish_reason: null }, include, a.usageSoFar(index)))) return false;
    }
    if (event.finishReason !== null && !(await endChatChoice(a, index, event.finishReason, tools))) return false;
  }
  if (include) await a.chat(null, true, a.totalUsage());
  return true;
}

/** The end of chat choice `index`: its tool calls whole (when it made any), then its finish reason. False when the client went away. */
async function endChatChoice(a: SseAnswer, index: number, finishReason: FinishReason, tools: ToolCallHoldback | null): Promise<boolean> {
  const include = a.parsed.includeUsage;
  const calls = tools === null ? null : extractToolCalls(tools.text(index));
  if (calls !== null) {
    const delta = { tool_calls: calls.calls.map((c, i) => ({ index: i, ...c })) };
    if (!(await a.chat({ index, delta, logprobs: null, finish_reason: null }, include, a.usageSoFar(index)))) return false;
  }
  const finish = calls === null ? finishReason : "tool_calls";
  await a.chat({ index, delta: {}, logprobs: null, finish_reason: finish }, include, a.usageSoFar(index));
  return true;
}

/** Per chat choice, the text held back while it may be (the start of) a tool call. */
class ToolCallHoldback {
  private readonly all: string[];
  private readonly sent: number[];

  constructor(choices: number) {
    this.all = new Array<string>(choices).fill("");
    this.sent = new Array<number>(choices).fill(0);
  }

  /** The part of choice `index`'s text that may go out now that `event` came. */
  release(index: number, event: GenerateEvent): string {
    const all = (this.all[index] += event.text);
    const upTo = event.finishReason !== null && extractToolCalls(all) === null ? all.length : streamableContent(all);
    const text = all.slice(this.sent[index], Math.max(upTo, this.sent[index]!));
    this.sent[index] = Math.max(upTo, this.sent[index]!);
    return text;
  }

  /** All of choice `index`'s text so far. */
  text(index: number): string {
    return this.all[index]!;
  }
}
