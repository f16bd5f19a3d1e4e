/**
 * Latent KV rows on the wire: row-major, little-endian, in the profile's KV dtype.
 *   f32:  4 bytes per value, the float32 bits as cached (exact profile).
 *   bf16: 2 bytes per value, the top half of the float32 bits, rounded to nearest even (paper
 *         profile). The engine rounds rows through bf16 before caching them in that profile, so
 *         encoding is exact and decode attends to what prefill attended to.
 */
import { InvalidArgumentError } from "@moela/core";
import { BF16_TO_F32, f32ToBf16Bits, type KvDtype } from "@moela/engine";

export const KV_DTYPE_BYTES: Readonly<Record<KvDtype, number>> = { f32: 4, bf16: 2 };

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** Bytes of `rows` values in `dtype`. */
export function encodedBytes(values: number, dtype: KvDtype): number {
  return values * KV_DTYPE_BYTES[dtype];
}

/** Encode `src` values (float32) as `dtype` bytes into a new buffer. */
export function encodeRows(src: Float32Array, dtype: KvDtype): Uint8Array {
  const n = src.length;
  if (dtype === "f32") {
    if (LITTLE_ENDIAN) return new Uint8Array(src.buffer.slice(src.byteOffset, src.byteOffset + n * 4));
    const out = new Uint8Array(n * 4);
    const view = new DataView(out.buffer);
    for (let i = 0; i < n; i++) view.setFloat32(i * 4, src[i]!, true);
    return out;
  }
  const out = new Uint8Array(n * 2); // [n] bf16, little-endian
  for (let i = 0; i < n; i++) {
    const bits = f32ToBf16Bits(src[i]!);
    out[2 * i] = bits & 0xff;
    out[2 * i + 1] = bits >>> 8;
  }
  return out;
}

/**
 * Decode `bytes` (`dtype`, little-endian) into out[outOff, outOff + values). The byte length must be
 * exactly `values` elements.
 */
export function decodeRows(bytes: Uint8Array, dtype: KvDtype, out: Float32Array, outOff = 0): void {
  const width = KV_DTYPE_BYTES[dtype];
  if (bytes.length % width !== 0) throw new InvalidArgumentError(`${bytes.length} bytes is not a whole number of ${dtype} values`);
  const n = bytes.length / width;
  if (outOff + n > out.length) throw new InvalidArgumentError(`${n} values do not fit the ${out.length - outOff} left in the output`);
  if (dtype === "f32") {
    if (LITTLE_ENDIAN && bytes.byteOffset % 4 === 0) {
      out.set(new Float32Array(bytes.buffer, bytes.byteOffset, n), outOff);
      return;
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < n; i++) out[outOff + i] = view.getFloat32(i * 4, true);
    return;
  }
  for (let i = 0; i < n; i++) out[outOff + i] = BF16_TO_F32[bytes[2 * i]! | (bytes[2 * i + 1]! << 8)]!;
}
