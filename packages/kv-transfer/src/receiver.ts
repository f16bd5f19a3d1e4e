/**
 * The decode side of a KV transfer (the contract is in contract.ts). A KvInbox belongs to one engine:
 * it opens one KvReceiver per incoming transfer, remembers transfer ids (a duplicate is refused) and
 * tells the service what was admitted or failed. A receiver checks every frame as it arrives, decodes
 * rows straight into KV blocks it reserved at KvBegin, and admits the sequence with engine.restore
 * only after KvEnd proved the transfer complete and intact. `receive` and `close` never throw: every
 * problem becomes the Failed state with a reason, after the reserved blocks are freed.
 *
 * Blocks are accounted in the inbox's KvLedger (ledger.ts): KvBegin's reservation is a "transfer" hold of
 * the request, touched by every frame; admission hands the same hold to the sequence (`onAdmit` gets it and
 * owns it from then on); every failure releases it with its reason. A sender that goes silent for
 * `idleTimeoutMs` without closing the stream (a hung prefill) is failed as "lost".
 */
import { type Clock, type ClockTimer, Code, errorMessage, MAX_ID_CHARS, MoelaError, realClock, ResourceExhaustedError } from "@moela/core";
import { isGreedy, type Engine, type Sequence, type SequenceSnapshot } from "@moela/engine";
import { decodeRows, KV_DTYPE_BYTES } from "./codec/rows.js";
import { KvLedger, type KvHold, type KvReleaseReason } from "./ledger.js";
import { hex, RunningChecksum, sameDigest, sha256, SHA256_BYTES } from "./codec/checksum.js";
import {
  isTerminal,
  KvPoll,
  type KvAck,
  type KvBeginFrame,
  type KvEndFrame,
  type KvFailure,
  type KvFrame,
  type KvLayerFrame,
  type KvOutcome,
  type KvTransferMeta,
} from "./contract.js";

/** What the inbox reports about an admitted transfer. */
export interface KvReceiveStats {
  readonly bytesReceived: number;
  readonly chunks: number;
  /** KvBegin to admission. */
  readonly seconds: number;
  readonly kvBlocks: number;
}

export interface KvInboxOptions {
  readonly engine: Engine;
  /** The model identity a transfer's KvBegin must name. */
  readonly modelId: string;
  /**
   * Called when a KvBegin passed validation, before any block is taken. Throw a MoelaError to refuse
   * the transfer with its code (draining: UNAVAILABLE; request id in use: ALREADY_EXISTS; ...).
   */
  readonly onBegin?: (meta: KvTransferMeta) => void;
  /**
   * The transfer is complete and its sequence restored. The sequence's blocks are `hold` in the ledger
   * (kind "sequence" now): the callee owns it and must release it when the request ends. Throw a MoelaError
   * to refuse the sequence after all: the hold is then released ("rejected") and the transfer fails.
   */
  readonly onAdmit: (seq: Sequence, meta: KvTransferMeta, stats: KvReceiveStats, hold: KvHold) => void;
  /** A transfer failed; its blocks (`freedBlocks` of them) are already back in the pool. meta is null
   * when no KvBegin was accepted. */
  readonly onFail?: (failure: KvFailure, meta: KvTransferMeta | null, freedBlocks: number) => void;
  /** Called per layer chunk accepted, with its data bytes (metrics). */
  readonly onChunk?: (bytes: number) => void;
  /** Transfer ids remembered for duplicate detection (default 65,536; the oldest are forgotten). */
  readonly rememberTransferIds?: number;
  /** Where the blocks are accounted (default: a ledger of this inbox's own). */
  readonly ledger?: KvLedger;
  /** A transfer with no frame for this long is failed as lost (default 30 s; 0 = never). */
  readonly idleTimeoutMs?: number;
  /**
   * Transfers one peer (a sender's host, as the transport names it) may have open at once; one more is
   * refused RESOURCE_EXHAUSTED before it takes a block (default 0 = no bound but the KV pool's size).
   */
  readonly maxTransfersPerPeer?: number;
  /** The time deadlines are checked against and the idle and deadline timers run on (default: the real clock). */
  readonly clock?: Clock | undefined;
}

