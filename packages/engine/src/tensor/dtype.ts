/**
 * Element types of checkpoint tensors and the exact conversions between them.
 * Decoding goes through lookup tables built once (2^16 entries for the 16-bit types, 256 for FP8),
 * so kernels can read BF16/F16/FP8 weights in place without widening them in memory.
 */

/** Safetensors dtype strings the engine reads. */
export type DType = "F64" | "F32" | "F16" | "BF16" | "F8_E4M3";

export const DTYPE_BYTES: Readonly<Record<DType, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
};

export function isDType(s: string): s is DType {
  return Object.hasOwn(DTYPE_BYTES, s);
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** bfloat16 bit pattern -> float32 value, for all 65,536 patterns (exact: BF16 is the top half of F32). */
export const BF16_TO_F32: Float32Array = (() => {
  const table = new Float32Array(65536);
  const bits = new Uint32Array(table.buffer);
  for (let i = 0; i < 65536; i++) bits[i] = i << 16;
  return table;
})();

/** IEEE half bit pattern -> float32 value (exact). */
export const F16_TO_F32: Float32Array = (() => {
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const mant = h & 0x3ff;
    let v: number;
    if (exp === 0) v = mant * 2 ** -24;
    else if (exp === 31) v = mant === 0 ? Infinity : NaN;
    else v = (1 + mant / 1024) * 2 ** (exp - 15);
    table[h] = sign * v;
  }
  return table;
})();

/**
 * float8 e4m3fn bit pattern -> float32 value (exact). e4m3fn: bias 7, no infinities,
 * S.1111.111 is NaN, largest finite 448, subnormals m * 2^-9.
 */
export const F8_E4M3_TO_F32: Float32Array = (() => {
  const table = new Float32Array(256);
  for (let b = 0; b < 256; b++) {
    const sign = b & 0x80 ? -1 : 1;
    const exp = (b >> 3) & 0xf;
    const mant = b & 0x7;
    let v: number;
    if (exp === 0xf && mant === 0x7) v = NaN;
    else if (exp === 0) v = mant * 2 ** -9;
    else v = (1 + mant / 8) * 2 ** (exp - 7);
    table[b] = sign * v;
  }
  return table;
})();

/** Largest finite float8 e4m3fn value. */
export const F8_E4M3_MAX = 448;

/** float32 -> bfloat16 bit pattern, round to nearest even (as torch does). NaN stays NaN. */
export function f32ToBf16Bits(x: number): number {
  f32Scratch[0] = x;
  const u = u32Scratch[0]!;
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0) return ((u >>> 16) | 0x40) & 0xffff;
  const rounded = u + 0x7fff + ((u >>> 16) & 1);
  return (rounded >>> 16) & 0xffff;
}

/** Round a value through bfloat16 and back (the profile roundings of KV and combine use this). */
export function roundBf16(x: number): number {
  return BF16_TO_F32[f32ToBf16Bits(x)]!;
}

/** float32 -> IEEE half bit pattern, round to nearest even. */
export function f32ToF16Bits(x: number): number {
  f32Scratch[0] = x;
  const u = u32Scratch[0]!;
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let m = mant >>> shift;
    if (rest > half || (rest === half && (m & 1) === 1)) m++;
    return sign | m;
  }
  const rest = mant & 0x1fff;
  let m = mant >>> 13;
  if (rest > 0x1000 || (rest === 0x1000 && (m & 1) === 1)) {
    m++;
    if (m === 0x400) {
      m = 0;
      e++;
      if (e >= 31) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | m;
}

const f64Scratch = new Float64Array(1);
const f64Words = new Uint32Array(f64Scratch.buffer);
/** Which of a float64's two 32-bit words holds its sign and exponent on this host. */
const F64_HIGH_WORD = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1 ? 1 : 0;
/** 2^k for k in [-64, 64], at index k + 64: a minifloat's binade scale, exact. */
const POW2: Float64Array = Float64Array.from({ length: 129 }, (_, i) => 2 ** (i - 64));
const ROUNDING_MAGIC = 2 ** 52;

/**
 * The code of a float8-style format (sign bit, exponent, `mantBits` mantissa bits, smallest normal binade
 * 2^`minExp`, subnormals below it) nearest to `a`, ties to the even code, for 0 <= a below the format's largest
 * finite value; the caller handles the sign, NaN and saturation. `a` may be any float64 (the tile codecs round
 * x / scale from float64 once).
 *
 * Codes count up through the values: within a binade the mantissa, and a rounded mantissa of 2^mantBits is the
 * next binade's first code. So the code is the binade's index times 2^mantBits plus the mantissa rounded on
 * that binade's grid, and the lowest binade's grid (the subnormals') continues into the first normal one.
 */
export function minifloatCode(a: number, mantBits: number, minExp: number): number {
  f64Scratch[0] = a;
  const exp = ((f64Words[F64_HIGH_WORD]! >>> 20) & 0x7ff) - 1023; // zero and float64 subnormals: -1023
  const e = exp < minExp ? minExp : exp;
  // a on its binade's grid (scaled by a power of two, so exact), below 2^(mantBits + 1); adding 2^52 leaves no
  // fraction bits, so the addition itself rounds it to the nearest integer, ties to even, without a branch.
  const m = a * POW2[mantBits - e + 64]! + ROUNDING_MAGIC - ROUNDING_MAGIC;
  return ((e - minExp) << mantBits) + m;
}

/** e4m3fn: 3 mantissa bits, smallest normal 2^-6. */
const E4M3_MANT_BITS = 3;
const E4M3_MIN_EXP = -6;

/**
 * float -> float8 e4m3fn bit pattern, round to nearest even, saturating at +-448
 * (what torch's `.to(torch.float8_e4m3fn)` gives after the caller's clamp).
 */
export function f32ToF8E4M3Bits(x: number): number {
  if (Number.isNaN(x)) return 0x7f;
  const sign = x < 0 || (x === 0 && 1 / x < 0) ? 0x80 : 0;
  const a = Math.abs(x);
  if (a >= F8_E4M3_MAX) return sign | 0x7e;
  return sign | minifloatCode(a, E4M3_MANT_BITS, E4M3_MIN_EXP);
}
