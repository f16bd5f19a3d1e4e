import { describe, expect, it } from "vitest";
import { BF16_TO_F32, F16_TO_F32, F8_E4M3_TO_F32, f32ToBf16Bits, f32ToF16Bits, f32ToF8E4M3Bits } from "@moela/engine";

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