export class KvInbox {
  readonly engine: Engine;
  readonly ledger: KvLedger;
  private readonly options: KvInboxOptions;
  /** Transfer ids seen, oldest first (a Map keeps insertion order). */
  private readonly seen = new Map<string, true>();
  private readonly live = new Set<KvReceiver>();
  /** peer -> transfers open from it (only peers with at least one). */
  private readonly perPeer = new Map<string, number>();

  constructor(options: KvInboxOptions) {
    this.engine = options.engine;
    this.ledger = options.ledger ?? new KvLedger();
    this.options = options;
  }

  /**
   * A receiver for one new transfer from `peer` (a sender's host; undefined: not counted against any
   * peer). Throws a RESOURCE_EXHAUSTED MoelaError when that peer already has maxTransfersPerPeer open.
   */
  open(peer?: string): KvReceiver {
    const max = this.options.maxTransfersPerPeer ?? 0;
    const open = peer === undefined ? 0 : (this.perPeer.get(peer) ?? 0);
    if (peer !== undefined && max > 0 && open >= max) {
      throw new ResourceExhaustedError(
        `too many concurrent KV transfers from one peer: ${open} open, at most ${max} (--kv-max-transfers-per-peer); retry when one ends`,
      );
    }
    const r = new KvReceiver(this, this.options);
    this.live.add(r);
    if (peer !== undefined) this.perPeer.set(peer, open + 1);
    // Bookkeeping when the transfer ends, however it ends; done never rejects.
    void r.done.then(() => {
      this.live.delete(r);
      if (peer === undefined) return;
      const left = (this.perPeer.get(peer) ?? 1) - 1;
      if (left > 0) this.perPeer.set(peer, left);
      else this.perPeer.delete(peer);
    });
    return r;
  }

  /** Transfers open from `peer` now. */
  openFrom(peer: string): number {
    return this.perPeer.get(peer) ?? 0;
  }

  /** Transfers begun and not yet admitted or failed. */
  get pending(): number {
    let n = 0;
    for (const r of this.live) if (r.poll() !== KvPoll.Bootstrapping) n++;
    return n;
  }

  /** KV blocks held by transfers in progress. */
  get reservedBlocks(): number {
    let n = 0;
    for (const r of this.live) n += r.reservedBlocks;
    return n;
  }

  /** Fail every transfer in progress (shutdown). */
  abortAll(failure: KvFailure): void {
    for (const r of [...this.live]) r.abort(failure, "shutdown");
  }

  /** @internal Record a transfer id; false when it was seen before. */
  claimTransferId(id: string): boolean {
    if (this.seen.has(id)) return false;
    this.seen.set(id, true);
    const limit = this.options.rememberTransferIds ?? 65_536;
    while (this.seen.size > limit) this.seen.delete(this.seen.keys().next().value!);
    return true;
  }
}

/** A frame that breaks the contract: becomes the receiver's failure. */
class Refusal extends Error {
  constructor(
    readonly code: Code,
    message: string,
  ) {
    super(message);
  }
}

export class KvReceiver {
  private state: KvPoll = KvPoll.Bootstrapping;
  private failed: KvFailure | null = null;
  private acked: KvAck | null = null;
  private meta_: KvTransferMeta | null = null;
  /** Blocks reserved at KvBegin, owned by this receiver until admission hands them to the sequence. */
  private table: number[] | null = null;
  /** The ledger's record of `table` (null before KvBegin reserved anything, and after admission or failure). */
  private hold: KvHold | null = null;
  private idleTimer: ClockTimer | undefined;
  /** [numLayers] next token position each layer expects. */
  private nextToken = new Int32Array(0);
  private readonly checksum = new RunningChecksum();
  private bytes = 0;
  private startedAt = 0;
  private timer: ClockTimer | undefined;
  private readonly clock: Clock;
  /** [tokens, latentDim] decoded rows of one chunk; grows to the largest chunk. */
  private scratch = new Float32Array(0);
  private resolveDone!: (o: KvOutcome) => void;
  /** Settles once with how the transfer ended; never rejects. */
  readonly done: Promise<KvOutcome>;

