/**
 * Linear-layer weights kept in their checkpoint precision, and the kernels that read them in place.
 *
 * A weight is [rows = out_features, cols = in_features] (the nn.Linear layout of the checkpoint).
 * BF16/F16 stay as 16-bit patterns and FP8 stays as bytes plus its block scales: the kernels decode
 * each element through a lookup table while they multiply, so resident memory is the checkpoint's.
 * Accumulation happens in JS doubles; every output element is computed by the same loop whatever
 * the batch around it, so a row's result never depends on which other rows share the call
 * (batch invariance: the decode step, the verify step and the prefill agree bit for bit).
 */
import { BF16_TO_F32, F16_TO_F32, F8_E4M3_TO_F32 } from "./dtype.js";

export type WeightMatrix =
  | { readonly kind: "f32"; readonly rows: number; readonly cols: number; readonly data: Float32Array }
  | { readonly kind: "bf16" | "f16"; readonly rows: number; readonly cols: number; readonly data: Uint16Array }
  | {
      readonly kind: "fp8";
      readonly rows: number;
      readonly cols: number;
      readonly data: Uint8Array; // [rows, cols] e4m3fn codes
      readonly scaleInv: Float32Array; // [ceil(rows/blockRows), ceil(cols/blockCols)]
      readonly blockRows: number;
      readonly blockCols: number;
    };

/** Bytes the weight occupies in memory (data plus scales). */
export function weightBytes(w: WeightMatrix): number {
  return w.kind === "fp8" ? w.data.byteLength + w.scaleInv.byteLength : w.data.byteLength;
}

/** Scratch rows shared by the kernels; grown on demand, so steady-state calls allocate nothing. */
let scratchRow64 = new Float64Array(1024);
function rowScratch64(cols: number): Float64Array {
  if (scratchRow64.length < cols) scratchRow64 = new Float64Array(cols);
  return scratchRow64;
}

/**
 * Decode row `r` of `w` into `out[0..cols)`, dequantized with the block scale for FP8. Into a Float64Array
 * the values are exact (an FP8 code times its float32 block scale fits a double), so the fused and the
 * decode-once kernel paths below multiply by identical values.
 */
export function decodeRow(w: WeightMatrix, r: number, out: Float64Array | Float32Array): void {
  const cols = w.cols;
  const base = r * cols;
  switch (w.kind) {
    case "f32": {
      const d = w.data;
      for (let c = 0; c < cols; c++) out[c] = d[base + c]!;
      return;
    }
    case "bf16": {
      const d = w.data;
      for (let c = 0; c < cols; c++) out[c] = BF16_TO_F32[d[base + c]!]!;
      return;
    }
    case "f16": {
      const d = w.data;
      for (let c = 0; c < cols; c++) out[c] = F16_TO_F32[d[base + c]!]!;
      return;
    }
    case "fp8": {
      const d = w.data;
      const scaleCols = Math.ceil(cols / w.blockCols);
      const srow = Math.floor(r / w.blockRows) * scaleCols;
      for (let bc = 0; bc < scaleCols; bc++) {
        const s = w.scaleInv[srow + bc]!;
        const c1 = Math.min(cols, (bc + 1) * w.blockCols);
        for (let c = bc * w.blockCols; c < c1; c++) out[c] = F8_E4M3_TO_F32[d[base + c]!]! * s;
      }
      return;
    }
  }
}

/**
 * The one dot product every linear layer uses: four interleaved accumulators (element c goes to
 * accumulator c mod 4), combined as (s0 + s1) + (s2 + s3). All paths share it, so a row's result is
 * the same bits whichever path computed it.
 */
