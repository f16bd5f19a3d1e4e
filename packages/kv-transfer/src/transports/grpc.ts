/**
 * KvTransfer.Push over gRPC (proto/moela/v1/kv_transfer.proto).
 *
 * Prefill (client):
 *   const connector = grpcKvConnector("10.0.0.7:7001");        // one per decode instance; close() when done
 *   const sender = new KvSender(connector);                   // then begin / engine.prefill / end
 *
 * Decode (server), with @moela/rpc:
 *   server.addService(KvTransferService, kvTransferService(inbox));
 *
 * Frames map one to one onto PushRequest messages; the receiver's failure ends the call with its code
 * and reason (the client sees it as the transfer's failure), its ack is the PushResponse. The server
 * answers as soon as the receiver fails, without waiting for the rest of the stream, so a refused
 * transfer (RESOURCE_EXHAUSTED after KvBegin) stops the sender at once.
 */
import { once } from "node:events";
import { isIPv6 } from "node:net";
import { credentials, Metadata, type ChannelCredentials, type ClientOptions, type ServiceError } from "@grpc/grpc-js";
import { Code, errorForCode, errorMessage, InvalidArgumentError, MoelaError } from "@moela/core";
import type { EmittedToken, GenerationParams, KvDtype } from "@moela/engine";
import {
  DType,
  KvTransferClient,
  type KvBegin,
  type KvEnd,
  type KvLayer,
  type PushRequest,
  type PushResponse,
  type SamplingParams,
  type Tensor,
} from "@moela/proto-gen";
import { KvPoll, type KvChannel, type KvConnector, type KvFrame, type KvOutcome } from "../contract.js";
import type { KvInbox } from "../receiver.js";

/** Metadata key carrying the request id, so the decode side's logs join up. */
export const REQUEST_ID_METADATA_KEY = "x-moela-request-id";

/** Largest message either way (a long prompt chunk in f32 is tens of MiB; grpc's default is 4 MiB). */
const MAX_MESSAGE_BYTES = 256 * 1024 * 1024;

// ---- frames <-> wire ----------------------------------------------------------------------------

function kvDtypeOf(d: DType): KvDtype | null {
  return d === DType.DTYPE_F32 ? "f32" : d === DType.DTYPE_BF16 ? "bf16" : null;
}

function wireDtype(d: KvDtype): DType {
  return d === "f32" ? DType.DTYPE_F32 : DType.DTYPE_BF16;
}

