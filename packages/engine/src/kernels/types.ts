/**
 * The kernel interface: the few products the forward pass spends its time in, with interchangeable backends
 * (kernels/README.md). Every backend computes each output element from its own inputs in an order that does
 * not depend on the batch, the chunking or the thread count, so results are bit-for-bit reproducible per
 * backend; backends differ from each other (float64 against float32 accumulation) within 2e-4 on logits.
 */
import type { MatmulLayout, WeightMatrix } from "../tensor/matrix.js";
import type { MlpWeights } from "../weights.js";
import type { MlpScratch } from "../layers/mlp.js";
import type { SamplerKernels } from "../sampler.js";

/** The backends by name: `fast` (native SIMD), `portable` (the same algorithms in TypeScript), `reference`. */
export type KernelsName = "fast" | "portable" | "reference";
export const KERNELS_NAMES: readonly KernelsName[] = ["fast", "portable", "reference"];

/**
 * matmul's layout, repeated over `groups` groups: group g uses weight rows from r0 + g * rowStep, inputs from
 * xOff + g * xStep and outputs from yOff + g * yStep (the heads of kv_b_proj, all in one call).
 */
export interface GroupedLayout extends MatmulLayout {
  groups?: number;
  rowStep?: number;
  xStep?: number;
  yStep?: number;
}

/** The linear kernel: y[t, i] = sum_c w[r0 + i, c] * x[t, c] (see matmul in tensor/matrix.ts). */
export type GroupedMatmulFn = (w: WeightMatrix, x: Float32Array, T: number, y: Float32Array, layout?: GroupedLayout) => void;

/** out[t, c] = sum_{i < n} v[t, i] * w[r0 + i, c], per group g (rows r0 + g*rowStep, v at g*vStep, out at g*outStep). */
export interface TransposedLayout {
  vOff?: number;
  /** Row stride of v (default n). */
  vStride?: number;
  outOff?: number;
  /** Row stride of out (default w.cols). */
  outStride?: number;
  r0?: number;
  /** Weight rows summed over (default w.rows). */
  n?: number;
  groups?: number;
  rowStep?: number;
  vStep?: number;
  outStep?: number;
}

/**
 * Causal attention of one sequence's n new tokens (positions start .. start+n-1), H heads each:
 *   s_p = (qa . ka_p + qb . kb_p) * scale for p <= start + j;  out = sum_p softmax(s)_p * val_p.
 * Each operand is (array, offset of token/position 0 head 0, strides in floats). MLA uses it twice: absorbed
 * (qa = W_UK-folded query, ka = val = cached c_kv) and decompressed (qa = q_nope, ka = K_nope, val = V).
 */
export interface AttendArgs {
  qa: Float32Array;
  qaOff: number;
  qaTok: number;
  qaHead: number;
  lenA: number;
  qb: Float32Array;
  qbOff: number;
  qbTok: number;
  qbHead: number;
  lenB: number;
  ka: Float32Array;
  kaOff: number;
  kaPos: number;
  kaHead: number;
  kb: Float32Array;
  kbOff: number;
  kbPos: number;
  kbHead: number;
  val: Float32Array;
  valOff: number;
  valPos: number;
  valHead: number;
  lenV: number;
  out: Float32Array;
  outOff: number;
  outTok: number;
  outHead: number;
  n: number;
  H: number;
  start: number;
  scale: number;
  /** Pages ka/kb/val: position p is row blockTable[p / blockSize] * blockSize + p % blockSize (a cache slab). */
  blockTable?: Int32Array;
  blockSize?: number;
}

export interface KernelBackend {
  readonly name: KernelsName;
  /** What runs underneath: the native instruction set ("avx512", "avx2", "portable-c") or "typescript". */
  readonly isa: string;
  readonly matmul: GroupedMatmulFn;
  matmulT(w: WeightMatrix, v: Float32Array, T: number, out: Float32Array, layout?: TransposedLayout): void;
  attend(a: AttendArgs): void;
  /**
   * out rows of entry e = mlp_e(x rows of entry e), entries' rows consecutive in order ([counts[e], hidden] each):
   * a whole MoE layer's experts in one call. Absent: one mlpForward per entry (layers/mlp.ts).
   */
  mlpGroup?(group: readonly MlpWeights[], counts: ArrayLike<number>, x: Float32Array, out: Float32Array, scratch: MlpScratch): void;
  /**
   * The same products computed off the calling thread, resolving when done, so a service's event loop serves the
   * network meanwhile (the fast backend; absent on the TypeScript ones). Same bits as the synchronous calls.
   */
  matmulAsync?: (w: WeightMatrix, x: Float32Array, T: number, y: Float32Array, layout?: GroupedLayout) => Promise<void>;
  matmulTAsync?: (w: WeightMatrix, v: Float32Array, T: number, out: Float32Array, layout?: TransposedLayout) => Promise<void>;
  attendAsync?: (a: AttendArgs) => Promise<void>;
  mlpGroupAsync?: (group: readonly MlpWeights[], counts: ArrayLike<number>, x: Float32Array, out: Float32Array, scratch: MlpScratch) => Promise<void>;
  /**
   * out = [m, log(sum exp(logits - m))] with m the largest logit: the normalizer of every emitted token's logprob,
   * (logit - m) - out[1]. Absent: sampler.ts's logSumExp in float64 (the TypeScript backends).
   */
  logSumExp?: (logits: Float32Array, out: Float64Array) => void;
  /**
   * Sampling's passes over the vocabulary (sampler.ts, SamplerKernels): greedy's argmax and temperature sampling's
   * weights. Absent: the sampler's own TypeScript loops (the TypeScript backends).
   */
  sampler?: SamplerKernels;
  /** Threads its products use; `fast` has one process-wide pool, the TypeScript backends one per model. */
  readonly threadsAreProcessWide: boolean;
  /**
   * Leaves this machine's cores to other processes until the returned release is called: products run on the
   * calling thread alone and idle kernel threads sleep at once (the fast backend; holds nest, the last release
   * ends it). For a process that waits on others computing for it on the same machine. The same bits either way.
   */
  callerOnly?: () => () => void;
}