function dot64(row: Float64Array, x: Float32Array, xo: number, cols: number): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  let c = 0;
  for (; c + 3 < cols; c += 4) {
    s0 += row[c]! * x[xo + c]!;
    s1 += row[c + 1]! * x[xo + c + 1]!;
    s2 += row[c + 2]! * x[xo + c + 2]!;
    s3 += row[c + 3]! * x[xo + c + 3]!;
  }
  if (c < cols) s0 += row[c]! * x[xo + c]!;
  if (c + 1 < cols) s1 += row[c + 1]! * x[xo + c + 1]!;
  if (c + 2 < cols) s2 += row[c + 2]! * x[xo + c + 2]!;
  return s0 + s1 + (s2 + s3);
}

/** dot64 with the row read straight from BF16 codes (bit-identical: BF16 values are exact in both). */
function dotBf16(d: Uint16Array, base: number, x: Float32Array, xo: number, cols: number): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  let c = 0;
  const t = BF16_TO_F32;
  for (; c + 3 < cols; c += 4) {
    s0 += t[d[base + c]!]! * x[xo + c]!;
    s1 += t[d[base + c + 1]!]! * x[xo + c + 1]!;
    s2 += t[d[base + c + 2]!]! * x[xo + c + 2]!;
    s3 += t[d[base + c + 3]!]! * x[xo + c + 3]!;
  }
  if (c < cols) s0 += t[d[base + c]!]! * x[xo + c]!;
  if (c + 1 < cols) s1 += t[d[base + c + 1]!]! * x[xo + c + 1]!;
  if (c + 2 < cols) s2 += t[d[base + c + 2]!]! * x[xo + c + 2]!;
  return s0 + s1 + (s2 + s3);
}

/**
 * dot64 with the row read straight from FP8 codes and block scales (bit-identical: code * scale is exact in a
 * double). Needs blockCols % 4 == 0 so element c still lands in accumulator c mod 4.
 */
function dotFp8(d: Uint8Array, base: number, scales: Float32Array, srow: number, blockCols: number, x: Float32Array, xo: number, cols: number): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  const t = F8_E4M3_TO_F32;
  for (let c0 = 0, bc = 0; c0 < cols; c0 += blockCols, bc++) {
    const sc = scales[srow + bc]!;
    const c1 = Math.min(cols, c0 + blockCols);
    let c = c0;
    for (; c + 3 < c1; c += 4) {
      s0 += t[d[base + c]!]! * sc * x[xo + c]!;
      s1 += t[d[base + c + 1]!]! * sc * x[xo + c + 1]!;
      s2 += t[d[base + c + 2]!]! * sc * x[xo + c + 2]!;
      s3 += t[d[base + c + 3]!]! * sc * x[xo + c + 3]!;
    }
    if (c < c1) s0 += t[d[base + c]!]! * sc * x[xo + c]!;
    if (c + 1 < c1) s1 += t[d[base + c + 1]!]! * sc * x[xo + c + 1]!;
    if (c + 2 < c1) s2 += t[d[base + c + 2]!]! * sc * x[xo + c + 2]!;
  }
  return s0 + s1 + (s2 + s3);
}

/** Up to this many tokens a row is read straight from its codes per token; beyond, decoded once. */
const FUSED_MAX_T = 2;

/** dot64 with the row read straight from F32 weights. */
function dotF32(d: Float32Array, base: number, x: Float32Array, xo: number, cols: number): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  let c = 0;
  for (; c + 3 < cols; c += 4) {
    s0 += d[base + c]! * x[xo + c]!;
    s1 += d[base + c + 1]! * x[xo + c + 1]!;
    s2 += d[base + c + 2]! * x[xo + c + 2]!;
    s3 += d[base + c + 3]! * x[xo + c + 3]!;
  }
  if (c < cols) s0 += d[base + c]! * x[xo + c]!;
  if (c + 1 < cols) s1 += d[base + c + 1]! * x[xo + c + 1]!;
  if (c + 2 < cols) s2 += d[base + c + 2]! * x[xo + c + 2]!;
  return s0 + s1 + (s2 + s3);
}

