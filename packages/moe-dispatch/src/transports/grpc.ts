/**
 * The dispatcher's gRPC transport: a client of ExpertHost.DispatchStream (or Dispatch) and Info on
 * one expert-host. Every call has a deadline; failures come back as MoelaErrors whose message names
 * the host (shard and address): UNAVAILABLE as UnavailableError, INVALID_ARGUMENT as
 * InvalidArgumentError, and so on by status code, so callers never see raw grpc-js errors.
 *
 * Dispatches go over one long-lived DispatchStream per transport by default: a message on an open
 * HTTP/2 stream costs a fifth of a unary call's round trip on loopback (headers, trailers and a new
 * stream per layer; scripts/bench/cluster.ts measures both). Calls are matched to answers by call
 * id. When the stream breaks (the host died, restarted or drains), every call on it fails with the
 * stream's status (UNAVAILABLE, so replicas fail over) and the next dispatch opens a new stream.
 *
 * A host on this machine gets the same messages through shared memory instead (shm.ts), once it attached;
 * messages larger than a slot, and every message while no channel is attached, keep the stream.
 */
import { credentials, Metadata, type ChannelCredentials, type ClientDuplexStream, type ClientOptions, type ServiceError } from "@grpc/grpc-js";
import { CancelledError, Code, DataLossError, errorMessage, UnavailableError, type Logger, type MoelaError } from "@moela/core";
import { errorForCode } from "@moela/rpc";
import {
  type ExpertHostClient,
  type DispatchResponse,
  type DispatchStreamRequest,
  type DispatchStreamResponse,
  type InfoResponse,
  type Tensor,
} from "@moela/proto-gen";
import type { EncodedActivations } from "../codec/index.js";
import type { ExpertHostTransport } from "../dispatcher.js";
import type { ExpertDispatchRequest, HostInfo } from "../host.js";
import { ShmDispatchCaller, sharedMemoryAvailable } from "./shm.js";
import { ExpertHostWireClient } from "./stream-codec.js";
import { fromInfoResponse, fromTensor, toDispatchRequest } from "./wire.js";

/** Largest message either way: a prefill micro-batch in f32 is tens of MiB (the rpc kit's servers allow 256 MiB). */
const MAX_MESSAGE_BYTES = 256 * 1024 * 1024;

export interface GrpcExpertHostOptions {
  /** "host:port" of the expert-host. */
  readonly address: string;
  /** Its shard index (for error messages). */
  readonly shard: number;
  /** Deadline of each Dispatch call (default 120 s: CPU prefill chunks are slow). */
  readonly dispatchTimeoutMs?: number;
  /** Deadline of each Info call (default 10 s). */
  readonly infoTimeoutMs?: number;
  /** Extra grpc-js client options: @moela/rpc's clientChannel(security).options presents the internal secret. */
  readonly channelOptions?: Partial<ClientOptions>;
  /** Channel credentials (default plaintext); TLS/mTLS: clientChannel(security).credentials. */
  readonly credentials?: ChannelCredentials;
  /** "stream" (default): one long-lived DispatchStream; "unary": one Dispatch call per layer. */
  readonly dispatchMode?: DispatchMode;
  /**
   * In "stream" mode, send DispatchStream's messages through shared memory when the host shares this machine
   * (shm.ts; default true where the addon built). A host elsewhere refuses the attach and gRPC carries them.
   */
  readonly sharedMemory?: boolean;
  /** Per answer read from shared memory: seconds it waited there for this process (ShmDispatchCallerOptions). */
  readonly onSharedMemoryAnswerWait?: (seconds: number) => void;
  /** Says once per host whether dispatches took shared memory. */
  readonly logger?: Logger;
}

export type DispatchMode = "stream" | "unary";

/** A dispatch waiting for its answer on the stream. */
interface PendingCall {
  resolve(output: Tensor | undefined): void;
  reject(err: unknown): void;
}

/** One open DispatchStream and the calls waiting on it. */
interface OpenStream {
  readonly call: ClientDuplexStream<DispatchStreamRequest, DispatchStreamResponse>;
  readonly pending: Map<number, PendingCall>;
  broken: boolean;
}

export class GrpcExpertHostTransport implements ExpertHostTransport {
  readonly address: string;
  readonly shard: number;
  private readonly client: ExpertHostClient;
  private readonly dispatchTimeoutMs: number;
  private readonly infoTimeoutMs: number;
  readonly dispatchMode: DispatchMode;
  private stream: OpenStream | undefined;
  private nextCallId = 1;
  /** The shared-memory channel to this host, when it may have one. */
  readonly shm: ShmDispatchCaller | undefined;

