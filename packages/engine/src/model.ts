/**
 * The DeepSeek-V2/V3 forward pass over a paged latent KV cache, with exactly the semantics of Hugging Face
 * transformers' DeepseekV3 (and the DeepSeek-V2 remote code): pre-norm blocks, MLA, dense/MoE FFN, final
 * norm, lm_head, and the MTP head. Shapes are named as in the HF config:
 *   T tokens in the call, H = num_attention_heads, dn = qk_nope_head_dim, dr = qk_rope_head_dim,
 *   dv = v_head_dim, R = kv_lora_rank, D = R + dr (latent row), V = vocab.
 *
 * Two attention paths, one switch (`attention`):
 *   - "decompressed" (prefill): per head, K_nope and V are rebuilt from the cached latents through kv_b_proj,
 *     then ordinary causal attention.
 *   - "absorbed" (decode): W_UK is folded into the query (q_nope -> latent space) and W_UV into the output,
 *     so attention runs directly over the cached [c_kv | k_pe] rows; nothing per head is materialised.
 * They compute the same function; tests hold them to it.
 */
import { setImmediate } from "node:timers/promises";
import type { PhaseTimes } from "./phase-times.js";
import { isMoeLayer, parseModelConfig, type ModelConfig } from "./config.js";
import { roundBf16 } from "./tensor/dtype.js";
import { decodeRow, matvecRows, matvecTransposedRows, type WeightMatrix } from "./tensor/matrix.js";
import { MatmulPool, type MatmulFn, type MatmulPoolOptions } from "./tensor/parallel.js";
import {
  absorbedAttendArgs,
  decompressedAttendArgs,
  defaultKernels,
  groupedMatmul,
  kernelsByName,
  nativeKernelsAddon,
  type AttendArgs,
  type GroupedLayout,
  type GroupedMatmulFn,
  type KernelBackend,
  type KernelsName,
} from "./kernels/index.js";
import { rmsNorm, rmsNormRows } from "./layers/rmsnorm.js";
import { applyRotary, rotaryParams, rotaryTables, type RotaryParams } from "./layers/rope.js";
import { createRouterScratch, routeTokens, type RouterScratch } from "./layers/gate.js";
import { createMlpScratch, mlpForwardGroupAsync, OFF_LOOP_MIN_WORK, type MlpScratch } from "./layers/mlp.js";
import { createExpertScratch, LocalExpertExecutor } from "./layers/moe.js";
import type { PagedLatentCache } from "./kv-cache/paged-latent.js";
import type { ExpertExecutor, KvSink } from "./ports.js";
import { softmaxExp } from "./tensor/softmax.js";
import {
  loadWeights,
  type AttentionWeights,
  type BlockWeights,
  type LoadOptions,
  type MlpWeights,
  type ModelWeights,
  type MoeWeights,
  type MtpWeights,
  type QueryWeights,
} from "./weights.js";
import { ScratchBuffer } from "./workspace.js";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { abSwitchOn, CheckpointError, errorMessage } from "@moela/core";

/**
 * q_a_layernorm and kv_a_layernorm use RMSNorm's default eps in HF transformers and the V2 remote code
 * (they are built without config.rms_norm_eps), so a checkpoint's rms_norm_eps does not reach them.
 */
const LATENT_NORM_EPS = 1e-6;

export type AttentionPath = "absorbed" | "decompressed";

/** Rotary tables of a call's T tokens: [T, dr/2] each. */
interface RopeRows {
  readonly cos: Float64Array;
  readonly sin: Float64Array;
}

/** Attention's scratch, each buffer grown to the largest call (L: a sequence's context length). */
interface AttentionScratch {
  readonly pos: ScratchBuffer<Int32Array>; // [T] positions
  readonly cos: ScratchBuffer<Float64Array>; // [T, dr/2]
  readonly sin: ScratchBuffer<Float64Array>; // [T, dr/2]
  readonly q: ScratchBuffer<Float32Array>; // [T, H * dq] per head [q_nope | q_rope]
  readonly qa: ScratchBuffer<Float32Array>; // [T, q_lora_rank]
  readonly latent: ScratchBuffer<Float32Array>; // [T, D] the new tokens' [c_kv | k_pe]
  readonly heads: ScratchBuffer<Float32Array>; // [T, H * dv] attention output per head
  readonly ctx: ScratchBuffer<Float32Array>; // [L, D] a sequence's cached latents
  readonly kv: ScratchBuffer<Float32Array>; // [L, H * (dn + dv)] K_nope | V rebuilt (reference: one head's)
  readonly qAbs: ScratchBuffer<Float32Array>; // [T, H, R] q_nope folded through W_UK
  readonly oLat: ScratchBuffer<Float32Array>; // [T, H, R] attention output in latent space
  readonly table: ScratchBuffer<Int32Array>; // [blocks] a sequence's block table
  readonly scores: ScratchBuffer<Float64Array>; // [L] reference: one query's scores, then exp(score - max)
  readonly qAbs64: ScratchBuffer<Float64Array>; // [R] reference: one head's folded query
  readonly oLat64: ScratchBuffer<Float64Array>; // [R] reference: one head's latent output
}

function attentionScratch(): AttentionScratch {
  const f32 = ScratchBuffer.f32;
  const f64 = ScratchBuffer.f64;
  const i32 = ScratchBuffer.i32;
  return {
    pos: i32(),
    cos: f64(),
    sin: f64(),
    q: f32(),
    qa: f32(),
    latent: f32(),
    heads: f32(),
    ctx: f32(),
    kv: f32(),
    qAbs: f32(),
    oLat: f32(),
    table: i32(),
    scores: f64(),
    qAbs64: f64(),
    oLat64: f64(),
  };
}

/** The residual stream and a block's sub-layer buffers (xn and y serve the main and the MTP blocks). */
interface BlockScratch {
  readonly h: ScratchBuffer<Float32Array>; // [T, hidden] residual stream
  readonly xn: ScratchBuffer<Float32Array>; // [T, hidden] normalised input of a sub-layer
  readonly y: ScratchBuffer<Float32Array>; // [T, hidden] sub-layer output
  readonly final: ScratchBuffer<Float32Array>; // [T, hidden] after the final norm (ForwardResult.hidden)
}

