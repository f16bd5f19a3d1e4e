import { describe, expect, it } from "vitest";
import { DataLossError, InvalidArgumentError } from "@moela/core";
import {
  F8_E5M2_MAX,
  F8_E5M2_TO_F32,
  decodeFp8E5M2Tiles,
  encodeFp8E5M2Tiles,
  f32ToF8E5M2Bits,
  fp8E5M2TilesBytes,
  roundTripFp8E5M2Tiles,
} from "@moela/moe-dispatch";
import { bits, gaussianMatrix, rng } from "./random.js";

/** The nearest finite e5m2 code by brute force over the table, ties to the even code (the oracle). */
function nearestCode(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.min(Math.abs(x), F8_E5M2_MAX);
  let best = 0;
  for (let b = 1; b <= 0x7b; b++) {
    const d = Math.abs(F8_E5M2_TO_F32[b]! - a);
    const dBest = Math.abs(F8_E5M2_TO_F32[best]! - a);
    if (d < dBest || (d === dBest && b % 2 === 0)) best = b;
  }
  return sign | best;
}

describe("float8 e5m2 scalar format", () => {
  it.each([
    ["zero", 0x00, 0],
    ["negative zero", 0x80, -0],
    ["smallest subnormal 2^-16", 0x01, 2 ** -16],
    ["largest subnormal 3 * 2^-16", 0x03, 3 * 2 ** -16],
    ["smallest normal 2^-14", 0x04, 2 ** -14],
    ["one", 0x3c, 1],
    ["1.25", 0x3d, 1.25],
    ["-1.75", 0xbf, -1.75],
    ["largest finite 57344", 0x7b, 57344],
    ["+Inf", 0x7c, Infinity],
    ["-Inf", 0xfc, -Infinity],
  ])("decodes %s", (_, code, value) => {
    expect(Object.is(F8_E5M2_TO_F32[code], value)).toBe(true);
  });

  it("decodes S.11111.xx with xx != 0 as NaN", () => {
    for (const b of [0x7d, 0x7e, 0x7f, 0xfd, 0xfe, 0xff]) expect(Number.isNaN(F8_E5M2_TO_F32[b]!)).toBe(true);
  });

  it("encodes every finite code's own value to that code", () => {
    for (let b = 0; b <= 0x7b; b++) {
      expect(f32ToF8E5M2Bits(F8_E5M2_TO_F32[b]!)).toBe(b);
      expect(f32ToF8E5M2Bits(F8_E5M2_TO_F32[b | 0x80]!)).toBe(b | 0x80);
    }
  });

  it("rounds to the nearest value, ties to even, like a brute-force search (20,000 values over every binade)", () => {
    const rand = rng(55);
    for (let i = 0; i < 20_000; i++) {
      const x = (rand() < 0.5 ? -1 : 1) * 2 ** (-20 + 38 * rand());
      expect(f32ToF8E5M2Bits(x)).toBe(nearestCode(x));
    }
    // Every midpoint between codes, and the float64 values either side of it.
    const f = new Float64Array(1);
    const u = new BigUint64Array(f.buffer);
    for (let b = 0; b < 0x7b; b++) {
      f[0] = (F8_E5M2_TO_F32[b]! + F8_E5M2_TO_F32[b + 1]!) / 2;
      const mid = f[0];
      for (const step of [0n, 1n, -1n]) {
        u[0] = u[0]! + step;
        expect(f32ToF8E5M2Bits(f[0])).toBe(nearestCode(f[0]));
        f[0] = mid;
      }
    }
    // Exact midpoints: between 1 (0x3c) and 1.25 (0x3d) goes to 1; between 1.25 and 1.5 (0x3e) to 1.5.
    expect(f32ToF8E5M2Bits(1.125)).toBe(0x3c);
    expect(f32ToF8E5M2Bits(1.375)).toBe(0x3e);
    // Half the smallest subnormal is a tie between 0 and 2^-16: even code 0.
    expect(f32ToF8E5M2Bits(2 ** -17)).toBe(0x00);
    expect(f32ToF8E5M2Bits(-(2 ** -17))).toBe(0x80);
  });

  it("saturates at +-57344 instead of overflowing to Inf; NaN encodes as NaN", () => {
    expect(f32ToF8E5M2Bits(1e9)).toBe(0x7b);
    expect(f32ToF8E5M2Bits(-61440)).toBe(0xfb);
    expect(f32ToF8E5M2Bits(Infinity)).toBe(0x7b);
    expect(Number.isNaN(F8_E5M2_TO_F32[f32ToF8E5M2Bits(Number.NaN)]!)).toBe(true);
  });
});

