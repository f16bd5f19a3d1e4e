import { describe, expect, it } from "vitest";
import { DataLossError, InvalidArgumentError } from "@moela/core";
import { F8_E4M3_TO_F32 } from "@moela/engine";
import { nativeKernels } from "@moela/engine-native";
import {
  FP8_E4M3_FORMAT,
  decodeFp8Tiles,
  encodeFloat8Tiles,
  encodeFp8Tiles,
  fp8TilesBytes,
  roundTripFloat8Tiles,
  roundTripFp8Tiles,
} from "@moela/moe-dispatch";
import { bits, gaussianMatrix } from "./random.js";

const SHAPES: Array<[string, number, number]> = [
  ["one full tile", 4, 128],
  ["two full tiles", 3, 256],
  ["partial last tile", 2, 300],
  ["narrower than a tile", 5, 5],
  ["hidden 7168 (V3)", 2, 7168],
];

describe("fp8-tile codec", () => {
  it.each(SHAPES)("%s: per-element error <= 2^-4 relative (plus the subnormal floor) and <= 2^-4 of the tile max", (_, rows, cols) => {
    // Rows at very different magnitudes: each tile must scale on its own.
    const x = gaussianMatrix(rows * 1000 + cols, rows, cols, (r) => 10 ** (r - 2));
    const enc = encodeFp8Tiles(x, rows, cols);
    const y = decodeFp8Tiles(enc, rows, cols);
    const tpr = Math.ceil(cols / 128);
    expect(enc.data.length).toBe(rows * cols);
    expect(enc.scales.length).toBe(rows * tpr);
    for (let r = 0; r < rows; r++) {
      for (let t = 0; t < tpr; t++) {
        const c0 = t * 128;
        const c1 = Math.min(c0 + 128, cols);
        let amax = 0;
        for (let c = c0; c < c1; c++) amax = Math.max(amax, Math.abs(x[r * cols + c]!));
        const scale = enc.scales[r * tpr + t]!;
        expect(scale).toBe(Math.fround(amax / 448));
        for (let c = c0; c < c1; c++) {
          const err = Math.abs(x[r * cols + c]! - y[r * cols + c]!);
          // 3 mantissa bits: half an ulp is <= 2^-4 of the value; below 2^-6 (scaled) e4m3 is
          // subnormal with a fixed ulp of 2^-9, so half of that times the scale is the floor.
          expect(err).toBeLessThanOrEqual(2 ** -4 * Math.abs(x[r * cols + c]!) * (1 + 2 ** -20) + 2 ** -10 * scale);
          expect(err).toBeLessThanOrEqual(2 ** -4 * amax);
        }
      }
    }
  });

  it.each(SHAPES)("%s: roundTrip in place gives the same bits as decode(encode)", (_, rows, cols) => {
    const x = gaussianMatrix(7 + cols, rows, cols, (r) => 3 ** r);
    const wire = decodeFp8Tiles(encodeFp8Tiles(x, rows, cols), rows, cols);
    const separate = roundTripFp8Tiles(x, rows, cols, new Float32Array(rows * cols));
    const inPlace = roundTripFp8Tiles(x.slice(), rows, cols);
    expect(bits(separate)).toEqual(bits(wire));
    expect(bits(inPlace)).toEqual(bits(wire));
  });

  it("scales the partial last tile from its own values only", () => {
    const rows = 1;
    const cols = 300; // tiles of 128, 128, 44
    const x = new Float32Array(cols);
    for (let c = 0; c < 256; c++) x[c] = 1000 * Math.sin(c + 1);
    for (let c = 256; c < cols; c++) x[c] = 1e-3 * Math.cos(c);
    const enc = encodeFp8Tiles(x, rows, cols);
    let amax = 0;
    for (let c = 256; c < cols; c++) amax = Math.max(amax, Math.abs(x[c]!));
    expect(enc.scales[2]).toBe(Math.fround(amax / 448));
    const y = decodeFp8Tiles(enc, rows, cols);
    for (let c = 256; c < cols; c++) expect(Math.abs(y[c]! - x[c]!)).toBeLessThanOrEqual(2 ** -4 * amax);
  });

  it("an all-zero tile gets scale 1 and decodes to zeros with their signs", () => {
    const x = new Float32Array(256);
    for (let c = 128; c < 256; c++) x[c] = c - 200;
    x[5] = -0;
    const enc = encodeFp8Tiles(x, 1, 256);
    expect(enc.scales[0]).toBe(1);
    const y = decodeFp8Tiles(enc, 1, 256);
    for (let c = 0; c < 128; c++) expect(y[c] === 0).toBe(true);
    expect(Object.is(y[5], -0)).toBe(true);
    expect(Object.is(y[6], 0)).toBe(true);
  });

  it("the tile max encodes as +-448 (saturating, never NaN)", () => {
    const x = new Float32Array(128).map((_, i) => (i === 17 ? -3.3 : 0.01 * i));
    const enc = encodeFp8Tiles(x, 1, 128);
    expect(F8_E4M3_TO_F32[enc.data[17]!]).toBe(-448);
    for (const b of enc.data) expect(Number.isNaN(F8_E4M3_TO_F32[b]!)).toBe(false);
  });

  it("counts 1 byte per value plus 4 bytes per 128 values", () => {
    expect(fp8TilesBytes(32, 7168)).toBe(32 * 7168 + 4 * 32 * 56);
    expect(fp8TilesBytes(1, 300)).toBe(300 + 4 * 3);
    const enc = encodeFp8Tiles(gaussianMatrix(1, 32, 7168), 32, 7168);
    expect(enc.data.byteLength + enc.scales.byteLength).toBe(fp8TilesBytes(32, 7168));
  });

  it("rejects non-finite activations, naming the position", () => {
    const x = new Float32Array(256);
    x[130] = Number.NaN;
    expect(() => encodeFp8Tiles(x, 2, 128)).toThrow(InvalidArgumentError);
    expect(() => encodeFp8Tiles(x, 2, 128)).toThrow(/row 1, col 2/);
    x[130] = Infinity;
    expect(() => roundTripFp8Tiles(x, 2, 128)).toThrow(InvalidArgumentError);
  });

  it("rejects a truncated payload as data loss", () => {
    const enc = encodeFp8Tiles(gaussianMatrix(2, 2, 256), 2, 256);
    expect(() => decodeFp8Tiles({ data: enc.data.subarray(1), scales: enc.scales }, 2, 256)).toThrow(DataLossError);
    expect(() => decodeFp8Tiles({ data: enc.data, scales: enc.scales.subarray(1) }, 2, 256)).toThrow(DataLossError);
  });
});