function toBuffer(a: Uint8Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

/** Wire sampling parameters -> the engine's, as KvBegin defines them (max_tokens resolved, seed set). */
export function generationParamsFromWire(s: SamplingParams): { params: GenerationParams; logprobs: boolean } {
  const params: GenerationParams = {
    temperature: s.temperature ?? 1,
    topP: s.topP ?? 1,
    topK: s.topK,
    ...(s.seed !== undefined ? { seed: s.seed } : {}),
    maxTokens: s.maxTokens,
    stopTokenIds: [...s.stopTokenIds],
    ignoreEos: s.ignoreEos,
    topLogprobs: s.logprobs ?? 0,
    // Penalties and filters: only those set (the engine treats absent as off).
    ...(s.presencePenalty !== undefined && s.presencePenalty !== 0 ? { presencePenalty: s.presencePenalty } : {}),
    ...(s.frequencyPenalty !== undefined && s.frequencyPenalty !== 0 ? { frequencyPenalty: s.frequencyPenalty } : {}),
    ...(s.repetitionPenalty !== undefined ? { repetitionPenalty: s.repetitionPenalty } : {}),
    ...(s.logitBias !== undefined && s.logitBias.entries.length > 0 ? { logitBias: s.logitBias.entries.map((b) => [b.tokenId, b.bias] as const) } : {}),
    ...(s.minP !== undefined && s.minP !== 0 ? { minP: s.minP } : {}),
    ...(s.minTokens !== undefined && s.minTokens !== 0 ? { minTokens: s.minTokens } : {}),
    ...(s.priorOutputTokens !== undefined && s.priorOutputTokens !== 0 ? { priorOutputTokens: s.priorOutputTokens } : {}),
    ...(s.grammar !== undefined && s.grammar !== "" ? { grammar: s.grammar } : {}),
  };
  return { params, logprobs: s.logprobs !== undefined };
}

/** The engine's sampling parameters -> wire (stop strings are the router's and do not travel here). */
export function generationParamsToWire(p: GenerationParams, logprobs: boolean): SamplingParams {
  return {
    temperature: p.temperature,
    topP: p.topP,
    // The engine's "off" is 0 or -1; the wire's is 0.
    topK: p.topK > 0 ? p.topK : 0,
    ...(p.seed !== undefined ? { seed: p.seed } : {}),
    maxTokens: p.maxTokens,
    stop: [],
    stopTokenIds: [...(p.stopTokenIds ?? [])],
    ...(logprobs ? { logprobs: p.topLogprobs ?? 0 } : {}),
    ignoreEos: p.ignoreEos ?? false,
    // The penalties and biases are float32 on the wire, as the sampler applies them (Math.fround): nothing is lost.
    ...(p.presencePenalty !== undefined && p.presencePenalty !== 0 ? { presencePenalty: p.presencePenalty } : {}),
    ...(p.frequencyPenalty !== undefined && p.frequencyPenalty !== 0 ? { frequencyPenalty: p.frequencyPenalty } : {}),
    ...(p.repetitionPenalty !== undefined && p.repetitionPenalty !== 1 ? { repetitionPenalty: p.repetitionPenalty } : {}),
    ...(p.logitBias !== undefined && p.logitBias.length > 0 ? { logitBias: { entries: p.logitBias.map(([tokenId, bias]) => ({ tokenId, bias })) } } : {}),
    ...(p.minP !== undefined && p.minP !== 0 ? { minP: p.minP } : {}),
    ...(p.minTokens !== undefined && p.minTokens !== 0 ? { minTokens: p.minTokens } : {}),
    ...(p.priorOutputTokens !== undefined && p.priorOutputTokens !== 0 ? { priorOutputTokens: p.priorOutputTokens } : {}),
    ...(p.grammar !== undefined ? { grammar: p.grammar } : {}),
  };
}

/** A frame as a PushRequest. */
export function frameToWire(f: KvFrame): PushRequest {
  switch (f.kind) {
    case "begin": {
      const begin: KvBegin = {
        transferId: f.transferId,
        requestId: f.requestId,
        modelId: f.modelId,
        promptTokenIds: [...f.promptTokenIds],
        numLayers: f.numLayers,
        numTokens: f.numTokens,
        kvLoraRank: f.kvLoraRank,
        qkRopeHeadDim: f.qkRopeHeadDim,
        kvDtype: wireDtype(f.kvDtype),
        sampling: generationParamsToWire(f.params, f.logprobs),
        cachedPromptTokens: f.cachedPromptTokens,
        deadlineUnixMs: f.deadlineUnixMs,
      };
      return { chunk: { $case: "begin", value: begin } };
    }
    case "layer": {
      const latent: Tensor = {
        dtype: f.dtype === null ? DType.DTYPE_UNSPECIFIED : wireDtype(f.dtype),
        shape: [...f.shape],
        data: toBuffer(f.data),
        scales: Buffer.alloc(0),
        tileSize: 0,
      };
      const layer: KvLayer = { layer: f.layer, tokenStart: f.tokenStart, tokenCount: f.tokenCount, latent, sha256: toBuffer(f.sha256) };
      return { chunk: { $case: "layer", value: layer } };
    }
    case "end": {
      const t = f.firstToken;
      const end: KvEnd = {
        numChunks: f.numChunks,
        sha256: toBuffer(f.sha256),
        firstTokenId: t.id,
        firstTokenLogprobs: { logprob: t.logprob, top: (t.top ?? []).map(([tokenId, logprob]) => ({ tokenId, logprob })) },
        ...(f.draft !== null ? { draftTokenId: f.draft.token } : {}),
        ...(f.draft?.probs ? { draftProbs: f32Tensor(f.draft.probs) } : {}),
        rngState: [...f.rngState],
        draftedTokens: f.drafted,
        acceptedDraftTokens: f.accepted,
      };
      return { chunk: { $case: "end", value: end } };
    }
  }
}

function f32Tensor(v: Float32Array): Tensor {
  const data = Buffer.alloc(v.length * 4); // [n] f32, little-endian
  for (let i = 0; i < v.length; i++) data.writeFloatLE(v[i]!, i * 4);
  return { dtype: DType.DTYPE_F32, shape: [v.length], data, scales: Buffer.alloc(0), tileSize: 0 };
}

function f32FromTensor(t: Tensor, what: string): Float32Array {
  if (t.dtype !== DType.DTYPE_F32 || t.shape.length !== 1 || t.data.length !== t.shape[0]! * 4) {
    throw new InvalidArgumentError(
      `${what} must be a [n] F32 tensor with 4n bytes, got dtype ${t.dtype} shape [${t.shape.join(", ")}] and ${t.data.length} bytes`,
    );
  }
  const out = new Float32Array(t.shape[0]!);
  for (let i = 0; i < out.length; i++) out[i] = t.data.readFloatLE(i * 4);
  return out;
}

/** A PushRequest as a frame; a malformed message throws InvalidArgumentError naming the field. */
export function frameFromWire(req: PushRequest): KvFrame {
  const c = req.chunk;
  if (c === undefined) throw new InvalidArgumentError("PushRequest carries none of begin, layer, end");
  switch (c.$case) {
    case "begin": {
      const b = c.value;
      if (b.sampling === undefined) throw new InvalidArgumentError("KvBegin.sampling is missing");
      const kvDtype = kvDtypeOf(b.kvDtype);
      if (kvDtype === null) throw new InvalidArgumentError(`KvBegin.kv_dtype ${DType[b.kvDtype] ?? b.kvDtype} is not F32 or BF16`);
      const { params, logprobs } = generationParamsFromWire(b.sampling);
      return {
        kind: "begin",
        transferId: b.transferId,
        requestId: b.requestId,
        modelId: b.modelId,
        promptTokenIds: b.promptTokenIds,
        numLayers: b.numLayers,
        numTokens: b.numTokens,
        kvLoraRank: b.kvLoraRank,
        qkRopeHeadDim: b.qkRopeHeadDim,
        kvDtype,
        params,
        logprobs,
        cachedPromptTokens: b.cachedPromptTokens,
        deadlineUnixMs: b.deadlineUnixMs,
      };
    }
    case "layer": {
      const l = c.value;
      if (l.latent === undefined) throw new InvalidArgumentError(`KvLayer (layer ${l.layer}, token ${l.tokenStart}) has no latent tensor`);
      if (l.latent.scales.length > 0 || l.latent.tileSize !== 0) throw new InvalidArgumentError("KvLayer.latent must not be tiled (no scales)");
      return {
        kind: "layer",
        layer: l.layer,
        tokenStart: l.tokenStart,
        tokenCount: l.tokenCount,
        dtype: kvDtypeOf(l.latent.dtype),
        shape: l.latent.shape,
        data: l.latent.data,
        sha256: l.sha256,
      };
    }
    case "end": {
      const e = c.value;
      if (e.firstTokenLogprobs === undefined) throw new InvalidArgumentError("KvEnd.first_token_logprobs is missing");
      const top = e.firstTokenLogprobs.top.map((x) => [x.tokenId, x.logprob] as const);
      const firstToken: EmittedToken = { id: e.firstTokenId, logprob: e.firstTokenLogprobs.logprob, top: top.length > 0 ? top : null };
      if (e.draftTokenId === undefined && e.draftProbs !== undefined) throw new InvalidArgumentError("KvEnd.draft_probs without draft_token_id");
      return {
        kind: "end",
        numChunks: e.numChunks,
        sha256: e.sha256,
        firstToken,
        draft:
          e.draftTokenId === undefined
            ? null
            : { token: e.draftTokenId, probs: e.draftProbs === undefined ? null : f32FromTensor(e.draftProbs, "KvEnd.draft_probs") },
        rngState: e.rngState,
        drafted: e.draftedTokens,
        accepted: e.acceptedDraftTokens,
      };
    }
  }
}

// ---- server ---------------------------------------------------------------------------------------

/** What a KvTransfer.Push handler gets from the rpc kit (its CallContext has more). */
export interface PushCallContext {
  readonly signal: AbortSignal;
  /** The sender's address as grpc-js reports it ("10.0.0.7:51234", "[::1]:51234"); its host is the peer
   * counted against the inbox's maxTransfersPerPeer. Absent: not counted. */
  readonly peer?: string;
}

/**
 * The host part of a grpc-js peer address ("10.0.0.7:51234" -> "10.0.0.7", "[::1]:51234" -> "::1",
 * "ipv4:10.0.0.7:51234" -> "10.0.0.7"): every connection from one machine counts as one peer, so a
 * sender cannot escape the bound by opening more connections. grpc-js writes an IPv6 peer without
 * brackets ("::1:51234", "::ffff:10.0.0.7:51234" on a dual-stack listener such as [::]:port): its port is
 * the last ":<digits>" when what precedes it is an IPv6 address. An IPv4-mapped address counts as its IPv4
 * host, so one machine is one peer whichever way it connects.
 */
export function peerHost(peer: string): string {
  const p = peer.replace(/^(ipv4|ipv6):/, "");
  const bracketed = /^\[([^\]]*)\](?::\d+)?$/.exec(p);
  let host = p;
  if (bracketed !== null) host = bracketed[1]!;
  else {
    const v4 = /^([^:]+):\d+$/.exec(p);
    const v6 = /^(.*:.*):\d+$/.exec(p);
    if (v4 !== null) host = v4[1]!;
    else if (v6 !== null && isIPv6(v6[1]!)) host = v6[1]!;
  }
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(host);
  return mapped === null ? host : mapped[1]!;
}

