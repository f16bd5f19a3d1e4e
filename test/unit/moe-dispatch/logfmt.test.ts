import { describe, expect, it } from "vitest";
import { DataLossError, InvalidArgumentError } from "@moela/core";
import { decodeLogFmt, encodeLogFmt, logFmtBytes, roundTripLogFmt } from "@moela/moe-dispatch";
import { bits, gaussianMatrix } from "./random.js";

const BITS = [4, 5, 6, 7, 8, 9, 10];

describe("LogFMT-n codec", () => {
  it.each(BITS)("n=%i: roundTrip (in place and into out) gives the same bits as decode(encode)", (n) => {
    const rows = 3;
    const cols = 37 * 7; // 259: a partial tile, and rows*cols*n not a multiple of 8 for odd n
    const x = gaussianMatrix(n, rows, cols, (r) => 10 ** (r - 1));
    x[3] = 0;
    x[4] = -0;
    const wire = decodeLogFmt(encodeLogFmt(x, rows, cols, n), rows, cols);
    expect(bits(roundTripLogFmt(x, rows, cols, new Float32Array(x.length), n))).toEqual(bits(wire));
    expect(bits(roundTripLogFmt(x.slice(), rows, cols, undefined, n))).toEqual(bits(wire));
  });

  it.each(BITS)("n=%i: every value lands on the nearest level, within half a level step", (n) => {
    const rows = 4;
    const cols = 300;
    const x = gaussianMatrix(100 + n, rows, cols, (r) => 4 ** r);
    const enc = encodeLogFmt(x, rows, cols, n);
    const y = decodeLogFmt(enc, rows, cols);
    const tpr = 3;
    const codes = 2 ** (n - 1) - 1;
    for (let r = 0; r < rows; r++) {
      for (let t = 0; t < tpr; t++) {
        const lo = enc.logRange[2 * (r * tpr + t)]!;
        const hi = enc.logRange[2 * (r * tpr + t) + 1]!;
        const ratio = Math.exp((hi - lo) / (codes - 1)); // neighbouring levels differ by this factor
        let amax = 0;
        let amin = Infinity;
        for (let c = t * 128; c < Math.min(cols, (t + 1) * 128); c++) {
          const a = Math.abs(x[r * cols + c]!);
          amax = Math.max(amax, a);
          if (a > 0) amin = Math.min(amin, a);
          const err = Math.abs(y[r * cols + c]! - x[r * cols + c]!);
          // Nearest of L <= a < ratio*L in linear space is off by at most L(ratio-1)/2 <= a(ratio-1)/2.
          expect(err).toBeLessThanOrEqual((a * (ratio - 1)) / 2 + a * 1e-6);
          expect(Math.sign(y[r * cols + c]!)).toBe(Math.sign(x[r * cols + c]!));
        }
        expect(lo).toBe(Math.fround(Math.log(amin)));
        expect(hi).toBe(Math.fround(Math.log(amax)));
      }
    }
  });

  it("code 0 is zero, code 1 the tile's smallest magnitude, the top code its largest", () => {
    const x = Float32Array.of(0, 0.5, -2, 1, -0, 0.75, 2, 1.5);
    const enc = encodeLogFmt(x, 1, 8, 8);
    const words = [...enc.data];
    expect(words[0]).toBe(0); // +0
    expect(words[4]).toBe(0x80); // -0 keeps its sign
    expect(words[1]).toBe(1); // 0.5 = min
    expect(words[2]).toBe(0x80 | 127); // -2 = -max
    expect(words[6]).toBe(127);
    const y = decodeLogFmt(enc, 1, 8);
    expect(y[1]).toBeCloseTo(0.5, 6);
    expect(y[2]).toBeCloseTo(-2, 6);
    expect(Object.is(y[4], -0)).toBe(true);
  });

  it("caps a tile's range at 2^32: magnitudes far below the cap round to zero", () => {
    const x = new Float32Array(128).fill(1);
    x[0] = 1e-12; // 2^-32 is 2.3e-10, so 1e-12 is nearer 0 than the smallest level
    x[1] = -2.4e-10; // between 2^-32 and the next level (2^-32 * e^(32 ln2 / 126)), nearer 2^-32
    const enc = encodeLogFmt(x, 1, 128, 8);
    expect(enc.logRange[0]).toBe(Math.fround(-32 * Math.LN2));
    const y = decodeLogFmt(enc, 1, 128);
    expect(y[0]).toBe(0);
    expect(y[1]).toBeCloseTo(-(2 ** -32), 15);
  });

  it("an all-zero tile stores a (0, 0) range and decodes to zeros", () => {
    const x = new Float32Array(256);
    x[200] = 5;
    const enc = encodeLogFmt(x, 1, 256, 6);
    expect([...enc.logRange.subarray(0, 2)]).toEqual([0, 0]);
    const y = decodeLogFmt(enc, 1, 256);
    for (let c = 0; c < 128; c++) expect(y[c]).toBe(0);
    expect(y[200]).toBeCloseTo(5, 5);
  });

  it.each(BITS)("n=%i: counts n bits per value plus 8 bytes per 128-value tile", (n) => {
    expect(logFmtBytes(32, 7168, n)).toBe(32 * 7168 * (n / 8) + 8 * 32 * 56);
    const enc = encodeLogFmt(gaussianMatrix(n, 3, 259), 3, 259, n);
    expect(enc.data.byteLength + enc.logRange.byteLength).toBe(logFmtBytes(3, 259, n));
    expect(enc.data.byteLength).toBe(Math.ceil((3 * 259 * n) / 8));
  });

  it.each([3, 11, 7.5])("rejects n=%s", (n) => {
    expect(() => encodeLogFmt(new Float32Array(4), 1, 4, n)).toThrow(InvalidArgumentError);
  });

  it("rejects non-finite input and a truncated payload", () => {
    expect(() => encodeLogFmt(Float32Array.of(1, Number.NaN), 1, 2)).toThrow(/row 0, col 1/);
    const enc = encodeLogFmt(gaussianMatrix(5, 2, 128), 2, 128);
    expect(() => decodeLogFmt({ ...enc, data: enc.data.subarray(1) }, 2, 128)).toThrow(DataLossError);
    expect(() => decodeLogFmt({ ...enc, logRange: enc.logRange.subarray(2) }, 2, 128)).toThrow(DataLossError);
  });
});
