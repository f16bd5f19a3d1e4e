/**
 * Write gRPC handlers as plain async code: a unary method is an `async` function, a
 * server-streaming method an `async *` generator, a client-streaming method an `async` function
 * over an AsyncIterable of requests. Every handler gets a CallContext whose `signal` aborts when
 * the client cancels, the deadline passes, or the server drains; the handler should pass it to
 * whatever it awaits.
 *
 * The wrappers own the grpc-js side: thrown errors become statuses (`toStatus`), writes respect
 * back-pressure, and a call aborted by the server (drain) is answered with the abort reason's
 * status at once, even when the handler ignores the signal, so shutdown never waits on a stuck
 * handler. A call the client cancelled gets no answer (nobody is listening).
 */
import { once } from "node:events";
import type {
  Metadata,
  ServerDuplexStream,
  ServerReadableStream,
  ServerUnaryCall,
  ServerWritableStream,
  handleBidiStreamingCall,
  handleClientStreamingCall,
  handleServerStreamingCall,
  handleUnaryCall,
  sendUnaryData,
} from "@grpc/grpc-js";
import { CancelledError, Code, DeadlineExceededError, MoelaError, type Logger } from "@moela/core";
import { toStatus } from "./errors.js";

/** What a handler knows about its call besides the request. */
export interface CallContext {
  /** Aborts when the client cancels (reason: CancelledError), the deadline passes (reason: a
   * MoelaError with DEADLINE_EXCEEDED) or the server drains (reason: UnavailableError). */
  readonly signal: AbortSignal;
  /** The client's request metadata. */
  readonly metadata: Metadata;
  /** The call's deadline in ms since the Unix epoch; Infinity when the client set none. */
  readonly deadline: number;
  /** The method's path, e.g. "/moela.v1.Decode/Stream". */
  readonly method: string;
  /** The client's address, for logs. */
  readonly peer: string;
}

/** Reported once per call when it ends, for metrics. */
export interface CallEndEvent {
  /** e.g. "/moela.v1.Decode/Stream". */
  readonly method: string;
  /** The status sent (or CANCELLED when the client went away). */
  readonly code: Code;
  readonly durationMs: number;
}

/**
 * A client cancels at its own deadline, which is slightly earlier than the server's copy (the
 * server starts counting when the headers arrive), so a cancel this close to the deadline is the
 * deadline.
 */
const DEADLINE_SLACK_MS = 50;

/** A call in progress, as the server sees it when it drains. */
export interface LiveCall {
  /** End the call with `reason`'s status (the handler's signal aborts with it). */
  abort(reason: MoelaError): void;
  /** Settles when the wrapper has answered the call and the handler has returned. */
  readonly done: Promise<void>;
}

/** Options shared by the handler wrappers; RpcServer passes its own. */
export interface HandlerOptions {
  /** Live calls are added here while they run, so a draining server can end them. */
  readonly calls?: Set<LiveCall>;
  /** Where errors that reach the client as INTERNAL are logged with their stack. */
  readonly logger?: Logger | undefined;
  readonly onCallEnd?: ((event: CallEndEvent) => void) | undefined;
}

export type UnaryHandler<Req, Res> = (request: Req, ctx: CallContext) => Promise<Res>;
export type ServerStreamHandler<Req, Res> = (request: Req, ctx: CallContext) => AsyncIterable<Res>;
export type ClientStreamHandler<Req, Res> = (requests: AsyncIterable<Req>, ctx: CallContext) => Promise<Res>;
export type BidiStreamHandler<Req, Res> = (requests: AsyncIterable<Req>, ctx: CallContext) => AsyncIterable<Res>;

/** A final status as the wrappers hand it to grpc-js. */
type WireStatus = ReturnType<typeof toStatus>;

type AnyServerCall =
  ServerUnaryCall<unknown, unknown> | ServerReadableStream<unknown, unknown> | ServerWritableStream<unknown, unknown> | ServerDuplexStream<unknown, unknown>;

function deadlineMs(call: AnyServerCall): number {
  const deadline = call.getDeadline();
  const ms = deadline instanceof Date ? deadline.getTime() : deadline;
  return Number.isFinite(ms) ? ms : Infinity;
}

/**
 * The bookkeeping of one call: its AbortController (wired to grpc-js's 'cancelled' event), a
 * once-only `settle` that sends the final status, and the LiveCall entry for drain.
 */