/** What the Push handler's wait for the next frame resolves with when the receiver ended first. */
const RECEIVER_DONE: unique symbol = Symbol("receiver done");

/**
 * The KvTransfer service implementation over `inbox`, for @moela/rpc's addService: each Push call
 * is one receiver. Ends the call with the receiver's failure as a MoelaError (code + reason).
 */
export function kvTransferService(inbox: KvInbox): {
  push(requests: AsyncIterable<PushRequest>, ctx: PushCallContext): Promise<PushResponse>;
} {
  return {
    async push(requests, ctx) {
      // Refused (RESOURCE_EXHAUSTED) before a frame is read or a block taken when the peer is at its bound.
      const receiver = inbox.open(ctx.peer === undefined ? undefined : peerHost(ctx.peer));
      const onAbort = (): void => {
        const reason: unknown = ctx.signal.reason;
        receiver.abort(
          reason instanceof MoelaError
            ? { code: reason.code, reason: `Push ended: ${reason.message}` }
            : { code: Code.CANCELLED, reason: "the sender cancelled the transfer" },
        );
      };
      ctx.signal.addEventListener("abort", onAbort, { once: true });
      // A receiver that fails on its own (no frame for idleTimeoutMs, its deadline, a shutdown) answers the call
      // at once: waiting for the sender's next frame would keep a silent sender's call open for good.
      const settled: Promise<typeof RECEIVER_DONE> = receiver.done.then(() => RECEIVER_DONE);
      const iterator = requests[Symbol.asyncIterator]();
      try {
        if (ctx.signal.aborted) onAbort();
        for (;;) {
          const next = iterator.next();
          // Left pending when the receiver ends first; it settles when the call does.
          next.catch(() => {});
          const got = await Promise.race([next, settled]);
          if (got === RECEIVER_DONE || got.done === true) break;
          const req = got.value;
          let frame: KvFrame;
          try {
            frame = frameFromWire(req);
          } catch (err) {
            receiver.abort({ code: Code.INVALID_ARGUMENT, reason: errorMessage(err) });
            break;
          }
          const state = receiver.receive(frame);
          if (state === KvPoll.Failed || state === KvPoll.Success) break;
        }
        receiver.close();
      } catch (err) {
        // The request stream broke (client cancelled, connection lost, deadline).
        onAbort();
        if (!(err instanceof MoelaError)) receiver.abort({ code: Code.UNAVAILABLE, reason: `the Push stream broke: ${String(err)}` });
      } finally {
        ctx.signal.removeEventListener("abort", onAbort);
        // As `for await` would on break (after a pending next(), when the call ends).
        iterator.return?.().catch(() => {});
      }
      const outcome = await receiver.done;
      if (!outcome.ok) throw errorForCode(outcome.failure.code, outcome.failure.reason);
      return { transferId: outcome.ack.transferId, kvBlocks: outcome.ack.kvBlocks, bytesReceived: outcome.ack.bytesReceived };
    },
  };
}

