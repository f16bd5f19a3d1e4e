import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@moela/core";
import { F8_E4M3_TO_F32, dequantFp8Block, expectedScaleShape, quantizeFp8Block, scaleInvName } from "@moela/engine";

describe("expectedScaleShape", () => {
  it.each([
    [130, 129, 128, 128, [2, 2]],
    [128, 128, 128, 128, [1, 1]],
    [80, 256, 128, 128, [1, 2]],
    [7168, 2048, 128, 128, [56, 16]],
    [5, 5, 2, 3, [3, 2]],
    [0, 5, 128, 128, [0, 1]],
  ])("[%i, %i] in %ix%i blocks -> %j", (r, c, br, bc, want) => {
    expect(expectedScaleShape(r, c, br, bc)).toEqual(want);
  });
  it("rejects a zero block size", () => expect(() => expectedScaleShape(4, 4, 0, 4)).toThrow(InvalidArgumentError));
  it("names the scale tensor like the release", () => expect(scaleInvName("a.weight")).toBe("a.weight_scale_inv"));
});

describe("dequantFp8Block", () => {
  // A 130 x 129 weight has a 2 x 2 grid; the right and bottom blocks are 2 columns / 1 column wide.
  const rows = 130;
  const cols = 129;
  const scale = Float32Array.from([0.5, 2, 3, 0.25]); // [[0.5, 2], [3, 0.25]]
  const data = new Uint8Array(rows * cols).fill(0x38); // 0x38 = 1.0 everywhere
  const set = (r: number, c: number, b: number): void => void (data[r * cols + c] = b);
  set(0, 0, 0x40); // 2.0
  set(0, 127, 0xb9); // -1.125
  set(0, 128, 0x44); // 3.0, first column of the partial right block
  set(127, 128, 0x30); // 0.5
  set(128, 0, 0xc0); // -2.0, first row of the partial bottom block
  set(129, 127, 0x7e); // 448
  set(129, 128, 0x01); // smallest subnormal 2^-9, bottom-right corner block
  const out = dequantFp8Block(data, scale, rows, cols);

  it.each([
    [0, 0, 2 * 0.5],
    [0, 1, 1 * 0.5],
    [0, 127, -1.125 * 0.5],
    [0, 128, 3 * 2],
    [127, 128, 0.5 * 2],
    [127, 127, 1 * 0.5],
    [128, 0, -2 * 3],
    [128, 127, 1 * 3],
    [129, 127, 448 * 3],
    [128, 128, 1 * 0.25],
    [129, 128, 2 ** -9 * 0.25],
  ])("element [%i, %i] = %f", (r, c, v) => {
    expect(out[r * cols + c]).toBe(v);
  });

  it("multiplies in float32 exactly (one rounding of the exact product)", () => {
    const s = Float32Array.from([Math.fround(0.1)]);
    const d = Uint8Array.from([0x3f, 0x7e, 0x01, 0xb3]);
    const o = dequantFp8Block(d, s, 2, 2);
    for (let i = 0; i < 4; i++) expect(o[i]).toBe(Math.fround(F8_E4M3_TO_F32[d[i]!]! * s[0]!));
  });

  it("rejects data or scales of the wrong size", () => {
    expect(() => dequantFp8Block(new Uint8Array(10), scale, rows, cols)).toThrow(InvalidArgumentError);
    expect(() => dequantFp8Block(data, new Float32Array(2), rows, cols)).toThrow(/needs \[2, 2\]/);
  });
});

describe("quantizeFp8Block", () => {
  it("matches hand-computed DeepSeek quantization of a block", () => {
    // amax 2 -> scale 2/448; values become 224, -112, 56, 448 = 1.75 * 2^(7,6,5,8).
    const { data, scaleInv } = quantizeFp8Block(Float32Array.from([1, -0.5, 0.25, 2]), 2, 2, 2, 2);
    expect(scaleInv[0]).toBe(Math.fround(2 / 448));
    expect(Array.from(data)).toEqual([0x76, 0xee, 0x66, 0x7e]);
  });

  it("gives a zero block scale 1 and zero codes", () => {
    const w = new Float32Array(4 * 4);
    w[2] = 3; // only the top-right 2x2 block is non-zero
    const { data, scaleInv } = quantizeFp8Block(w, 4, 4, 2, 2);
    expect(Array.from(scaleInv)).toEqual([1, Math.fround(3 / 448), 1, 1]);
    expect(data[2]).toBe(0x7e);
    expect(
      Array.from(dequantFp8Block(data, scaleInv, 4, 4, 2, 2))
        .filter((_v, i) => i !== 2)
        .every((v) => v === 0),
    ).toBe(true);
  });

  it("round trips within half an e4m3 step of each block's amax, with partial edge blocks", () => {
    const rows = 300;
    const cols = 259;
    let s = 12345;
    const rand = (): number => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
    // Blocks of very different magnitudes, so a wrong block index would blow the bound.
    const w = Float32Array.from({ length: rows * cols }, (_, i) => {
      const r = Math.floor(i / cols);
      const c = i % cols;
      return rand() * 10 ** (((Math.floor(r / 128) + 2 * Math.floor(c / 128)) % 5) - 2);
    });
    const { data, scaleInv } = quantizeFp8Block(w, rows, cols);
    expect(scaleInv.length).toBe(3 * 3);
    const back = dequantFp8Block(data, scaleInv, rows, cols);
    let worst = 0; // largest error / allowed error
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const sc = scaleInv[Math.floor(r / 128) * 3 + Math.floor(c / 128)]!;
        const amax = sc * 448;
        const err = Math.abs(back[r * cols + c]! - w[r * cols + c]!);
        // relative step of e4m3 normals is 2^-3, so the rounding error is <= 2^-4 |w| <= 2^-4 amax;
        // subnormals (below 2^-6 * scale) are spaced 2^-9 * scale apart.
        worst = Math.max(worst, err / Math.max(amax * 2 ** -4, sc * 2 ** -10));
      }
    }
    expect(worst).toBeLessThanOrEqual(1 + 1e-6);
    expect(worst).toBeGreaterThan(0.5); // the bound is tight, not vacuous
  });

  it("refuses non-finite weights", () => {
    expect(() => quantizeFp8Block(Float32Array.from([1, NaN]), 1, 2)).toThrow(/non-finite/);
  });
});
