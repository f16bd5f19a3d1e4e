import { describe, expect, it } from "vitest";
import { DataLossError } from "@moela/core";
import { BF16_TO_F32 } from "@moela/engine";
import { bf16Bytes, decodeBf16, encodeBf16, roundTripBf16 } from "@moela/moe-dispatch";
import { bits, gaussianMatrix, rng } from "./random.js";

describe("bf16 codec", () => {
  it("is exact on every representable non-NaN value", () => {
    const vals: number[] = [];
    for (let b = 0; b < 65536; b++) if (!Number.isNaN(BF16_TO_F32[b]!)) vals.push(BF16_TO_F32[b]!);
    const x = Float32Array.from(vals);
    const y = decodeBf16(encodeBf16(x, 1, x.length), 1, x.length);
    expect(bits(y)).toEqual(bits(x));
  });

  it.each([
    ["tie rounds to even (down)", 1 + 2 ** -8, 1],
    ["tie rounds to even (up)", 1 + 3 * 2 ** -8, 1 + 2 ** -6],
    ["above the tie rounds up", 1 + 2 ** -8 + 2 ** -20, 1 + 2 ** -7],
    ["negative values round symmetrically", -(1 + 3 * 2 ** -8), -(1 + 2 ** -6)],
  ])("%s", (_, input, want) => {
    const y = decodeBf16(encodeBf16(Float32Array.of(input), 1, 1), 1, 1);
    expect(y[0]).toBe(want);
  });

  it("writes little-endian bytes whatever the host", () => {
    expect([...encodeBf16(Float32Array.of(1, -2), 1, 2).data]).toEqual([0x80, 0x3f, 0x00, 0xc0]);
  });

  it("roundTrip (in place and into out) gives the same bits as decode(encode), NaN and Inf included", () => {
    const x = gaussianMatrix(3, 7, 300, (r) => 10 ** (r - 3));
    x[11] = Number.NaN;
    x[12] = -Infinity;
    x[13] = -0;
    const wire = decodeBf16(encodeBf16(x, 7, 300), 7, 300);
    expect(bits(roundTripBf16(x, 7, 300, new Float32Array(x.length)))).toEqual(bits(wire));
    expect(bits(roundTripBf16(x.slice(), 7, 300))).toEqual(bits(wire));
    expect(Number.isNaN(wire[11])).toBe(true);
    expect(wire[12]).toBe(-Infinity);
  });

  it("relative error is at most 2^-8 for normal values", () => {
    const rand = rng(9);
    const x = new Float32Array(4096).map(() => (rand() - 0.5) * 10 ** (rand() * 20 - 10));
    const y = roundTripBf16(x, 1, x.length, new Float32Array(x.length));
    for (let i = 0; i < x.length; i++) expect(Math.abs(y[i]! - x[i]!)).toBeLessThanOrEqual(2 ** -8 * Math.abs(x[i]!));
  });

  it("counts 2 bytes per value and rejects a short payload", () => {
    expect(bf16Bytes(32, 7168)).toBe(2 * 32 * 7168);
    const enc = encodeBf16(new Float32Array(10), 2, 5);
    expect(enc.data.length).toBe(bf16Bytes(2, 5));
    expect(() => decodeBf16({ data: enc.data.subarray(2) }, 2, 5)).toThrow(DataLossError);
  });
});
