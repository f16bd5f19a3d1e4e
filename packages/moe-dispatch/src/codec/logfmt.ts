/**
 * LogFMT-n (DeepSeek-V3 ISCA'25, "Insights into DeepSeek-V3", section on communication
 * compression): each 1x128 tile is sent as n-bit words, a sign bit over an (n-1)-bit code on a
 * log scale, plus the tile's log range as two float32 values.
 *
 * Per tile, over the nonzero magnitudes a = |x|:
 *   hi = fround(ln max a), or the next float32 below it when exp of that overflows float32 (the
 *        largest float32 magnitudes: fround(ln 3.4e38) rounds up past ln(FLT_MAX), and the top
 *        level would decode to Infinity)
 *   lo = fround(max(ln min a, ln max a - 32 ln 2))   -- the paper's range cap: at most 2^32
 *                                                       between the ends, about E5's span
 *        (and never above hi)
 *   C = 2^(n-1) - 1 codes for nonzero values; code 0 is zero.
 *   level(k) = fround(exp(lo + (k - 1) * step)), step = (hi - lo) / (C - 1), k = 1..C
 *   so code 1 is the tile's smallest magnitude and code C its largest.
 * Rounding: each magnitude takes the level NEAREST IN LINEAR SPACE among {0, level(1..C)}, as the
 * paper does (rounding in the log domain would round to the geometric midpoint, which biases
 * magnitudes upward). Exact ties go to the smaller magnitude. A magnitude below level(1), which
 * only the range cap produces, becomes 0 or level(1), whichever is nearer.
 * An all-zero tile stores (0, 0) and all codes 0; signs are kept, so -0 survives.
 *
 * lo and hi are rounded to float32 BEFORE the levels are built, so the encoder rounds against the
 * exact levels the decoder will produce; encode, decode and roundTrip all compute a level with the
 * same expression, so one process and the wire agree bit for bit (Math.exp is deterministic within
 * one Node/V8 version; all pods of a deployment run the same image).
 *
 * Words are bit-packed LSB-first, value i of the row-major matrix at bit i*n; a full tile is
 * exactly 16n bytes. Size: ceil(rows*cols*n/8) + 8 bytes per tile.
 */
import { InvalidArgumentError } from "@moela/core";
import { checkLength, checkMatrix, nonFinite, tilesPerRow } from "./shape.js";

export const LOGFMT_TILE = 128;
export const LOGFMT_MIN_BITS = 4;
export const LOGFMT_MAX_BITS = 10;
/** ln(2^32): the widest log range a tile may span before small magnitudes are clipped. */
const MAX_LOG_SPAN = 32 * Math.LN2;

export interface LogFmtTiles {
  /** Bits per value n, 4..10. */
  n: number;
  /** [ceil(rows * cols * n / 8)] packed words (sign << (n-1) | code), LSB-first. */
  data: Uint8Array;
  /** [rows * ceil(cols / tile) * 2] (lo, hi) natural-log range of each tile, row-major over (row, tile). */
  logRange: Float32Array;
}

function checkBits(n: number): void {
  if (!Number.isInteger(n) || n < LOGFMT_MIN_BITS || n > LOGFMT_MAX_BITS) {
    throw new InvalidArgumentError(`logfmt: n must be an integer in [${LOGFMT_MIN_BITS}, ${LOGFMT_MAX_BITS}], got ${n}`);
  }
}

