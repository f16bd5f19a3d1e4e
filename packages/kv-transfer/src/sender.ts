/**
 * The prefill side of a KV transfer (the contract is in contract.ts).
 *
 *   const sender = new KvSender(connector);
 *   await sender.begin(kvTransferMeta(engine, seq, { transferId, requestId, modelId, logprobs }));
 *   await engine.prefill([seq], { kvSink: sender });     // rows stream as each layer is computed
 *   const outcome = await sender.end(seq.snapshot());     // first token, draft, rng state; then the verdict
 *
 * For a batched prefill, give the engine `batchKvSink(seqs, senders)` so each sequence's rows reach
 * its own sender.
 */
import { Code, InvalidArgumentError } from "@moela/core";
import type { Engine, KvSink, Sequence, SequenceSnapshot } from "@moela/engine";
import { encodeRows, KV_DTYPE_BYTES } from "./codec/rows.js";
import { RunningChecksum, sha256 } from "./codec/checksum.js";
import { isTerminal, KvPoll, type KvChannel, type KvConnector, type KvEndFrame, type KvFailure, type KvOutcome, type KvTransferMeta } from "./contract.js";

export interface KvSenderOptions {
  /** Called once per chunk sent, with its data bytes (metrics). */
  readonly onChunk?: (bytes: number) => void;
}

export class KvSender implements KvSink {
  private state: KvPoll = KvPoll.Bootstrapping;
  private failed: KvFailure | null = null;
  private channel: KvChannel | null = null;
  private meta: KvTransferMeta | null = null;
  /** [numLayers] the next token position each layer expects. */
  private nextToken = new Int32Array(0);
  private readonly checksum = new RunningChecksum();
  private bytes = 0;
  private resolveDone!: (o: KvOutcome) => void;
  /** Settles once with how the transfer ended; never rejects. */
  readonly done: Promise<KvOutcome>;

  constructor(
    private readonly connector: KvConnector,
    private readonly options: KvSenderOptions = {},
  ) {
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
  }

  poll(): KvPoll {
    return this.state;
  }

  /** Why the transfer failed (null unless poll() is Failed). */
  get failure(): KvFailure | null {
    return this.failed;
  }

  /** Latent data bytes sent so far. */
  get bytesSent(): number {
    return this.bytes;
  }

  get chunksSent(): number {
    return this.checksum.count;
  }

  /** Open the channel and send KvBegin. Calling it twice is a programming error and throws. */
  async begin(meta: KvTransferMeta): Promise<void> {
    if (this.meta !== null || this.state !== KvPoll.Bootstrapping) {
      throw new InvalidArgumentError(`KV transfer ${meta.transferId}: begin() called twice or after abort()`);
    }
    this.meta = meta;
    this.nextToken = new Int32Array(Math.max(0, meta.numLayers));
    const channel = this.connector.open(meta.transferId, meta.requestId);
    this.channel = channel;
    // Settles the transfer whenever the receiver answers, even mid-send; `done` is what callers await.
    // outcome never rejects (a transport failure is an outcome).
    void channel.outcome.then((o) => this.settle(o));
    this.state = KvPoll.WaitingForInput;
    await channel.send({ kind: "begin", ...meta });
  }

  /**
   * The engine's KvSink: rows [n, latentDim] of positions [start, start + n) at `layer`. Encoded and
   * hashed before returning (the engine reuses `rows`); resolves when the channel has room. A no-op
   * once the transfer has failed or been aborted.
   */
  async onLayer(layer: number, _seq: number, start: number, n: number, rows: Float32Array): Promise<void> {
    if (isTerminal(this.state)) return;
    const meta = this.meta;
    const channel = this.channel;
    if (meta === null || channel === null) {
      this.failLocally(Code.FAILED_PRECONDITION, `rows for layer ${layer} arrived before begin()`);
      return;
    }
    const latentDim = meta.kvLoraRank + meta.qkRopeHeadDim;
    const problem = !(Number.isInteger(layer) && layer >= 0 && layer < meta.numLayers)
      ? `layer ${layer} is outside the ${meta.numLayers} layers announced`
      : start !== this.nextToken[layer]
        ? `layer ${layer}: rows start at token ${start}, expected ${this.nextToken[layer]} (one sender per sequence; use batchKvSink for a batch)`
        : !(n >= 1 && start + n <= meta.numTokens)
          ? `layer ${layer}: tokens [${start}, ${start + n}) exceed the ${meta.numTokens} announced`
          : rows.length < n * latentDim
            ? `layer ${layer}: ${rows.length} values for ${n} rows of ${latentDim}`
            : null;
    if (problem !== null) {
      this.failLocally(Code.INTERNAL, `KV transfer ${meta.transferId}: ${problem}`);
      return;
    }
    const data = encodeRows(rows.subarray(0, n * latentDim), meta.kvDtype); // [n, latentDim] in kv dtype
    const digest = sha256(data);
    this.checksum.add(digest);
    this.nextToken[layer] = start + n;
    this.bytes += data.length;
    this.state = KvPoll.Transferring;
    this.options.onChunk?.(data.length);
    await channel.send({ kind: "layer", layer, tokenStart: start, tokenCount: n, dtype: meta.kvDtype, shape: [n, latentDim], data, sha256: digest });
  }

