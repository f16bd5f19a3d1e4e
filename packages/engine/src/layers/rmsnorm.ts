/** RMSNorm as in HF DeepseekV3RMSNorm: x / sqrt(mean(x^2) + eps) * weight, computed in doubles. */
export function rmsNorm(x: Float32Array, xOff: number, n: number, weight: Float32Array, eps: number, out: Float32Array, outOff: number): void {
  let ss = 0;
  for (let i = 0; i < n; i++) {
    const v = x[xOff + i]!;
    ss += v * v;
  }
  const inv = 1 / Math.sqrt(ss / n + eps);
  for (let i = 0; i < n; i++) out[outOff + i] = x[xOff + i]! * inv * weight[i]!;
}

/** RMSNorm over T rows of width n (row stride = n unless given). */
export function rmsNormRows(x: Float32Array, T: number, n: number, weight: Float32Array, eps: number, out: Float32Array, xStride = n, outStride = n): void {
  for (let t = 0; t < T; t++) rmsNorm(x, t * xStride, n, weight, eps, out, t * outStride);
}