export function logFmtBytes(rows: number, cols: number, n: number, tile = LOGFMT_TILE): number {
  return Math.ceil((rows * cols * n) / 8) + 8 * rows * tilesPerRow(cols, tile);
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** The largest float32 below the positive float32 v. */
function nextFloat32Down(v: number): number {
  f32Scratch[0] = v;
  u32Scratch[0] = u32Scratch[0]! - 1;
  return f32Scratch[0]!;
}

/** The magnitude of code k >= 1 for a tile with range (lo, hi); shared by every path. */
function level(lo: number, step: number, k: number): number {
  return Math.fround(Math.exp(lo + (k - 1) * step));
}

function stepOf(lo: number, hi: number, codes: number): number {
  return (hi - lo) / (codes - 1);
}

function putWord(data: Uint8Array, i: number, n: number, word: number): void {
  const bit = i * n;
  const byte = bit >>> 3;
  const v = word << (bit & 7);
  data[byte] = data[byte]! | (v & 0xff);
  if ((bit & 7) + n > 8) data[byte + 1] = data[byte + 1]! | ((v >>> 8) & 0xff);
  if ((bit & 7) + n > 16) data[byte + 2] = data[byte + 2]! | ((v >>> 16) & 0xff);
}

function getWord(data: Uint8Array, i: number, n: number): number {
  const bit = i * n;
  const byte = bit >>> 3;
  let v = data[byte]!;
  if ((bit & 7) + n > 8) v |= data[byte + 1]! << 8;
  if ((bit & 7) + n > 16) v |= data[byte + 2]! << 16;
  return (v >>> (bit & 7)) & ((1 << n) - 1);
}

/**
 * Encodes one tile: writes its (lo, hi), calls emit(col, word, decodedValue) for every value.
 * `levels` is scratch of at least C + 1 entries. One routine serves encode and roundTrip so the
 * two cannot drift apart.
 */
function encodeTile(
  x: ArrayLike<number>,
  row: number,
  base: number,
  c0: number,
  c1: number,
  n: number,
  levels: Float64Array,
  range: Float32Array,
  rangeAt: number,
  emit: (col: number, word: number, value: number) => void,
): void {
  const codes = (1 << (n - 1)) - 1;
  const signBit = 1 << (n - 1);
  let amax = 0;
  let amin = Infinity;
  for (let c = c0; c < c1; c++) {
    const a = Math.abs(x[base + c]!);
    if (!(a <= Number.MAX_VALUE)) nonFinite("logfmt", row, c, x[base + c]!);
    if (a > amax) amax = a;
    if (a !== 0 && a < amin) amin = a;
  }
  if (amax === 0) {
    range[rangeAt] = 0;
    range[rangeAt + 1] = 0;
    for (let c = c0; c < c1; c++) {
      const v = x[base + c]!;
      const neg = Object.is(v, -0);
      emit(c, neg ? signBit : 0, neg ? -0 : 0);
    }
    return;
  }
  const lnMax = Math.log(amax);
  let hi = Math.fround(lnMax);
  if (Math.fround(Math.exp(hi)) === Infinity) hi = nextFloat32Down(hi);
  const lo = Math.min(Math.fround(Math.max(Math.log(amin), lnMax - MAX_LOG_SPAN)), hi);
  range[rangeAt] = lo;
  range[rangeAt + 1] = hi;
  const step = stepOf(lo, hi, codes);
  levels[0] = 0;
  for (let k = 1; k <= codes; k++) levels[k] = level(lo, step, k);
  for (let c = c0; c < c1; c++) {
    const v = x[base + c]!;
    const a = Math.abs(v);
    let k: number;
    if (a <= levels[1]!) {
      k = a - 0 <= levels[1]! - a ? 0 : 1;
    } else {
      // Start from the log-domain estimate, then settle so levels[k] <= a < levels[k+1]; the
      // estimate can be off by one where exp/log rounding disagree with the level table.
      k = step > 0 ? Math.floor((Math.log(a) - lo) / step) + 1 : codes;
      if (k < 1) k = 1;
      if (k > codes) k = codes;
      while (k < codes && levels[k + 1]! <= a) k++;
      while (k > 1 && levels[k]! > a) k--;
      if (k < codes && levels[k + 1]! - a < a - levels[k]!) k++;
    }
    const neg = v < 0 || Object.is(v, -0);
    const mag = levels[k]!;
    emit(c, (neg ? signBit : 0) | k, neg ? -mag : mag);
  }
}

export function encodeLogFmt(x: ArrayLike<number>, rows: number, cols: number, n = 8, tile = LOGFMT_TILE): LogFmtTiles {
  checkBits(n);
  checkMatrix("logfmt", x, rows, cols, tile);
  const tpr = tilesPerRow(cols, tile);
  const data = new Uint8Array(Math.ceil((rows * cols * n) / 8));
  const logRange = new Float32Array(rows * tpr * 2);
  const levels = new Float64Array(1 << (n - 1));
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    const emit = (c: number, word: number): void => putWord(data, base + c, n, word);
    for (let t = 0; t < tpr; t++) {
      const c0 = t * tile;
      encodeTile(x, r, base, c0, Math.min(c0 + tile, cols), n, levels, logRange, 2 * (r * tpr + t), emit);
    }
  }
  return { n, data, logRange };
}

export function decodeLogFmtInto(enc: LogFmtTiles, rows: number, cols: number, out: Float32Array, tile = LOGFMT_TILE): Float32Array {
  const n = enc.n;
  checkBits(n);
  checkMatrix("logfmt", out, rows, cols, tile);
  const tpr = tilesPerRow(cols, tile);
  checkLength("logfmt", "data (bytes)", enc.data.length, Math.ceil((rows * cols * n) / 8));
  checkLength("logfmt", "logRange", enc.logRange.length, rows * tpr * 2);
  const codes = (1 << (n - 1)) - 1;
  const codeMask = codes;
  const signBit = 1 << (n - 1);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let t = 0; t < tpr; t++) {
      const lo = enc.logRange[2 * (r * tpr + t)]!;
      const hi = enc.logRange[2 * (r * tpr + t) + 1]!;
      const step = stepOf(lo, hi, codes);
      const c0 = t * tile;
      const c1 = Math.min(c0 + tile, cols);
      for (let c = c0; c < c1; c++) {
        const w = getWord(enc.data, base + c, n);
        const k = w & codeMask;
        const mag = k === 0 ? 0 : level(lo, step, k);
        out[base + c] = w & signBit ? -mag : mag;
      }
    }
  }
  return out;
}

export function decodeLogFmt(enc: LogFmtTiles, rows: number, cols: number, tile = LOGFMT_TILE): Float32Array {
  return decodeLogFmtInto(enc, rows, cols, new Float32Array(rows * cols), tile);
}

/** Same bits as decode(encode(x, n)); `out` may be `x` (the default). */
export function roundTripLogFmt(x: Float32Array, rows: number, cols: number, out: Float32Array = x, n = 8, tile = LOGFMT_TILE): Float32Array {
  checkBits(n);
  checkMatrix("logfmt", x, rows, cols, tile);
  checkMatrix("logfmt", out, rows, cols, tile);
  const tpr = tilesPerRow(cols, tile);
  const levels = new Float64Array(1 << (n - 1));
  const range = new Float32Array(2);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    const emit = (c: number, _word: number, value: number): void => {
      out[base + c] = value;
    };
    for (let t = 0; t < tpr; t++) {
      const c0 = t * tile;
      encodeTile(x, r, base, c0, Math.min(c0 + tile, cols), n, levels, range, 0, emit);
    }
  }
  return out;
}
