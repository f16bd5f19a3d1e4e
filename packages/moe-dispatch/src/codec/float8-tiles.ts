/**
 * The tile scheme both float8 codecs share (fp8-tile.ts: E4M3, the dispatch format; fp8-e5m2-tile.ts: E5M2, for
 * the codec study): one float32 scale per 1 x `tile` run of a row, along the hidden axis.
 *
 * Per tile: scale = fround(amax / max) (1 for an all-zero tile; at least 2^-149, the smallest float32, so a tile of
 * float32-subnormal values never gets a zero scale and 0/0 = NaN), code = format(x / scale) (x / scale computed in
 * float64 and rounded once, to nearest even, saturating at +-max), decoded value = fround(value(code) * scale). The
 * scale is rounded to float32 before it is used, so the encoder divides by exactly the number the decoder
 * multiplies by. NaN and +-Inf inputs are rejected.
 *
 * `roundTripFloat8Tiles` runs the same per-tile code and writes the decoded values directly: the single-process
 * path and the wire path produce the same bits.
 */
import { checkLength, checkMatrix, nonFinite, tilesPerRow } from "./shape.js";

/** A float8 format as the tile codecs use it. */
export interface Float8Format {
  /** The codec's name, for errors. */
  readonly codec: string;
  /** Largest finite value: a tile's amax maps to it. */
  readonly max: number;
  /** x -> code: nearest value, ties to the even code, saturating at +-max. */
  readonly encode: (x: number) => number;
  /** code -> value, for all 256 codes. */
  readonly values: Float32Array;
}

export interface Float8Tiles {
  /** [rows * cols] float8 bit patterns, row-major. */
  data: Uint8Array;
  /** [rows * ceil(cols / tile)] float32 dequantisation scales, row-major over (row, tile). */
  scales: Float32Array;
}

/** Exact encoded size in bytes: codes plus float32 scales. */
export function float8TilesBytes(rows: number, cols: number, tile: number): number {
  return rows * cols + 4 * rows * tilesPerRow(cols, tile);
}

/** Smallest positive float32: the floor of a tile scale (amax / max of a subnormal tile rounds to 0). */
const MIN_SCALE = 2 ** -149;

/** Scale of one tile: amax / max rounded to float32 (>= 2^-149), 1 for an all-zero tile. Checks finiteness. */
function tileScale(f: Float8Format, x: ArrayLike<number>, row: number, base: number, c0: number, c1: number): number {
  let amax = 0;
  for (let c = c0; c < c1; c++) {
    const a = Math.abs(x[base + c]!);
    // One comparison rejects NaN and Inf: both fail `a <= MAX_VALUE`.
    if (!(a <= Number.MAX_VALUE)) nonFinite(f.codec, row, c, x[base + c]!);
    if (a > amax) amax = a;
  }
  return amax === 0 ? 1 : Math.max(Math.fround(amax / f.max), MIN_SCALE);
}

export function encodeFloat8Tiles(f: Float8Format, x: ArrayLike<number>, rows: number, cols: number, tile: number): Float8Tiles {
  checkMatrix(f.codec, x, rows, cols, tile);
  const tpr = tilesPerRow(cols, tile);
  const data = new Uint8Array(rows * cols); // [rows, cols]
  const scales = new Float32Array(rows * tpr); // [rows, tiles]
  const encode = f.encode;
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let t = 0; t < tpr; t++) {
      const c0 = t * tile;
      const c1 = Math.min(c0 + tile, cols);
      const scale = tileScale(f, x, r, base, c0, c1);
      scales[r * tpr + t] = scale;
      for (let c = c0; c < c1; c++) data[base + c] = encode(x[base + c]! / scale);
    }
  }
  return { data, scales };
}

/** Decodes into `out` ([rows * cols], may be longer) and returns it. */
export function decodeFloat8TilesInto(f: Float8Format, enc: Float8Tiles, rows: number, cols: number, out: Float32Array, tile: number): Float32Array {
  checkMatrix(f.codec, out, rows, cols, tile);
  const tpr = tilesPerRow(cols, tile);
  checkLength(f.codec, "data", enc.data.length, rows * cols);
  checkLength(f.codec, "scales", enc.scales.length, rows * tpr);
  const values = f.values;
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let t = 0; t < tpr; t++) {
      const c0 = t * tile;
      const c1 = Math.min(c0 + tile, cols);
      const scale = enc.scales[r * tpr + t]!;
      for (let c = c0; c < c1; c++) out[base + c] = values[enc.data[base + c]!]! * scale;
    }
  }
  return out;
}

/** decode(encode(x)) without the wire form, bit for bit; `out` may be `x`. */
export function roundTripFloat8Tiles(f: Float8Format, x: Float32Array, rows: number, cols: number, out: Float32Array, tile: number): Float32Array {
  checkMatrix(f.codec, x, rows, cols, tile);
  checkMatrix(f.codec, out, rows, cols, tile);
  const tpr = tilesPerRow(cols, tile);
  const encode = f.encode;
  const values = f.values;
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let t = 0; t < tpr; t++) {
      const c0 = t * tile;
      const c1 = Math.min(c0 + tile, cols);
      const scale = tileScale(f, x, r, base, c0, c1);
      for (let c = c0; c < c1; c++) out[base + c] = values[encode(x[base + c]! / scale)]! * scale;
    }
  }
  return out;
}
