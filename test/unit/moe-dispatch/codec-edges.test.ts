/**
 * Every codec the study compares (F32, BF16, FP8 E4M3 and E5M2 per 1x128 tile, LogFMT-6..10), one
 * table: round trips equal the wire path bit for bit, per-value error bounds, and the edges (zeros,
 * float32-subnormal tiles, the largest float32 values, all-equal tiles, signs, NaN/Inf).
 */
import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@moela/core";
import {
  DISPATCH_CODECS,
  STUDY_CODECS,
  decodeFp8E5M2Tiles,
  decodeLogFmt,
  encodeFp8E5M2Tiles,
  encodeLogFmt,
  fp8E5M2TilesBytes,
  logFmtBytes,
  type StudyCodec,
} from "@moela/moe-dispatch";
import { bits, gaussianMatrix, rng } from "./random.js";

const NAMES = STUDY_CODECS.map((c) => c.name);
const codecOf = (name: string): StudyCodec => STUDY_CODECS.find((c) => c.name === name)!;
const logFmtBits = (name: string): number | null => (/^logfmt(\d+)$/.exec(name) ? Number(/^logfmt(\d+)$/.exec(name)![1]) : null);
const FLT_MAX = 3.4028234663852886e38;

/** The codec's decode(encode(x)) through its wire form (registered codec, or the study-only encoders). */
function wireRoundTrip(name: string, x: Float32Array, rows: number, cols: number): Float32Array {
  const c = codecOf(name);
  if (c.dispatchCodec !== null) {
    const d = DISPATCH_CODECS[c.dispatchCodec];
    return d.decode(d.encode(x, rows, cols));
  }
  if (name === "fp8-e5m2-tile") return decodeFp8E5M2Tiles(encodeFp8E5M2Tiles(x, rows, cols), rows, cols);
  const n = logFmtBits(name)!;
  return decodeLogFmt(encodeLogFmt(x, rows, cols, n), rows, cols);
}

/** Exact wire bytes of a [rows, cols] matrix. */
function wireBytes(name: string, rows: number, cols: number): number {
  const c = codecOf(name);
  if (c.dispatchCodec !== null) return DISPATCH_CODECS[c.dispatchCodec].encodedBytes(rows, cols);
  if (name === "fp8-e5m2-tile") return fp8E5M2TilesBytes(rows, cols);
  return logFmtBytes(rows, cols, logFmtBits(name)!);
}

/**
 * The most a value a (> 0) of a tile with max M and smallest nonzero m may move, as each format
 * promises for values in float32's normal range.
 */
function bound(name: string, a: number, M: number, m: number): number {
  const slack = 1 + 2 ** -20;
  switch (name) {
    case "f32":
      return 0;
    case "bf16":
      // 7 stored mantissa bits: half an ulp is at most 2^-8 of the value; below 2^-126 the ulp is 2^-133.
      return 2 ** -8 * a + 2 ** -134;
    case "fp8-tile":
      return Math.min(2 ** -4 * a * slack + 2 ** -10 * (M / 448) * slack, 2 ** -4 * M * slack);
    case "fp8-e5m2-tile":
      return Math.min(2 ** -3 * a * slack + 2 ** -17 * (M / 57344) * slack, 2 ** -3 * M * slack);
    default: {
      // LogFMT-n: levels a factor r = exp(step) apart over [max(m, M 2^-32), M]; nearest in linear
      // space is within a (r - 1) / 2; below the range cap a value goes to 0 or the lowest level.
      const n = logFmtBits(name)!;
      const span = Math.min(Math.log(M / m), 32 * Math.LN2);
      const r = Math.exp(span / (2 ** (n - 1) - 2));
      const floor = M * 2 ** -32;
      // 1e-5 relative: lo and hi travel as float32 logs, which moves every level by up to |ln| 2^-24.
      return a >= floor ? (a * (r - 1)) / 2 + 1e-5 * a : floor * (1 + 1e-5);
    }
  }
}

function tiles(cols: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let c0 = 0; c0 < cols; c0 += 128) out.push([c0, Math.min(c0 + 128, cols)]);
  return out;
}

/** Asserts every value of y is within bound() of x, tile by tile. */
function expectWithinBounds(name: string, x: Float32Array, y: Float32Array, rows: number, cols: number): void {
  for (let r = 0; r < rows; r++) {
    for (const [c0, c1] of tiles(cols)) {
      let M = 0;
      let m = Infinity;
      for (let c = c0; c < c1; c++) {
        const a = Math.abs(x[r * cols + c]!);
        M = Math.max(M, a);
        if (a > 0) m = Math.min(m, a);
      }
      for (let c = c0; c < c1; c++) {
        const i = r * cols + c;
        const err = Math.abs(y[i]! - x[i]!);
        const b = x[i] === 0 ? 0 : bound(name, Math.abs(x[i]!), M, m);
        if (!(err <= b)) expect.fail(`${name}: x[${r}, ${c}] = ${x[i]} decoded as ${y[i]}, error ${err} > bound ${b} (tile max ${M}, min ${m})`);
      }
    }
  }
}

