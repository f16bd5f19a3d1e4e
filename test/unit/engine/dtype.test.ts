import { describe, expect, it } from "vitest";
import { BF16_TO_F32, F16_TO_F32, F8_E4M3_MAX, F8_E4M3_TO_F32, Rng, f32ToBf16Bits, f32ToF16Bits, f32ToF8E4M3Bits } from "@moela/engine";

/** The nearest finite e4m3fn code by brute force over the table, ties to the even code (the oracle). */
function nearestE4M3(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.min(Math.abs(x), F8_E4M3_MAX);
  let best = 0;
  for (let b = 1; b <= 0x7e; b++) {
    const d = Math.abs(F8_E4M3_TO_F32[b]! - a);
    const dBest = Math.abs(F8_E4M3_TO_F32[best]! - a);
    if (d < dBest || (d === dBest && b % 2 === 0)) best = b;
  }
  return sign | best;
}

/** The float64 next to x (x > 0) towards +Inf (dir 1) or 0 (dir -1). */
function nextF64(x: number, dir: 1 | -1): number {
  const f = new Float64Array([x]);
  const u = new BigUint64Array(f.buffer);
  u[0] = u[0]! + BigInt(dir);
  return f[0]!;
}

describe("float8 e4m3fn", () => {
  it.each([
    [0x00, 0],
    [0x38, 1],
    [0x39, 1.125],
    [0x7e, 448],
    [0xfe, -448],
    [0x01, 2 ** -9],
    [0x08, 2 ** -6],
    [0x40, 2],
  ])("decodes 0x%s", (bits, value) => {
    expect(F8_E4M3_TO_F32[bits]).toBe(value);
  });
  it("decodes 0x7f as NaN", () => expect(Number.isNaN(F8_E4M3_TO_F32[0x7f])).toBe(true));
  it("round-trips every finite code", () => {
    for (let b = 0; b < 256; b++) {
      const v = F8_E4M3_TO_F32[b]!;
      if (Number.isNaN(v)) continue;
      expect(F8_E4M3_TO_F32[f32ToF8E4M3Bits(v)]).toBe(v);
    }
  });
  it.each([
    [1.0625, 1], // tie between 1 and 1.125 goes to the even mantissa
    [1.1875, 1.25], // tie between 1.125 and 1.25 goes to the even mantissa
    [1000, 448], // saturates
    [-1000, -448],
    [0.3, 0.3125],
  ])("encodes %d to %d", (x, expected) => {
    expect(F8_E4M3_TO_F32[f32ToF8E4M3Bits(x)]).toBe(expected);
  });
  it("rounds every midpoint between codes, and the float64 values either side of it, as a brute-force search does", () => {
    for (let b = 0; b < 0x7e; b++) {
      const mid = (F8_E4M3_TO_F32[b]! + F8_E4M3_TO_F32[b + 1]!) / 2;
      for (const x of [mid, nextF64(mid, 1), nextF64(mid, -1)]) {
        expect(f32ToF8E4M3Bits(x)).toBe(nearestE4M3(x));
        expect(f32ToF8E4M3Bits(-x)).toBe(nearestE4M3(-x));
      }
    }
    // Between codes 0 and 1 the tie goes to 0 (even); just above it, to 1.
    expect(f32ToF8E4M3Bits(2 ** -10)).toBe(0x00);
    expect(f32ToF8E4M3Bits(nextF64(2 ** -10, 1))).toBe(0x01);
  });
  it("rounds 50,000 values over every binade, float64 subnormals and zeros as a brute-force search does", () => {
    const rand = new Rng(4);
    for (let i = 0; i < 50_000; i++) {
      const x = (rand.next() < 0.5 ? -1 : 1) * 2 ** (-14 + 23.5 * rand.next());
      expect(f32ToF8E4M3Bits(x)).toBe(nearestE4M3(x));
    }
    for (const x of [0, -0, Number.MIN_VALUE, 2 ** -1060, -Number.MIN_VALUE, nextF64(F8_E4M3_MAX, -1), 464, Infinity]) {
      expect(f32ToF8E4M3Bits(x)).toBe(nearestE4M3(x));
    }
    expect(f32ToF8E4M3Bits(Number.NaN)).toBe(0x7f);
  });
});

describe("bfloat16 and half", () => {
  it("bf16 rounds to nearest even", () => {
    expect(BF16_TO_F32[f32ToBf16Bits(1 + 2 ** -8)]).toBe(1); // tie -> even
    expect(BF16_TO_F32[f32ToBf16Bits(1 + 3 * 2 ** -8)]).toBe(1 + 2 ** -6); // tie -> even (up)
    expect(BF16_TO_F32[f32ToBf16Bits(-2.703125)]).toBe(-2.703125);
  });
  it("half encodes normals, subnormals and overflow", () => {
    expect(F16_TO_F32[f32ToF16Bits(65504)]).toBe(65504);
    expect(F16_TO_F32[f32ToF16Bits(1e6)]).toBe(Infinity);
    expect(F16_TO_F32[f32ToF16Bits(2 ** -24)]).toBe(2 ** -24);
    expect(F16_TO_F32[f32ToF16Bits(0.1)]).toBeCloseTo(0.0999755859375, 12);
  });
});
