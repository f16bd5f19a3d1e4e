/**
 * The KV transfer role contract: how a prompt's latent KV cache moves from the prefill instance that
 * computed it to the decode instance that will continue the sequence. The wire protocol is
 * proto/moela/v1/kv_transfer.proto; this module states the same contract in wire-free terms so the
 * roles, the in-process fake and the gRPC transport all obey one definition.
 *
 * Two roles, one transfer each:
 *
 *   KvSender (prefill side)                          KvReceiver (decode side)
 *   ───────────────────────                          ────────────────────────
 *   begin(meta)          ── KvBeginFrame ──►         validate model, dims, dtype, sampling; refuse a
 *                                                    duplicate transfer id; reserve KV blocks for
 *                                                    prompt + max_tokens (RESOURCE_EXHAUSTED, nothing
 *                                                    taken, when the cache cannot hold them)
 *   onLayer(...) (the engine's KvSink, called as each layer of each prefill chunk is computed)
 *                        ── KvLayerFrame × N ──►     check order (per layer ascending, contiguous),
 *                                                    shape, dtype, SHA-256; decode the rows straight
 *                                                    into the reserved blocks
 *   end(snapshot)        ── KvEndFrame ──►           check chunk count, every layer complete, total
 *                                                    SHA-256, first token / draft / rng state; then
 *                                                    engine.restore(snapshot, blocks): ADMITTED
 *                        ◄── KvAck | KvFailure ──
 *
 * Each role exposes `poll(): KvPoll` and `abort()`. The states, in order:
 *
 *   Bootstrapping    sender: not begun (no channel yet). receiver: nothing received yet.
 *   WaitingForInput  sender: begun, waiting for the engine's first layer rows.
 *                    receiver: begin accepted, blocks reserved, no rows yet.
 *   Transferring     rows are flowing (sender: at least one chunk sent; receiver: received).
 *   Success          sender: the receiver admitted the sequence (KvAck). receiver: admitted.
 *   Failed           terminal; `failure` says why (a gRPC code and a reason).
 *
 * Transitions only move forward, and a role reaches exactly one of Success or Failed. Whatever fails
 * (bad frame, checksum, missing chunk, truncated stream, deadline, abort, a refused admission), the
 * receiver frees every block it reserved before it reports Failed: a half-received transfer is never
 * attended to and never leaks cache. Failures are data: `failure` on the role and the `done`
 * promise's KvOutcome (which never rejects), not exceptions thrown into a callback. A sender whose
 * transfer failed keeps accepting onLayer calls as no-ops, so one failed transfer does not stop a
 * batched prefill that feeds others.
 *
 * Data: a row is [c_kv (kv_lora_rank) | k_pe roped (qk_rope_head_dim)] for one token at one layer, in
 * the profile's KV dtype (f32 exact, bf16 paper: the engine already rounds rows through bf16 before
 * caching them, so bf16 transfer is lossless). Layers 0..num_hidden_layers-1 are the decoder blocks;
 * layer num_hidden_layers is the MTP block, sent when prefill computed it (then decode may continue
 * speculating; without it the draft is dropped). The transferred positions are [0, prompt length):
 * the first sampled token's own KV is computed by decode's first step.
 *
 * Transports carry frames between the roles and nothing else: transports/in-process.ts connects a
 * sender to a receiver directly (tests, one-process clusters), transports/grpc.ts speaks
 * KvTransfer.Push. Only transports/ knows the wire types.
 */
import type { Code } from "@moela/core";
import type { EmittedToken, GenerationParams, KvDtype } from "@moela/engine";

/** The state of one role of one transfer (see the module comment for what each means per role). */
export const KvPoll = {
  Bootstrapping: "bootstrapping",
  WaitingForInput: "waiting-for-input",
  Transferring: "transferring",
  Success: "success",
  Failed: "failed",
} as const;
export type KvPoll = (typeof KvPoll)[keyof typeof KvPoll];

/** Forward order of the states; a role never moves to a lower rank. */
export const KV_POLL_RANK: Readonly<Record<KvPoll, number>> = {
  bootstrapping: 0,
  "waiting-for-input": 1,
  transferring: 2,
  success: 3,
  failed: 3,
};

export function isTerminal(state: KvPoll): boolean {
  return state === KvPoll.Success || state === KvPoll.Failed;
}