// ---- client ---------------------------------------------------------------------------------------

export interface GrpcKvConnectorOptions {
  /** Deadline of each Push call, ms from its start (default: none; KvBegin.deadline_unix_ms still applies). */
  readonly timeoutMs?: number;
  /** Extra grpc-js client options (when the connector makes its own client): @moela/rpc's
   * clientChannel(security).options carries the interceptor that presents the internal secret. */
  readonly channelOptions?: Partial<ClientOptions>;
  /** Channel credentials (when the connector makes its own client); default plaintext. TLS/mTLS:
   * clientChannel(security).credentials. */
  readonly credentials?: ChannelCredentials;
}

class GrpcChannel implements KvChannel {
  readonly outcome: Promise<KvOutcome>;
  private answered = false;
  private readonly call: ReturnType<KvTransferClient["push"]>;

  constructor(client: KvTransferClient, transferId: string, requestId: string, options: GrpcKvConnectorOptions) {
    let settle!: (o: KvOutcome) => void;
    this.outcome = new Promise((resolve) => {
      settle = resolve;
    });
    const metadata = new Metadata();
    metadata.set(REQUEST_ID_METADATA_KEY, requestId);
    const callOptions = options.timeoutMs === undefined ? {} : { deadline: Date.now() + options.timeoutMs };
    this.call = client.push(metadata, callOptions, (err: ServiceError | null, res?: PushResponse) => {
      this.answered = true;
      if (err !== null || res === undefined) {
        const code = (err?.code ?? Code.UNKNOWN) as Code;
        settle({ ok: false, failure: { code, reason: err?.details || err?.message || "Push failed without a status" } });
      } else if (res.transferId !== transferId) {
        settle({ ok: false, failure: { code: Code.INTERNAL, reason: `Push of ${transferId} answered for transfer ${res.transferId}` } });
      } else {
        settle({ ok: true, ack: { transferId: res.transferId, kvBlocks: res.kvBlocks, bytesReceived: res.bytesReceived } });
      }
    });
    // Write-side errors (after cancel, or once the server has answered) are reported by the callback.
    this.call.on("error", () => {});
  }

