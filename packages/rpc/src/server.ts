/**
 * A grpc-js server the way every moela service runs one:
 *
 *   const server = createServer({ logger });
 *   server.addService(DecodeService, { async *stream(req, ctx) {...}, async cancel(req, ctx) {...}, ... });
 *   const { port } = await serve(server, "127.0.0.1:0");      // health turns SERVING
 *   ... wait for SIGTERM ...
 *   await drainAndClose(server, 30_000);                       // NOT_SERVING, finish or end calls, close
 *
 * It always carries grpc.health.v1 and server reflection (every moela.v1 service plus health),
 * so grpcurl and Kubernetes probes work against any service without extra wiring.
 */
import { readFileSync } from "node:fs";
import { type ChannelOptions, Server, type ServiceDefinition, type UntypedHandleCall, type UntypedServiceImplementation } from "@grpc/grpc-js";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { loadSync, type PackageDefinition } from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";
import { Code, InvalidArgumentError, UnavailableError, type Logger } from "@moela/core";
import { DESCRIPTOR_SET_PATH } from "@moela/proto-gen";
import { HealthImplementation, protoPath as healthProtoPath } from "grpc-health-check";
import {
  bidiStreamHandler,
  type BidiStreamHandler,
  type CallEndEvent,
  clientStreamHandler,
  type ClientStreamHandler,
  type HandlerOptions,
  type LiveCall,
  serverStreamHandler,
  type ServerStreamHandler,
  unaryHandler,
  type UnaryHandler,
} from "./handlers.js";
import { NO_INTERNAL_SECURITY, secretServerInterceptor, serverCredentials, type InternalSecurity } from "./security.js";

/** Largest message either way by default: a prefill dispatch or KV chunk of a few thousand
 * tokens in float32 is tens of MiB, far above grpc's 4 MiB default. */
export const DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024;

/**
 * Channel options for clients of moela services: message size limits matching the servers', and a short
 * reconnect backoff. grpc-js backs off up to 120 s between reconnects by default, and a call made while the
 * channel waits fails UNAVAILABLE at once; a peer that restarts (an expert-host or decode instance coming
 * back at its address) would stay unreachable for minutes. Capped at 2 s, the cluster recovers within
 * seconds of a peer's return.
 */
export const DEFAULT_CHANNEL_OPTIONS: Readonly<ChannelOptions> = Object.freeze({
  "grpc.max_receive_message_length": DEFAULT_MAX_MESSAGE_BYTES,
  "grpc.max_send_message_length": DEFAULT_MAX_MESSAGE_BYTES,
  "grpc.initial_reconnect_backoff_ms": 250,
  "grpc.max_reconnect_backoff_ms": 2_000,
});

/** The shape of one method in a generated service definition (e.g. DecodeService.stream). */
export interface MethodDefinitionLike {
  readonly path: string;
  readonly requestStream: boolean;
  readonly responseStream: boolean;
  readonly requestDeserialize: (bytes: Buffer) => unknown;
  readonly responseSerialize: (value: never) => Buffer;
}
export type ServiceDefinitionLike = { readonly [method: string]: MethodDefinitionLike };

type RequestOf<M> = M extends { requestDeserialize: (bytes: Buffer) => infer R } ? R : never;
type ResponseOf<M> = M extends { responseSerialize: (value: infer R) => Buffer } ? R : never;

/** The async handler type for one method, chosen by its streaming flags. */
export type AsyncHandler<M> = M extends { requestStream: true; responseStream: true }
  ? BidiStreamHandler<RequestOf<M>, ResponseOf<M>>
  : M extends { requestStream: true }
    ? ClientStreamHandler<RequestOf<M>, ResponseOf<M>>
    : M extends { responseStream: true }
      ? ServerStreamHandler<RequestOf<M>, ResponseOf<M>>
      : UnaryHandler<RequestOf<M>, ResponseOf<M>>;

/** A service written with async handlers: one per method of the generated definition `S`. */
export type AsyncServiceImplementation<S> = { [K in keyof S]: AsyncHandler<S[K]> };

/** "moela.v1.Decode" from a generated definition (its methods' paths are "/moela.v1.Decode/<Rpc>"). */
export function serviceNameOf(definition: ServiceDefinitionLike): string {
  const first = Object.values(definition)[0];
  const match = first === undefined ? null : /^\/([^/]+)\/[^/]+$/.exec(first.path);
  if (match === null) throw new InvalidArgumentError("service definition has no method with a /package.Service/Method path");
  return match[1]!;
}

