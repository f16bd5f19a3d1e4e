/**
 * FP8 dispatch codec: float8 e4m3fn values with one float32 scale per 1x128 tile along the
 * hidden axis, as DeepSeek-V3 sends activations to the experts (1 byte/value + 4 bytes/tile).
 * The tile scheme (scales, rounding, what the round trip guarantees) is float8-tiles.ts's.
 *
 * Encoding and the round trip run in the native addon when it is built (its fp8Tiles: the same
 * float64 operations, so the same bits), else in float8-tiles.ts; decoding is a table lookup
 * either way.
 */
import { F8_E4M3_MAX, F8_E4M3_TO_F32, f32ToF8E4M3Bits } from "@moela/engine";
import { nativeKernels } from "@moela/engine-native";
import { decodeFloat8TilesInto, encodeFloat8Tiles, float8TilesBytes, roundTripFloat8Tiles, type Float8Format, type Float8Tiles } from "./float8-tiles.js";
import { checkMatrix, nonFinite, tilesPerRow } from "./shape.js";

export const FP8_TILE = 128;

export type Fp8Tiles = Float8Tiles;

/** float8-tiles.ts's format for this codec; tests compare its TypeScript loops with the addon's. */
export const FP8_E4M3_FORMAT: Float8Format = { codec: "fp8-tile", max: F8_E4M3_MAX, encode: f32ToF8E4M3Bits, values: F8_E4M3_TO_F32 };
const E4M3 = FP8_E4M3_FORMAT;

/** The addon's loops, or null (no addon, or one built before them). */
const native = typeof nativeKernels?.fp8Tiles === "function" ? nativeKernels : null;

/** Throws as float8-tiles.ts does for the non-finite value the addon stopped at (-1: none). */
function checkNative(x: Float32Array, cols: number, bad: number): void {
  if (bad >= 0) nonFinite("fp8-tile", Math.floor(bad / cols), bad % cols, x[bad]!);
}

/** Exact encoded size in bytes: codes plus float32 scales. */
export function fp8TilesBytes(rows: number, cols: number, tile = FP8_TILE): number {
  return float8TilesBytes(rows, cols, tile);
}

export function encodeFp8Tiles(x: ArrayLike<number>, rows: number, cols: number, tile = FP8_TILE): Fp8Tiles {
  if (native === null || !(x instanceof Float32Array)) return encodeFloat8Tiles(E4M3, x, rows, cols, tile);
  checkMatrix("fp8-tile", x, rows, cols, tile);
  const data = new Uint8Array(rows * cols); // [rows, cols]
  const scales = new Float32Array(rows * tilesPerRow(cols, tile)); // [rows, tiles]
  checkNative(x, cols, native.fp8Tiles(x, 0, rows, cols, tile, data, scales, null));
  return { data, scales };
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
  if (native === null || (out !== x && out.buffer === x.buffer)) return roundTripFloat8Tiles(E4M3, x, rows, cols, out, tile);
  checkMatrix("fp8-tile", x, rows, cols, tile);
  checkMatrix("fp8-tile", out, rows, cols, tile);
  // The addon reads x and writes out from the same offset, 0 here; out may be x itself.
  checkNative(x, cols, native.fp8Tiles(x, 0, rows, cols, tile, null, null, out));
  return out;
}