  constructor(o: GrpcExpertHostOptions) {
    this.address = o.address;
    this.shard = o.shard;
    this.dispatchMode = o.dispatchMode ?? "stream";
    this.dispatchTimeoutMs = o.dispatchTimeoutMs ?? 120_000;
    this.infoTimeoutMs = o.infoTimeoutMs ?? 10_000;
    // DispatchStream's messages through stream-codec.ts (one buffer each way, no payload copies).
    this.client = new ExpertHostWireClient(o.address, o.credentials ?? credentials.createInsecure(), {
      "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
      "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
      // A restarted peer is reachable again within 2 s (grpc-js backs off up to 120 s by default).
      "grpc.initial_reconnect_backoff_ms": 250,
      "grpc.max_reconnect_backoff_ms": 2_000,
      ...o.channelOptions,
    });
    if (this.dispatchMode === "stream" && (o.sharedMemory ?? true) && sharedMemoryAvailable) {
      this.shm = new ShmDispatchCaller({ name: this.name, client: this.client, logger: o.logger, onAnswerWait: o.onSharedMemoryAnswerWait });
    }
  }

  /** Reached through shared memory: a host on this machine (ExpertHostTransport.sameMachine). */
  get sameMachine(): boolean {
    return this.shm?.attached ?? false;
  }

  /** "expert-host 1 (127.0.0.1:5001)": how errors name this host. */
  get name(): string {
    return `expert-host ${this.shard} (${this.address})`;
  }

  async dispatch(req: ExpertDispatchRequest, signal?: AbortSignal): Promise<EncodedActivations> {
    const wire = toDispatchRequest(req);
    const output =
      this.dispatchMode === "stream"
        ? await this.streamCall(wire, signal)
        : (await this.unary<DispatchResponse>((md, opts, cb) => this.client.dispatch(wire, md, opts, cb), this.dispatchTimeoutMs, "Dispatch", signal)).output;
    try {
      return fromTensor(output, "output");
    } catch (err) {
      throw new DataLossError(`${this.name} sent a malformed reply: ${errorMessage(err)}`, { cause: err });
    }
  }

  async info(signal?: AbortSignal): Promise<HostInfo> {
    const res = await this.unary<InfoResponse>((md, opts, cb) => this.client.info({}, md, opts, cb), this.infoTimeoutMs, "Info", signal);
    return fromInfoResponse(res);
  }

