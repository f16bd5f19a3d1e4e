import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@moela/core";
import { DISPATCH_CODECS, getDispatchCodec, type DispatchCodecName } from "@moela/moe-dispatch";
import { bits, gaussianMatrix } from "./random.js";

const T = 32;
const HIDDEN = 7168;
const TILES = HIDDEN / 128;

describe("dispatch codec registry", () => {
  it.each<[DispatchCodecName, number, number]>([
    ["f32", 4, 4 * T * HIDDEN],
    ["bf16", 2, 2 * T * HIDDEN],
    ["fp8-tile", 1, T * HIDDEN + 4 * T * TILES],
    ["logfmt8", 1, T * HIDDEN + 8 * T * TILES],
  ])("%s: %i byte(s) per value, %i bytes for [32, 7168] including metadata", (name, perValue, total) => {
    const codec = getDispatchCodec(name);
    expect(codec.name).toBe(name);
    expect(codec.bytesPerValue).toBe(perValue);
    expect(codec.encodedBytes(T, HIDDEN)).toBe(total);
    const enc = codec.encode(gaussianMatrix(1, T, HIDDEN), T, HIDDEN);
    expect(enc.data.byteLength + enc.meta.byteLength).toBe(total);
  });

  it.each(Object.keys(DISPATCH_CODECS) as DispatchCodecName[])(
    "%s: roundTrip (in place and into out) gives the same bits as decode(encode), partial tile included",
    (name) => {
      const codec = DISPATCH_CODECS[name];
      const rows = 5;
      const cols = 300;
      const x = gaussianMatrix(42, rows, cols, (r) => 10 ** (r - 2));
      const enc = codec.encode(x, rows, cols);
      expect(enc.codec).toBe(name);
      const wire = codec.decode(enc);
      const into = new Float32Array(rows * cols);
      expect(codec.decode(enc, into)).toBe(into);
      expect(bits(into)).toEqual(bits(wire));
      expect(bits(codec.roundTrip(x, rows, cols, new Float32Array(rows * cols)))).toEqual(bits(wire));
      expect(bits(codec.roundTrip(x.slice(), rows, cols))).toEqual(bits(wire));
    },
  );

  it("f32 decodes a payload that starts at an odd byte offset", () => {
    const codec = getDispatchCodec("f32");
    const x = Float32Array.of(1.5, -2.25, 3e-30);
    const enc = codec.encode(x, 1, 3);
    const shifted = new Uint8Array(enc.data.length + 1);
    shifted.set(enc.data, 1);
    expect([...codec.decode({ ...enc, data: shifted.subarray(1) })]).toEqual([...x]);
  });

  it("refuses to decode another codec's payload", () => {
    const enc = getDispatchCodec("bf16").encode(new Float32Array(4), 1, 4);
    expect(() => getDispatchCodec("fp8-tile").decode(enc)).toThrow(/encoded with bf16/);
  });

  it("names the known codecs when asked for an unknown one", () => {
    expect(() => getDispatchCodec("fp4")).toThrow(InvalidArgumentError);
    expect(() => getDispatchCodec("fp4")).toThrow(/f32, bf16, fp8-tile, logfmt8/);
  });
});