  /** @internal use KvInbox.open(). */
  constructor(
    private readonly inbox: KvInbox,
    private readonly options: KvInboxOptions,
  ) {
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
    this.clock = options.clock ?? realClock;
  }

  poll(): KvPoll {
    return this.state;
  }

  get failure(): KvFailure | null {
    return this.failed;
  }

  /** The receiver's answer after Success. */
  get ack(): KvAck | null {
    return this.acked;
  }

  /** The accepted KvBegin (null before one was accepted). */
  get meta(): KvTransferMeta | null {
    return this.meta_;
  }

  get reservedBlocks(): number {
    return this.table?.length ?? 0;
  }

  get bytesReceived(): number {
    return this.bytes;
  }

  /** Take one frame; returns the state after it. Never throws; ignored once terminal. */
  receive(frame: KvFrame): KvPoll {
    if (isTerminal(this.state)) return this.state;
    try {
      if (frame.kind === "begin") this.onBegin(frame);
      else if (this.state === KvPoll.Bootstrapping) throw new Refusal(Code.INVALID_ARGUMENT, `a ${frame.kind} message arrived before KvBegin`);
      else if (frame.kind === "layer") this.onLayer(frame);
      else this.onEnd(frame);
    } catch (err) {
      if (err instanceof Refusal) this.fail(err.code, err.message);
      else if (err instanceof MoelaError) this.fail(err.code, err.message);
      else this.fail(Code.INTERNAL, `receiving KV failed: ${errorMessage(err)}`);
    }
    return this.state;
  }

  /** The stream ended (half-closed or broken). Fails the transfer unless it was admitted. */
  close(): KvPoll {
    if (!isTerminal(this.state)) {
      this.fail(Code.DATA_LOSS, this.state === KvPoll.Bootstrapping ? "the stream ended before KvBegin" : "the stream ended before KvEnd");
    }
    return this.state;
  }

  /** Fail the transfer (default CANCELLED) and free its blocks, for `why` (default: by its code). No-op once terminal. */
  abort(failure: Partial<KvFailure> = {}, why?: KvReleaseReason): void {
    if (isTerminal(this.state)) return;
    this.fail(failure.code ?? Code.CANCELLED, failure.reason ?? "the transfer was aborted", why);
  }

  private get what(): string {
    return this.meta_ === null ? "KV transfer" : `KV transfer ${this.meta_.transferId} (request ${this.meta_.requestId})`;
  }

