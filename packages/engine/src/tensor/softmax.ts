/**
 * The softmax of the TypeScript code (the reference attention, the portable attend kernel, V2's router), in
 * doubles: dst[i] = exp(src[srcOff + i] - max) for i < n, returning their sum z. The caller divides by z where
 * its formula does (each weight, or once per output), so the bits stay those of each formula.
 */
export function softmaxExp(src: ArrayLike<number>, srcOff: number, dst: Float64Array, n: number): number {
  let m = -Infinity;
  for (let i = 0; i < n; i++) if (src[srcOff + i]! > m) m = src[srcOff + i]!;
  let z = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.exp(src[srcOff + i]! - m);
    dst[i] = e;
    z += e;
  }
  return z;
}
