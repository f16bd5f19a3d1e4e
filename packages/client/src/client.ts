/**
 * MoelaClient: the router's gRPC Generate API for TypeScript applications.
 *
 *   const client = new MoelaClient({ address: "127.0.0.1:50051" });
 *   for await (const ev of client.generate({ prompt: "Hello", maxTokens: 16 }, { deadlineMs: 30_000 })) {
 *     process.stdout.write(ev.text);
 *   }
 *
 * Retries: a call that fails with UNAVAILABLE before its first response message is made again,
 * with exponential backoff and full jitter, up to `maxRetries` times and never past the deadline.
 * RESOURCE_EXHAUSTED (the router's admission queue is full; it is only ever sent before the first
 * message) is retried the same way, after the wait its `retry-after` trailing metadata names
 * (seconds, as HTTP's Retry-After; the router sends 1) instead of the backoff; a wait longer than
 * `maxRetryAfterMs` or past the deadline is not waited for, and the error reaches the caller.
 *
 * Deadlines: every call has one. generate() defaults to 600 s (the router's own --request-timeout-s
 * default: past it the router gives up anyway), listModels() to 10 s; `deadlineMs: Infinity` turns it off.
 * Once a message has arrived nothing is retried (the tokens already delivered would come twice),
 * so the error reaches the caller. Every attempt carries the same request id, which the client
 * makes when the caller gives none, so the server's logs show the retries as one request (the router
 * runs each attempt as `<request id>-<12 hex>`, so they never collide with each other or anyone else).
 *
 * Authentication: with `apiKey`, every call carries `authorization: Bearer <key>` metadata, what the
 * router's --api-key asks for; a missing or wrong key fails with UnauthenticatedError (not retried).
 */
import { randomUUID } from "node:crypto";
import {
  type CallOptions,
  type ChannelCredentials,
  type ChannelOptions,
  type ClientReadableStream,
  credentials as grpcCredentials,
  Metadata,
} from "@grpc/grpc-js";
import {
  CancelledError,
  type Clock,
  DeadlineExceededError,
  InvalidArgumentError,
  type MoelaError,
  realClock,
  ResourceExhaustedError,
  UnavailableError,
} from "@moela/core";
import {
  FinishReason as WireFinishReason,
  GenerateClient,
  GenerateRequest as WireGenerateRequest,
  type GenerateResponse,
  type ListModelsResponse,
} from "@moela/proto-gen";
import { codeName, toMoelaError } from "./errors.js";
import { Stream } from "./stream.js";

/** One message of a conversation. */
export interface ChatMessage {
  readonly role: "system" | "user" | "assistant" | "tool";
  /** An assistant turn that only calls tools has "" here and `toolCalls`. */
  readonly content: string;
  /** An assistant turn's tool calls, as an event's `toolCalls` gave them. */
  readonly toolCalls?: readonly ToolCall[];
  /** A "tool" turn: the id of the call it answers. */
  readonly toolCallId?: string;
}

/** One function call the model made (parsed by the router from DeepSeek-V3's tool-call format). */
export interface ToolCall {
  readonly id: string;
  readonly name: string;
  /** JSON text (valid against the function's parameters when the call was forced). */
  readonly arguments: string;
}

/** A function the model may call (OpenAI's function tool). */
export interface Tool {
  readonly name: string;
  readonly description?: string;
  /** A JSON schema of the arguments object (the server's supported subset); unset: no arguments. */
  readonly parameters?: unknown;
}

/** What to generate from: a prompt, or a conversation rendered with the served model's chat template. */
export type GenerateInput =
  | {
      /** Text (tokenized by the router; no chat template) or token ids of the served model. */
      readonly prompt: string | readonly number[];
      readonly messages?: never;
    }
  | {
      /** A conversation: the router renders it with the model's chat template (as /v1/chat/completions does) and generates the assistant's reply. */
      readonly messages: readonly ChatMessage[];
      readonly prompt?: never;
    };