/** The MoE layer's router outputs and routed sum. */
interface MoeScratch {
  readonly gateLogits: ScratchBuffer<Float32Array>; // [T, E]
  readonly ids: ScratchBuffer<Int32Array>; // [T, k] chosen experts
  readonly weights: ScratchBuffer<Float32Array>; // [T, k] their weights
  readonly routed: ScratchBuffer<Float32Array>; // [T, hidden] routed experts' output
}

/** A head's selected rows and logits (ForwardResult.logits). */
interface HeadScratch {
  readonly sel: ScratchBuffer<Float32Array>; // [rows, hidden]
  readonly logits: ScratchBuffer<Float32Array>; // [rows, V]
}

/** The MTP block's input and residual stream. */
interface MtpScratch {
  readonly cat: ScratchBuffer<Float32Array>; // [T, 2 * hidden] = [enorm(embed(next)) ; hnorm(hidden)]
  readonly e: ScratchBuffer<Float32Array>; // [hidden] one embedding row
  readonly h: ScratchBuffer<Float32Array>; // [T, hidden] residual stream
  readonly final: ScratchBuffer<Float32Array>; // [T, hidden] after shared_head.norm
  readonly last: ScratchBuffer<Float32Array>; // [sequences, hidden] each sequence's last row of h (forwardMtp's split)
  readonly earlier: ScratchBuffer<Float32Array>; // [T - sequences, hidden] the rows of h before them
}

/** A model's (or a micro-batch lane's) scratch memory, one typed object per module. */
interface ModelScratch {
  readonly block: BlockScratch;
  readonly attn: AttentionScratch;
  readonly moe: MoeScratch;
  /** The dense MLPs' and the shared experts' (layers/mlp.ts). */
  readonly mlp: MlpScratch;
  readonly head: HeadScratch;
  readonly mtp: MtpScratch;
  readonly mtpHead: HeadScratch;
  /** forwardMicroBatches' joined result: hidden [T, hidden], logits [rows, V]. */
  readonly microBatch: { readonly hidden: ScratchBuffer<Float32Array>; readonly logits: ScratchBuffer<Float32Array> };
}

function modelScratch(): ModelScratch {
  const f32 = ScratchBuffer.f32;
  return {
    block: { h: f32(), xn: f32(), y: f32(), final: f32() },
    attn: attentionScratch(),
    moe: { gateLogits: f32(), ids: ScratchBuffer.i32(), weights: f32(), routed: f32() },
    mlp: createMlpScratch(),
    head: { sel: f32(), logits: f32() },
    mtp: { cat: f32(), e: f32(), h: f32(), final: f32(), last: f32(), earlier: f32() },
    mtpHead: { sel: f32(), logits: f32() },
    microBatch: { hidden: f32(), logits: f32() },
  };
}
/** Element type of cached (and transferred) latent KV rows. */
export type KvDtype = "f32" | "bf16";

/** One sequence's share of a forward call: `tokens` at positions [start, start + tokens.length). */
export interface ForwardSeq {
  readonly blockTable: readonly number[];
  readonly start: number;
  readonly tokens: ArrayLike<number>;
  /** Which rows need logits. */
  readonly logits: "none" | "last" | "all";
}

/** One sequence's share of an MTP call: the NEXT tokens and the main model's final-normed hidden rows. */
export interface MtpSeq extends ForwardSeq {
  /** [n, hidden] main hidden states after the final norm for positions [start, start + n). */
  readonly hidden: Float32Array;
  readonly hiddenOff: number;
}

export interface ForwardOptions {
  readonly attention: AttentionPath;
  readonly kvSink?: KvSink;
  /**
   * Split the sequences into this many micro-batches that are in flight together (default 1), when the
   * routed experts run on other processes: while one micro-batch waits on the expert-hosts, the next
   * one's attention computes (the paper's dual micro-batch overlap). Same bits as one batch. Not with
   * a kvSink (prefill streams KV per sequence index).
   */
  readonly microBatches?: number;
  /**
   * forwardMtp only: score only token ids below this (the draft vocabulary); the other logits are -Infinity.
   * Drafting reads that part of the head alone. BPE numbers its merges as it learns them, most frequent first,
   * so low ids are the common tokens (FR-Spec's frequency-ranked draft vocabulary).
   */
  readonly headRows?: number;
}

export interface ForwardResult {
  /** [T, hidden] hidden states after the final norm (the MTP head's input). Reused by the next call. */
  readonly hidden: Float32Array;
  /** [rows, V] logits of the requested rows, in sequence order. Reused by the next call. */
  readonly logits: Float32Array;
  /** Per sequence: index of its first logits row (-1 when it asked for none). */
  readonly logitRow: Int32Array;
  /** Per sequence: index of its first token row in `hidden`. */
  readonly tokenRow: Int32Array;
}

export interface ModelOptions extends LoadOptions {
  /** Computes routed experts; defaults to this process's own experts. */
  readonly experts?: ExpertExecutor;
  /** Element type of latent KV rows (the precision profile's KV dtype). */
  readonly kvDtype?: KvDtype;
  /**
   * Threads that share each large matmul (default 1: this thread alone). Bits do not depend on it.
   * Services that share a machine's cores between processes keep 1; `close()` stops the workers.
   * With the `fast` kernels the thread pool is the process's (native) one.
   */
  readonly threads?: number;
  /** Kernel backend (default: the process default, `fast` unless setDefaultKernels said otherwise). */
  readonly kernels?: KernelsName;
  /**
   * Run large products (OFF_LOOP_MIN_WORK multiply-adds and more) on a kernel thread and await them, so the event
   * loop serves the network, health checks and KV transfers while a step computes (services set it; `moela
   * generate` has no event loop to keep free and keeps every call synchronous, which is cheaper). Same bits.
   */
  readonly computeOffEventLoop?: boolean;
  /** With computeOffEventLoop: the smallest product moved off the loop (default OFF_LOOP_MIN_WORK; tests use 0). */
  readonly offEventLoopMinWork?: number;
}

/**
 * From this many rows, a MoE layer's wait on expert-hosts that share this machine's cores leaves them every core:
 * products run on the calling thread alone until they answer (KernelBackend.callerOnly). Below it, decode's kernel
 * threads keep computing with it (the shared expert) meanwhile. Measured side by side with scripts/bench/cluster-ab.ts
 * on two 2-vCPU VMs (docs/PERFORMANCE.md, 2026-12-07 late): keeping them made a token 2-5% faster at 1, 4 and 8
 * streams on the first and 0-3% at one stream on the second (a 95% interval that holds 1); at 16 streams, where the
 * hosts' share of a step is largest, leaving them was about 1% faster on the first and the same on the second.
 */
