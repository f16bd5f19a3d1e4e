/**
 * Deterministic weights and activations for the kernel benchmarks (scripts/bench/kernels.ts, kernels-ab.ts):
 * seeded, so every run and every build multiplies the same numbers.
 */
import { f32ToBf16Bits, weightBytes, type WeightMatrix } from "@moela/engine";

export type BenchWeightKind = "fp8" | "bf16" | "f32";

/** A deterministic pseudo-random stream in [-1, 1). */
export function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  };
}

export function makeWeight(kind: BenchWeightKind, rows: number, cols: number, seed: number): WeightMatrix {
  const r = lcg(seed);
  const n = rows * cols;
  switch (kind) {
    case "f32": {
      const d = new Float32Array(n);
      for (let i = 0; i < n; i++) d[i] = 0.05 * r();
      return { kind, rows, cols, data: d };
    }
    case "bf16": {
      const d = new Uint16Array(n);
      for (let i = 0; i < n; i++) d[i] = f32ToBf16Bits(0.05 * r());
      return { kind, rows, cols, data: d };
    }
    case "fp8": {
      // e4m3fn codes with exponent fields 1..11 (no NaN 0x7f/0xff, no subnormals), either sign.
      const d = new Uint8Array(n);
      let s = seed >>> 0;
      for (let i = 0; i < n; i++) {
        s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
        d[i] = ((s >>> 31) << 7) | (((((s >>> 8) & 0xffff) % 11) + 1) << 3) | ((s >>> 4) & 7);
      }
      const scaleInv = new Float32Array(Math.ceil(rows / 128) * Math.ceil(cols / 128));
      for (let i = 0; i < scaleInv.length; i++) scaleInv[i] = 1e-3 * (1.5 + r());
      return { kind, rows, cols, data: d, scaleInv, blockRows: 128, blockCols: 128 };
    }
  }
}

/** The weight and copies of it (fresh memory each), together at least `workingSetBytes`. */
export function weightCopies(w: WeightMatrix, workingSetBytes: number): WeightMatrix[] {
  const out: WeightMatrix[] = [w];
  for (let i = 1; i < Math.max(1, Math.ceil(workingSetBytes / weightBytes(w))); i++) {
    out.push(w.kind === "fp8" ? { ...w, data: w.data.slice(), scaleInv: w.scaleInv.slice() } : ({ ...w, data: w.data.slice() } as WeightMatrix));
  }
  return out;
}

export function activations(n: number, seed: number): Float32Array {
  const r = lcg(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = r();
  return a;
}

/** DeepSeek-V3's per-head attention dimensions (nope 128, rope 64, v 128, kv_lora_rank 512) with 16 heads. */
export const V3_HEADS = { H: 16, DN: 128, DR: 64, DV: 128, R: 512 } as const;
