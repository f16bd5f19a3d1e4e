/** A Float32Array's bit patterns, so tests compare results bit for bit (and NaNs or -0 by their bits). */
export function bits(a: Float32Array): number[] {
  return Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));
}