/** One generation request: `prompt` or `messages`, and options. Unset sampling fields take the server's defaults (see common.proto). */
export type GenerateRequest = GenerateInput & GenerateParams;

export interface GenerateParams {
  /** Most tokens to generate; unset: the router's default. */
  readonly maxTokens?: number;
  /** 0 is greedy; unset: 1. */
  readonly temperature?: number;
  readonly topP?: number;
  readonly topK?: number;
  /** Same seed, prompt and parameters give the same tokens. */
  readonly seed?: number;
  /** Stop strings (not part of the output text). */
  readonly stop?: readonly string[];
  readonly stopTokenIds?: readonly number[];
  /** 0: the sampled token's logprob; N: also the N most likely alternatives (at most 20). */
  readonly logprobs?: number;
  readonly ignoreEos?: boolean;
  /** vLLM's penalties: presence and frequency in [-2, 2] (0 off), repetition in (0, 2] (1 off). */
  readonly presencePenalty?: number;
  readonly frequencyPenalty?: number;
  readonly repetitionPenalty?: number;
  /** Token id -> bias in [-100, 100], added to its logit (-100 bans it). */
  readonly logitBias?: Readonly<Record<number, number>>;
  /** Drop tokens less likely than minP times the most likely one; [0, 1], 0 off. */
  readonly minP?: number;
  /** EOS and stopTokenIds cannot end the output before this many tokens. */
  readonly minTokens?: number;
  /** Choices to generate (OpenAI's n): the events of choice k carry index k; complete() takes one. */
  readonly n?: number;
  /** Must equal the served model id when set. */
  readonly model?: string;
  /** Shows in every service's logs; unset: the client makes one (`req-<uuid>`). */
  readonly requestId?: string;
  /** Lower runs first when the queue is contended. */
  readonly priority?: number;
  /** Per-tenant salt of the prompt's prefix-cache keys (vLLM's cache_salt): only equal salts share cached prefixes. */
  readonly cacheSalt?: string;
  /** Constrain the output to JSON (OpenAI's response_format): any object, or a value valid against a JSON schema. */
  readonly responseFormat?: ResponseFormat;
  /** Chat only: functions the model may call; the last event of a choice then carries its `toolCalls`. */
  readonly tools?: readonly Tool[];
  /** "auto" (the default with tools), "none", "required" (one call of some tool) or `{ name }` (one call of that one). */
  readonly toolChoice?: "none" | "auto" | "required" | { readonly name: string };
}

/** OpenAI's response_format; the schema subset the server supports is in its docs (a 400 names anything else). */
export type ResponseFormat =
  | { readonly type: "text" }
  | { readonly type: "json_object" }
  | { readonly type: "json_schema"; readonly json_schema: { readonly name: string; readonly schema: unknown; readonly strict?: boolean } };

export type FinishReason = "stop" | "length";

export interface TopLogprob {
  readonly tokenId: number;
  readonly logprob: number;
}

export interface TokenLogprob {
  /** Natural-log probability of the sampled token under the model (before temperature etc.). */
  readonly logprob: number;
  /** Most likely alternatives first. */
  readonly top: readonly TopLogprob[];
}

export interface Usage {
  readonly promptTokens: number;
  readonly completionTokens: number;
  readonly cachedPromptTokens: number;
  /** MTP draft tokens proposed and accepted. */
  readonly draftTokens: number;
  readonly acceptedDraftTokens: number;
}

/** One streamed message: the tokens and text since the previous one; the last carries finishReason and usage. */
export interface GenerateEvent {
  readonly requestId: string;
  readonly tokenIds: readonly number[];
  /** May lag tokenIds (an unfinished UTF-8 character or a possible stop string is held back). */
  readonly text: string;
  /** Parallel to tokenIds when the request asked for logprobs. */
  readonly logprobs: readonly TokenLogprob[];
  readonly finishReason?: FinishReason;
  readonly usage?: Usage;
  /** The choice these tokens belong to (0 unless the request asked for n > 1). */
  readonly index: number;
  /** The last event of a choice whose output holds tool calls (the request had tools). */
  readonly toolCalls?: readonly ToolCall[];
}