  private onBegin(f: KvBeginFrame): void {
    if (this.state !== KvPoll.Bootstrapping) throw new Refusal(Code.INVALID_ARGUMENT, `${this.what}: a second KvBegin`);
    const engine = this.inbox.engine;
    const c = engine.model.config;
    const cache = engine.cache;
    const bad = (msg: string): Refusal => new Refusal(Code.INVALID_ARGUMENT, `KV transfer ${f.transferId || "(no id)"}: ${msg}`);
    if (f.transferId === "") throw bad("transfer_id is empty");
    if (f.requestId === "") throw bad("request_id is empty");
    if (f.transferId.length > MAX_ID_CHARS || f.requestId.length > MAX_ID_CHARS) {
      // Not echoed: an id this long is what the bound keeps out of memory and logs.
      throw new Refusal(Code.INVALID_ARGUMENT, `KvBegin: transfer_id and request_id may have at most ${MAX_ID_CHARS} characters`);
    }
    if (!this.inbox.claimTransferId(f.transferId)) {
      throw new Refusal(Code.ALREADY_EXISTS, `KV transfer ${f.transferId}: this transfer id was seen before (a retry must use a new one)`);
    }
    if (f.modelId !== this.options.modelId) throw bad(`KV of model "${f.modelId}" sent to an instance serving "${this.options.modelId}"`);
    if (f.kvDtype !== engine.model.kvDtype) throw bad(`kv_dtype ${f.kvDtype}, this instance caches ${engine.model.kvDtype} (precision profiles differ)`);
    if (f.kvLoraRank !== c.kvLoraRank || f.qkRopeHeadDim !== c.qkRopeHeadDim) {
      throw bad(`latent dims kv_lora_rank ${f.kvLoraRank} + qk_rope_head_dim ${f.qkRopeHeadDim}, the model has ${c.kvLoraRank} + ${c.qkRopeHeadDim}`);
    }
    if (f.numLayers !== c.numHiddenLayers && f.numLayers !== cache.numLayers) {
      throw bad(
        `num_layers ${f.numLayers}: expected ${c.numHiddenLayers}${cache.numLayers > c.numHiddenLayers ? ` or ${cache.numLayers} (with the MTP block)` : ""}`,
      );
    }
    if (f.numTokens !== f.promptTokenIds.length) throw bad(`num_tokens ${f.numTokens} but the prompt has ${f.promptTokenIds.length} tokens`);
    // Prompt ids, sampling parameters, max_tokens and the context length, as the engine checks them.
    engine.newSequence(f.requestId, f.promptTokenIds, f.params);
    if (f.deadlineUnixMs > 0 && f.deadlineUnixMs <= this.clock.now()) {
      throw new Refusal(Code.DEADLINE_EXCEEDED, `${f.transferId}: the transfer's deadline passed before it began`);
    }
    const { kind: _kind, ...meta } = f;
    this.meta_ = meta;
    this.options.onBegin?.(meta);
    // Everything the sequence will ever need (prompt + max_tokens + one speculative row), so a step
    // never runs out of cache mid-generation. Throws RESOURCE_EXHAUSTED having taken nothing.
    const table = engine.reserveBlocks(f.numTokens + f.params.maxTokens);
    this.table = table;
    this.hold = this.inbox.ledger.hold(
      f.requestId,
      "transfer",
      () => {
        engine.cache.free(table);
        return table.length;
      },
      () => table.length,
    );
    this.armIdle();
    this.nextToken = new Int32Array(f.numLayers);
    this.startedAt = performance.now();
    if (f.deadlineUnixMs > 0) {
      const ms = f.deadlineUnixMs - this.clock.now();
      // setTimeout takes at most 2^31-1 ms; a deadline further out than ~24.8 days never fires here.
      if (ms <= 2_147_483_647) {
        this.timer = this.clock.setTimeout(() => this.abort({ code: Code.DEADLINE_EXCEEDED, reason: `${this.what}: deadline passed before KvEnd` }), ms);
        this.timer.unref();
      }
    }
    this.state = KvPoll.WaitingForInput;
  }

  private onLayer(f: KvLayerFrame): void {
    const meta = this.meta_!;
    const engine = this.inbox.engine;
    const D = meta.kvLoraRank + meta.qkRopeHeadDim;
    const bad = (msg: string): Refusal => new Refusal(Code.INVALID_ARGUMENT, `${this.what}, chunk ${this.checksum.count}: ${msg}`);
    if (!(Number.isInteger(f.layer) && f.layer >= 0 && f.layer < meta.numLayers)) throw bad(`layer ${f.layer} is outside [0, ${meta.numLayers})`);
    if (!(Number.isInteger(f.tokenCount) && f.tokenCount >= 1)) throw bad(`token_count ${f.tokenCount} (must be >= 1)`);
    const expected = this.nextToken[f.layer]!;
    if (f.tokenStart !== expected) {
      throw bad(`out of order: layer ${f.layer} continues at token ${f.tokenStart}, expected ${expected} (chunks of a layer are ascending and contiguous)`);
    }
    if (f.tokenStart + f.tokenCount > meta.numTokens)
      throw bad(`tokens [${f.tokenStart}, ${f.tokenStart + f.tokenCount}) exceed the ${meta.numTokens} announced`);
    if (f.dtype !== meta.kvDtype) throw bad(`latent dtype ${f.dtype ?? "(not a KV dtype)"}, KvBegin announced ${meta.kvDtype}`);
    if (f.shape.length !== 2 || f.shape[0] !== f.tokenCount || f.shape[1] !== D) {
      throw bad(`latent shape [${f.shape.join(", ")}], expected [${f.tokenCount}, ${D}]`);
    }
    const values = f.tokenCount * D;
    if (f.data.length !== values * KV_DTYPE_BYTES[meta.kvDtype]) {
      throw bad(`latent has ${f.data.length} bytes, [${f.tokenCount}, ${D}] ${meta.kvDtype} is ${values * KV_DTYPE_BYTES[meta.kvDtype]}`);
    }
    if (f.sha256.length !== SHA256_BYTES) throw bad(`sha256 has ${f.sha256.length} bytes, expected ${SHA256_BYTES}`);
    const digest = sha256(f.data);
    if (!sameDigest(digest, f.sha256)) {
      throw new Refusal(
        Code.DATA_LOSS,
        `${this.what}: checksum mismatch in chunk ${this.checksum.count} (layer ${f.layer}, tokens [${f.tokenStart}, ${f.tokenStart + f.tokenCount})): sent ${hex(f.sha256)}, received data hashes to ${hex(digest)}`,
      );
    }
    if (this.scratch.length < values) this.scratch = new Float32Array(values);
    decodeRows(f.data, meta.kvDtype, this.scratch);
    // A non-finite latent would turn every attention step of this sequence into NaN, and a step that fails fails
    // its whole batch: refuse the transfer here, so one bad sender fails alone.
    for (let i = 0; i < values; i++) {
      if (!Number.isFinite(this.scratch[i]!)) {
        throw bad(`latent value ${this.scratch[i]} at token ${f.tokenStart + Math.floor(i / D)}, column ${i % D} of layer ${f.layer}; KV rows must be finite`);
      }
    }
    engine.cache.write(f.layer, this.table!, f.tokenStart, f.tokenCount, this.scratch);
    this.checksum.add(digest);
    this.nextToken[f.layer] = f.tokenStart + f.tokenCount;
    this.bytes += f.data.length;
    this.hold?.touch();
    this.armIdle();
    this.state = KvPoll.Transferring;
    this.options.onChunk?.(f.data.length);
  }