/**
 * y[t, r - r0] = sum_c w[r, c] * x[t, c] for t < T and r in [r0, r0 + nRows) (default: all rows).
 * x: [T, cols] starting at xOff with row stride xStride; y: [T, nRows] starting at yOff with row stride yStride.
 * F32 and BF16 rows are read in place; FP8/F16 rows are decoded once (exactly, into float64) and used by all T tokens.
 */
export function matmul(w: WeightMatrix, x: Float32Array, T: number, y: Float32Array, layout?: MatmulLayout): void {
  const cols = w.cols;
  const xOff = layout?.xOff ?? 0;
  const xStride = layout?.xStride ?? cols;
  const yOff = layout?.yOff ?? 0;
  const r0 = layout?.r0 ?? 0;
  const nRows = layout?.nRows ?? w.rows;
  const ys = layout?.yStride === undefined || layout.yStride < 0 ? nRows : layout.yStride;
  if (w.kind === "f32") {
    const d = w.data;
    for (let i = 0; i < nRows; i++) {
      const base = (r0 + i) * cols;
      for (let t = 0; t < T; t++) y[yOff + t * ys + i] = dotF32(d, base, x, xOff + t * xStride, cols);
    }
    return;
  }
  if (w.kind === "bf16" && T <= FUSED_MAX_T) {
    const d = w.data;
    for (let i = 0; i < nRows; i++) {
      const base = (r0 + i) * cols;
      for (let t = 0; t < T; t++) y[yOff + t * ys + i] = dotBf16(d, base, x, xOff + t * xStride, cols);
    }
    return;
  }
  if (w.kind === "fp8" && T <= FUSED_MAX_T && w.blockCols % 4 === 0) {
    const d = w.data;
    const scaleCols = Math.ceil(cols / w.blockCols);
    for (let i = 0; i < nRows; i++) {
      const r = r0 + i;
      const srow = Math.floor(r / w.blockRows) * scaleCols;
      for (let t = 0; t < T; t++) y[yOff + t * ys + i] = dotFp8(d, r * cols, w.scaleInv, srow, w.blockCols, x, xOff + t * xStride, cols);
    }
    return;
  }
  const row = rowScratch64(cols);
  for (let i = 0; i < nRows; i++) {
    decodeRow(w, r0 + i, row);
    for (let t = 0; t < T; t++) y[yOff + t * ys + i] = dot64(row, x, xOff + t * xStride, cols);
  }
}

export interface MatmulLayout {
  xOff?: number;
  xStride?: number;
  yOff?: number;
  /** Row stride of y; defaults to nRows (dense output). */
  yStride?: number;
  /** First weight row to use. */
  r0?: number;
  /** Number of weight rows to use. */
  nRows?: number;
}

/**
 * Transposed product for a slice of rows: out[c] = sum_{r in [r0, r0+n)} w[r, c] * v[r - r0], c < cols.
 * Used to absorb W_UK into the query (q_nope -> latent space) without materialising W_UK^T.
 */
export function matvecTransposedRows(w: WeightMatrix, r0: number, n: number, v: Float32Array | Float64Array, vOff: number, out: Float64Array): void {
  const cols = w.cols;
  out.fill(0, 0, cols);
  const row = rowScratch64(cols);
  for (let i = 0; i < n; i++) {
    const a = v[vOff + i]!;
    decodeRow(w, r0 + i, row);
    for (let c = 0; c < cols; c++) out[c] = out[c]! + a * row[c]!;
  }
}

/** out[i] = sum_c w[r0 + i, c] * v[c] for i < n (a slice of rows times one vector, in doubles). */
export function matvecRows(w: WeightMatrix, r0: number, n: number, v: Float64Array | Float32Array, out: Float64Array | Float32Array, outOff: number): void {
  const cols = w.cols;
  const row = rowScratch64(cols);
  for (let i = 0; i < n; i++) {
    decodeRow(w, r0 + i, row);
    let s = 0;
    for (let c = 0; c < cols; c++) s += row[c]! * v[c]!;
    out[outOff + i] = s;
  }
}