export const LEAVE_CORES_MIN_ROWS = 16;

export class DeepseekModel {
  readonly config: ModelConfig;
  readonly weights: ModelWeights;
  /** Bytes of weights resident in memory. */
  readonly weightBytes: number;
  readonly rotary: RotaryParams;
  readonly kvDtype: KvDtype;
  private experts: ExpertExecutor;
  private readonly scratch: ModelScratch = modelScratch();
  private readonly router: RouterScratch;
  /** Micro-batch lanes (lane()). */
  private readonly lanes: DeepseekModel[] = [];
  private pool: MatmulPool | null = null;
  /** The kernels every layer uses (kernels/README.md). */
  readonly kernels: KernelBackend;
  /** When set, every forward adds its time per phase here (services export it as metrics). */
  phaseTimes: PhaseTimes | undefined;
  /** The linear kernel of every layer: the pool's when a TypeScript backend runs threads > 1 (same bits either way). */
  private readonly mm: MatmulFn = (w, x, T, y, layout) => {
    if (this.pool === null) this.kernels.matmul(w, x, T, y, layout);
    else this.pool.matmul(w, x, T, y, layout);
  };
  /** MLA's dimensions, as the HF config names them (see the file comment). */
  private readonly mla: { H: number; dn: number; dr: number; dv: number; dq: number; R: number; D: number };
  /** Multiply-adds from which a product runs off the event loop (Infinity: never; ModelOptions.computeOffEventLoop). */
  private readonly offLoopMinWork: number;
  /** mm over groups of rows (kv_b_proj's heads) in one call. */
  private readonly gmm: GroupedMatmulFn;

  constructor(config: ModelConfig, weights: ModelWeights, weightBytes: number, opts: ModelOptions = {}) {
    this.config = config;
    this.weights = weights;
    this.weightBytes = weightBytes;
    this.rotary = rotaryParams(config);
    this.kvDtype = opts.kvDtype ?? "f32";
    this.mla = {
      H: config.numHeads,
      dn: config.qkNopeHeadDim,
      dr: config.qkRopeHeadDim,
      dv: config.vHeadDim,
      dq: config.qkHeadDim,
      R: config.kvLoraRank,
      D: config.latentDim,
    };
    this.kernels = opts.kernels === undefined ? defaultKernels() : kernelsByName(opts.kernels);
    this.offLoopMinWork = opts.computeOffEventLoop === true ? (opts.offEventLoopMinWork ?? OFF_LOOP_MIN_WORK) : Infinity;
    this.gmm = this.kernels.threadsAreProcessWide ? this.kernels.matmul : groupedMatmul(this.mm);
    this.router = createRouterScratch(config);
    this.experts =
      opts.experts ??
      new LocalExpertExecutor(this.moeLayers(), config.hiddenSize, config.numExpertsPerTok, createExpertScratch(), this.kernels, this.mm, this.offLoopMinWork);
    if (opts.threads !== undefined) this.setThreads(opts.threads);
  }

  /** Threads sharing each large matmul (1 = none besides the caller). */
  get threads(): number {
    if (this.kernels.threadsAreProcessWide) return nativeKernelsAddon?.threads() ?? 1;
    return this.pool?.threads ?? 1;
  }

  /** The linear kernel this model uses (its pool's when threads > 1), for in-process helpers that want to share it. */
  get matmulKernel(): MatmulFn {
    return this.mm;
  }

  /** The matmul worker pool, when threads > 1 (tests and benchmarks wait on its `ready()`). */
  get matmulPool(): MatmulPool | null {
    return this.pool;
  }

  /** Change the thread count (stops the old workers). Outputs are bit-identical for every count. */
  setThreads(threads: number, pool: Omit<MatmulPoolOptions, "threads"> = {}): void {
    if (this.kernels.threadsAreProcessWide) {
      nativeKernelsAddon?.setThreads(threads);
      return;
    }
    const next = threads === 1 ? null : new MatmulPool({ ...pool, threads });
    const old = this.pool;
    this.pool = next;
    // Not awaited: the old workers finish their jobs and exit on their own; close() never rejects.
    void old?.close();
  }

  /** Stop the matmul workers (the model keeps working on this thread alone). */
  async close(): Promise<void> {
    const p = this.pool;
    this.pool = null;
    await p?.close();
  }

  /** Load config.json and the weights of a Hugging Face checkpoint folder. */
  static load(dir: string, opts: ModelOptions = {}): DeepseekModel {
    const config = readModelConfig(dir);
    const { weights, bytes } = loadWeights(dir, config, opts);
    return new DeepseekModel(config, weights, bytes, opts);
  }

  /** MoE weights by layer index (main layers and MTP blocks). */
  moeLayers(): Map<number, MoeWeights> {
    const m = new Map<number, MoeWeights>();
    for (const b of [...this.weights.layers, ...this.weights.mtp.map((x) => x.block)]) if (b.ffn.kind === "moe") m.set(b.index, b.ffn);
    return m;
  }

  setExpertExecutor(e: ExpertExecutor): void {
    this.experts = e;
  }

  get hasMtp(): boolean {
    return this.weights.mtp.length > 0;
  }

  /** Number of cache layer slabs the model needs (main layers + loaded MTP layers). */
  get cacheLayers(): number {
    return this.config.numHiddenLayers + this.weights.mtp.length;
  }

  /** Main-model forward over the new tokens of each sequence; writes their latent KV into the cache. */
  async forward(cache: PagedLatentCache, seqs: readonly ForwardSeq[], opts: ForwardOptions): Promise<ForwardResult> {
    const n = Math.min(opts.microBatches ?? 1, seqs.length);
    if (n >= 2 && opts.kvSink === undefined && this.experts.waitsOnOtherProcesses === true) return await this.forwardMicroBatches(cache, seqs, n, opts);
    return await this.forwardBatch(cache, seqs, opts);
  }

