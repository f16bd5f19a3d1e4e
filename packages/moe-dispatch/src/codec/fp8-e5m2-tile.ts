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
 * The tile scheme is float8-tiles.ts's, the same as fp8-tile's for E4M3, with 57344 for 448.
 */
import { minifloatCode } from "@moela/engine";
import { decodeFloat8TilesInto, encodeFloat8Tiles, float8TilesBytes, roundTripFloat8Tiles, type Float8Format, type Float8Tiles } from "./float8-tiles.js";

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

/** e5m2: 2 mantissa bits, smallest normal 2^-14. */
const E5M2_MANT_BITS = 2;
const E5M2_MIN_EXP = -14;

/**
 * float -> float8 e5m2 bit pattern, round to nearest even, saturating at +-57344 (never Inf:
 * a scaled codec wants the largest finite value, as `satfinite` conversions give). NaN -> 0x7f.
 */
export function f32ToF8E5M2Bits(x: number): number {
  if (Number.isNaN(x)) return 0x7f;
  const sign = x < 0 || (x === 0 && 1 / x < 0) ? 0x80 : 0;
  const a = Math.abs(x);
  if (a >= F8_E5M2_MAX) return sign | 0x7b;
  return sign | minifloatCode(a, E5M2_MANT_BITS, E5M2_MIN_EXP);
}

export type Fp8E5M2Tiles = Float8Tiles;

const E5M2: Float8Format = { codec: "fp8-e5m2-tile", max: F8_E5M2_MAX, encode: f32ToF8E5M2Bits, values: F8_E5M2_TO_F32 };

/** Exact encoded size in bytes: codes plus float32 scales (the same as fp8-tile's). */
export function fp8E5M2TilesBytes(rows: number, cols: number, tile = FP8_E5M2_TILE): number {
  return float8TilesBytes(rows, cols, tile);
}

export function encodeFp8E5M2Tiles(x: ArrayLike<number>, rows: number, cols: number, tile = FP8_E5M2_TILE): Fp8E5M2Tiles {
  return encodeFloat8Tiles(E5M2, x, rows, cols, tile);
}

export function decodeFp8E5M2TilesInto(enc: Fp8E5M2Tiles, rows: number, cols: number, out: Float32Array, tile = FP8_E5M2_TILE): Float32Array {
  return decodeFloat8TilesInto(E5M2, enc, rows, cols, out, tile);
}

export function decodeFp8E5M2Tiles(enc: Fp8E5M2Tiles, rows: number, cols: number, tile = FP8_E5M2_TILE): Float32Array {
  return decodeFp8E5M2TilesInto(enc, rows, cols, new Float32Array(rows * cols), tile);
}

/** decode(encode(x)) without the wire form, bit for bit; `out` may be `x` (the default). */
export function roundTripFp8E5M2Tiles(x: Float32Array, rows: number, cols: number, out: Float32Array = x, tile = FP8_E5M2_TILE): Float32Array {
  return roundTripFloat8Tiles(E5M2, x, rows, cols, out, tile);
}
