/**
 * The bench's client for OpenAI-compatible servers (moela's router, vLLM, SGLang, ...): POST
 * /v1/completions or /v1/chat/completions with stream: true, read the SSE stream with fetch, and turn
 * each chunk into StreamEvents.
 *
 * Counting tokens per chunk, best source first:
 * 1. per-chunk usage (stream_options.continuous_usage_stats, a vLLM extension asked for by default):
 *    the growth of usage.completion_tokens;
 * 2. logprobs in the chunk (when the request asks for them): one entry per token;
 * 3. otherwise a chunk with text counts as one token (vLLM's bench does the same), marked inexact.
 * The final usage chunk (stream_options.include_usage) gives the request's exact output and prompt
 * token counts. A chunk with no text and no count (a role header, a bare finish) is not a token.
 *
 * ignore_eos (vLLM, SGLang and moela accept it) makes every request produce exactly max_tokens tokens,
 * so two targets do the same work; turn it off for servers that reject unknown fields.
 */
import { errorMessage, InvalidArgumentError } from "@moela/core";
import { SseParser } from "./sse.js";
import type { StreamEvent, Target } from "./target.js";
import type { RequestSpec } from "./workload.js";

export type Api = "completions" | "chat";

export interface OpenAiTargetOptions {
  readonly name: string;
  /** The server's OpenAI base URL, with or without the trailing /v1. */
  readonly baseUrl: string;
  readonly model: string;
  readonly api: Api;
  readonly ignoreEos: boolean;
  /** Ask for usage in every chunk (stream_options.continuous_usage_stats). */
  readonly continuousUsage: boolean;
  readonly temperature: number;
  /** Per-request limit, ms. */
  readonly timeoutMs: number;
  readonly apiKey?: string;
  /** Extra fields merged into every request body. */
  readonly extraBody?: Readonly<Record<string, unknown>>;
}

/** "http://h:8000", "http://h:8000/", "http://h:8000/v1/" -> "http://h:8000/v1". */
export function normalizeBaseUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch (err) {
    throw new InvalidArgumentError(`not a URL: "${url}"`, { cause: err });
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new InvalidArgumentError(`not an http(s) URL: "${url}"`);
  const path = u.pathname.replace(/\/+$/, "");
  u.pathname = path.endsWith("/v1") ? path : `${path}/v1`;
  return u.toString().replace(/\/+$/, "");
}

function headers(apiKey: string | undefined): Record<string, string> {
  return { "content-type": "application/json", ...(apiKey !== undefined ? { authorization: `Bearer ${apiKey}` } : {}) };
}

async function httpError(res: Response): Promise<Error> {
  const body = await res.text().catch(() => "");
  let message = body.slice(0, 300);
  try {
    const j = JSON.parse(body) as { error?: { message?: string } | string; message?: string };
    message = (typeof j.error === "string" ? j.error : j.error?.message) ?? j.message ?? message;
  } catch {
    // not JSON: keep the text
  }
  return new Error(`HTTP ${res.status}: ${message}`);
}

/** The first model GET /v1/models lists (what the bench sends when --model is not given). */
export async function fetchModelName(baseUrl: string, opts: { apiKey?: string; timeoutMs?: number } = {}): Promise<string> {
  const url = `${normalizeBaseUrl(baseUrl)}/models`;
  let res: Response;
  try {
    res = await fetch(url, { headers: headers(opts.apiKey), signal: AbortSignal.timeout(opts.timeoutMs ?? 10_000) });
  } catch (err) {
    throw new InvalidArgumentError(`cannot reach ${url}: ${errorMessage(err)}`, { cause: err });
  }
  if (!res.ok) throw new InvalidArgumentError(`GET ${url}: ${(await httpError(res)).message}`);
  const body = (await res.json()) as { data?: { id?: unknown }[] };
  const id = body.data?.[0]?.id;
  if (typeof id !== "string") throw new InvalidArgumentError(`GET ${url} lists no model`);
  return id;
}

interface Chunk {
  error?: { message?: string } | string;
  choices?: { text?: string; delta?: { content?: string | null }; logprobs?: { tokens?: unknown[]; content?: unknown[] } | null }[];
  usage?: { prompt_tokens?: number; completion_tokens?: number } | null;
}

