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
  type GenerationRequest,
  type PromptInput,
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
