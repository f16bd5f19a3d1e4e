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

/** Decode row `r` of `w` into `out[0..cols)` as float32 (dequantized with the block scale for FP8). */
export function decodeRow(w: WeightMatrix, r: number, out: Float32Array): void {
  const cols = w.cols;
  const base = r * cols;
  switch (w.kind) {
    case "f32":
      out.set(w.data.subarray(base, base + cols));
      return;
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

/** Scratch rows shared by the kernels; grown on demand, so steady-state calls allocate nothing. */
let scratchRow = new Float32Array(1024);
function rowScratch(cols: number): Float32Array {
  if (scratchRow.length < cols) scratchRow = new Float32Array(cols);
  return scratchRow;
}

/**
 * y[t, r - r0] = sum_c w[r, c] * x[t, c] for t < T and r in [r0, r0 + nRows) (default: all rows).
 * x: [T, cols] starting at xOff with row stride xStride; y: [T, nRows] starting at yOff with row stride yStride.
 * Each weight row is decoded once and used by all T tokens.
 */
export function matmul(
  w: WeightMatrix,
  x: Float32Array,
  T: number,
  y: Float32Array,
  { xOff = 0, xStride = w.cols, yOff = 0, yStride = -1, r0 = 0, nRows = w.rows }: MatmulLayout = {},
): void {
  const cols = w.cols;
  const ys = yStride < 0 ? nRows : yStride;
  const row = w.kind === "f32" ? null : rowScratch(cols);
  for (let i = 0; i < nRows; i++) {
    const r = r0 + i;
    let wr: Float32Array;
    let wo: number;
    if (row === null) {
      wr = (w as { data: Float32Array }).data;
      wo = r * cols;
    } else {
      decodeRow(w, r, row);
      wr = row;
      wo = 0;
    }
    for (let t = 0; t < T; t++) {
      const xo = xOff + t * xStride;
      let s = 0;
      for (let c = 0; c < cols; c++) s += wr[wo + c]! * x[xo + c]!;
      y[yOff + t * ys + i] = s;
    }
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
export function matvecTransposedRows(
  w: WeightMatrix,
  r0: number,
  n: number,
  v: Float32Array | Float64Array,
  vOff: number,
  out: Float64Array,
): void {
  const cols = w.cols;
  out.fill(0, 0, cols);
  const row = rowScratch(cols);
  for (let i = 0; i < n; i++) {
    const a = v[vOff + i]!;
    decodeRow(w, r0 + i, row);
    for (let c = 0; c < cols; c++) out[c] = out[c]! + a * row[c]!;
  }
}

/** out[i] = sum_c w[r0 + i, c] * v[c] for i < n (a slice of rows times one vector, in doubles). */
export function matvecRows(
  w: WeightMatrix,
  r0: number,
  n: number,
  v: Float64Array | Float32Array,
  out: Float64Array | Float32Array,
  outOff: number,
): void {
  const cols = w.cols;
  const row = rowScratch(cols);
  for (let i = 0; i < n; i++) {
    decodeRow(w, r0 + i, row);
    let s = 0;
    for (let c = 0; c < cols; c++) s += row[c]! * v[c]!;
    out[outOff + i] = s;
  }
}