/** Turns decoded chunks into events; keeps the running usage count between chunks. */
export class ChunkCounter {
  private completion = 0;

  events(data: string): StreamEvent[] {
    let c: Chunk;
    try {
      c = JSON.parse(data) as Chunk;
    } catch (err) {
      throw new Error(`bad SSE data: ${data.slice(0, 200)}`, { cause: err });
    }
    if (c.error !== undefined) throw new Error(`stream error: ${typeof c.error === "string" ? c.error : (c.error.message ?? JSON.stringify(c.error))}`);
    const out: StreamEvent[] = [];
    const choice = c.choices?.[0];
    const usage = c.usage ?? undefined;
    if (choice !== undefined) {
      const text = choice.text ?? choice.delta?.content ?? "";
      const lp = choice.logprobs?.tokens ?? choice.logprobs?.content;
      if (usage?.completion_tokens !== undefined) {
        const n = usage.completion_tokens - this.completion;
        if (n > 0) out.push({ kind: "tokens", tokens: n, exact: true });
      } else if (Array.isArray(lp) && lp.length > 0) {
        out.push({ kind: "tokens", tokens: lp.length, exact: true });
      } else if (text !== "") {
        out.push({ kind: "tokens", tokens: 1, exact: false });
      }
    }
    if (usage?.completion_tokens !== undefined) {
      this.completion = usage.completion_tokens;
      out.push({ kind: "usage", promptTokens: usage.prompt_tokens ?? 0, completionTokens: usage.completion_tokens });
    }
    return out;
  }
}

export function openAiTarget(o: OpenAiTargetOptions): Target {
  const base = normalizeBaseUrl(o.baseUrl);
  const url = `${base}/${o.api === "chat" ? "chat/completions" : "completions"}`;
  const streamOptions = { include_usage: true, ...(o.continuousUsage ? { continuous_usage_stats: true } : {}) };
  const body = (spec: RequestSpec): Record<string, unknown> => {
    const common = {
      model: o.model,
      max_tokens: spec.maxTokens,
      temperature: o.temperature,
      stream: true,
      stream_options: streamOptions,
      ...(o.ignoreEos ? { ignore_eos: true } : {}),
      ...o.extraBody,
    };
    if (o.api === "completions") return { ...common, prompt: spec.prompt };
    if (typeof spec.prompt !== "string") throw new InvalidArgumentError("the chat API needs text prompts (--prompt words)");
    return { ...common, messages: [{ role: "user", content: spec.prompt }] };
  };
  return {
    name: o.name,
    url: base,
    async *generate(spec: RequestSpec, signal: AbortSignal): AsyncIterable<StreamEvent> {
      const res = await fetch(url, {
        method: "POST",
        headers: headers(o.apiKey),
        body: JSON.stringify(body(spec)),
        signal: AbortSignal.any([signal, AbortSignal.timeout(o.timeoutMs)]),
      }).catch((err: unknown) => {
        throw new Error(describeFetchError(err, o.timeoutMs), { cause: err });
      });
      if (!res.ok) throw await httpError(res);
      if (res.body === null) throw new Error("response has no body");
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      const sse = new SseParser();
      const counter = new ChunkCounter();
      let done = false;
      try {
        for (;;) {
          const r = await reader.read().catch((err: unknown) => {
            throw new Error(describeFetchError(err, o.timeoutMs), { cause: err });
          });
          const datas = r.done ? sse.end() : sse.push(decoder.decode(r.value, { stream: true }));
          for (const d of datas) {
            if (d.trim() === "[DONE]") {
              done = true;
              break;
            }
            yield* counter.events(d);
          }
          if (done || r.done) break;
        }
      } finally {
        // Frees the connection whether the stream ended, failed or the caller stopped early.
        await reader.cancel().catch(() => {});
      }
      if (!done) throw new Error("stream ended without [DONE]");
    },
  };
}

function describeFetchError(err: unknown, timeoutMs: number): string {
  if (err instanceof Error && (err.name === "TimeoutError" || (err.cause instanceof Error && err.cause.name === "TimeoutError"))) {
    return `timed out after ${timeoutMs / 1000} s`;
  }
  if (err instanceof Error && err.name === "AbortError") return "aborted";
  const cause = err instanceof Error && err.cause instanceof Error ? `: ${err.cause.message}` : "";
  return `${errorMessage(err)}${cause}`;
}
