/**
 * FP8 E5M2 with one float32 scale per 1x128 tile: the other OCP float8 format, with two more
 * binades of range and one mantissa bit less than E4M3. STUDY-ONLY: the wire contract
 * (proto/moela/v1/common.proto, DType) has no F8_E5M2, so this codec is not in DISPATCH_CODECS
 * and no deployment can send it; `moela codec-study` uses it to answer how LogFMT compares with
 * both FP8 formats, as the paper does.
 *
 * float8 e5m2: bias 15, largest finite 57344 = 1.75 * 2^15, smallest normal 2^-14, subnormals
 * m * 2^-16 (m = 1..3), S.11111.00 is Inf, S.11111.xx (xx != 0) NaN.
 *
 * Per tile, exactly as fp8-tile does for E4M3: scale = fround(amax / 57344) (1 for an all-zero
 * tile, at least 2^-149 so a subnormal tile never gets a zero scale), code = e5m2(x / scale) rounded to nearest even once from float64 and saturated at
 * +-57344, decoded value = e5m2ToF32(code) * scale. NaN and +-Inf inputs are rejected.
 */
import { checkLength, checkMatrix, nonFinite, tilesPerRow } from "./shape.js";

export const FP8_E5M2_TILE = 128;
/** Largest finite float8 e5m2 value. */
export const F8_E5M2_MAX = 57344;

/** float8 e5m2 bit pattern -> float32 value (exact), for all 256 patterns. */
export const F8_E5M2_TO_F32: Float32Array = (() => {
  const table = new Float32Array(256);
  for (let b = 0; b < 256; b++) {
    const sign = b & 0x80 ? -1 : 1;
    const exp = (b >> 2) & 0x1f;
    const mant = b & 0x3;
    let v: number;
    if (exp === 0x1f) v = mant === 0 ? Infinity : NaN;
    else if (exp === 0) v = mant * 2 ** -16;
    else v = (1 + mant / 4) * 2 ** (exp - 15);
    table[b] = sign * v;
  }
  return table;
})();

/** The non-negative finite e5m2 values in code order (codes 0x00..0x7b), ascending. */
const E5M2_POSITIVE: Float64Array = Float64Array.from(F8_E5M2_TO_F32.subarray(0, 0x7c));

/**
 * float -> float8 e5m2 bit pattern, round to nearest even, saturating at +-57344 (never Inf:
 * a scaled codec wants the largest finite value, as `satfinite` conversions give). NaN -> 0x7f.
 */
export function f32ToF8E5M2Bits(x: number): number {
  if (Number.isNaN(x)) return 0x7f;
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.abs(x);
  if (a >= F8_E5M2_MAX) return sign | 0x7b;
  // First representable value >= a (codes are monotone in value).
  let lo = 0;
  let hi = E5M2_POSITIVE.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (E5M2_POSITIVE[mid]! < a) lo = mid + 1;
    else hi = mid;
  }
  if (E5M2_POSITIVE[lo] === a || lo === 0) return sign | lo;
  const dUp = E5M2_POSITIVE[lo]! - a;
  const dDown = a - E5M2_POSITIVE[lo - 1]!;
  if (dDown < dUp) return sign | (lo - 1);
  if (dUp < dDown) return sign | lo;
  return sign | ((lo - 1) % 2 === 0 ? lo - 1 : lo); // tie: the even mantissa (the code's low bit)
}

export interface Fp8E5M2Tiles {
  /** [rows * cols] float8 e5m2 bit patterns, row-major. */
  data: Uint8Array;
  /** [rows * ceil(cols / tile)] float32 dequantisation scales, row-major over (row, tile). */
  scales: Float32Array;
}

/** Exact encoded size in bytes: codes plus float32 scales (the same as fp8-tile's). */
export function fp8E5M2TilesBytes(rows: number, cols: number, tile = FP8_E5M2_TILE): number {
  return rows * cols + 4 * rows * tilesPerRow(cols, tile);
}

/** Smallest positive float32: the floor of a tile scale. */
const MIN_SCALE = 2 ** -149;

function tileScale(x: ArrayLike<number>, row: number, base: number, c0: number, c1: number): number {
  let amax = 0;
  for (let c = c0; c < c1; c++) {
    const a = Math.abs(x[base + c]!);
    if (!(a <= Number.MAX_VALUE)) nonFinite("fp8-e5m2-tile", row, c, x[base + c]!);
    if (a > amax) amax = a;
  }
  return amax === 0 ? 1 : Math.max(Math.fround(amax / F8_E5M2_MAX), MIN_SCALE);
}

export function encodeFp8E5M2Tiles(x: ArrayLike<number>, rows: number, cols: number, tile = FP8_E5M2_TILE): Fp8E5M2Tiles {
  checkMatrix("fp8-e5m2-tile", x, rows, cols, tile);
  const tpr = tilesPerRow(cols, tile);
  const data = new Uint8Array(rows * cols); // [rows, cols]
  const scales = new Float32Array(rows * tpr); // [rows, tiles]
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let t = 0; t < tpr; t++) {
      const c0 = t * tile;
      const c1 = Math.min(c0 + tile, cols);
      const scale = tileScale(x, r, base, c0, c1);
      scales[r * tpr + t] = scale;
      for (let c = c0; c < c1; c++) data[base + c] = f32ToF8E5M2Bits(x[base + c]! / scale);
    }
  }
  return { data, scales };
}

export function decodeFp8E5M2TilesInto(enc: Fp8E5M2Tiles, rows: number, cols: number, out: Float32Array, tile = FP8_E5M2_TILE): Float32Array {
  checkMatrix("fp8-e5m2-tile", out, rows, cols, tile);
  const tpr = tilesPerRow(cols, tile);
  checkLength("fp8-e5m2-tile", "data", enc.data.length, rows * cols);
  checkLength("fp8-e5m2-tile", "scales", enc.scales.length, rows * tpr);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let t = 0; t < tpr; t++) {
      const c0 = t * tile;
      const c1 = Math.min(c0 + tile, cols);
      const scale = enc.scales[r * tpr + t]!;
      for (let c = c0; c < c1; c++) out[base + c] = F8_E5M2_TO_F32[enc.data[base + c]!]! * scale;
    }
  }
  return out;
}

export function decodeFp8E5M2Tiles(enc: Fp8E5M2Tiles, rows: number, cols: number, tile = FP8_E5M2_TILE): Float32Array {
  return decodeFp8E5M2TilesInto(enc, rows, cols, new Float32Array(rows * cols), tile);
}

/** decode(encode(x)) without the wire form, bit for bit; `out` may be `x` (the default). */
export function roundTripFp8E5M2Tiles(x: Float32Array, rows: number, cols: number, out: Float32Array = x, tile = FP8_E5M2_TILE): Float32Array {
  checkMatrix("fp8-e5m2-tile", x, rows, cols, tile);
  checkMatrix("fp8-e5m2-tile", out, rows, cols, tile);
  const tpr = tilesPerRow(cols, tile);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let t = 0; t < tpr; t++) {
      const c0 = t * tile;
      const c1 = Math.min(c0 + tile, cols);
      const scale = tileScale(x, r, base, c0, c1);
      for (let c = c0; c < c1; c++) out[base + c] = F8_E5M2_TO_F32[f32ToF8E5M2Bits(x[base + c]! / scale)]! * scale;
    }
  }
  return out;
}
