/**
 * Dispatch codecs by name. A codec turns a [rows, cols] float32 activation matrix into the bytes
 * that cross to an expert-host (`encode`), back (`decode`), and applies the same rounding without
 * the bytes (`roundTrip`) so the single-process path rounds exactly as the cluster does.
 *
 * Registered: f32 (identity, 4 B/value), bf16 (2 B/value, the combine format), fp8-tile (e4m3 +
 * one float32 scale per 1x128 tile, the dispatch format), logfmt8 (LogFMT-8 + two float32 per tile).
 * Also exported but NOT registered (the wire has no dtype for them): fp8-e5m2-tile.ts, and LogFMT
 * widths other than 8 (logfmt.ts takes n = 4..10); `moela codec-study` compares them all.
 */
import { InvalidArgumentError } from "@moela/core";
import { bf16Bytes, decodeBf16Into, encodeBf16, roundTripBf16 } from "./bf16.js";
import { decodeFp8TilesInto, encodeFp8Tiles, fp8TilesBytes, roundTripFp8Tiles } from "./fp8-tile.js";
import { decodeLogFmtInto, encodeLogFmt, logFmtBytes, roundTripLogFmt } from "./logfmt.js";
import { checkLength, checkMatrix } from "./shape.js";

export * from "./bf16.js";
export * from "./float8-tiles.js";
export * from "./fp8-tile.js";
export * from "./fp8-e5m2-tile.js";
export * from "./logfmt.js";

export type DispatchCodecName = "f32" | "bf16" | "fp8-tile" | "logfmt8";

/** A matrix in wire form. Both arrays are what a transport must carry; `meta` is float32 on the wire. */
export interface EncodedActivations {
  readonly codec: DispatchCodecName;
  readonly rows: number;
  readonly cols: number;
  /** Payload bytes (layout per codec). */
  readonly data: Uint8Array;
  /** Per-tile metadata: fp8-tile one scale per tile; logfmt8 (lo, hi) per tile; empty for f32/bf16. */
  readonly meta: Float32Array;
}

export interface DispatchCodec {
  readonly name: DispatchCodecName;
  /** Payload bytes per value, metadata excluded (f32 4, bf16 2, fp8-tile 1, logfmt8 1). */
  readonly bytesPerValue: number;
  /** Exact bytes of data + meta for a [rows, cols] matrix. */
  encodedBytes(rows: number, cols: number): number;
  encode(x: Float32Array, rows: number, cols: number): EncodedActivations;
  /** Decodes into `out` ([rows * cols]) when given, else into a new array. */
  decode(enc: EncodedActivations, out?: Float32Array): Float32Array;
  /** The codec's rounding applied in place (out defaults to x); bit-identical to decode(encode(x)). */
  roundTrip(x: Float32Array, rows: number, cols: number, out?: Float32Array): Float32Array;
}

const EMPTY = new Float32Array(0);

function checkCodec(enc: EncodedActivations, name: DispatchCodecName): void {
  if (enc.codec !== name) throw new InvalidArgumentError(`${name}: cannot decode a matrix encoded with ${enc.codec}`);
}

const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

const f32Codec = {
  name: "f32",
  bytesPerValue: 4,
  encodedBytes: (rows, cols) => 4 * rows * cols,
  encode(x, rows, cols) {
    checkMatrix("f32", x, rows, cols);
    const n = rows * cols;
    const data = new Uint8Array(4 * n);
    if (HOST_LITTLE_ENDIAN) data.set(new Uint8Array(x.buffer, x.byteOffset, 4 * n));
    else {
      const dv = new DataView(data.buffer);
      for (let i = 0; i < n; i++) dv.setFloat32(4 * i, x[i]!, true);
    }
    return { codec: "f32", rows, cols, data, meta: EMPTY };
  },
  decode(enc, out) {
    checkCodec(enc, "f32");
    const n = enc.rows * enc.cols;
    const dst = out ?? new Float32Array(n);
    checkMatrix("f32", dst, enc.rows, enc.cols);
    checkLength("f32", "data (bytes)", enc.data.length, 4 * n);
    const dv = new DataView(enc.data.buffer, enc.data.byteOffset, enc.data.byteLength);
    for (let i = 0; i < n; i++) dst[i] = dv.getFloat32(4 * i, true);
    return dst;
  },
  roundTrip(x, rows, cols, out = x) {
    checkMatrix("f32", x, rows, cols);
    checkMatrix("f32", out, rows, cols);
    if (out !== x) out.set(x.subarray(0, rows * cols));
    return out;
  },
} satisfies DispatchCodec;

const bf16Codec = {
  name: "bf16",
  bytesPerValue: 2,
  encodedBytes: (rows, cols) => bf16Bytes(rows, cols),
  encode: (x, rows, cols) => ({ codec: "bf16", rows, cols, data: encodeBf16(x, rows, cols).data, meta: EMPTY }),
  decode(enc, out) {
    checkCodec(enc, "bf16");
    return decodeBf16Into(enc, enc.rows, enc.cols, out ?? new Float32Array(enc.rows * enc.cols));
  },
  roundTrip: (x, rows, cols, out) => roundTripBf16(x, rows, cols, out),
} satisfies DispatchCodec;

const fp8TileCodec = {
  name: "fp8-tile",
  bytesPerValue: 1,
  encodedBytes: (rows, cols) => fp8TilesBytes(rows, cols),
  encode(x, rows, cols) {
    const { data, scales } = encodeFp8Tiles(x, rows, cols);
    return { codec: "fp8-tile", rows, cols, data, meta: scales };
  },
  decode(enc, out) {
    checkCodec(enc, "fp8-tile");
    const dst = out ?? new Float32Array(enc.rows * enc.cols);
    return decodeFp8TilesInto({ data: enc.data, scales: enc.meta }, enc.rows, enc.cols, dst);
  },
  roundTrip: (x, rows, cols, out) => roundTripFp8Tiles(x, rows, cols, out),
} satisfies DispatchCodec;

const logFmt8Codec = {
  name: "logfmt8",
  bytesPerValue: 1,
  encodedBytes: (rows, cols) => logFmtBytes(rows, cols, 8),
  encode(x, rows, cols) {
    const { data, logRange } = encodeLogFmt(x, rows, cols, 8);
    return { codec: "logfmt8", rows, cols, data, meta: logRange };
  },
  decode(enc, out) {
    checkCodec(enc, "logfmt8");
    const dst = out ?? new Float32Array(enc.rows * enc.cols);
    return decodeLogFmtInto({ n: 8, data: enc.data, logRange: enc.meta }, enc.rows, enc.cols, dst);
  },
  roundTrip: (x, rows, cols, out) => roundTripLogFmt(x, rows, cols, out, 8),
} satisfies DispatchCodec;

/** Every dispatch codec, by name. */
export const DISPATCH_CODECS: Readonly<Record<DispatchCodecName, DispatchCodec>> = Object.freeze({
  f32: f32Codec,
  bf16: bf16Codec,
  "fp8-tile": fp8TileCodec,
  logfmt8: logFmt8Codec,
});

export function isDispatchCodecName(s: string): s is DispatchCodecName {
  return Object.hasOwn(DISPATCH_CODECS, s);
}

/** Looks a codec up by name (a config value); unknown names get an error listing the known ones. */
export function getDispatchCodec(name: string): DispatchCodec {
  if (!isDispatchCodecName(name)) {
    throw new InvalidArgumentError(`unknown dispatch codec "${name}"; known: ${Object.keys(DISPATCH_CODECS).join(", ")}`);
  }
  return DISPATCH_CODECS[name];
}