  private onEnd(f: KvEndFrame): void {
    const meta = this.meta_!;
    const engine = this.inbox.engine;
    const c = engine.model.config;
    const V = c.vocabSize;
    const lost = (msg: string): Refusal => new Refusal(Code.DATA_LOSS, `${this.what}: ${msg}`);
    const bad = (msg: string): Refusal => new Refusal(Code.INVALID_ARGUMENT, `${this.what}: KvEnd ${msg}`);
    const incomplete = Array.from(this.nextToken).findIndex((t) => t !== meta.numTokens);
    if (incomplete >= 0) {
      throw lost(`layer ${incomplete} is incomplete: tokens [0, ${this.nextToken[incomplete]}) of ${meta.numTokens} arrived`);
    }
    if (f.numChunks !== this.checksum.count) throw lost(`KvEnd counts ${f.numChunks} chunks, ${this.checksum.count} arrived`);
    const total = this.checksum.digest();
    if (!sameDigest(total, f.sha256)) throw lost(`total checksum mismatch: sent ${hex(f.sha256)}, received chunks give ${hex(total)}`);
    const inVocab = (id: number): boolean => Number.isInteger(id) && id >= 0 && id < V;
    const t = f.firstToken;
    if (!inVocab(t.id)) throw bad(`first_token_id ${t.id} is outside the vocabulary of ${V}`);
    if (typeof t.logprob !== "number" || Number.isNaN(t.logprob) || t.logprob > 0) throw bad(`first token logprob ${t.logprob} is not a log probability`);
    if (t.top !== null && t.top.some(([id]) => !inVocab(id))) throw bad("first token top logprobs name ids outside the vocabulary");
    if (f.rngState.length !== 4 || f.rngState.some((w) => !(Number.isInteger(w) && w >= 0 && w <= 0xffffffff)) || f.rngState.every((w) => w === 0)) {
      throw bad(`rng_state [${f.rngState.join(", ")}] is not four uint32 words, not all zero`);
    }
    if (!(Number.isInteger(f.drafted) && Number.isInteger(f.accepted) && f.accepted >= 0 && f.accepted <= f.drafted)) {
      throw bad(`draft counts ${f.accepted} accepted of ${f.drafted}`);
    }
    const greedy = isGreedy(meta.params);
    let draft = f.draft;
    if (draft !== null) {
      if (!inVocab(draft.token)) throw bad(`draft_token_id ${draft.token} is outside the vocabulary of ${V}`);
      if (greedy && draft.probs !== null) throw bad("carries draft_probs for a greedy request");
      if (!greedy && (draft.probs === null || draft.probs.length !== V)) {
        throw bad(`draft_probs must be [${V}] for a sampled request, got ${draft.probs === null ? "none" : `[${draft.probs.length}]`}`);
      }
    }
    // Without the MTP block's rows decode cannot verify or continue drafts for this sequence.
    if (meta.numLayers <= c.numHiddenLayers) draft = null;
    const snap: SequenceSnapshot = {
      id: meta.requestId,
      prompt: meta.promptTokenIds,
      params: meta.params,
      output: [t],
      draft,
      rngState: f.rngState,
      drafted: f.drafted,
      accepted: f.accepted,
    };
    const table = this.table!;
    const seq = engine.restore(snap, table);
    // The sequence owns the blocks from here: failing now must release the sequence, not the table.
    this.table = null;
    const hold = this.hold!;
    this.hold = null;
    hold.adopt(
      "sequence",
      () => {
        const n = seq.blockTable.length;
        engine.release(seq);
        return n;
      },
      () => seq.blockTable.length,
    );
    const ack: KvAck = { transferId: meta.transferId, kvBlocks: seq.blockTable.length, bytesReceived: this.bytes };
    try {
      this.options.onAdmit(
        seq,
        meta,
        { bytesReceived: this.bytes, chunks: this.checksum.count, seconds: (performance.now() - this.startedAt) / 1000, kvBlocks: ack.kvBlocks },
        hold,
      );
    } catch (err) {
      hold.release("rejected");
      throw err;
    }
    this.clock.clearTimeout(this.timer);
    this.clock.clearTimeout(this.idleTimer);
    this.acked = ack;
    this.state = KvPoll.Success;
    this.resolveDone({ ok: true, ack });
  }