  /**
   * Send KvEnd from the sequence's state after prefill (exactly one sampled token), half-close and
   * wait for the receiver's verdict. Every announced layer must be complete.
   */
  async end(snap: SequenceSnapshot): Promise<KvOutcome> {
    if (isTerminal(this.state)) return this.done;
    const meta = this.meta;
    const channel = this.channel;
    if (meta === null || channel === null) {
      this.failLocally(Code.FAILED_PRECONDITION, "end() called before begin()");
      return this.done;
    }
    const incomplete = Array.from(this.nextToken).findIndex((t) => t !== meta.numTokens);
    const problem =
      snap.output.length !== 1
        ? `the snapshot has ${snap.output.length} sampled tokens; a prefill hand-off has exactly 1`
        : snap.prompt.length !== meta.numTokens
          ? `the snapshot's prompt has ${snap.prompt.length} tokens, ${meta.numTokens} announced`
          : incomplete >= 0
            ? `layer ${incomplete} sent tokens [0, ${this.nextToken[incomplete]}) of ${meta.numTokens}`
            : null;
    if (problem !== null) {
      this.failLocally(Code.INTERNAL, `KV transfer ${meta.transferId}: ${problem}`);
      return this.done;
    }
    const frame: KvEndFrame = {
      kind: "end",
      numChunks: this.checksum.count,
      sha256: this.checksum.digest(),
      firstToken: snap.output[0]!,
      draft: snap.draft,
      rngState: snap.rngState,
      drafted: snap.drafted,
      accepted: snap.accepted,
    };
    await channel.send(frame);
    channel.end();
    return this.done;
  }

  /** Abandon the transfer: the receiver frees what it reserved; this role reports Failed (CANCELLED). */
  abort(reason = "aborted by the sender"): void {
    if (isTerminal(this.state)) return;
    this.channel?.cancel(reason);
    this.settle({ ok: false, failure: { code: Code.CANCELLED, reason } });
  }

  private failLocally(code: Code, reason: string): void {
    this.channel?.cancel(reason);
    this.settle({ ok: false, failure: { code, reason } });
  }

  private settle(o: KvOutcome): void {
    if (isTerminal(this.state)) return;
    if (o.ok) {
      this.state = KvPoll.Success;
    } else {
      this.state = KvPoll.Failed;
      this.failed = o.failure;
    }
    this.resolveDone(o);
  }
}

export interface KvTransferIds {
  readonly transferId: string;
  readonly requestId: string;
  readonly modelId: string;
  /** Whether the request's stream reports logprobs. */
  readonly logprobs: boolean;
  readonly cachedPromptTokens?: number;
  readonly deadlineUnixMs?: number;
  /** The `keepLogits` the prefill call will use (it makes the engine compute MTP rows without speculation). */
  readonly keepLogits?: boolean;
}

/**
 * KvBegin for a sequence about to be prefilled by `engine`: the layers the engine's prefill will
 * compute (the MTP block's too when it drafts), the model's latent dims and KV dtype.
 */
export function kvTransferMeta(engine: Engine, seq: Sequence, ids: KvTransferIds): KvTransferMeta {
  const m = engine.model;
  const withMtp = m.hasMtp && (engine.speculative || ids.keepLogits === true);
  return {
    transferId: ids.transferId,
    requestId: ids.requestId,
    modelId: ids.modelId,
    promptTokenIds: seq.prompt,
    numLayers: withMtp ? m.cacheLayers : m.config.numHiddenLayers,
    numTokens: seq.prompt.length,
    kvLoraRank: m.config.kvLoraRank,
    qkRopeHeadDim: m.config.qkRopeHeadDim,
    kvDtype: m.kvDtype,
    params: seq.params,
    logprobs: ids.logprobs,
    cachedPromptTokens: ids.cachedPromptTokens ?? 0,
    deadlineUnixMs: ids.deadlineUnixMs ?? 0,
  };
}

/** Bytes a whole transfer moves: layers x tokens x latentDim x the dtype's width. */
export function transferBytes(meta: Pick<KvTransferMeta, "numLayers" | "numTokens" | "kvLoraRank" | "qkRopeHeadDim" | "kvDtype">): number {
  return meta.numLayers * meta.numTokens * (meta.kvLoraRank + meta.qkRopeHeadDim) * KV_DTYPE_BYTES[meta.kvDtype];
}

/**
 * One KvSink for a batched `engine.prefill(seqs)`: routes each sequence's rows to its own sink
 * (null: not transferred). The engine's prefill calls onLayer with the sequence's index in `seqs`
 * (whatever the forward batches look like: with a prefix cache, sequences start at different positions).
 */
export function batchKvSink(seqs: readonly { readonly prompt: readonly number[] }[], sinks: readonly (KvSink | null)[]): KvSink {
  if (seqs.length !== sinks.length) throw new InvalidArgumentError(`batchKvSink: ${seqs.length} sequences but ${sinks.length} sinks`);
  return {
    onLayer(layer, i, start, n, rows) {
      if (!(i >= 0 && i < sinks.length)) throw new RangeError(`batchKvSink: sequence index ${i} of a batch of ${sinks.length}`);
      return sinks[i]?.onLayer(layer, 0, start, n, rows);
    },
  };
}