/** A whole generation (`MoelaClient.complete`). */
export interface Completion {
  readonly requestId: string;
  readonly text: string;
  readonly tokenIds: readonly number[];
  readonly finishReason: FinishReason | undefined;
  readonly usage: Usage | undefined;
  /** The tool calls the output holds (the request had tools); empty otherwise. */
  readonly toolCalls: readonly ToolCall[];
}

export interface GenerateOptions {
  /** Aborting cancels the call everywhere; the iteration throws CancelledError. */
  readonly signal?: AbortSignal;
  /** Time for the whole call, retries included; then DeadlineExceededError. Default: the client's; Infinity: none. */
  readonly deadlineMs?: number;
  /** Override the client's maxRetries for this call. */
  readonly maxRetries?: number;
}

/** Options of a unary call (listModels). */
export interface CallOpts {
  readonly signal?: AbortSignal;
  /** Default 10 s; Infinity: none. */
  readonly deadlineMs?: number;
}

/** A model the router serves. */
export interface ModelInfo {
  /** Pass it as GenerateRequest.model. */
  readonly id: string;
  /** Seconds since the epoch when the router started serving it. */
  readonly created: number;
  readonly ownedBy: string;
  /** Longest prompt plus generation, in tokens. */
  readonly maxModelLen: number;
}

/** generate()'s default deadline: the router's default --request-timeout-s. */
export const DEFAULT_GENERATE_DEADLINE_MS = 600_000;
/** listModels()'s default deadline. */
export const DEFAULT_UNARY_DEADLINE_MS = 10_000;

export interface MoelaClientOptions {
  /** host:port of the router's gRPC server. */
  readonly address: string;
  /** The router's API key (its --api-key), sent as `authorization: Bearer <key>` metadata on every call. */
  readonly apiKey?: string;
  /** Default: insecure (plaintext), as inside a cluster network. */
  readonly credentials?: ChannelCredentials;
  readonly channelOptions?: Partial<ChannelOptions>;
  /** Default deadline of every generate() in ms (default 600 000, the router's request timeout; Infinity: none). */
  readonly deadlineMs?: number;
  /** Retries of a call that fails with UNAVAILABLE or RESOURCE_EXHAUSTED before its first message (default 4). */
  readonly maxRetries?: number;
  /** Longest `retry-after` a RESOURCE_EXHAUSTED retry waits for (default 30 000); a longer one fails the call at once. */
  readonly maxRetryAfterMs?: number;
  /** Backoff before retry n (0-based) is random in [0, min(maxBackoffMs, initialBackoffMs * 2^n)] (defaults 100, 3000). */
  readonly initialBackoffMs?: number;
  readonly maxBackoffMs?: number;
  /** The time deadlines are reckoned in and backoffs wait on (default: the real clock; tests pass their own). */
  readonly clock?: Clock;
}

/** The request fields that are counts, ids or seeds: whole numbers, checked in this order. */
const NON_NEGATIVE_INT_FIELDS = ["maxTokens", "topK", "seed", "logprobs", "priority", "minTokens", "n"] as const;

function checkNonNegativeInt(name: string, v: number | undefined): void {
  if (v !== undefined && !(Number.isSafeInteger(v) && v >= 0)) {
    throw new InvalidArgumentError(`${name} must be a non-negative integer, got ${String(v)}`);
  }
}

/** A deadline option: a positive number of ms, or Infinity for none. */
function checkDeadline(name: string, v: number | undefined): void {
  if (v !== undefined && !(v > 0 && (Number.isFinite(v) || v === Infinity))) {
    throw new InvalidArgumentError(`${name} must be a positive number of ms (or Infinity for none), got ${String(v)}`);
  }
}

const ROLES: ReadonlySet<string> = new Set(["system", "user", "assistant", "tool"]);

