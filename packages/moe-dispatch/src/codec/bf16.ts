/**
 * BF16 codec (the combine direction: expert outputs come back at 2 bytes/value).
 * Round to nearest even via the engine's f32ToBf16Bits; bytes are little-endian on the wire
 * whatever the host. Non-finite values pass through (BF16 has Inf and NaN).
 */
import { BF16_TO_F32, f32ToBf16Bits } from "@moela/engine";
import { checkLength, checkMatrix } from "./shape.js";

export interface Bf16Matrix {
  /** [rows * cols * 2] bfloat16 bit patterns, little-endian, row-major. */
  data: Uint8Array;
}

export function bf16Bytes(rows: number, cols: number): number {
  return 2 * rows * cols;
}

export function encodeBf16(x: ArrayLike<number>, rows: number, cols: number): Bf16Matrix {
  checkMatrix("bf16", x, rows, cols);
  const n = rows * cols;
  const data = new Uint8Array(2 * n);
  for (let i = 0; i < n; i++) {
    const b = f32ToBf16Bits(x[i]!);
    data[2 * i] = b & 0xff;
    data[2 * i + 1] = b >>> 8;
  }
  return { data };
}

export function decodeBf16Into(enc: Bf16Matrix, rows: number, cols: number, out: Float32Array): Float32Array {
  checkMatrix("bf16", out, rows, cols);
  const n = rows * cols;
  checkLength("bf16", "data (bytes)", enc.data.length, 2 * n);
  const d = enc.data;
  for (let i = 0; i < n; i++) out[i] = BF16_TO_F32[d[2 * i]! | (d[2 * i + 1]! << 8)]!;
  return out;
}

export function decodeBf16(enc: Bf16Matrix, rows: number, cols: number): Float32Array {
  return decodeBf16Into(enc, rows, cols, new Float32Array(rows * cols));
}

/** Rounds every value through BF16; `out` may be `x` (the default). Same bits as decode(encode(x)). */
export function roundTripBf16(x: Float32Array, rows: number, cols: number, out: Float32Array = x): Float32Array {
  checkMatrix("bf16", x, rows, cols);
  checkMatrix("bf16", out, rows, cols);
  const n = rows * cols;
  for (let i = 0; i < n; i++) out[i] = BF16_TO_F32[f32ToBf16Bits(x[i]!)]!;
  return out;
}