export interface CreateServerOptions {
  /** Logs handler errors that reach clients as INTERNAL (with their stack, which the wire never carries). */
  readonly logger?: Logger | undefined;
  /** Called once per finished call (method, status code, duration): the hook for metrics. */
  readonly onCallEnd?: (event: CallEndEvent) => void;
  /** Largest message in either direction (default DEFAULT_MAX_MESSAGE_BYTES). */
  readonly maxMessageBytes?: number;
  /** Serve grpc.reflection (default true). */
  readonly reflection?: boolean;
  /** Extra grpc-js server options (keepalive, ...). */
  readonly grpcOptions?: ChannelOptions;
  /**
   * Internal security (security.ts): with secrets, every call but health must carry one (else
   * UNAUTHENTICATED, counted through onCallEnd); with a TLS cert, `serve` binds TLS (mTLS with
   * clientAuth). Default: none (plaintext, open), as the router's public Generate server runs.
   */
  readonly security?: InternalSecurity | undefined;
}

/** A grpc-js Server plus health, reflection and the live calls that drain must end. */
export class RpcServer {
  readonly grpc: Server;
  readonly health: HealthImplementation;
  /** Calls in progress through addService's handlers. */
  private readonly calls = new Set<LiveCall>();
  private readonly serviceNames: string[] = [];
  private readonly handlerOptions: HandlerOptions;
  private serving = false;
  private draining: Promise<{ forced: boolean }> | undefined;
  /** What `serve` binds with and the interceptor checks. */
  readonly security: InternalSecurity;

  constructor(options: CreateServerOptions = {}) {
    const maxBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.security = options.security ?? NO_INTERNAL_SECURITY;
    let lastRefusalLog = 0;
    const interceptors =
      this.security.secrets.length === 0
        ? []
        : [
            secretServerInterceptor(this.security.secrets, (refused) => {
              options.onCallEnd?.({ method: refused.method, code: Code.UNAUTHENTICATED, durationMs: 0 });
              // At most one line a second: a caller without the secret cannot flood the log.
              const now = Date.now();
              if (now - lastRefusalLog < 1_000) return;
              lastRefusalLog = now;
              options.logger?.warn(refused, "refused an internal call without the right secret (UNAUTHENTICATED)");
            }),
          ];
    this.grpc = new Server({
      "grpc.max_receive_message_length": maxBytes,
      "grpc.max_send_message_length": maxBytes,
      ...options.grpcOptions,
      ...(interceptors.length > 0 ? { interceptors } : {}),
    });
    this.health = new HealthImplementation({ "": "NOT_SERVING" });
    this.health.addToServer(this.grpc);
    if (options.reflection ?? true) new ReflectionService(reflectionPackageDefinition()).addToServer(this.grpc);
    this.handlerOptions = { calls: this.calls, logger: options.logger, onCallEnd: options.onCallEnd };
  }

  /**
   * Add a service from its generated definition (e.g. DecodeService) and async handlers. Its
   * health status follows the server's (NOT_SERVING until `serve`).
   */
  addService<S extends ServiceDefinitionLike>(definition: S, implementation: AsyncServiceImplementation<S>): this {
    const name = serviceNameOf(definition);
    const handlers: UntypedServiceImplementation = {};
    for (const [method, def] of Object.entries(definition)) {
      const fn = (implementation as Record<string, unknown>)[method];
      if (typeof fn !== "function") throw new InvalidArgumentError(`${name}: no handler for method ${method}`);
      handlers[method] = wrap(def, (fn as (...args: never[]) => unknown).bind(implementation), this.handlerOptions);
    }
    this.grpc.addService(definition as unknown as ServiceDefinition, handlers);
    this.serviceNames.push(name);
    this.health.setStatus(name, this.serving ? "SERVING" : "NOT_SERVING");
    return this;
  }

  /** The full names of the services added, e.g. ["moela.v1.Decode"]. */
  get services(): readonly string[] {
    return this.serviceNames;
  }

  /** Calls currently running through addService's handlers. */
  get activeCalls(): number {
    return this.calls.size;
  }

  get isServing(): boolean {
    return this.serving;
  }

  /** Report SERVING or NOT_SERVING for the whole server ("") and every added service. */
  setServing(serving: boolean): void {
    this.serving = serving;
    const status = serving ? "SERVING" : "NOT_SERVING";
    this.health.setStatus("", status);
    for (const name of this.serviceNames) this.health.setStatus(name, status);
  }

  /** End every live call with `reason`'s status; resolves when their handlers have returned. */
  abortCalls(reason: UnavailableError): Promise<void> {
    const live = [...this.calls];
    for (const call of live) call.abort(reason);
    return Promise.all(live.map((call) => call.done)).then(() => undefined);
  }

