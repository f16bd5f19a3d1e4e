/** Rates of the three float32 products at training shapes (GFLOP/s): npx tsx packages/train/scripts/bench-ops.ts [threads] */
import { f32Ops, setTrainThreads } from "../src/ops.js";

const threads = Number(process.argv[2] ?? 1);
setTrainThreads(threads);
const ops = f32Ops!;
function rnd(n: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.random() - 0.5;
  return a;
}
for (const [m, n, k] of [
  [2048, 384, 384],
  [2048, 256, 384],
  [2048, 384, 256],
  [2048, 4096, 384],
  [256, 256, 48],
] as const) {
  const A = rnd(m * k),
    B = rnd(n * k),
    C = new Float32Array(m * n);
  const At = rnd(k * m),
    Bn = rnd(k * n);
  for (const [name, f] of [
    ["nt", () => ops.nt(A, B, m, n, k, C)],
    ["nn", () => ops.nn(A, Bn, m, n, k, C)],
    ["tn", () => ops.tn(At, Bn, m, n, k, C)],
  ] as const) {
    f();
    const t0 = performance.now();
    let reps = 0;
    while (performance.now() - t0 < 300) {
      f();
      reps++;
    }
    const s = (performance.now() - t0) / 1000 / reps;
    console.log(`${name} m${m} n${n} k${k}: ${((2 * m * n * k) / s / 1e9).toFixed(1)} GFLOP/s`);
  }
}