  /**
   * forward() over n contiguous micro-batches, each on its own lane (scratch memory), awaited together;
   * the results are copied into one ForwardResult in sequence order.
   */
  private async forwardMicroBatches(cache: PagedLatentCache, seqs: readonly ForwardSeq[], n: number, opts: ForwardOptions): Promise<ForwardResult> {
    const parts: ForwardSeq[][] = Array.from({ length: n }, (_, i) => seqs.slice(Math.floor((i * seqs.length) / n), Math.floor(((i + 1) * seqs.length) / n)));
    const results = await Promise.all(parts.map((p, i) => this.lane(i).forwardBatch(cache, p, opts)));
    const hd = this.config.hiddenSize;
    const V = this.config.vocabSize;
    const rowsOf = (s: ForwardSeq): number => (s.logits === "none" ? 0 : s.logits === "last" ? 1 : s.tokens.length);
    const hidden = this.scratch.microBatch.hidden.get(this.countTokens(seqs) * hd); // [T, hidden]
    const logits = this.scratch.microBatch.logits.get(seqs.reduce((a, s) => a + rowsOf(s), 0) * V); // [rows, V]
    const logitRow = new Int32Array(seqs.length);
    const tokenRow = new Int32Array(seqs.length);
    let t = 0;
    let r = 0;
    let si = 0;
    parts.forEach((part, i) => {
      const res = results[i]!;
      const pt = this.countTokens(part);
      const pr = part.reduce((a, s) => a + rowsOf(s), 0);
      hidden.set(res.hidden.subarray(0, pt * hd), t * hd);
      logits.set(res.logits.subarray(0, pr * V), r * V);
      part.forEach((_, j) => {
        tokenRow[si] = res.tokenRow[j]! + t;
        logitRow[si] = res.logitRow[j]! < 0 ? -1 : res.logitRow[j]! + r;
        si++;
      });
      t += pt;
      r += pr;
    });
    return { hidden, logits, logitRow, tokenRow };
  }

  /**
   * Lane i: a twin of this model that reads everything (weights, kernels, expert executor, phase clock)
   * through its prototype but owns its scratch memory, so micro-batches can be in flight together.
   */
  private lane(i: number): DeepseekModel {
    while (this.lanes.length <= i) {
      const twin = Object.create(this) as DeepseekModel;
      Object.defineProperty(twin, "scratch", { value: modelScratch() });
      Object.defineProperty(twin, "router", { value: createRouterScratch(this.config) });
      this.lanes.push(twin);
    }
    return this.lanes[i]!;
  }

  private async forwardBatch(cache: PagedLatentCache, seqs: readonly ForwardSeq[], opts: ForwardOptions): Promise<ForwardResult> {
    const c = this.config;
    const hd = c.hiddenSize;
    const T = this.countTokens(seqs);
    const h = this.scratch.block.h.get(T * hd); // [T, hidden] residual stream
    let t = 0;
    for (const s of seqs) {
      for (let j = 0; j < s.tokens.length; j++, t++) this.embedRow(this.weights.embed, s.tokens[j]!, h, t * hd);
    }
    for (const layer of this.weights.layers) await this.block(layer, cache, seqs, h, T, opts);
    const hidden = this.scratch.block.final.get(T * hd); // [T, hidden]
    rmsNormRows(h, T, hd, this.weights.norm, c.rmsNormEps, hidden);
    return await this.logitsFor(seqs, hidden, this.weights.lmHead, this.scratch.head);
  }

  /**
   * MTP head forward (draft model): predicts the token after next for each position given. When every sequence
   * wants the last row's logits only (decoding's drafts) and no KV sink listens, the rows before each last one
   * feed nothing but the MTP layer's cache (the layer is the draft model's only one), so they get their latents
   * written and nothing else; the last rows then run the whole layer over that cache. Every row is computed as it
   * would be in one batch, so the draft and the cache are the same bits either way; the result's `hidden` and
   * `tokenRow` then cover the last rows only (logitRow, what callers read, is per sequence as always).
   */
  async forwardMtp(cache: PagedLatentCache, seqs: readonly MtpSeq[], opts: ForwardOptions): Promise<ForwardResult> {
    const mtp = this.weights.mtp[0];
    if (mtp === undefined) throw new Error("this checkpoint has no MTP layer");
    const c = this.config;
    const hd = c.hiddenSize;
    let T = this.countTokens(seqs);
    let h = await this.mtpInput(mtp, seqs, T);
    if (opts.kvSink === undefined && seqs.every((s) => s.logits === "last") && T > seqs.length) {
      // Split the rows: each sequence's last one (whole layer) and those before it (latents only).
      const last = this.scratch.mtp.last.get(seqs.length * hd);
      const earlier = this.scratch.mtp.earlier.get((T - seqs.length) * hd);
      let t = 0;
      let e = 0;
      for (let i = 0; i < seqs.length; i++) {
        const n = seqs[i]!.tokens.length;
        earlier.set(h.subarray(t * hd, (t + n - 1) * hd), e * hd);
        last.set(h.subarray((t + n - 1) * hd, (t + n) * hd), i * hd);
        t += n;
        e += n - 1;
      }
      const before = seqs.filter((s) => s.tokens.length > 1).map((s) => ({ ...s, tokens: Array.from(s.tokens).slice(0, -1) }));
      await this.mtpLatentsOnly(mtp, cache, before, earlier, e);
      seqs = seqs.map((s) => {
        const n = s.tokens.length;
        return { ...s, start: s.start + n - 1, tokens: [s.tokens[n - 1]!], hiddenOff: s.hiddenOff + (n - 1) * hd };
      });
      T = seqs.length;
      h = last;
    }
    await this.block(mtp.block, cache, seqs, h, T, opts);
    const normed = this.scratch.mtp.final.get(T * hd); // [T, hidden]
    rmsNormRows(h, T, hd, mtp.headNorm, c.rmsNormEps, normed);
    return await this.logitsFor(seqs, normed, mtp.head, this.scratch.mtpHead, opts.headRows);
  }

  /** The MTP layer's input rows: eh_proj([enorm(embed(next token)) ; hnorm(main hidden)]), [T, hidden]. */
  private async mtpInput(mtp: MtpWeights, seqs: readonly MtpSeq[], T: number): Promise<Float32Array> {
    const c = this.config;
    const hd = c.hiddenSize;
    const cat = this.scratch.mtp.cat.get(T * 2 * hd); // [T, 2*hidden] = [enorm(embed(next)) ; hnorm(hidden)]
    const e = this.scratch.mtp.e.get(hd); // [hidden]
    let t = 0;
    for (const s of seqs) {
      for (let j = 0; j < s.tokens.length; j++, t++) {
        // vLLM zeroes the embedding at position 0 (nothing precedes it to predict from).
        if (s.start + j === 0) e.fill(0);
        else this.embedRow(mtp.embed, s.tokens[j]!, e, 0);
        rmsNorm(e, 0, hd, mtp.enorm, c.rmsNormEps, cat, t * 2 * hd);
        rmsNorm(s.hidden, s.hiddenOff + j * hd, hd, mtp.hnorm, c.rmsNormEps, cat, t * 2 * hd + hd);
      }
    }
    const h = this.scratch.mtp.h.get(T * hd); // [T, hidden]
    await this.mmA(mtp.ehProj, cat, T, h);
    return h;
  }

