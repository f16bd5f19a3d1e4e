/** Linear-kernel microbenchmark: GMAC/s of matmul per weight kind at T = 1 and 8.  npx tsx scripts/bench/kernels.ts */
import { matmul, f32ToBf16Bits, type WeightMatrix } from "@moela/engine";
const rows = 1024, cols = 1024;
const d16 = new Uint16Array(rows * cols); for (let i = 0; i < d16.length; i++) d16[i] = f32ToBf16Bits(Math.sin(i));
const d8 = new Uint8Array(rows * cols); for (let i = 0; i < d8.length; i++) d8[i] = (i * 7) & 0x7e;
const f32 = new Float32Array(rows * cols).map((_, i) => Math.sin(i));
const ws: WeightMatrix[] = [
  { kind: "bf16", rows, cols, data: d16 },
  { kind: "fp8", rows, cols, data: d8, scaleInv: new Float32Array(64).fill(0.01), blockRows: 128, blockCols: 128 },
  { kind: "f32", rows, cols, data: f32 },
];
const x = new Float32Array(cols * 8).map((_, i) => Math.cos(i)); const y = new Float32Array(rows * 8);
for (const T of [1, 8]) for (const w of ws) {
  for (let i = 0; i < 3; i++) matmul(w, x, T, y);
  const n = 20; const t0 = performance.now(); for (let i = 0; i < n; i++) matmul(w, x, T, y); const dt = (performance.now() - t0) / n;
  console.log(w.kind, "T", T, dt.toFixed(2), "ms", ((rows * cols * T) / dt / 1e6).toFixed(2), "GMAC/s");
}