  /** @internal drainAndClose's once-only promise. */
  drainOnce(start: () => Promise<{ forced: boolean }>): Promise<{ forced: boolean }> {
    this.draining ??= start();
    return this.draining;
  }
}

function wrap(def: MethodDefinitionLike, fn: (...args: never[]) => unknown, options: HandlerOptions): UntypedHandleCall {
  const handler = fn as never;
  if (def.requestStream && def.responseStream) return bidiStreamHandler(handler, options);
  if (def.requestStream) return clientStreamHandler(handler, options);
  if (def.responseStream) return serverStreamHandler(handler, options);
  return unaryHandler(handler, options);
}

let reflectionDefinition: PackageDefinition | undefined;

/**
 * What reflection serves: every file of `buf build`'s descriptor set, as written (names, imports,
 * comments), plus grpc.health.v1. @grpc/reflection reads only the `fileDescriptorProtos` of each
 * entry; proto-loader would merge all moela/v1/*.proto into one made-up file (grpc-node#2595),
 * so the moela entry carries the set's own files instead.
 */
function reflectionPackageDefinition(): PackageDefinition {
  reflectionDefinition ??= {
    ...loadSync(healthProtoPath),
    "moela.v1": { fileDescriptorProtos: descriptorSetFiles(readFileSync(DESCRIPTOR_SET_PATH)) } as unknown as PackageDefinition[string],
  };
  return reflectionDefinition;
}

/** The encoded FileDescriptorProtos of a FileDescriptorSet (`repeated FileDescriptorProto file = 1`). */
function descriptorSetFiles(set: Uint8Array): Buffer[] {
  const reader = new BinaryReader(set);
  const files: Buffer[] = [];
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) files.push(Buffer.from(reader.bytes()));
    else reader.skip(wireType);
  }
  return files;
}

/** A new server; add services, then `serve` it. */
export function createServer(options: CreateServerOptions = {}): RpcServer {
  return new RpcServer(options);
}

export interface ServeOptions {
  /** Report SERVING once bound (default true). Pass false when the service is not ready yet
   * (weights loading) and call server.setServing(true) later. */
  readonly serving?: boolean;
}

/**
 * Bind `address` ("127.0.0.1:0" for any free port, "0.0.0.0:50051", "[::]:50051") and start serving:
 * over TLS when the server's security has a certificate, else plaintext. Resolves with the bound port and a dialable "host:port".
 */
export async function serve(server: RpcServer, address: string, options: ServeOptions = {}): Promise<{ port: number; address: string }> {
  const match = /^(.*):(\d+)$/.exec(address);
  if (match === null) throw new InvalidArgumentError(`gRPC listen address "${address}" is not host:port`);
  const port = await new Promise<number>((resolve, reject) => {
    server.grpc.bindAsync(address, serverCredentials(server.security), (err, boundPort) => {
      if (err !== null) reject(new UnavailableError(`cannot listen on ${address}: ${err.message}`, { cause: err }));
      else resolve(boundPort);
    });
  });
  if (options.serving ?? true) server.setServing(true);
  return { port, address: `${match[1]!}:${port}` };
}

export interface DrainOptions {
  /** Keep accepting calls this long after turning NOT_SERVING, so probes and routers notice
   * before connections are refused (default 0). */
  readonly announceMs?: number;
  /** After the grace period, how long to let ended calls flush their statuses before the
   * connections are cut (default 1000 ms). */
  readonly flushMs?: number;
}

/**
 * Shut a server down gracefully: health NOT_SERVING; (after announceMs) stop accepting calls and
 * let the running ones finish for up to `graceMs`; then end those still running (endless
 * streams, stuck handlers) with UNAVAILABLE so their clients retry elsewhere, let that flush,
 * and force the connections closed. Resolves `{forced}`: whether the grace period ran out.
 * Calling it again returns the first call's promise.
 */
export function drainAndClose(server: RpcServer, graceMs: number, options: DrainOptions = {}): Promise<{ forced: boolean }> {
  return server.drainOnce(async () => {
    server.setServing(false);
    if ((options.announceMs ?? 0) > 0) await delay(options.announceMs!);
    const closed = new Promise<void>((resolve) => server.grpc.tryShutdown(() => resolve()));
    if (await finishesWithin(closed, graceMs)) return { forced: false };
    const ended = server.abortCalls(new UnavailableError("server is shutting down"));
    // Our calls have been answered; give the statuses time to reach the wire. Calls we do not
    // own (health Watch, reflection) still hold tryShutdown open, so do not wait for it past that.
    await finishesWithin(Promise.all([ended, closed]), options.flushMs ?? 1_000);
    server.grpc.forceShutdown();
    return { forced: true };
  });
}

/** True when `p` settles within `ms`. */
async function finishesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