  /** The MTP layer's latent rows of these T tokens (input rows h) into the cache, as its attention writes them. */
  private async mtpLatentsOnly(mtp: MtpWeights, cache: PagedLatentCache, seqs: readonly ForwardSeq[], h: Float32Array, T: number): Promise<void> {
    const c = this.config;
    const hd = c.hiddenSize;
    const b = mtp.block;
    const xn = this.scratch.block.xn.get(T * hd);
    rmsNormRows(h, T, hd, b.inputNorm, c.rmsNormEps, xn);
    const lat = await this.projectLatents(b.attn, xn, T, this.ropeTables(seqs, T));
    let t = 0;
    for (const s of seqs) {
      cache.write(b.index, s.blockTable, s.start, s.tokens.length, lat, t * this.mla.D);
      t += s.tokens.length;
    }
  }

  private countTokens(seqs: readonly ForwardSeq[]): number {
    let T = 0;
    for (const s of seqs) {
      if (s.tokens.length === 0) throw new RangeError("a sequence in a forward call has no tokens");
      T += s.tokens.length;
    }
    return T;
  }

  private embedRow(embed: WeightMatrix, id: number, out: Float32Array, off: number): void {
    if (!(Number.isInteger(id) && id >= 0 && id < this.config.vocabSize)) {
      throw new RangeError(`token id ${id} is outside the vocabulary of ${this.config.vocabSize}`);
    }
    decodeRow(embed, id, out.subarray(off, off + this.config.hiddenSize));
  }

  /**
   * The head (lm_head or the MTP head) on the rows that asked for logits: [rows, V]. With headRows below V,
   * only ids below it are scored and the rest of each row is -Infinity.
   */
  private async logitsFor(
    seqs: readonly ForwardSeq[],
    hidden: Float32Array,
    head: WeightMatrix,
    scratch: HeadScratch,
    headRows?: number,
  ): Promise<ForwardResult> {
    const hd = this.config.hiddenSize;
    const logitRow = new Int32Array(seqs.length);
    const tokenRow = new Int32Array(seqs.length);
    let rows = 0;
    let t = 0;
    for (let i = 0; i < seqs.length; i++) {
      const s = seqs[i]!;
      tokenRow[i] = t;
      t += s.tokens.length;
      const n = s.logits === "none" ? 0 : s.logits === "last" ? 1 : s.tokens.length;
      logitRow[i] = n > 0 ? rows : -1;
      rows += n;
    }
    const sel = scratch.sel.get(rows * hd); // [rows, hidden]
    let r = 0;
    for (let i = 0; i < seqs.length; i++) {
      const s = seqs[i]!;
      const first = s.logits === "last" ? tokenRow[i]! + s.tokens.length - 1 : tokenRow[i]!;
      const n = s.logits === "none" ? 0 : s.logits === "last" ? 1 : s.tokens.length;
      sel.set(hidden.subarray(first * hd, (first + n) * hd), r * hd);
      r += n;
    }
    const V = this.config.vocabSize;
    const logits = scratch.logits.get(rows * V); // [rows, V]
    const t0 = performance.now();
    if (headRows !== undefined && headRows < V) {
      await this.mmA(head, sel, rows, logits, { nRows: headRows, yStride: V });
      for (let k = 0; k < rows; k++) logits.fill(-Infinity, k * V + headRows, (k + 1) * V);
    } else {
      await this.mmA(head, sel, rows, logits);
    }
    this.phaseTimes?.since("lm_head", t0);
    return { hidden, logits, logitRow, tokenRow };
  }

  /** One pre-norm decoder block, in place on the residual stream h: [T, hidden]. */
  private async block(b: BlockWeights, cache: PagedLatentCache, seqs: readonly ForwardSeq[], h: Float32Array, T: number, opts: ForwardOptions): Promise<void> {
    const c = this.config;
    const hd = c.hiddenSize;
    const xn = this.scratch.block.xn.get(T * hd); // [T, hidden] normalised input
    const y = this.scratch.block.y.get(T * hd); // [T, hidden] sub-layer output
    const clock = this.phaseTimes;
    let t0 = performance.now();
    rmsNormRows(h, T, hd, b.inputNorm, c.rmsNormEps, xn);
    await this.attention(b, cache, seqs, xn, T, y, opts);
    for (let i = 0; i < T * hd; i++) h[i] = h[i]! + y[i]!;
    rmsNormRows(h, T, hd, b.postNorm, c.rmsNormEps, xn);
    if (clock) t0 = clock.since("attention", t0);
    if (b.ffn.kind === "moe") await this.moe(b.index, b.ffn, xn, T, y);
    else {
      await this.mlpA([b.ffn.mlp], [T], xn, y);
      clock?.since("dense_mlp", t0);
    }
    for (let i = 0; i < T * hd; i++) h[i] = h[i]! + y[i]!;
  }