  /**
   * (Re)start the idle timer: no frame within idleTimeoutMs fails the transfer as lost. UNAVAILABLE, not
   * DEADLINE_EXCEEDED: the request's own deadline has not passed, and prefill may send it again (a job that
   * failed is retried), so the request waits for that transfer instead of failing its client.
   */
  private armIdle(): void {
    const ms = this.options.idleTimeoutMs ?? 30_000;
    if (ms <= 0) return;
    this.clock.clearTimeout(this.idleTimer);
    this.idleTimer = this.clock.setTimeout(
      () => this.abort({ code: Code.UNAVAILABLE, reason: `${this.what}: no frame for ${ms} ms (the sender went silent)` }, "lost"),
      ms,
    );
    this.idleTimer.unref();
  }

  private fail(code: Code, reason: string, why: KvReleaseReason = releaseReasonOf(code)): void {
    if (isTerminal(this.state)) return;
    this.clock.clearTimeout(this.timer);
    this.clock.clearTimeout(this.idleTimer);
    let freed = 0;
    if (this.hold !== null) {
      freed = this.hold.release(why);
      this.hold = null;
      this.table = null;
    }
    const failure: KvFailure = { code, reason };
    this.state = KvPoll.Failed;
    this.failed = failure;
    try {
      this.options.onFail?.(failure, this.meta_, freed);
    } finally {
      this.resolveDone({ ok: false, failure });
    }
  }
}

/**
 * Why a transfer's blocks went back, by its failure code: the deadline, a shutdown (abortAll), a refusal
 * (bad or unwanted transfer), or otherwise the sender's failure (the stream broke or was cancelled: a
 * prefill that crashed or gave up; corrupt data).
 */
function releaseReasonOf(code: Code): KvReleaseReason {
  switch (code) {
    case Code.DEADLINE_EXCEEDED:
      return "deadline";
    case Code.UNAVAILABLE:
      return "shutdown";
    case Code.INVALID_ARGUMENT:
    case Code.ALREADY_EXISTS:
    case Code.FAILED_PRECONDITION:
    case Code.RESOURCE_EXHAUSTED:
    case Code.OUT_OF_RANGE:
      return "rejected";
    default:
      return "sender_failed";
  }
}
