/**
 * The native kernels, when they built (see README.md): `nativeKernels` is the addon, or null with
 * `nativeLoadError` saying why not. Nothing here throws at import, so a machine without a compiler still runs.
 */
import { createRequire } from "node:module";

/** A weight as the products take it (WeightView in src/kernels.h): element kind, codes, FP8 block scales or null, shape. */
export type NativeWeightArgs = [
  kind: number,
  data: Float32Array | Uint16Array | Uint8Array,
  scale: Float32Array | null,
  rows: number,
  cols: number,
  blockRows: number,
  blockCols: number,
];

/**
 * matmul's and matmulT's arguments (MatmulArgs and MatmulTArgs in src/kernels.h, which line up field for field):
 * the weight; T input rows from inOff, inStride apart; the output rows likewise; weight rows [r0, r0 + n); and
 * `groups` groups, group g's rows, input and output starting g * rowStep, g * inStep and g * outStep further on.
 */
export type NativeProductArgs = [
  ...weight: NativeWeightArgs,
  input: Float32Array,
  inOff: number,
  inStride: number,
  T: number,
  output: Float32Array,
  outOff: number,
  outStride: number,
  r0: number,
  n: number,
  groups: number,
  rowStep: number,
  inStep: number,
  outStep: number,
];

/** The addon's functions; argument lists mirror the structs in src/kernels.h, bounds are checked natively. */
export interface NativeKernels {
  /** y[t, i] = sum_c w[r0 + i, c] x[t, c] per group: input x [T, cols], output y [T, n]. */
  matmul(...args: NativeProductArgs): void;
  /** out[t, c] = sum_{i<n} v[t, i] w[r0 + i, c] per group (the product with w transposed): input v [T, n], output out [T, cols]. */
  matmulT(...args: NativeProductArgs): void;
  /**
   * C[i, j] = (accumulate ? C[i, j] : 0) + sum_{p<k} A(i, p) B(j, p) for i < m, j < n, with A(i, p) at
   * A[aOff + i * aRowStride + p * aColStride], B(j, p) at B[bOff + j * bRowStride + p * bColStride] and C's rows
   * cStride apart from cOff: one float32 fused multiply-add chain per element, p ascending (GemmArgs in src/kernels.h).
   * Training's products: the strides read either operand as stored or transposed.
   */
  gemm(
    A: Float32Array,
    aOff: number,
    aRowStride: number,
    aColStride: number,
    B: Float32Array,
    bOff: number,
    bRowStride: number,
    bColStride: number,
    C: Float32Array,
    cOff: number,
    cStride: number,
    m: number,
    n: number,
    k: number,
    accumulate: 0 | 1,
  ): void;
  /**
   * One AdamW step over float32 w, g, m, v with hyper = [lr, decay, clipScale, beta1, beta2, bc1, bc2, eps], in
   * doubles with packages/train/src/optim.ts's operations in its order: the same bits as its TypeScript loop.
   */
  adamwF32(w: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, hyper: Float64Array): void;
  /** g += each of `others` in turn, then the sum of g's squares in doubles, i ascending (optim.ts's reduceRange, same bits). */
  addSumSquaresF32(g: Float32Array, others: readonly Float32Array[]): number;
  /**
   * A group of SwiGLU MLPs in two parallel jobs: arrays = [gateData, gateScale, upData, upScale, downData, downScale]
   * per entry; meta = per entry [n, row0, then kind, rows, cols, blockRows, blockCols of gate, up and down]
   * (17 ints). Entry e maps x rows [row0, row0 + n) to out rows [row0, row0 + n); g and u are scratch of
   * sum(n * inter) floats.
   */
  mlpGroup(
    arrays: ReadonlyArray<Float32Array | Uint16Array | Uint8Array | null>,
    meta: Int32Array,
    x: Float32Array,
    out: Float32Array,
    g: Float32Array,
    u: Float32Array,
  ): void;
  /**
   * Causal softmax attention of n tokens x H heads over positions [0, start + j]; see AttendArgs in kernels.h. With
   * a block table, ka/kb/val are a paged cache slab read in place (position p at row table[p/bs]*bs + p%bs).
   */
  attend(
    qa: Float32Array,
    qaOff: number,
    qaTok: number,
    qaHead: number,
    lenA: number,
    qb: Float32Array,
    qbOff: number,
    qbTok: number,
    qbHead: number,
    lenB: number,
    ka: Float32Array,
    kaOff: number,
    kaPos: number,
    kaHead: number,
    kb: Float32Array,
    kbOff: number,
    kbPos: number,
    kbHead: number,
    val: Float32Array,
    valOff: number,
    valPos: number,
    valHead: number,
    lenV: number,
    out: Float32Array,
    outOff: number,
    outTok: number,
    outHead: number,
    n: number,
    H: number,
    start: number,
    scale: number,
    table: Int32Array | null,
    blockSize: number,
  ): void;
  /** matmul computed on a libuv thread: resolves when done (the event loop runs meanwhile). Bad arguments throw at the call. */
  matmulAsync(...args: Parameters<NativeKernels["matmul"]>): Promise<void>;
  matmulTAsync(...args: Parameters<NativeKernels["matmulT"]>): Promise<void>;
  mlpGroupAsync(...args: Parameters<NativeKernels["mlpGroup"]>): Promise<void>;
  attendAsync(...args: Parameters<NativeKernels["attend"]>): Promise<void>;
  /**
   * out[0] = m, the maximum of x[off .. off + n), and out[1] = log(sum exp(x - m)): a log-softmax's normalizer
   * (logprob = (x - m) - out[1]). exp in float32 by one fixed polynomial, the sum in 16 double lanes, so every
   * instruction set gives the same bits.
   */
  logSumExp(x: Float32Array, off: number, n: number, out: Float64Array): void;
  /**
   * A sampler's weights: out[j] = exp((x[ids[j]] - max) * invT) (x[j] when ids is null), 0 where below minP, for
   * j < n; returns their sum. Float32 exp (logSumExp's polynomial), the sum in 16 double lanes; the largest
   * logit's weight is exactly 1.
   */
  softmaxWeights(x: Float32Array, ids: Int32Array | null, n: number, max: number, invT: number, minP: number, out: Float64Array): number;
  /**
   * The fp8-tile dispatch codec (packages/moe-dispatch/src/codec/float8-tiles.ts with float8 e4m3fn, the same
   * bits) over the [rows, cols] matrix at x[off ..], in tiles of 1 x tile: with `data` and `scales`, its codes and
   * tile scales; with nulls for those and `out`, its decoded values at out[off ..] (out may be x). Returns -1, or
   * the index (from off) of the first NaN or +-Infinity, where it stopped.
   */
  fp8Tiles(
    x: Float32Array,
    off: number,
    rows: number,
    cols: number,
    tile: number,
    data: Uint8Array | null,
    scales: Float32Array | null,
    out: Float32Array | null,
  ): number;
  /** The index (counted from off) of the first largest of x[off .. off + n), or -1 when they hold a NaN or +Infinity. */
  argmax(x: Float32Array, off: number, n: number): number;
  /**
   * Top-p's nucleus: reorders ids[0 .. n) (weights alongside) so that ids[0 .. m) is the shortest run of the
   * best-ranked candidates whose weight reaches `needed`, and returns m. sampler.ts's selectNucleus, the same
   * operations in the same order, so the same bits.
   */
  nucleus(logits: Float32Array, ids: Int32Array, weights: Float64Array, n: number, needed: number): number;
  /** The instruction set in use: "avx512", "avx2" or "portable". */
  isa(): string;
  supportedIsas(): string[];
  selectIsa(isa: string): void;
  /**
   * Kernel threads (the caller counts as one), process-wide. minWork: the smallest product (multiply-adds)
   * split across threads, default 65536 (tests pass 0 to split everything).
   */
  setThreads(n: number, minWork?: number): void;
  threads(): number;
  /** Chunks computed by the pool's workers so far (not by callers). */
  workerChunks(): number;
  /**
   * While on, products run on the calling thread alone and idle workers sleep at once instead of spinning: for a
   * process whose cores are, for a while, another's (decode while its expert-hosts compute on the same machine).
   * The same bits either way.
   */
  setCallerOnly(on: boolean): void;
}

export let nativeLoadError: Error | null = null;

function load(): NativeKernels | null {
  try {
    return createRequire(import.meta.url)("../build/Release/moela_kernels.node") as NativeKernels;
  } catch (err) {
    nativeLoadError = err instanceof Error ? err : new Error(String(err));
    return null;
  }
}

export const nativeKernels: NativeKernels | null = load();