describe.each(NAMES)("codec %s", (name) => {
  const codec = codecOf(name);
  const rt = (x: Float32Array, rows = 1, cols = x.length): Float32Array => codec.roundTrip(x, rows, cols, new Float32Array(rows * cols));

  it("roundTrip gives the bits of the wire path (encode, decode), into out and in place", () => {
    const rows = 3;
    const cols = 300; // a partial last tile
    const x = gaussianMatrix(17, rows, cols, (r) => 10 ** (3 * r - 3));
    x[5] = 0;
    x[6] = -0;
    const wire = wireRoundTrip(name, x, rows, cols);
    expect(bits(rt(x, rows, cols))).toEqual(bits(wire));
    expect(bits(codec.roundTrip(x.slice(), rows, cols, x.slice()))).toEqual(bits(wire));
  });

  it("every value within the format's error bound: rows from 1e-20 to 1e20, gaussian and heavy-tailed", () => {
    const rows = 6;
    const cols = 384;
    const x = gaussianMatrix(3, rows, cols, (r) => 10 ** (8 * r - 20));
    // Heavy tails in the last two rows: a few values 1e3 and 1e6 times the rest.
    const rand = rng(4);
    for (let c = 0; c < cols; c += 37) x[4 * cols + c] = x[4 * cols + c]! * 1e3 * (rand() + 0.5);
    for (let c = 0; c < cols; c += 53) x[5 * cols + c] = x[5 * cols + c]! * 1e6 * (rand() + 0.5);
    expectWithinBounds(name, x, rt(x, rows, cols), rows, cols);
  });

  it("bytesPerValue is the exact wire size per value", () => {
    for (const cols of [128, 7168, 1024]) expect(codec.bytesPerValue(cols) * 4 * cols).toBeCloseTo(wireBytes(name, 4, cols), 9);
  });

  it("zeros stay zero and keep their sign, in an all-zero tile and among other values", () => {
    const x = new Float32Array(256);
    x[1] = -0;
    x[128] = 1.5;
    x[129] = -0;
    x[130] = 0;
    x[131] = -2;
    const y = rt(x);
    for (const i of [0, 2, 130]) expect(Object.is(y[i], 0)).toBe(true);
    for (const i of [1, 129]) expect(Object.is(y[i], -0)).toBe(true);
  });

  it("signs are kept: a decoded value is 0 or has its input's sign", () => {
    const x = gaussianMatrix(8, 2, 256);
    const y = rt(x, 2, 256);
    for (let i = 0; i < x.length; i++) if (y[i] !== 0) expect(Math.sign(y[i]!)).toBe(Math.sign(x[i]!));
    // The decode is odd: -x decodes to -y exactly.
    const yNeg = rt(
      x.map((v) => -v),
      2,
      256,
    );
    for (let i = 0; i < x.length; i++) expect(Object.is(yNeg[i], -y[i]!)).toBe(true);
  });

  it("a tile of float32-subnormal values (down to 1.4e-45) decodes finite, signed, within its max", () => {
    const x = Float32Array.from({ length: 128 }, (_, i) => (i % 3 === 0 ? 0 : (i % 2 ? -1 : 1) * i * 1.401298464324817e-45));
    const M = Math.max(...x.map(Math.abs));
    const y = rt(x);
    for (let i = 0; i < x.length; i++) {
      expect(Number.isFinite(y[i]!)).toBe(true);
      if (y[i] !== 0) expect(Math.sign(y[i]!)).toBe(Math.sign(x[i]!));
      expect(Math.abs(y[i]! - x[i]!)).toBeLessThanOrEqual(M);
    }
    const iMax = x.findIndex((v) => Math.abs(v) === M);
    if (name === "bf16") {
      // BF16 has no scale: its smallest subnormal is 2^-133 ~ 9.2e-41, so the whole tile flushes to zero.
      expect(y.every((v) => v === 0)).toBe(true);
    } else {
      // Scaled formats keep the tile max to within an eighth (E5M2's 2 mantissa bits are the coarsest).
      expect(Math.abs(y[iMax]! - x[iMax]!)).toBeLessThanOrEqual(M / 8);
    }
  });

  it("small normal values (a tile max of 1e-36, where FP8 scales are float32-subnormal) stay within the bound", () => {
    const x = gaussianMatrix(21, 1, 128).map((v) => v * 4e-37);
    expectWithinBounds(name, x, rt(x), 1, 128);
  });

  it("the largest float32 values decode finite and within the bound (BF16: FLT_MAX rounds to Inf, as IEEE does)", () => {
    const x = Float32Array.of(FLT_MAX, -FLT_MAX, 1e38, -3e37, 1e36, 2.5e37, FLT_MAX / 3, 7e35);
    const y = rt(x);
    if (name === "bf16") {
      expect(y[0]).toBe(Infinity);
      expect(y[1]).toBe(-Infinity);
      expectWithinBounds(name, x.subarray(2), y.subarray(2), 1, x.length - 2);
    } else {
      expect(y.every((v) => Number.isFinite(v))).toBe(true);
      expectWithinBounds(name, x, y, 1, x.length);
    }
  });

  it("an all-equal tile decodes to (almost) that value", () => {
    for (const v of [0.3, -2.5, 1e-20, 6e30]) {
      const x = new Float32Array(128).fill(v);
      const y = rt(x);
      for (const got of y) expect(Math.abs(got - x[0]!)).toBeLessThanOrEqual((name === "bf16" ? 2 ** -8 : 1e-5) * Math.abs(x[0]!));
    }
  });

  const rejects = codec.name !== "f32" && codec.name !== "bf16";
  it(rejects ? "rejects NaN and +-Inf, naming the position" : "passes NaN and +-Inf through (the format has them)", () => {
    for (const bad of [Number.NaN, Infinity, -Infinity]) {
      const x = new Float32Array(256);
      x[200] = bad;
      if (rejects) {
        expect(() => rt(x, 2, 128)).toThrow(InvalidArgumentError);
        expect(() => rt(x, 2, 128)).toThrow(/row 1, col 72/);
      } else {
        expect(Object.is(rt(x, 2, 128)[200], bad)).toBe(true);
      }
    }
  });
});