/** The retry-after of a failed call's trailing metadata in ms (seconds or an HTTP date, as HTTP's header), or undefined. */
export function retryAfterMs(err: unknown, now: number = Date.now()): number | undefined {
  const md = (err as { metadata?: unknown } | null)?.metadata;
  if (!(md instanceof Metadata)) return undefined;
  const v = md.get("retry-after")[0];
  if (typeof v !== "string" || v.trim() === "") return undefined;
  if (/^\s*\d+(\.\d+)?\s*$/.test(v)) return Math.round(Number(v) * 1000);
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** The wire request for `r`; throws InvalidArgumentError for a prompt of the wrong shape. */
export function toWireRequest(r: GenerateRequest, requestId: string): WireGenerateRequest {
  let prompt: WireGenerateRequest["prompt"];
  if (r.messages !== undefined) {
    if (r.prompt !== undefined) throw new InvalidArgumentError("give prompt or messages, not both");
    if (!Array.isArray(r.messages) || r.messages.length === 0) throw new InvalidArgumentError("messages must be a non-empty array of { role, content }");
    const messages = r.messages.map((m: ChatMessage, i) => {
      if (typeof m !== "object" || m === null || !ROLES.has(m.role) || typeof m.content !== "string") {
        throw new InvalidArgumentError(`messages[${i}] must be { role: "system" | "user" | "assistant" | "tool", content: string }`);
      }
      return {
        role: m.role,
        content: m.content,
        toolCalls: (m.toolCalls ?? []).map((c) => ({ id: c.id, name: c.name, arguments: c.arguments })),
        toolCallId: m.toolCallId ?? "",
      };
    });
    prompt = { $case: "messages", value: { messages } };
  } else if (typeof r.prompt === "string") prompt = { $case: "text", value: r.prompt };
  else if (Array.isArray(r.prompt) && r.prompt.every((t) => Number.isInteger(t) && t >= 0 && t <= 0xffffffff)) {
    prompt = { $case: "tokenIds", value: { ids: [...r.prompt] } };
  } else throw new InvalidArgumentError("prompt must be a string or an array of token ids (non-negative integers), or give messages");
  for (const field of NON_NEGATIVE_INT_FIELDS) checkNonNegativeInt(field, r[field]);
  const logitBias = r.logitBias === undefined ? undefined : Object.entries(r.logitBias).map(([id, bias]) => ({ tokenId: Number(id), bias }));
  // fromPartial: wire fields this client does not set (added to the proto later) take their defaults.
  return WireGenerateRequest.fromPartial({
    prompt,
    sampling: {
      ...(r.temperature !== undefined ? { temperature: r.temperature } : {}),
      ...(r.topP !== undefined ? { topP: r.topP } : {}),
      topK: r.topK ?? 0,
      ...(r.seed !== undefined ? { seed: r.seed } : {}),
      maxTokens: r.maxTokens ?? 0,
      stop: [...(r.stop ?? [])],
      stopTokenIds: [...(r.stopTokenIds ?? [])],
      ...(r.logprobs !== undefined ? { logprobs: r.logprobs } : {}),
      ignoreEos: r.ignoreEos ?? false,
      ...(r.presencePenalty !== undefined ? { presencePenalty: r.presencePenalty } : {}),
      ...(r.frequencyPenalty !== undefined ? { frequencyPenalty: r.frequencyPenalty } : {}),
      ...(r.repetitionPenalty !== undefined ? { repetitionPenalty: r.repetitionPenalty } : {}),
      ...(logitBias !== undefined ? { logitBias: { entries: logitBias } } : {}),
      ...(r.minP !== undefined ? { minP: r.minP } : {}),
      ...(r.minTokens !== undefined ? { minTokens: r.minTokens } : {}),
      ...(r.n !== undefined ? { n: r.n } : {}),
    },
    model: r.model ?? "",
    requestId,
    priority: r.priority ?? 0,
    cacheSalt: r.cacheSalt ?? "",
    ...(r.responseFormat !== undefined ? { responseFormat: JSON.stringify(r.responseFormat) } : {}),
    ...(r.tools !== undefined
      ? {
          tools: JSON.stringify(
            r.tools.map((t) => ({
              type: "function",
              function: {
                name: t.name,
                ...(t.description !== undefined ? { description: t.description } : {}),
                ...(t.parameters !== undefined ? { parameters: t.parameters } : {}),
              },
            })),
          ),
        }
      : {}),
    ...(r.toolChoice !== undefined
      ? { toolChoice: JSON.stringify(typeof r.toolChoice === "string" ? r.toolChoice : { type: "function", function: { name: r.toolChoice.name } }) }
      : {}),
  });
}

function finishReason(f: WireFinishReason): FinishReason | undefined {
  if (f === WireFinishReason.FINISH_REASON_STOP) return "stop";
  if (f === WireFinishReason.FINISH_REASON_LENGTH) return "length";
  return undefined;
}

/** One wire message as an event (plain objects, no wire enums). */
export function toEvent(m: GenerateResponse): GenerateEvent {
  const reason = finishReason(m.finishReason);
  return {
    requestId: m.requestId,
    tokenIds: m.tokenIds,
    text: m.text,
    logprobs: m.logprobs.map((l) => ({ logprob: l.logprob, top: l.top.map((t) => ({ tokenId: t.tokenId, logprob: t.logprob })) })),
    ...(reason !== undefined ? { finishReason: reason } : {}),
    ...(m.usage !== undefined ? { usage: { ...m.usage } } : {}),
    index: m.index,
    ...(m.toolCalls.length > 0 ? { toolCalls: m.toolCalls.map((c) => ({ id: c.id, name: c.name, arguments: c.arguments })) } : {}),
  };
}

/** Messages queued beyond this pause the call (back-pressure to the server). */
const HIGH_WATER = 64;

/**
 * The messages of one call, in order; throws the call's error. Stops reading (and leaves the call
 * to the caller to cancel) when returned early.
 */
async function* messages(call: ClientReadableStream<GenerateResponse>): AsyncGenerator<GenerateResponse, void, undefined> {
  const queue: GenerateResponse[] = [];
  let ended = false;
  let failure: { err: unknown } | undefined;
  let wake: (() => void) | undefined;
  const poke = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  call.on("data", (m: GenerateResponse) => {
    queue.push(m);
    if (queue.length >= HIGH_WATER) call.pause();
    poke();
  });
  call.on("error", (err: unknown) => {
    failure ??= { err };
    poke();
  });
  call.on("end", () => {
    ended = true;
    poke();
  });
  for (;;) {
    const next = queue.shift();
    if (next !== undefined) {
      if (call.isPaused() && queue.length < HIGH_WATER / 2) call.resume();
      yield next;
      continue;
    }
    if (failure !== undefined) throw failure.err;
    if (ended) return;
    await new Promise<void>((resolve) => (wake = resolve));
  }
}

function sleep(clock: Clock, ms: number, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const onAbort = () => {
      clock.clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = clock.setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** What a caller's abort becomes: CancelledError, with the signal's reason as cause. */
function cancelled(signal: AbortSignal, what = "generate"): CancelledError {
  const reason: unknown = signal.reason;
  if (reason instanceof CancelledError) return reason;
  const why = reason instanceof Error ? `: ${reason.message}` : "";
  return new CancelledError(`${what} cancelled${why}`, { cause: reason });
}

/** A Generate stream; `requestId` is known before the first message. */
export class GenerateStream extends Stream<GenerateEvent> {
  readonly requestId: string;
  constructor(requestId: string, source: (signal: AbortSignal) => AsyncGenerator<GenerateEvent, void, undefined>, signal?: AbortSignal) {
    super(source, signal);
    this.requestId = requestId;
  }
}

export class MoelaClient {
  readonly address: string;
  private readonly grpc: GenerateClient;
  private readonly deadlineMs: number;
  private readonly maxRetries: number;
  private readonly maxRetryAfterMs: number;
  private readonly initialBackoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly apiKey: string | undefined;
  private readonly clock: Clock;

  constructor(o: MoelaClientOptions) {
    if (typeof o.address !== "string" || o.address.trim() === "") throw new InvalidArgumentError("address must be host:port of the router's gRPC server");
    checkDeadline("deadlineMs", o.deadlineMs);
    checkNonNegativeInt("maxRetries", o.maxRetries);
    checkNonNegativeInt("maxRetryAfterMs", o.maxRetryAfterMs);
    checkNonNegativeInt("initialBackoffMs", o.initialBackoffMs);
    checkNonNegativeInt("maxBackoffMs", o.maxBackoffMs);
    this.address = o.address;
    this.deadlineMs = o.deadlineMs ?? DEFAULT_GENERATE_DEADLINE_MS;
    this.maxRetries = o.maxRetries ?? 4;
    this.maxRetryAfterMs = o.maxRetryAfterMs ?? 30_000;
    this.initialBackoffMs = o.initialBackoffMs ?? 100;
    this.maxBackoffMs = o.maxBackoffMs ?? 3_000;
    if (o.apiKey !== undefined && !/^[\x21-\x7e]+$/.test(o.apiKey)) throw new InvalidArgumentError("apiKey must be printable ASCII without spaces");
    this.apiKey = o.apiKey;
    this.clock = o.clock ?? realClock;
    // grpc-js's own retries are off: they would not know that a retry is only safe before the first message.
    this.grpc = new GenerateClient(o.address, o.credentials ?? grpcCredentials.createInsecure(), {
      "grpc.enable_retries": 0,
      ...o.channelOptions,
    });
  }

  /**
   * Start a generation. Iterate the result for events; `break` cancels the call. Request errors
   * (bad prompt shape, bad options) throw here; call errors are thrown by the iteration as
   * MoelaErrors (see errors.ts).
   */
  generate(request: GenerateRequest, options: GenerateOptions = {}): GenerateStream {
    const requestId = request.requestId !== undefined && request.requestId !== "" ? request.requestId : `req-${randomUUID()}`;
    const wire = toWireRequest(request, requestId);
    checkDeadline("deadlineMs", options.deadlineMs);
    checkNonNegativeInt("maxRetries", options.maxRetries);
    const deadlineMs = options.deadlineMs ?? this.deadlineMs;
    const maxRetries = options.maxRetries ?? this.maxRetries;
    const deadline = deadlineMs === Infinity ? undefined : this.clock.now() + deadlineMs;
    return new GenerateStream(requestId, (signal) => this.run(wire, deadline, deadlineMs, maxRetries, signal), options.signal);
  }

  /** generate() collected: the whole text and tokens, the finish reason and usage. */
  async complete(request: GenerateRequest, options: GenerateOptions = {}): Promise<Completion> {
    if (request.n !== undefined && request.n > 1)
      throw new InvalidArgumentError("complete() collects one choice; use generate() for n > 1 (events carry their index)");
    const stream = this.generate(request, options);
    let text = "";
    const tokenIds: number[] = [];
    let reason: FinishReason | undefined;
    let usage: Usage | undefined;
    let toolCalls: readonly ToolCall[] = [];
    for await (const ev of stream) {
      text += ev.text;
      tokenIds.push(...ev.tokenIds);
      reason = ev.finishReason ?? reason;
      usage = ev.usage ?? usage;
      toolCalls = ev.toolCalls ?? toolCalls;
    }
    return { requestId: stream.requestId, text, tokenIds, finishReason: reason, usage, toolCalls };
  }

  /** The models the router serves (what its HTTP API's GET /v1/models lists). Errors as generate()'s; not retried. */
  async listModels(options: CallOpts = {}): Promise<ModelInfo[]> {
    checkDeadline("deadlineMs", options.deadlineMs);
    const deadlineMs = options.deadlineMs ?? DEFAULT_UNARY_DEADLINE_MS;
    const signal = options.signal;
    if (signal?.aborted) throw cancelled(signal, "listModels");
    const callOptions: Partial<CallOptions> = deadlineMs === Infinity ? {} : { deadline: Date.now() + deadlineMs };
    const response = await new Promise<ListModelsResponse>((resolve, reject) => {
      const call = this.grpc.listModels({}, this.metadata(), callOptions, (err, res) => {
        signal?.removeEventListener("abort", onAbort);
        if (err !== null) reject(signal?.aborted ? cancelled(signal, "listModels") : toMoelaError(err));
        else resolve(res);
      });
      const onAbort = () => call.cancel();
      signal?.addEventListener("abort", onAbort, { once: true });
    });
    return response.models.map((m) => ({ id: m.id, created: m.created, ownedBy: m.ownedBy, maxModelLen: m.maxModelLen }));
  }

  private metadata(): Metadata {
    const metadata = new Metadata();
    if (this.apiKey !== undefined) metadata.set("authorization", `Bearer ${this.apiKey}`);
    return metadata;
  }

  /** Close the channel; calls in flight are cancelled. */
  close(): void {
    this.grpc.close();
  }

  private async *run(
    wire: WireGenerateRequest,
    deadline: number | undefined,
    deadlineMs: number,
    maxRetries: number,
    signal: AbortSignal,
  ): AsyncGenerator<GenerateEvent, void, undefined> {
    for (let attempt = 0; ; attempt++) {
      if (signal.aborted) throw cancelled(signal);
      const callOptions: Partial<CallOptions> = deadline === undefined ? {} : { deadline };
      const call = this.grpc.generate(wire, this.metadata(), callOptions);
      const cancelCall = () => call.cancel();
      signal.addEventListener("abort", cancelCall, { once: true });
      let received = 0;
      let settled = false;
      let error: MoelaError;
      let wait: number;
      try {
        for await (const m of messages(call)) {
          received++;
          yield toEvent(m);
        }
        settled = true;
        return;
      } catch (err) {
        settled = true;
        if (signal.aborted) throw cancelled(signal);
        error = toMoelaError(err);
        // Only UNAVAILABLE and RESOURCE_EXHAUSTED with nothing delivered yet are safe to repeat.
        const retryable = error instanceof UnavailableError || error instanceof ResourceExhaustedError;
        if (!retryable || received > 0 || attempt >= maxRetries) {
          // Our own deadline (not a server's DEADLINE_EXCEEDED, passed through as it came): say which.
          if (error instanceof DeadlineExceededError && deadline !== undefined && this.clock.now() >= deadline - 50) {
            throw new DeadlineExceededError(`deadline of ${deadlineMs} ms exceeded (${error.message})`, { cause: error });
          }
          throw error;
        }
        const backoff = Math.random() * Math.min(this.maxBackoffMs, this.initialBackoffMs * 2 ** attempt);
        if (error instanceof ResourceExhaustedError) {
          // The server says when to come back; without a word, the backoff. Not waited for past the deadline or maxRetryAfterMs.
          wait = retryAfterMs(err, this.clock.now()) ?? backoff;
          if (wait > this.maxRetryAfterMs || (deadline !== undefined && this.clock.now() + wait >= deadline)) throw error;
        } else wait = backoff;
      } finally {
        signal.removeEventListener("abort", cancelCall);
        // Left early (break, return, or a throw in the consumer's loop): cancel on the server too.
        if (!settled) call.cancel();
      }
      if (deadline !== undefined && this.clock.now() + wait >= deadline) {
        throw new DeadlineExceededError(
          `deadline of ${deadlineMs} ms exceeded after ${attempt + 1} attempt(s); the last failed with ${codeName(error.code)}: ${error.message}`,
          { cause: error },
        );
      }
      try {
        await sleep(this.clock, wait, signal);
      } catch {
        throw cancelled(signal);
      }
    }
  }
}
