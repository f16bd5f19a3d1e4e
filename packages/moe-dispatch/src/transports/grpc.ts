/**
 * The dispatcher's gRPC transport: a client of ExpertHost.Dispatch / Info on one expert-host.
 * Every call has a deadline; failures come back as MoelaErrors whose message names the host
 * (shard and address): UNAVAILABLE as UnavailableError, INVALID_ARGUMENT as InvalidArgumentError,
 * and so on by status code, so callers never see raw grpc-js errors.
 */
import { credentials, Metadata, type ChannelOptions, type ServiceError } from "@grpc/grpc-js";
import { CancelledError, Code, DataLossError, type MoelaError } from "@moela/core";
import { errorForCode } from "@moela/rpc";
import { ExpertHostClient, type DispatchResponse, type InfoResponse } from "@moela/proto-gen";
import type { EncodedActivations } from "../codec/index.js";
import type { ExpertHostTransport } from "../dispatcher.js";
import type { ExpertDispatchRequest, HostInfo } from "../host.js";
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
  readonly channelOptions?: Partial<ChannelOptions>;
}

export class GrpcExpertHostTransport implements ExpertHostTransport {
  readonly address: string;
  readonly shard: number;
  private readonly client: ExpertHostClient;
  private readonly dispatchTimeoutMs: number;
  private readonly infoTimeoutMs: number;

  constructor(o: GrpcExpertHostOptions) {
    this.address = o.address;
    this.shard = o.shard;
    this.dispatchTimeoutMs = o.dispatchTimeoutMs ?? 120_000;
    this.infoTimeoutMs = o.infoTimeoutMs ?? 10_000;
    this.client = new ExpertHostClient(o.address, credentials.createInsecure(), {
      "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
      "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
      // A restarted peer is reachable again within 2 s (grpc-js backs off up to 120 s by default).
      "grpc.initial_reconnect_backoff_ms": 250,
      "grpc.max_reconnect_backoff_ms": 2_000,
      ...o.channelOptions,
    });
  }

  /** "expert-host 1 (127.0.0.1:5001)": how errors name this host. */
  get name(): string {
    return `expert-host ${this.shard} (${this.address})`;
  }

  async dispatch(req: ExpertDispatchRequest, signal?: AbortSignal): Promise<EncodedActivations> {
    const wire = toDispatchRequest(req);
    const res = await this.unary<DispatchResponse>(
      (md, opts, cb) => this.client.dispatch(wire, md, opts, cb),
      this.dispatchTimeoutMs,
      "Dispatch",
      signal,
    );
    try {
      return fromTensor(res.output, "output");
    } catch (err) {
      throw new DataLossError(`${this.name} sent a malformed reply: ${(err as Error).message}`, { cause: err });
    }
  }

  async info(signal?: AbortSignal): Promise<HostInfo> {
    const res = await this.unary<InfoResponse>((md, opts, cb) => this.client.info({}, md, opts, cb), this.infoTimeoutMs, "Info", signal);
    return fromInfoResponse(res);
  }

  close(): void {
    this.client.close();
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
function describeFailure(err: ServiceError, what: string, host: string, timeoutMs: number): string {
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

/** One transport per address; addresses[h] serves shard h. */
export function connectExpertHosts(
  addresses: readonly string[],
  options: Omit<GrpcExpertHostOptions, "address" | "shard"> = {},
): GrpcExpertHostTransport[] {
  return addresses.map((address, shard) => new GrpcExpertHostTransport({ ...options, address, shard }));
}