  private async moe(layer: number, moe: MoeWeights, xn: Float32Array, T: number, out: Float32Array): Promise<void> {
    const c = this.config;
    const hd = c.hiddenSize;
    const k = c.numExpertsPerTok;
    const gateLogits = this.scratch.moe.gateLogits.get(T * c.nRoutedExperts); // [T, E]
    const ids = this.scratch.moe.ids.get(T * k); // [T, k]
    const weights = this.scratch.moe.weights.get(T * k); // [T, k]
    const clock = this.phaseTimes;
    let t0 = performance.now();
    await this.mmA(moe.gate, xn, T, gateLogits);
    routeTokens(c, gateLogits, T, moe.bias, ids, weights, this.router);
    const routed = this.scratch.moe.routed.get(T * hd); // [T, hidden]
    if (clock) t0 = clock.since("gate", t0);
    // Expert-hosts on this machine compute on its cores: from LEAVE_CORES_MIN_ROWS rows, no kernel thread of this
    // process may hold one until they answer. Released in both branches that wait on other processes; experts
    // computed here never take it.
    const leaveCores =
      this.experts.waitsOnOtherProcesses === true &&
      this.experts.sharesCores === true &&
      (abSwitchOn("decode-leave-cores") || (T >= LEAVE_CORES_MIN_ROWS && !abSwitchOn("decode-keep-cores")));
    const release = leaveCores ? this.kernels.callerOnly?.() : undefined;
    if (moe.shared !== null && this.experts.computesSharedExpert === true) {
      // The executor computes the shared expert with the routed ones: the expert-hosts as one more routed expert
      // every token selects, or this process in the same group of products (one job for the kernel threads).
      try {
        await this.experts.runRouted(layer, xn, T, ids, weights, routed, out);
      } finally {
        release?.();
      }
      clock?.since(this.experts.waitsOnOtherProcesses === true ? "routed_wait" : "routed_experts", t0);
    } else if (this.experts.waitsOnOtherProcesses === true) {
      // Start the routed experts on the expert-hosts, compute the shared expert meanwhile (on this thread alone when
      // the hosts share this machine's cores).
      const pending = this.experts.runRouted(layer, xn, T, ids, weights, routed);
      if (release !== undefined) pending.then(release, release);
      // Awaited below; until then a failure (a host gone) must not count as an unhandled rejection.
      pending.catch(() => {});
      if (abSwitchOn("decode-shared-expert-after")) {
        // The A/B switch's other side: every thread of this process on the shared expert, once the hosts are done.
        await pending;
        if (clock) t0 = clock.since("routed_wait", t0);
        if (moe.shared) await this.mlpA([moe.shared], [T], xn, out);
        else out.fill(0);
        clock?.since("shared_expert", t0);
      } else {
        // One turn of the event loop first: the requests leave now, not after the shared expert's (synchronous) compute.
        await setImmediate();
        if (moe.shared) await this.mlpA([moe.shared], [T], xn, out);
        else out.fill(0);
        if (clock) t0 = clock.since("shared_expert", t0);
        await pending;
        clock?.since("routed_wait", t0);
      }
    } else {
      // Both computed here: one after the other (see ExpertExecutor.waitsOnOtherProcesses).
      await this.experts.runRouted(layer, xn, T, ids, weights, routed);
      if (clock) t0 = clock.since("routed_experts", t0);
      if (moe.shared) await this.mlpA([moe.shared], [T], xn, out);
      else out.fill(0);
      clock?.since("shared_expert", t0);
    }
    // HF order: routed output + shared output.
    for (let i = 0; i < T * hd; i++) out[i] = routed[i]! + out[i]!;
  }

  /**
   * MLA over the paged latent cache, xn: [T, hidden] -> out: [T, hidden]: the query projection, the latent
   * write, attention (absorbed or decompressed, the one switch), then o_proj.
   */
  private async attention(
    b: BlockWeights,
    cache: PagedLatentCache,
    seqs: readonly ForwardSeq[],
    xn: Float32Array,
    T: number,
    out: Float32Array,
    opts: ForwardOptions,
  ): Promise<void> {
    const a = b.attn;
    const rope = this.ropeTables(seqs, T);
    const q = await this.projectQuery(a.query, xn, T, rope); // [T, H * dq]
    const lat = await this.projectLatents(a, xn, T, rope); // [T, D]
    const heads = this.scratch.attn.heads.get(T * this.mla.H * this.mla.dv); // [T, H * dv]
    if (opts.attention === "absorbed") await this.absorbedAttention(b, cache, seqs, q, lat, T, heads, opts);
    else await this.decompressedAttention(b, cache, seqs, q, lat, heads, opts);
    await this.mmA(a.o.w, heads, T, out);
    addBias(out, T, a.o.bias);
  }

  /** The rotary tables of the T tokens' positions: cos, sin [T, dr/2]. */
  private ropeTables(seqs: readonly ForwardSeq[], T: number): RopeRows {
    const s = this.scratch.attn;
    const half = this.mla.dr / 2;
    const pos = s.pos.get(T);
    let t = 0;
    for (const sq of seqs) for (let j = 0; j < sq.tokens.length; j++) pos[t++] = sq.start + j;
    const rows = { cos: s.cos.get(T * half), sin: s.sin.get(T * half) };
    rotaryTables(this.rotary, pos, T, rows.cos, rows.sin);
    return rows;
  }

  /** Queries: q = q_b_proj(q_a_layernorm(q_a_proj(x))) or q_proj(x), RoPE on q_rope. [T, H * dq], per head [q_nope | q_rope]. */
  private async projectQuery(w: QueryWeights, xn: Float32Array, T: number, rope: RopeRows): Promise<Float32Array> {
    const { H, dn, dr, dq } = this.mla;
    const q = this.scratch.attn.q.get(T * H * dq);
    if (w.kind === "lora") {
      const qa = this.scratch.attn.qa.get(T * w.qA.w.rows); // [T, q_lora_rank]
      await this.mmA(w.qA.w, xn, T, qa);
      addBias(qa, T, w.qA.bias);
      rmsNormRows(qa, T, w.qA.w.rows, w.qANorm, LATENT_NORM_EPS, qa);
      await this.mmA(w.qB, qa, T, q);
    } else {
      await this.mmA(w.q.w, xn, T, q);
      addBias(q, T, w.q.bias);
    }
    for (let i = 0; i < T; i++) for (let hh = 0; hh < H; hh++) applyRotary(q, (i * H + hh) * dq + dn, rope.cos, rope.sin, i, dr / 2);
    return q;
  }