  async send(frame: KvFrame): Promise<void> {
    if (this.answered) return;
    if (!this.call.write(frameToWire(frame))) {
      // Wait for room, or for the server's early answer ('drain' may then never come).
      await Promise.race([once(this.call, "drain"), this.outcome]);
    }
  }

  end(): void {
    if (!this.answered) this.call.end();
  }

  cancel(_reason: string): void {
    if (!this.answered) this.call.cancel();
  }
}

/**
 * A connector to one decode instance's KvTransfer service. `target` is "host:port" (the connector
 * then owns its client: close() it) or a KvTransferClient the caller owns.
 */
export function grpcKvConnector(target: string | KvTransferClient, options: GrpcKvConnectorOptions = {}): KvConnector & { close(): void } {
  const owned = typeof target === "string";
  const client =
    typeof target === "string"
      ? new KvTransferClient(target, options.credentials ?? credentials.createInsecure(), {
          "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
          "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
          // A restarted peer is reachable again within 2 s (grpc-js backs off up to 120 s by default).
          "grpc.initial_reconnect_backoff_ms": 250,
          "grpc.max_reconnect_backoff_ms": 2_000,
          ...options.channelOptions,
        })
      : target;
  return {
    open: (transferId, requestId) => new GrpcChannel(client, transferId, requestId, options),
    close: () => {
      if (owned) client.close();
    },
  };
}
