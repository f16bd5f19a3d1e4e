/**
 * The sizes of an encoded [rows, cols] matrix per codec, split into payload bytes and per-tile
 * metadata floats, and row slicing of encoded matrices. Every codec encodes rows independently
 * (tiles run along cols and never span rows) and its payload is a whole number of bytes per row,
 * so the rows of an encoded matrix can be picked without decoding: encoding once and sending each
 * host its rows gives the same bytes as encoding each host's rows separately.
 */
import { InvalidArgumentError } from "@moela/core";
import type { DispatchCodecName, EncodedActivations } from "./codec/index.js";

/** Tile width of the tiled codecs (fp8-tile and logfmt8), as the paper uses. */
export const DISPATCH_TILE = 128;

export interface EncodedLayout {
  /** Payload bytes of one row. */
  readonly dataBytesPerRow: number;
  /** float32 metadata values of one row (tile scales or log ranges). */
  readonly metaPerRow: number;
}

export function encodedLayout(codec: DispatchCodecName, cols: number): EncodedLayout {
  const tiles = Math.ceil(cols / DISPATCH_TILE);
  switch (codec) {
    case "f32":
      return { dataBytesPerRow: 4 * cols, metaPerRow: 0 };
    case "bf16":
      return { dataBytesPerRow: 2 * cols, metaPerRow: 0 };
    case "fp8-tile":
      return { dataBytesPerRow: cols, metaPerRow: tiles };
    case "logfmt8":
      // 8-bit words: a row is exactly cols bytes, so rows stay byte-aligned.
      return { dataBytesPerRow: cols, metaPerRow: 2 * tiles };
  }
}

/**
 * Throws InvalidArgumentError (naming `what`) unless `enc` is a well-formed [rows, cols] matrix in
 * `codec`: the codec matches, and data and meta have exactly the lengths the shape implies.
 */
export function checkEncoded(what: string, enc: EncodedActivations, codec: DispatchCodecName, rows: number, cols: number): void {
  if (enc.codec !== codec) throw new InvalidArgumentError(`${what} is encoded as ${enc.codec}, expected ${codec}`);
  if (enc.rows !== rows || enc.cols !== cols) {
    throw new InvalidArgumentError(`${what} has shape [${enc.rows}, ${enc.cols}], expected [${rows}, ${cols}]`);
  }
  const { dataBytesPerRow, metaPerRow } = encodedLayout(codec, cols);
  if (enc.data.length !== rows * dataBytesPerRow) {
    throw new InvalidArgumentError(`${what} carries ${enc.data.length} data bytes, [${rows}, ${cols}] in ${codec} needs ${rows * dataBytesPerRow}`);
  }
  if (enc.meta.length !== rows * metaPerRow) {
    throw new InvalidArgumentError(`${what} carries ${enc.meta.length} tile values, [${rows}, ${cols}] in ${codec} needs ${rows * metaPerRow}`);
  }
  checkFinite(what, enc);
}

/**
 * Throws InvalidArgumentError naming the first non-finite value: one request's NaN would otherwise reach the
 * rows it is batched with (a host's group, a combine) and fail them all. Reads the wire form directly: f32
 * values, bf16 exponents, E4M3 NaN codes (0x7f, 0xff) and every tile's float32 metadata.
 */
function checkFinite(what: string, enc: EncodedActivations): void {
  const fail = (i: number, v: string): never => {
    throw new InvalidArgumentError(`${what}: value ${v} at row ${Math.floor(i / enc.cols)}, column ${i % enc.cols}; activations must be finite`);
  };
  for (let i = 0; i < enc.meta.length; i++) {
    if (!Number.isFinite(enc.meta[i]!)) throw new InvalidArgumentError(`${what}: tile metadata ${i} is ${enc.meta[i]}; it must be finite`);
  }
  const d = enc.data;
  const n = enc.rows * enc.cols;
  if (enc.codec === "f32") {
    const dv = new DataView(d.buffer, d.byteOffset, d.byteLength);
    for (let i = 0; i < n; i++) if (!Number.isFinite(dv.getFloat32(4 * i, true))) fail(i, String(dv.getFloat32(4 * i, true)));
  } else if (enc.codec === "bf16") {
    // Exponent all ones (bits 7..14 of the little-endian u16) is Infinity or NaN.
    for (let i = 0; i < n; i++) if ((d[2 * i + 1]! & 0x7f) === 0x7f && (d[2 * i]! & 0x80) !== 0) fail(i, "Infinity or NaN");
  } else if (enc.codec === "fp8-tile") {
    for (let i = 0; i < n; i++) if ((d[i]! & 0x7f) === 0x7f) fail(i, "NaN");
  }
}

/** Encoded size in bytes (payload + float32 metadata), what crosses the wire for the matrix. */
export function encodedSize(enc: EncodedActivations): number {
  return enc.data.byteLength + 4 * enc.meta.length;
}

/**
 * The rows `rowIndex` (ascending or not, each < enc.rows) of an encoded matrix, as an encoded
 * matrix of their own. Returns `enc` itself when it asks for every row in order.
 */
export function gatherEncodedRows(enc: EncodedActivations, rowIndex: ArrayLike<number>): EncodedActivations {
  const n = rowIndex.length;
  if (n === enc.rows) {
    let identity = true;
    for (let i = 0; i < n && identity; i++) identity = rowIndex[i] === i;
    if (identity) return enc;
  }
  const { dataBytesPerRow: db, metaPerRow: mr } = encodedLayout(enc.codec, enc.cols);
  const data = new Uint8Array(n * db); // [n, db]
  const meta = new Float32Array(n * mr); // [n, mr]
  for (let i = 0; i < n; i++) {
    const r = rowIndex[i]!;
    if (!(Number.isInteger(r) && r >= 0 && r < enc.rows)) {
      throw new InvalidArgumentError(`gatherEncodedRows: row ${r} is outside [0, ${enc.rows})`);
    }
    data.set(enc.data.subarray(r * db, (r + 1) * db), i * db);
    if (mr > 0) meta.set(enc.meta.subarray(r * mr, (r + 1) * mr), i * mr);
  }
  return { codec: enc.codec, rows: n, cols: enc.cols, data, meta };
}