  /**
   * The new tokens' latent rows: [c_kv | k_pe] = kv_a_proj_with_mqa(x); c_kv through kv_a_layernorm, k_pe roped,
   * rounded to BF16 when the KV dtype is bf16. [T, D]; writeLatents puts them into the cache.
   */
  private async projectLatents(a: AttentionWeights, xn: Float32Array, T: number, rope: RopeRows): Promise<Float32Array> {
    const { dr, R, D } = this.mla;
    const lat = this.scratch.attn.latent.get(T * D);
    await this.mmA(a.kvA.w, xn, T, lat);
    addBias(lat, T, a.kvA.bias);
    for (let i = 0; i < T; i++) {
      rmsNorm(lat, i * D, R, a.kvANorm, LATENT_NORM_EPS, lat, i * D);
      applyRotary(lat, i * D + R, rope.cos, rope.sin, i, dr / 2);
    }
    if (this.kvDtype === "bf16") for (let i = 0; i < T * D; i++) lat[i] = roundBf16(lat[i]!);
    return lat;
  }
  /** The sequence's n new latent rows (lat rows [t, t + n)) into the cache, then to the KV sink (prefill streaming). */
  private async writeLatents(
    layer: number,
    cache: PagedLatentCache,
    s: ForwardSeq,
    si: number,
    lat: Float32Array,
    t: number,
    opts: ForwardOptions,
  ): Promise<void> {
    const D = this.mla.D;
    const n = s.tokens.length;
    cache.write(layer, s.blockTable, s.start, n, lat, t * D);
    if (opts.kvSink) await opts.kvSink.onLayer(layer, si, s.start, n, lat.subarray(t * D, (t + n) * D));
  }

  /** Whether a product of `work` multiply-adds goes off the event loop. */
  private offLoop(work: number): boolean {
    return work >= this.offLoopMinWork;
  }

  /** The linear kernel, awaited off the event loop when the product is large and the model is asked to. */
  private async mmA(w: WeightMatrix, x: Float32Array, T: number, y: Float32Array, layout?: GroupedLayout): Promise<void> {
    const work = (layout?.nRows ?? w.rows) * (layout?.groups ?? 1) * w.cols * T;
    if (this.offLoop(work) && this.kernels.matmulAsync) await this.kernels.matmulAsync(w, x, T, y, layout);
    else this.gmm(w, x, T, y, layout);
  }

  private async attendA(a: AttendArgs): Promise<void> {
    if (this.offLoop(a.n * a.H * (a.start + a.n) * (a.lenA + a.lenB + a.lenV)) && this.kernels.attendAsync) await this.kernels.attendAsync(a);
    else this.kernels.attend(a);
  }

  /** A group of MLPs (layers/mlp.ts mlpForwardGroup), off the event loop when large. */
  private async mlpA(group: readonly MlpWeights[], counts: readonly number[], x: Float32Array, out: Float32Array): Promise<void> {
    await mlpForwardGroupAsync(group, counts, x, out, this.scratch.mlp, this.kernels, this.mm, this.offLoopMinWork);
  }

  /**
   * For each sequence in order: its new latent rows (lat rows [t, t + n)) into the cache (writeLatents), then
   * `attend(s, t)` over its context.
   */
  private async eachSequence(
    layer: number,
    cache: PagedLatentCache,
    seqs: readonly ForwardSeq[],
    lat: Float32Array,
    opts: ForwardOptions,
    attend: (s: ForwardSeq, t: number) => void | Promise<void>,
  ): Promise<void> {
    let t = 0;
    for (let si = 0; si < seqs.length; si++) {
      const s = seqs[si]!;
      await this.writeLatents(layer, cache, s, si, lat, t, opts);
      await attend(s, t);
      t += s.tokens.length;
    }
  }

  /** The sequence's cached latents, positions [0, L): [L, D]. */
  private gatherContext(layer: number, cache: PagedLatentCache, s: ForwardSeq): Float32Array {
    const L = s.start + s.tokens.length;
    const ctx = this.scratch.attn.ctx.get(L * this.mla.D);
    cache.gather(layer, s.blockTable, L, ctx);
    return ctx;
  }

  /**
   * Absorbed attention (decode): W_UK (the dn rows of each head of kv_b_proj) folds q_nope into latent space,
   * scores run straight over the cached [c_kv | k_pe] rows, and W_UV (the dv rows) unfolds the latent output.
   * q: [T, H * dq]; lat: [T, D] new latent rows; heads: [T, H * dv] out.
   */
  private async absorbedAttention(
    b: BlockWeights,
    cache: PagedLatentCache,
    seqs: readonly ForwardSeq[],
    q: Float32Array,
    lat: Float32Array,
    T: number,
    heads: Float32Array,
    opts: ForwardOptions,
  ): Promise<void> {
    const kvB = b.attn.kvB;
    if (this.kernels.name === "reference") {
      await this.eachSequence(b.index, cache, seqs, lat, opts, (s, t) => this.absorbedReference(kvB, this.gatherContext(b.index, cache, s), s, q, t, heads));
      return;
    }
    const { H, dn, dv, dq, R } = this.mla;
    const hs = dn + dv; // kv_b_proj rows per head: [W_UK (dn) ; W_UV (dv)]
    // qAbs[t, h] = W_UK(h)^T . q_nope[t, h], all tokens and heads in one grouped product. [T, H, R]
    const qAbs = this.scratch.attn.qAbs.get(T * H * R);
    const layout = { vStride: H * dq, n: dn, outStride: H * R, groups: H, rowStep: hs, vStep: dq, outStep: R };
    if (this.offLoop(T * H * dn * R) && this.kernels.matmulTAsync) await this.kernels.matmulTAsync(kvB, q, T, qAbs, layout);
    else this.kernels.matmulT(kvB, q, T, qAbs, layout);
    const oLat = this.scratch.attn.oLat.get(T * H * R); // [T, H, R] attention output in latent space
    await this.eachSequence(b.index, cache, seqs, lat, opts, (s, t) => this.absorbedKernel(b.index, cache, s, q, qAbs, oLat, t));
    // heads[t, h] = W_UV(h) . oLat[t, h], all heads in one grouped product.
    await this.mmA(kvB, oLat, T, heads, { r0: dn, nRows: dv, xStride: H * R, yStride: H * dv, groups: H, rowStep: hs, xStep: R, yStep: dv });
  }

  /** One sequence's absorbed attention in one attend call, straight over the cache's slab paged by the block table (no copy). */
  private async absorbedKernel(
    layer: number,
    cache: PagedLatentCache,
    s: ForwardSeq,
    q: Float32Array,
    qAbs: Float32Array,
    oLat: Float32Array,
    t: number,
  ): Promise<void> {
    const n = s.tokens.length;
    const nb = Math.ceil((s.start + n) / cache.blockSize);
    const table = this.scratch.attn.table.get(nb);
    for (let i = 0; i < nb; i++) table[i] = s.blockTable[i]!;
    await this.attendA(
      absorbedAttendArgs(this.mla, {
        latents: cache.slab(layer), // [numBlocks * blockSize, D]
        qAbs,
        q,
        out: oLat,
        row: t,
        n,
        start: s.start,
        scale: this.rotary.softmaxScale,
        blockTable: table,
        blockSize: cache.blockSize,
      }),
    );
  }