  /**
   * Resolves true once the channel is connected (connecting now if idle), false when `timeoutMs` passes
   * or `signal` aborts first. A restarted peer is reconnected to within the reconnect backoff.
   */
  waitConnected(timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
    if (signal?.aborted) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      const onAbort = (): void => resolve(false);
      signal?.addEventListener("abort", onAbort, { once: true });
      this.client.waitForReady(Date.now() + timeoutMs, (err) => {
        signal?.removeEventListener("abort", onAbort);
        resolve(err === undefined || err === null);
      });
    });
  }

  close(): void {
    this.shm?.close();
    if (this.stream !== undefined) this.breakStream(this.stream, new UnavailableError(`${this.name}: the transport was closed`));
    this.client.close();
  }

  /**
   * One dispatch on the open stream (opened first when there is none), or through the shared-memory channel when
   * the host has one and the message fits; resolves with the reply's tensor.
   */
  private streamCall(request: DispatchStreamRequest["request"], signal: AbortSignal | undefined): Promise<Tensor | undefined> {
    if (signal?.aborted) return Promise.reject(signal.reason ?? new CancelledError());
    const callId = this.nextCallId++;
    const msg: DispatchStreamRequest = { callId, request };
    const viaShm = this.shm?.call(msg, replyBound(request));
    const s = viaShm === undefined ? (this.stream ?? this.openStream()) : undefined;
    return new Promise<Tensor | undefined>((resolve, reject) => {
      const done = (): void => {
        s?.pending.delete(callId);
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      };
      const onAbort = (): void => {
        // The host still answers; the answer finds no pending call and is dropped.
        done();
        reject(signal?.reason ?? new CancelledError());
      };
      const timer = setTimeout(() => {
        done();
        reject(errorForCode(Code.DEADLINE_EXCEEDED, `${this.name} Dispatch gave no answer within ${this.dispatchTimeoutMs} ms`));
      }, this.dispatchTimeoutMs);
      signal?.addEventListener("abort", onAbort, { once: true });
      const pending: PendingCall = {
        resolve: (out) => {
          done();
          resolve(out);
        },
        reject: (err) => {
          done();
          reject(err);
        },
      };
      if (viaShm !== undefined) {
        viaShm.then((answer) => this.settle(answer, pending), pending.reject);
        return;
      }
      s!.pending.set(callId, pending);
      s!.call.write(msg);
    });
  }

  /** A DispatchStream answer to its waiting call: the output, or the status it carries as an error. */
  private settle(msg: DispatchStreamResponse, p: PendingCall): void {
    if (msg.errorCode === 0) p.resolve(msg.response?.output);
    else
      p.reject(
        errorForCode(
          msg.errorCode,
          describeFailure({ code: msg.errorCode, details: msg.errorMessage }, `${this.name} Dispatch`, this.name, this.dispatchTimeoutMs),
        ),
      );
  }

  private openStream(): OpenStream {
    const call = this.client.dispatchStream(new Metadata());
    const s: OpenStream = { call, pending: new Map(), broken: false };
    this.stream = s;
    call.on("data", (msg: DispatchStreamResponse) => {
      const p = s.pending.get(msg.callId);
      if (p === undefined) return; // cancelled or timed out meanwhile
      this.settle(msg, p);
    });
    call.on("error", (err: ServiceError) => this.breakStream(s, this.mapError(err, "DispatchStream", this.dispatchTimeoutMs)));
    call.on("end", () => this.breakStream(s, new UnavailableError(`${this.name} closed its dispatch stream`)));
    return s;
  }

  /** Fail every call waiting on `s` with `err` and forget the stream; the next dispatch opens a new one. */
  private breakStream(s: OpenStream, err: MoelaError): void {
    if (s.broken) return;
    s.broken = true;
    if (this.stream === s) this.stream = undefined;
    for (const p of [...s.pending.values()]) p.reject(err);
    s.call.cancel();
  }

  private unary<Res>(
    start: (md: Metadata, opts: { deadline: number }, cb: (err: ServiceError | null, res: Res) => void) => { cancel(): void },
    timeoutMs: number,
    method: string,
    signal: AbortSignal | undefined,
  ): Promise<Res> {
    if (signal?.aborted) return Promise.reject(signal.reason ?? new CancelledError());
    return new Promise<Res>((resolve, reject) => {
      const onAbort = (): void => call.cancel();
      const call = start(new Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
        signal?.removeEventListener("abort", onAbort);
        if (err === null) resolve(res);
        else if (signal?.aborted) reject(signal.reason ?? new CancelledError());
        else reject(this.mapError(err, method, timeoutMs));
      });
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** The status's MoelaError subclass (@moela/rpc's mapping), worded to name this host and the method. */
  private mapError(err: ServiceError, method: string, timeoutMs: number): MoelaError {
    const what = `${this.name} ${method}`;
    return errorForCode(err.code, describeFailure(err, what, this.name, timeoutMs), { cause: err });
  }
}

/** How a failed call to `host` reads, by status code. */
function describeFailure(err: Pick<ServiceError, "code" | "details">, what: string, host: string, timeoutMs: number): string {
  switch (err.code as number) {
    case Code.UNAVAILABLE:
      return `${host} is unavailable: ${err.details}`;
    case Code.INVALID_ARGUMENT:
      return `${what} rejected the request: ${err.details}`;
    case Code.DEADLINE_EXCEEDED:
      return `${what} gave no answer within ${timeoutMs} ms`;
    case Code.CANCELLED:
      return `${what} was cancelled: ${err.details}`;
    case Code.RESOURCE_EXHAUSTED:
    case Code.DATA_LOSS:
      return `${what}: ${err.details}`;
    default:
      return `${what} failed: ${err.details}`;
  }
}

/**
 * The most bytes an answer to `request` can take: float32 partial sums (the widest combine codec) for its rows and
 * its shared-expert rows, and framing.
 */
function replyBound(request: DispatchStreamRequest["request"]): number {
  const shape = request?.activations?.shape ?? [];
  const rows = (shape[0] ?? 0) + (request?.sharedExpertRows.length ?? 0);
  return 4 * rows * (shape[1] ?? 0) + 4096;
}

/** One transport per address; addresses[h] serves shard h. */
export function connectExpertHosts(addresses: readonly string[], options: Omit<GrpcExpertHostOptions, "address" | "shard"> = {}): GrpcExpertHostTransport[] {
  return addresses.map((address, shard) => new GrpcExpertHostTransport({ ...options, address, shard }));
}
