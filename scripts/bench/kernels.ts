/**
 * Linear-kernel microbenchmark: GMAC/s of matmul per weight kind at T = 1 and 8, on one thread and split over a
 * MatmulPool, then a sweep of product sizes (rows * cols * T) that shows where threads start to pay
 * (what DEFAULT_PARALLEL_MIN_WORK is set from).
 *
 *   npx tsx scripts/bench/kernels.ts [--threads N] [--repeats R]
 *
 * Times are medians over R rounds; single- and multi-thread runs alternate so background load hits both alike.
 */
import { availableParallelism } from "node:os";
import { Command } from "commander";
import { DEFAULT_PARALLEL_MIN_WORK, MatmulPool, matmul, f32ToBf16Bits, type MatmulFn, type WeightMatrix } from "@moela/engine";

const program = new Command("bench-kernels")
  .option("--threads <n>", "threads of the pool compared with one thread", (v) => Number(v), Math.max(2, availableParallelism()))
  .option("--repeats <n>", "rounds per measurement (median reported)", (v) => Number(v), 7)
  .parse();
const opts = program.opts<{ threads: number; repeats: number }>();

// Shared memory, as the engine's weights and workspace: the pool's workers read it in place.
const shared = (bytes: number) => new SharedArrayBuffer(bytes);

function weights(rows: number, cols: number): WeightMatrix[] {
  const d16 = new Uint16Array(shared(2 * rows * cols));
  for (let i = 0; i < d16.length; i++) d16[i] = f32ToBf16Bits(Math.sin(i));
  const d8 = new Uint8Array(shared(rows * cols));
  for (let i = 0; i < d8.length; i++) d8[i] = (i * 7) & 0x7e;
  const scales = new Float32Array(shared(4 * Math.ceil(rows / 128) * Math.ceil(cols / 128))).fill(0.01);
  const f32 = new Float32Array(shared(4 * rows * cols));
  for (let i = 0; i < f32.length; i++) f32[i] = Math.sin(i);
  return [
    { kind: "bf16", rows, cols, data: d16 },
    { kind: "fp8", rows, cols, data: d8, scaleInv: scales, blockRows: 128, blockCols: 128 },
    { kind: "f32", rows, cols, data: f32 },
  ];
}

function activations(n: number): Float32Array {
  const a = new Float32Array(shared(4 * n));
  for (let i = 0; i < n; i++) a[i] = Math.cos(i);
  return a;
}

/** Milliseconds per call: median over rounds of `calls` calls each, the two kernels alternating. */
function compare(kernels: MatmulFn[], w: WeightMatrix, x: Float32Array, T: number, y: Float32Array, calls: number): number[] {
  const times: number[][] = kernels.map(() => []);
  for (const k of kernels) for (let i = 0; i < 2; i++) k(w, x, T, y);
  for (let r = 0; r < opts.repeats; r++) {
    kernels.forEach((k, i) => {
      const t0 = performance.now();
      for (let c = 0; c < calls; c++) k(w, x, T, y);
      times[i]!.push((performance.now() - t0) / calls);
    });
  }
  return times.map((t) => t.sort((a, b) => a - b)[t.length >> 1]!);
}

const pool = new MatmulPool({ threads: opts.threads, minWork: 0 });
if (!(await pool.ready())) throw new Error(`the matmul pool did not start: ${pool.error?.message}`);
const single: MatmulFn = matmul;

console.log(`matmul 1024 x 1024, 1 thread vs ${opts.threads} threads (median of ${opts.repeats})`);
const rows = 1024;
const cols = 1024;
const ws = weights(rows, cols);
const x = activations(cols * 8);
const y = activations(rows * 8);
for (const T of [1, 8]) {
  for (const w of ws) {
    const [t1, tn] = compare([single, pool.matmul], w, x, T, y, T === 1 ? 10 : 3);
    const gmac = (t: number) => ((rows * cols * T) / t / 1e6).toFixed(2);
    console.log(
      `${w.kind.padEnd(4)} T ${T}  1 thread ${t1!.toFixed(2)} ms ${gmac(t1!)} GMAC/s   ${opts.threads} threads ${tn!.toFixed(2)} ms ${gmac(tn!)} GMAC/s   ratio ${(t1! / tn!).toFixed(2)}x`,
    );
  }
}

console.log(`\nwhere threads pay: BF16, T 1, square-ish products (current DEFAULT_PARALLEL_MIN_WORK = ${DEFAULT_PARALLEL_MIN_WORK})`);
for (const [r, c] of [
  [64, 128],
  [128, 256],
  [256, 256],
  [256, 512],
  [512, 512],
  [512, 1024],
  [1024, 1024],
] as const) {
  const w = weights(r, c)[0]!;
  const xs = activations(c);
  const ys = activations(r);
  const calls = Math.max(3, Math.round(2e6 / (r * c)));
  const [t1, tn] = compare([single, pool.matmul], w, xs, 1, ys, calls);
  console.log(`${`${r} x ${c}`.padEnd(11)} work ${String(r * c).padStart(8)}  1 thread ${(t1! * 1000).toFixed(0).padStart(6)} us   ${opts.threads} threads ${(tn! * 1000).toFixed(0).padStart(6)} us   ratio ${(t1! / tn!).toFixed(2)}x`);
}
await pool.close();