/** Why a transfer failed: a gRPC status code (as the Push call ends with it) and a readable reason. */
export interface KvFailure {
  readonly code: Code;
  readonly reason: string;
}

/** The receiver's answer to a successful transfer (PushResponse). */
export interface KvAck {
  readonly transferId: string;
  /** KV blocks the sequence holds on the decode instance after admission. */
  readonly kvBlocks: number;
  /** Latent bytes received (sum of the layer chunks' data lengths). */
  readonly bytesReceived: number;
}

/** How a transfer ended, for either role. */
export type KvOutcome = { readonly ok: true; readonly ack: KvAck } | { readonly ok: false; readonly failure: KvFailure };

/** Everything known before the first row is computed (KvBegin). */
export interface KvTransferMeta {
  /** Unique per transfer attempt: a retried prefill gets a new one. */
  readonly transferId: string;
  readonly requestId: string;
  /** The model identity both sides must share. */
  readonly modelId: string;
  readonly promptTokenIds: readonly number[];
  /** Layers whose rows follow: num_hidden_layers, or + MTP layers when prefill computed them. */
  readonly numLayers: number;
  /** Prompt positions whose rows follow (= promptTokenIds.length). */
  readonly numTokens: number;
  readonly kvLoraRank: number;
  readonly qkRopeHeadDim: number;
  readonly kvDtype: KvDtype;
  /** The sampling parameters prefill used (max_tokens resolved, seed set). */
  readonly params: GenerationParams;
  /** Whether the request's token stream reports logprobs (the wire's SamplingParams.logprobs is set). */
  readonly logprobs: boolean;
  /** Prompt tokens served from a prefix cache (for usage). */
  readonly cachedPromptTokens: number;
  /** Ms since the epoch after which the receiver fails the transfer (DEADLINE_EXCEEDED); 0 = none. */
  readonly deadlineUnixMs: number;
}

export interface KvBeginFrame extends KvTransferMeta {
  readonly kind: "begin";
}

/** The rows of tokens [tokenStart, tokenStart + tokenCount) at one layer. */
export interface KvLayerFrame {
  readonly kind: "layer";
  readonly layer: number;
  readonly tokenStart: number;
  readonly tokenCount: number;
  /** Element type of `data` as sent; null when the wire named a type that is not a KV dtype. */
  readonly dtype: KvDtype | null;
  /** [tokenCount, latentDim] as sent. */
  readonly shape: readonly number[];
  /** Row-major little-endian element bytes. */
  readonly data: Uint8Array;
  /** SHA-256 of `data` (32 bytes). */
  readonly sha256: Uint8Array;
}

/** The end of a transfer: integrity totals and the sequence state after prefill (KvEnd). */
export interface KvEndFrame {
  readonly kind: "end";
  /** Layer frames sent. */
  readonly numChunks: number;
  /** SHA-256 over the concatenated per-chunk digests, in the order sent. */
  readonly sha256: Uint8Array;
  /** The token prefill sampled from the last prompt position (completion index 0). */
  readonly firstToken: EmittedToken;
  /** The MTP draft of the token after it; probs: [vocab] only for non-greedy sampling. */
  readonly draft: { readonly token: number; readonly probs: Float32Array | null } | null;
  /** Rng.state() after prefill: four uint32 words. */
  readonly rngState: readonly number[];
  readonly drafted: number;
  readonly accepted: number;
}

export type KvFrame = KvBeginFrame | KvLayerFrame | KvEndFrame;

/**
 * The sender's end of one transfer's connection to a receiver. A transport implements it; KvSender
 * drives it.
 */
export interface KvChannel {
  /**
   * Send one frame. Resolves when the channel can take more (back-pressure). Never rejects: a broken
   * channel or an early answer from the receiver shows in `outcome`, after which sends are dropped.
   */
  send(frame: KvFrame): Promise<void>;
  /** No more frames: the receiver decides (admits or fails). */
  end(): void;
  /** Abandon the transfer; the receiver discards it and frees its blocks. */
  cancel(reason: string): void;
  /** Settles once, with the receiver's verdict (or the transport's failure). Never rejects. */
  readonly outcome: Promise<KvOutcome>;
}

/** Opens channels to one decode instance. */
export interface KvConnector {
  open(transferId: string, requestId: string): KvChannel;
}