class CallState {
  readonly controller = new AbortController();
  readonly ctx: CallContext;
  /** True once a final status has been sent or the client is gone: nothing more may be written. */
  settled = false;
  private readonly started = performance.now();
  private resolveDone!: () => void;
  private readonly live: LiveCall;

  constructor(
    call: AnyServerCall,
    private readonly options: HandlerOptions,
    /** Sends `status` (OK when undefined) to the client, once. */
    private readonly send: (status: WireStatus | undefined) => void,
  ) {
    const method = call.getPath();
    const deadline = deadlineMs(call);
    this.ctx = { signal: this.controller.signal, metadata: call.metadata, deadline, method, peer: call.getPeer() };
    const done = new Promise<void>((resolve) => {
      this.resolveDone = resolve;
    });
    this.live = { abort: (reason) => this.abortByServer(reason), done };
    options.calls?.add(this.live);
    // grpc-js emits 'cancelled' when the client cancels, when the deadline passes (it has then
    // already sent DEADLINE_EXCEEDED itself), and also after every call it completed normally.
    // Only the first two concern a handler still at work; the client needs no answer from us.
    const onCancelled = (): void => {
      if (this.settled) return;
      const reason =
        Date.now() >= deadline - DEADLINE_SLACK_MS
          ? new DeadlineExceededError(`deadline exceeded (${method})`)
          : new CancelledError(`call cancelled by the client (${method})`);
      this.finish(Code.CANCELLED);
      this.controller.abort(reason);
    };
    (call as NodeJS.EventEmitter).on("cancelled", onCancelled);
    if (call.cancelled) onCancelled();
  }

  /** Send the final status (OK when `err` is undefined) unless one was already sent. */
  settle(err: unknown): void {
    if (this.settled) return;
    if (err !== undefined && !(err instanceof MoelaError)) {
      this.options.logger?.error({ err, method: this.ctx.method }, "handler failed; client gets INTERNAL");
    }
    const status = err === undefined ? undefined : toStatus(err);
    this.finish(status === undefined ? Code.OK : (status.code as number as Code));
    this.send(status);
  }

  /** The handler has returned; the call is over for the drain bookkeeping. */
  handlerReturned(): void {
    this.options.calls?.delete(this.live);
    this.resolveDone();
  }

  private abortByServer(reason: MoelaError): void {
    if (this.controller.signal.aborted) return;
    this.controller.abort(reason);
    this.settle(reason);
  }

  private finish(code: Code): void {
    if (this.settled) return;
    this.settled = true;
    this.options.onCallEnd?.({ method: this.ctx.method, code, durationMs: performance.now() - this.started });
  }
}

/** The error to report when a handler fails: the abort reason when the call was aborted, else what it threw. */
function failure(state: CallState, err: unknown): unknown {
  return state.controller.signal.aborted ? state.controller.signal.reason : err;
}

/** Answer a call that has one response (unary, client-streaming) with what `run` returns, or with its failure's status. */
function respondOnce<Res>(
  call: ServerUnaryCall<unknown, Res> | ServerReadableStream<unknown, Res>,
  callback: sendUnaryData<Res>,
  options: HandlerOptions,
  run: (state: CallState) => Res | Promise<Res>,
): void {
  let result: Res | undefined;
  const state = new CallState(call, options, (status) => {
    if (status === undefined) callback(null, result);
    else callback(status, null);
  });
  // new Promise(...) also catches a handler that throws before returning its promise.
  new Promise<Res>((resolve) => resolve(run(state)))
    .then(
      (res) => {
        result = res;
        state.settle(undefined);
      },
      (err: unknown) => state.settle(failure(state, err)),
    )
    .finally(() => state.handlerReturned());
}

/** A grpc-js unary handler running `fn`. */
export function unaryHandler<Req, Res>(fn: UnaryHandler<Req, Res>, options: HandlerOptions = {}): handleUnaryCall<Req, Res> {
  return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => respondOnce(call, callback, options, (state) => fn(call.request, state.ctx));
}

/** Resolve when `stream` can take more writes; reject with the abort reason when `signal` aborts first. */
async function writable(stream: NodeJS.EventEmitter, signal: AbortSignal): Promise<void> {
  try {
    await once(stream, "drain", { signal });
  } catch (err) {
    throw signal.aborted ? signal.reason : err;
  }
}

