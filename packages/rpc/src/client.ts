/**
 * The client side of the kit: connect with moela's channel options, and call the generated
 * callback-style clients as promises and AsyncIterables that take an AbortSignal and a deadline
 * and fail with MoelaErrors (`fromStatus`), never with raw grpc-js errors.
 *
 *   const decode = connect(DecodeClient, "127.0.0.1:7001");
 *   const status = await unaryCall((md, o, cb) => decode.status({}, md, o, cb), { timeoutMs: 1_000 });
 *   for await (const msg of serverStreamCall((md, o) => decode.stream({ requestId, startIndex: 0 }, md, o), { signal })) ...
 */
import {
  type CallOptions,
  type ChannelCredentials,
  type ChannelOptions,
  type ClientOptions,
  type ClientReadableStream,
  type ClientUnaryCall,
  type ClientWritableStream,
  credentials,
  Metadata,
  type ServiceError,
} from "@grpc/grpc-js";
import { once } from "node:events";
import { CancelledError } from "@moela/core";
import { deadlineToMs } from "./deadlines.js";
import { asMoelaError } from "./errors.js";
import { clientChannel, type InternalSecurity } from "./security.js";
import { DEFAULT_CHANNEL_OPTIONS } from "./server.js";

/**
 * Open a client of a generated service (e.g. DecodeClient) to `address`: plaintext by default; with
 * `security` (security.ts), over TLS as configured and presenting the internal secret on every call.
 */
export function connect<C>(
  ClientClass: new (address: string, creds: ChannelCredentials, options?: Partial<ClientOptions>) => C,
  address: string,
  options: Partial<ChannelOptions> = {},
  security?: InternalSecurity,
): C {
  if (security === undefined) return new ClientClass(address, credentials.createInsecure(), { ...DEFAULT_CHANNEL_OPTIONS, ...options });
  const channel = clientChannel(security);
  return new ClientClass(address, channel.credentials, { ...DEFAULT_CHANNEL_OPTIONS, ...options, ...channel.options });
}

export interface CallOpts {
  /** Absolute deadline (ms since the epoch). */
  readonly deadline?: number;
  /** Relative deadline; the sooner of this and `deadline` wins. */
  readonly timeoutMs?: number;
  /** Cancels the call; the promise or iterator then rejects with the signal's reason. */
  readonly signal?: AbortSignal;
  readonly metadata?: Metadata;
}

function callOptions(opts: CallOpts): Partial<CallOptions> {
  const deadline = Math.min(deadlineToMs(opts.deadline), opts.timeoutMs === undefined ? Infinity : Date.now() + opts.timeoutMs);
  return Number.isFinite(deadline) ? { deadline } : {};
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new CancelledError();
}

/** Cancel `call` when `signal` aborts; returns the cleanup. */
function cancelOnAbort(call: { cancel(): void }, signal: AbortSignal | undefined): () => void {
  if (signal === undefined) return () => {};
  const cancel = (): void => call.cancel();
  signal.addEventListener("abort", cancel, { once: true });
  return () => signal.removeEventListener("abort", cancel);
}

/** One unary call as a promise. `start` issues it on the generated client with the given metadata and options. */
export function unaryCall<Res>(
  start: (metadata: Metadata, options: Partial<CallOptions>, callback: (err: ServiceError | null, response: Res) => void) => ClientUnaryCall,
  opts: CallOpts = {},
): Promise<Res> {
  const signal = opts.signal;
  if (signal?.aborted) return Promise.reject(abortReason(signal));
  return new Promise<Res>((resolve, reject) => {
    let cleanup = (): void => {};
    const call = start(opts.metadata ?? new Metadata(), callOptions(opts), (err, response) => {
      cleanup();
      if (err === null) resolve(response);
      else reject(signal?.aborted ? abortReason(signal) : asMoelaError(err));
    });
    cleanup = cancelOnAbort(call, signal);
  });
}

/**
 * A server-streaming call as an AsyncIterable. Breaking out of the loop (or `signal` aborting)
 * cancels the call, so the server's handler sees its signal fire.
 */
export async function* serverStreamCall<Res>(
  start: (metadata: Metadata, options: Partial<CallOptions>) => ClientReadableStream<Res>,
  opts: CallOpts = {},
): AsyncGenerator<Res> {
  const signal = opts.signal;
  if (signal?.aborted) throw abortReason(signal);
  const call = start(opts.metadata ?? new Metadata(), callOptions(opts));
  // The iterator reports errors while it runs; this keeps a late one (the CANCELLED that follows
  // our own cancel) from being an unhandled 'error' event.
  call.on("error", () => {});
  const cleanup = cancelOnAbort(call, signal);
  let finished = false;
  try {
    for await (const message of call as AsyncIterable<Res>) yield message;
    finished = true;
  } catch (err) {
    finished = true;
    if (signal?.aborted) throw abortReason(signal);
    throw asMoelaError(err);
  } finally {
    cleanup();
    if (!finished) call.cancel();
  }
  if (signal?.aborted) throw abortReason(signal);
}

/**
 * A client-streaming call: writes every message of `requests` (respecting back-pressure), half-
 * closes, and resolves with the response. If the server answers early (an error status mid-
 * stream), writing stops and the promise rejects with that status as a MoelaError.
 */
export async function clientStreamCall<Req, Res>(
  start: (metadata: Metadata, options: Partial<CallOptions>, callback: (err: ServiceError | null, response: Res) => void) => ClientWritableStream<Req>,
  requests: AsyncIterable<Req> | Iterable<Req>,
  opts: CallOpts = {},
): Promise<Res> {
  const signal = opts.signal;
  if (signal?.aborted) throw abortReason(signal);
  let answered = false;
  let settle!: { resolve: (r: Res) => void; reject: (e: unknown) => void };
  const response = new Promise<Res>((resolve, reject) => {
    settle = { resolve, reject };
  });
  const call = start(opts.metadata ?? new Metadata(), callOptions(opts), (err, res) => {
    answered = true;
    if (err === null) settle.resolve(res);
    else settle.reject(signal?.aborted ? abortReason(signal) : asMoelaError(err));
  });
  // A response that fails while we are still writing must not become an unhandled rejection.
  response.catch(() => {});
  const cleanup = cancelOnAbort(call, signal);
  // The write side may error (e.g. after cancel); the callback above reports the call's outcome.
  call.on("error", () => {});
  try {
    for await (const request of requests) {
      if (answered || signal?.aborted) break;
      if (!call.write(request)) {
        // Wait for room, or for the call to end early (answered: 'drain' may never come).
        await Promise.race([
          once(call, "drain"),
          response.then(
            () => undefined,
            () => undefined,
          ),
        ]);
      }
    }
  } catch (err) {
    // The request source failed: abandon the call so the server discards what it got.
    call.cancel();
    cleanup();
    throw err;
  }
  if (!answered) call.end();
  try {
    return await response;
  } finally {
    cleanup();
  }
}