describe("fp8-e5m2-tile codec (study-only: the wire has no F8_E5M2 dtype)", () => {
  it.each([
    [4, 128],
    [3, 300],
    [2, 7168],
  ])("[%i, %i]: roundTrip (into out and in place) gives the bits of decode(encode)", (rows, cols) => {
    const x = gaussianMatrix(rows * cols, rows, cols, (r) => 10 ** (2 * r - 2));
    x[1] = 0;
    x[2] = -0;
    const wire = decodeFp8E5M2Tiles(encodeFp8E5M2Tiles(x, rows, cols), rows, cols);
    expect(bits(roundTripFp8E5M2Tiles(x, rows, cols, new Float32Array(rows * cols)))).toEqual(bits(wire));
    expect(bits(roundTripFp8E5M2Tiles(x.slice(), rows, cols))).toEqual(bits(wire));
    expect(Object.is(wire[2], -0)).toBe(true);
  });

  it("per value: error <= 2^-3 relative (2 mantissa bits) plus the subnormal floor, and <= 2^-3 of the tile max", () => {
    const rows = 5;
    const cols = 300;
    const x = gaussianMatrix(9, rows, cols, (r) => 10 ** (3 * r - 6));
    const enc = encodeFp8E5M2Tiles(x, rows, cols);
    const y = decodeFp8E5M2Tiles(enc, rows, cols);
    const tpr = 3;
    for (let r = 0; r < rows; r++) {
      for (let t = 0; t < tpr; t++) {
        let amax = 0;
        const c1 = Math.min(cols, (t + 1) * 128);
        for (let c = t * 128; c < c1; c++) amax = Math.max(amax, Math.abs(x[r * cols + c]!));
        const scale = enc.scales[r * tpr + t]!;
        expect(scale).toBe(Math.fround(amax / 57344));
        for (let c = t * 128; c < c1; c++) {
          const v = x[r * cols + c]!;
          const err = Math.abs(y[r * cols + c]! - v);
          expect(err).toBeLessThanOrEqual(2 ** -3 * Math.abs(v) * (1 + 2 ** -20) + 2 ** -17 * scale);
          expect(err).toBeLessThanOrEqual(2 ** -3 * amax * (1 + 2 ** -20));
        }
      }
    }
  });

  it("an all-zero tile gets scale 1; a float32-subnormal tile gets the smallest float32 scale, never 0 (no 0/0 NaN)", () => {
    const x = new Float32Array(256);
    x[3] = -0;
    x[128] = 1e-45;
    x[129] = -3e-45;
    const enc = encodeFp8E5M2Tiles(x, 1, 256);
    expect(enc.scales[0]).toBe(1);
    expect(enc.scales[1]).toBe(2 ** -149);
    const y = decodeFp8E5M2Tiles(enc, 1, 256);
    expect(Object.is(y[3], -0)).toBe(true);
    expect(y[128]).toBe(Math.fround(1e-45));
    expect(y[129]).toBe(Math.fround(-3e-45));
    expect(y.every((v) => Number.isFinite(v))).toBe(true);
  });

  it("keeps the largest float32 finite", () => {
    const x = Float32Array.of(3.4028234663852886e38, -1e38, 1);
    const y = roundTripFp8E5M2Tiles(x, 1, 3, new Float32Array(3));
    expect(y[0]).toBe(x[0]);
    expect(Math.abs(y[1]! - x[1]!)).toBeLessThanOrEqual(2 ** -3 * 1e38);
    expect(y[2]).toBe(0); // 2^-128 of the tile max: far below e5m2's 2^-31 reach
  });

  it("counts 1 byte per value plus 4 bytes per 128 values", () => {
    expect(fp8E5M2TilesBytes(32, 7168)).toBe(32 * 7168 + 4 * 32 * 56);
    const enc = encodeFp8E5M2Tiles(gaussianMatrix(3, 2, 300), 2, 300);
    expect(enc.data.byteLength + enc.scales.byteLength).toBe(fp8E5M2TilesBytes(2, 300));
  });

  it("rejects NaN and Inf activations, naming the position, and truncated payloads", () => {
    const x = new Float32Array(256);
    x[130] = Number.NaN;
    expect(() => encodeFp8E5M2Tiles(x, 2, 128)).toThrow(/row 1, col 2/);
    x[130] = -Infinity;
    expect(() => roundTripFp8E5M2Tiles(x, 2, 128)).toThrow(InvalidArgumentError);
    const enc = encodeFp8E5M2Tiles(gaussianMatrix(2, 2, 256), 2, 256);
    expect(() => decodeFp8E5M2Tiles({ data: enc.data.subarray(1), scales: enc.scales }, 2, 256)).toThrow(DataLossError);
  });
});