/**
 * Pump `responses` into a writable call: stop as soon as the call is settled (aborted or
 * cancelled), wait on back-pressure, end with OK or the failure's status. Returning from the loop
 * early runs the generator's `finally` blocks.
 */
async function pump<Res>(
  call: ServerWritableStream<unknown, Res> | ServerDuplexStream<unknown, Res>,
  state: CallState,
  responses: AsyncIterable<Res>,
): Promise<void> {
  try {
    for await (const response of responses) {
      if (state.settled) break;
      if (!call.write(response)) await writable(call, state.ctx.signal);
    }
    state.settle(undefined);
  } catch (err) {
    state.settle(failure(state, err));
  }
}

function endStream(call: ServerWritableStream<unknown, unknown> | ServerDuplexStream<unknown, unknown>) {
  return (status: WireStatus | undefined): void => {
    if (status === undefined) call.end();
    // grpc-js turns an 'error' event on a server stream into the call's final status.
    else call.emit("error", status);
  };
}

/** Stream what `run` yields to a call that has a response stream (server-streaming, bidi), ending with OK or its failure's status. */
function respondStreaming<Res>(
  call: ServerWritableStream<unknown, Res> | ServerDuplexStream<unknown, Res>,
  options: HandlerOptions,
  run: (state: CallState) => AsyncIterable<Res>,
): void {
  const state = new CallState(call, options, endStream(call));
  // Never rejects: every failure settles the call.
  void (async () => {
    try {
      // Calling run may itself throw (a plain async function returning an iterable).
      await pump(call, state, run(state));
    } catch (err) {
      state.settle(failure(state, err));
    } finally {
      state.handlerReturned();
    }
  })();
}

/** A grpc-js server-streaming handler running the generator `fn`. */
export function serverStreamHandler<Req, Res>(fn: ServerStreamHandler<Req, Res>, options: HandlerOptions = {}): handleServerStreamingCall<Req, Res> {
  return (call: ServerWritableStream<Req, Res>) => respondStreaming(call, options, (state) => fn(call.request, state.ctx));
}

/**
 * The client's messages as an AsyncIterable that fails with the abort reason when the call is
 * aborted, rather than ending quietly.
 *
 * Limit: a grpc-js client that cancels first half-closes its side and resets the stream only a
 * moment later (node's Http2Stream.close ends the stream before sending RST_STREAM), so the
 * iteration may end normally before the signal fires. A stream that ended is therefore not proof
 * that the client sent everything: protocols mark their own end (KvTransfer's KvEnd) and
 * handlers check for it.
 */
async function* requestsOf<Req>(call: ServerReadableStream<Req, unknown> | ServerDuplexStream<Req, unknown>, signal: AbortSignal): AsyncGenerator<Req> {
  try {
    // Not `for await (... of call)`: that destroys a duplex call when the requests end, so the
    // responses after the client's half-close (and the final status) could never be sent.
    for await (const message of call.iterator({ destroyOnReturn: false }) as AsyncIterable<Req>) {
      if (signal.aborted) break;
      yield message;
    }
  } catch (err) {
    throw signal.aborted ? signal.reason : err;
  }
  if (signal.aborted) throw signal.reason;
}

/** A grpc-js client-streaming handler running `fn` over the request stream. */
export function clientStreamHandler<Req, Res>(fn: ClientStreamHandler<Req, Res>, options: HandlerOptions = {}): handleClientStreamingCall<Req, Res> {
  return (call: ServerReadableStream<Req, Res>, callback: sendUnaryData<Res>) =>
    respondOnce(call, callback, options, (state) => {
      // Stop reading when the server aborts the call; the client side is answered by settle().
      state.ctx.signal.addEventListener("abort", () => call.destroy(), { once: true });
      return fn(requestsOf(call, state.ctx.signal), state.ctx);
    });
}

/** A grpc-js bidirectional-streaming handler running the generator `fn` over the request stream. */
export function bidiStreamHandler<Req, Res>(fn: BidiStreamHandler<Req, Res>, options: HandlerOptions = {}): handleBidiStreamingCall<Req, Res> {
  return (call: ServerDuplexStream<Req, Res>) => respondStreaming(call, options, (state) => fn(requestsOf(call, state.ctx.signal), state.ctx));
}