  /**
   * The reference kernels' absorbed attention of one sequence: per token and head, in float64, W_UK folds the
   * query, softmax over the context's latents ctx [L, D], W_UV unfolds the output into heads.
   */
  private absorbedReference(kvB: WeightMatrix, ctx: Float32Array, s: ForwardSeq, q: Float32Array, t: number, heads: Float32Array): void {
    const { H, dn, dr, dv, dq, R, D } = this.mla;
    const scale = this.rotary.softmaxScale;
    const sc = this.scratch.attn;
    const scores = sc.scores.get(s.start + s.tokens.length);
    const qAbs = sc.qAbs64.get(R); // [R] q_nope folded through W_UK
    const oLat = sc.oLat64.get(R); // [R] attention output in latent space
    for (let j = 0; j < s.tokens.length; j++) {
      const qi = t + j;
      const upto = s.start + j + 1; // causal: positions [0, upto)
      for (let hh = 0; hh < H; hh++) {
        const qo = (qi * H + hh) * dq;
        matvecTransposedRows(kvB, hh * (dn + dv), dn, q, qo, qAbs);
        for (let p = 0; p < upto; p++) {
          const po = p * D;
          let x = 0;
          for (let r = 0; r < R; r++) x += qAbs[r]! * ctx[po + r]!;
          for (let r = 0; r < dr; r++) x += q[qo + dn + r]! * ctx[po + R + r]!;
          scores[p] = x * scale;
        }
        const z = softmaxExp(scores, 0, scores, upto);
        oLat.fill(0);
        for (let p = 0; p < upto; p++) {
          const w = scores[p]! / z;
          const po = p * D;
          for (let r = 0; r < R; r++) oLat[r] = oLat[r]! + w * ctx[po + r]!;
        }
        matvecRows(kvB, hh * (dn + dv) + dn, dv, oLat, heads, (qi * H + hh) * dv);
      }
    }
  }

  /**
   * Decompressed attention (prefill): every head's K_nope and V are rebuilt from the sequence's gathered latents
   * through kv_b_proj, then ordinary causal attention. q: [T, H * dq]; lat: [T, D] new latent rows; heads: [T, H * dv] out.
   */
  private async decompressedAttention(
    b: BlockWeights,
    cache: PagedLatentCache,
    seqs: readonly ForwardSeq[],
    q: Float32Array,
    lat: Float32Array,
    heads: Float32Array,
    opts: ForwardOptions,
  ): Promise<void> {
    const kvB = b.attn.kvB;
    const reference = this.kernels.name === "reference";
    await this.eachSequence(b.index, cache, seqs, lat, opts, (s, t) => {
      const ctx = this.gatherContext(b.index, cache, s);
      return reference ? this.decompressedReference(kvB, ctx, s, q, t, heads) : this.decompressedKernel(kvB, ctx, s, q, t, heads);
    });
  }

  /** One sequence's decompressed attention: every head's K_nope | V in one product, then one attend call. */
  private async decompressedKernel(kvB: WeightMatrix, ctx: Float32Array, s: ForwardSeq, q: Float32Array, t: number, heads: Float32Array): Promise<void> {
    const { H, dn, dv, D } = this.mla;
    const L = s.start + s.tokens.length;
    const hs = dn + dv;
    const kv = this.scratch.attn.kv.get(H * L * hs); // [H, L, dn + dv] every head's K_nope | V, head-major
    await this.mmA(kvB, ctx, L, kv, { xStride: D, nRows: hs, yStride: hs, groups: H, rowStep: hs, xStep: 0, yStep: L * hs });
    await this.attendA(
      decompressedAttendArgs(this.mla, { latents: ctx, kv, q, out: heads, row: t, n: s.tokens.length, start: s.start, scale: this.rotary.softmaxScale }),
    );
  }

  /**
   * The reference kernels' decompressed attention of one sequence: per head, K_nope | V rebuilt from ctx [L, D],
   * then per token in float64 a softmax over positions and the weighted sum of V.
   */
  private decompressedReference(kvB: WeightMatrix, ctx: Float32Array, s: ForwardSeq, q: Float32Array, t: number, heads: Float32Array): void {
    const { H, dn, dr, dv, dq, R, D } = this.mla;
    const scale = this.rotary.softmaxScale;
    const L = s.start + s.tokens.length;
    const scores = this.scratch.attn.scores.get(L);
    const kv = this.scratch.attn.kv.get(L * (dn + dv)); // [L, dn + dv] one head's K_nope | V
    for (let hh = 0; hh < H; hh++) {
      this.mm(kvB, ctx, L, kv, { xStride: D, r0: hh * (dn + dv), nRows: dn + dv });
      for (let j = 0; j < s.tokens.length; j++) {
        const qo = ((t + j) * H + hh) * dq;
        const upto = s.start + j + 1;
        for (let p = 0; p < upto; p++) {
          const ko = p * (dn + dv);
          let x = 0;
          for (let r = 0; r < dn; r++) x += q[qo + r]! * kv[ko + r]!;
          for (let r = 0; r < dr; r++) x += q[qo + dn + r]! * ctx[p * D + R + r]!;
          scores[p] = x * scale;
        }
        const z = softmaxExp(scores, 0, scores, upto);
        const ho = ((t + j) * H + hh) * dv;
        for (let v = 0; v < dv; v++) {
          let acc = 0;
          for (let p = 0; p < upto; p++) acc += scores[p]! * kv[p * (dn + dv) + dn + v]!;
          heads[ho + v] = acc / z;
        }
      }
    }
  }
}

function addBias(y: Float32Array, T: number, bias: Float32Array | null): void {
  if (bias === null) return;
  const n = bias.length;
  for (let t = 0; t < T; t++) for (let i = 0; i < n; i++) y[t * n + i] = y[t * n + i]! + bias[i]!;
}

/** Read and validate config.json of a checkpoint folder. */
export function readModelConfig(dir: string): ModelConfig {
  const file = join(dir, "config.json");
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new CheckpointError(file, "cannot read config.json", undefined, { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new CheckpointError(file, `not valid JSON: ${errorMessage(err)}`, undefined, { cause: err });
  }
  return parseModelConfig(json);
}

export { isMoeLayer };
