/**
 * FP8 dispatch codec: float8 e4m3fn values with one float32 scale per 1x128 tile along the
 * hidden axis, as DeepSeek-V3 sends activations to the experts (1 byte/value + 4 bytes/tile).
 *
 * Per tile: scale = fround(amax / 448) (1 for an all-zero tile; at least 2^-149, the smallest
 * float32, so a tile of float32-subnormal values never gets a zero scale and 0/0 = NaN),
 * code = e4m3(x / scale) with round-to-nearest-even and saturation at +-448 (x / scale is
 * computed in float64 and rounded once to e4m3), decoded value = fround(e4m3ToF32(code) * scale).
 * The scale is rounded to float32 before it is used, so the encoder divides by exactly the number
 * the decoder multiplies by.
 *
 * `roundTripFp8Tiles` runs the same per-tile code and writes the decoded values directly: the
 * single-process path and the wire path produce the same bits.
 */
import { F8_E4M3_MAX, F8_E4M3_TO_F32, f32ToF8E4M3Bits } from "@moela/engine";
import { checkLength, checkMatrix, nonFinite, tilesPerRow } from "./shape.js";

export const FP8_TILE = 128;

export interface Fp8Tiles {
  /** [rows * cols] float8 e4m3fn bit patterns, row-major. */
  data: Uint8Array;
  /** [rows * ceil(cols / tile)] float32 dequantisation scales, row-major over (row, tile). */
  scales: Float32Array;
}

/** Exact encoded size in bytes: codes plus float32 scales. */
export function fp8TilesBytes(rows: number, cols: number, tile = FP8_TILE): number {
  return rows * cols + 4 * rows * tilesPerRow(cols, tile);
}

/** Smallest positive float32: the floor of a tile scale (amax / 448 of a subnormal tile rounds to 0). */
const MIN_SCALE = 2 ** -149;

/** Scale of one tile: amax / 448 rounded to float32 (>= 2^-149), 1 for an all-zero tile. Checks finiteness. */
function tileScale(x: ArrayLike<number>, row: number, base: number, c0: number, c1: number): number {
  let amax = 0;
  for (let c = c0; c < c1; c++) {
    const a = Math.abs(x[base + c]!);
    // One comparison rejects NaN and Inf: both fail `a <= MAX_VALUE`.
    if (!(a <= Number.MAX_VALUE)) nonFinite("fp8-tile", row, c, x[base + c]!);
    if (a > amax) amax = a;
  }
  return amax === 0 ? 1 : Math.max(Math.fround(amax / F8_E4M3_MAX), MIN_SCALE);
}

export function encodeFp8Tiles(x: ArrayLike<number>, rows: number, cols: number, tile = FP8_TILE): Fp8Tiles {
  checkMatrix("fp8-tile", x, rows, cols, tile);
  const tpr = tilesPerRow(cols, tile);
  const data = new Uint8Array(rows * cols);
  const scales = new Float32Array(rows * tpr);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let t = 0; t < tpr; t++) {
      const c0 = t * tile;
      const c1 = Math.min(c0 + tile, cols);
      const scale = tileScale(x, r, base, c0, c1);
      scales[r * tpr + t] = scale;
      for (let c = c0; c < c1; c++) data[base + c] = f32ToF8E4M3Bits(x[base + c]! / scale);
    }
  }
  return { data, scales };
}

/** Decodes into `out` ([rows * cols], may be longer) and returns it. */
export function decodeFp8TilesInto(enc: Fp8Tiles, rows: number, cols: number, out: Float32Array, tile = FP8_TILE): Float32Array {
  checkMatrix("fp8-tile", out, rows, cols, tile);
  const tpr = tilesPerRow(cols, tile);
  checkLength("fp8-tile", "data", enc.data.length, rows * cols);
  checkLength("fp8-tile", "scales", enc.scales.length, rows * tpr);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let t = 0; t < tpr; t++) {
      const c0 = t * tile;
      const c1 = Math.min(c0 + tile, cols);
      const scale = enc.scales[r * tpr + t]!;
      for (let c = c0; c < c1; c++) out[base + c] = F8_E4M3_TO_F32[enc.data[base + c]!]! * scale;
    }
  }
  return out;
}

export function decodeFp8Tiles(enc: Fp8Tiles, rows: number, cols: number, tile = FP8_TILE): Float32Array {
  return decodeFp8TilesInto(enc, rows, cols, new Float32Array(rows * cols), tile);
}

/**
 * Applies the encode+decode rounding without materialising the wire form. `out` may be `x`
 * (in place, the default); the result is bit-identical to decode(encode(x)).
 */
export function roundTripFp8Tiles(x: Float32Array, rows: number, cols: number, out: Float32Array = x, tile = FP8_TILE): Float32Array {
  checkMatrix("fp8-tile", x, rows, cols, tile);
  checkMatrix("fp8-tile", out, rows, cols, tile);
  const tpr = tilesPerRow(cols, tile);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let t = 0; t < tpr; t++) {
      const c0 = t * tile;
      const c1 = Math.min(c0 + tile, cols);
      const scale = tileScale(x, r, base, c0, c1);
      for (let c = c0; c < c1; c++) out[base + c] = F8_E4M3_TO_F32[f32ToF8E4M3Bits(x[base + c]! / scale)]! * scale;
    }
  }
  return out;
}