/** Matrices that reach every branch of the encoder: a tile of float32 subnormals, -0, saturation, ties. */
function awkwardMatrix(rows: number, cols: number): Float32Array {
  const x = gaussianMatrix(9, rows, cols, (r) => 2 ** (3 * r - 6));
  for (let c = 0; c < Math.min(cols, 128); c++) x[c] = (c - 64) * 2 ** -149; // float32 subnormals, amax / 448 underflows
  if (rows > 1) {
    x[cols] = -0;
    x[cols + 1] = 1.0625; // an e4m3 tie once scaled: the tile's max below is 448
    x[cols + 2] = 448;
    x[cols + 3] = -447.99;
  }
  return x;
}

describe.skipIf(typeof nativeKernels?.fp8Tiles !== "function")("fp8-tile codec in the addon", () => {
  it.each([...SHAPES, ["awkward tiles", 3, 300] as [string, number, number]])(
    "%s: the same codes, scales and round trip as float8-tiles.ts",
    (name, rows, cols) => {
      for (const tile of [128, 32, 7]) {
        const x = name === "awkward tiles" ? awkwardMatrix(rows, cols) : gaussianMatrix(rows + cols, rows, cols, (r) => 2 ** (r - 1));
        const native = encodeFp8Tiles(x, rows, cols, tile);
        const ts = encodeFloat8Tiles(FP8_E4M3_FORMAT, x, rows, cols, tile);
        expect(native.data).toEqual(ts.data);
        expect(bits(native.scales)).toEqual(bits(ts.scales));
        const want = roundTripFloat8Tiles(FP8_E4M3_FORMAT, x, rows, cols, new Float32Array(rows * cols), tile);
        expect(bits(roundTripFp8Tiles(x, rows, cols, new Float32Array(rows * cols), tile))).toEqual(bits(want));
        expect(bits(roundTripFp8Tiles(x.slice(), rows, cols, undefined, tile))).toEqual(bits(want));
      }
    },
  );

  it("stops at the first non-finite value and names it as the TypeScript does", () => {
    const x = gaussianMatrix(3, 3, 256);
    x[2 * 256 + 130] = -Infinity;
    x[2 * 256 + 131] = Number.NaN;
    expect(() => encodeFp8Tiles(x, 3, 256)).toThrow(/row 2, col 130/);
    expect(() => roundTripFp8Tiles(x, 3, 256, new Float32Array(3 * 256))).toThrow(/non-finite activation -Infinity at row 2, col 130/);
  });

  it("refuses arrays too short for the shape", () => {
    const fp8Tiles = nativeKernels!.fp8Tiles.bind(nativeKernels);
    const x = new Float32Array(256);
    expect(() => fp8Tiles(x, 1, 2, 128, 128, new Uint8Array(256), new Float32Array(2), null)).toThrow(RangeError);
    expect(() => fp8Tiles(x, 0, 2, 128, 128, new Uint8Array(255), new Float32Array(2), null)).toThrow(RangeError);
    expect(() => fp8Tiles(x, 0, 2, 128, 128, new Uint8Array(256), new Float32Array(1), null)).toThrow(RangeError);
    expect(() => fp8Tiles(x, 0, 2, 128, 128, null, null, new Float32Array(255))).toThrow(RangeError);
    expect(fp8Tiles(x, 0, 2, 128, 128, null, null, x)).toBe(-1);
  });
});
