/**
 * FP8 dispatch codec: float8 e4m3fn values with one float32 scale per 1x128 tile along the
 * hidden axis, as DeepSeek-V3 sends activations to the experts (1 byte/value + 4 bytes/tile).
 * The tile scheme (scales, rounding, what the round trip guarantees) is float8-tiles.ts's.
 */
import { F8_E4M3_MAX, F8_E4M3_TO_F32, f32ToF8E4M3Bits } from "@moela/engine";
import { decodeFloat8TilesInto, encodeFloat8Tiles, float8TilesBytes, roundTripFloat8Tiles, type Float8Format, type Float8Tiles } from "./float8-tiles.js";

export const FP8_TILE = 128;

export type Fp8Tiles = Float8Tiles;

const E4M3: Float8Format = { codec: "fp8-tile", max: F8_E4M3_MAX, encode: f32ToF8E4M3Bits, values: F8_E4M3_TO_F32 };

/** Exact encoded size in bytes: codes plus float32 scales. */
export function fp8TilesBytes(rows: number, cols: number, tile = FP8_TILE): number {
  return float8TilesBytes(rows, cols, tile);
}

export function encodeFp8Tiles(x: ArrayLike<number>, rows: number, cols: number, tile = FP8_TILE): Fp8Tiles {
  return encodeFloat8Tiles(E4M3, x, rows, cols, tile);
}

/** Decodes into `out` ([rows * cols], may be longer) and returns it. */
export function decodeFp8TilesInto(enc: Fp8Tiles, rows: number, cols: number, out: Float32Array, tile = FP8_TILE): Float32Array {
  return decodeFloat8TilesInto(E4M3, enc, rows, cols, out, tile);
}

export function decodeFp8Tiles(enc: Fp8Tiles, rows: number, cols: number, tile = FP8_TILE): Float32Array {
  return decodeFp8TilesInto(enc, rows, cols, new Float32Array(rows * cols), tile);
}

/**
 * Applies the encode+decode rounding without materialising the wire form. `out` may be `x`
 * (in place, the default); the result is bit-identical to decode(encode(x)).
 */
export function roundTripFp8Tiles(x: Float32Array, rows: number, cols: number, out: Float32Array = x, tile = FP8_TILE): Float32Array {
  return roundTripFloat8Tiles(E4M3, x, rows, cols, out, tile);
}
