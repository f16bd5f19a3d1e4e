/**
 * The few dense products training spends its time in, over row-major arrays, with two interchangeable backends:
 *   - `f64`: Float64Array, plain TypeScript loops in doubles (the gradient checks and the reference);
 *   - `f32`: Float32Array, the native kernels' packed GEMM (one float32 fused multiply-add chain per output
 *     element, multi-threaded over blocks of the output, so bits never depend on threads).
 * Layer code is written once over `Vec` and calls only these; elementwise work (norms, rope, softmax, SwiGLU,
 * the router) runs in TypeScript with double arithmetic on either element type.
 *
 * The three products (C: [m, n], all contiguous unless a stride is given):
 *   nt: C = A B^T, A [m, k], B [n, k]   (a linear layer forward: Y = X W^T; attention scores Q K^T)
 *   nn: C = A B,   A [m, k], B [k, n]   (a linear layer's input gradient: dX = dY W; attention P V)
 *   tn: C = A^T B, A [k, m], B [k, n]   (a linear layer's weight gradient: dW = dY^T X)
 * `acc` adds into C instead of overwriting it.
 */
import { nativeKernelsAddon } from "@moela/engine";

export type Vec = Float32Array | Float64Array;
export type Precision = "f64" | "f32";

export interface Ops {
  readonly precision: Precision;
  /** A zero-filled array. */
  alloc(n: number): Vec;
  /** An array whose contents the caller overwrites entirely (not necessarily zeroed). */
  scratch(n: number): Vec;
  nt(A: Vec, B: Vec, m: number, n: number, k: number, C: Vec, acc?: boolean): void;
  nn(A: Vec, B: Vec, m: number, n: number, k: number, C: Vec, acc?: boolean): void;
  tn(A: Vec, B: Vec, m: number, n: number, k: number, C: Vec, acc?: boolean): void;
}

// ------------------------------------------------------------------------------------------- f64

function nt64(A: Vec, B: Vec, m: number, n: number, k: number, C: Vec, acc = false): void {
  for (let i = 0; i < m; i++) {
    const ao = i * k;
    for (let j = 0; j < n; j++) {
      const bo = j * k;
      let s = 0;
      for (let c = 0; c < k; c++) s += A[ao + c]! * B[bo + c]!;
      C[i * n + j] = acc ? C[i * n + j]! + s : s;
    }
  }
}

let row64 = new Float64Array(256);

function nn64(A: Vec, B: Vec, m: number, n: number, k: number, C: Vec, acc = false): void {
  if (row64.length < n) row64 = new Float64Array(n);
  const r = row64;
  for (let i = 0; i < m; i++) {
    r.fill(0, 0, n);
    const ao = i * k;
    for (let c = 0; c < k; c++) {
      const a = A[ao + c]!;
      if (a === 0) continue;
      const bo = c * n;
      for (let j = 0; j < n; j++) r[j] = r[j]! + a * B[bo + j]!;
    }
    const co = i * n;
    if (acc) for (let j = 0; j < n; j++) C[co + j] = C[co + j]! + r[j]!;
    else for (let j = 0; j < n; j++) C[co + j] = r[j]!;
  }
}

function tn64(A: Vec, B: Vec, m: number, n: number, k: number, C: Vec, acc = false): void {
  if (!acc) C.fill(0, 0, m * n);
  for (let t = 0; t < k; t++) {
    const ao = t * m;
    const bo = t * n;
    for (let i = 0; i < m; i++) {
      const a = A[ao + i]!;
      if (a === 0) continue;
      const co = i * n;
      for (let j = 0; j < n; j++) C[co + j] = C[co + j]! + a * B[bo + j]!;
    }
  }
}

export const f64Ops: Ops = {
  precision: "f64",
  alloc: (n) => new Float64Array(n),
  scratch: (n) => new Float64Array(n),
  nt: nt64,
  nn: nn64,
  tn: tn64,
};

// ------------------------------------------------------------------------------------------- f32 (native)

/** Time spent in the native products (when profiling is on). */
export const opsProfile = { on: false, nativeMs: 0, flops: 0 };

function f32(v: Vec): Float32Array {
  if (!(v instanceof Float32Array)) throw new TypeError("the f32 ops take Float32Array operands");
  return v;
}

function makeF32Ops(): Ops | null {
  const k = nativeKernelsAddon;
  if (k === null) return null;
  // C (=, or +=) sum_p A(i, p) B(j, p): the addon's packed GEMM reads each operand as stored or transposed through
  // its strides, so no product copies an operand here.
  const gemm = (A: Vec, aRow: number, aCol: number, B: Vec, bRow: number, bCol: number, m: number, n: number, kk: number, C: Vec, acc: boolean): void => {
    if (m === 0 || n === 0) return;
    const t0 = opsProfile.on ? performance.now() : 0;
    k.gemm(f32(A), 0, aRow, aCol, f32(B), 0, bRow, bCol, f32(C), 0, n, m, n, kk, acc ? 1 : 0);
    if (opsProfile.on) {
      opsProfile.nativeMs += performance.now() - t0;
      opsProfile.flops += 2 * m * n * kk;
    }
  };
  return {
    precision: "f32",
    alloc: (n) => new Float32Array(n),
    scratch: (n) => new Float32Array(n),
    // A [m, k] by rows, B [n, k] by rows.
    nt: (A, B, m, n, kk, C, acc = false) => gemm(A, kk, 1, B, kk, 1, m, n, kk, C, acc),
    // A [m, k] by rows, B [k, n] read transposed.
    nn: (A, B, m, n, kk, C, acc = false) => gemm(A, kk, 1, B, 1, n, m, n, kk, C, acc),
    // A [k, m] and B [k, n], both read transposed.
    tn: (A, B, m, n, kk, C, acc = false) => gemm(A, 1, m, B, 1, n, m, n, kk, C, acc),
  };
}

/**
 * Buffers recycled from one step to the next: a step allocates the same shapes every time, so instead of
 * leaving hundreds of megabytes to the garbage collector, `reset()` returns every buffer handed out since the
 * last reset to free lists by capacity (powers of two), and `ops.alloc` takes from them (zero-filled, as a fresh
 * array). Only for buffers that die with the step.
 */
export class Arena {
  private readonly free = new Map<number, Vec[]>();
  private used: Vec[] = [];
  /** Ops whose alloc draws from this arena. */
  readonly ops: Ops;

  constructor(base: Ops) {
    this.ops = { ...base, alloc: (n) => this.take(base, n, true), scratch: (n) => this.take(base, n, false) };
  }

  private take(base: Ops, n: number, zero: boolean): Vec {
    let cap = 64;
    while (cap < n) cap *= 2;
    const list = this.free.get(cap);
    const buf = list !== undefined && list.length > 0 ? list.pop()! : base.alloc(cap);
    this.used.push(buf);
    const v = buf.subarray(0, n);
    if (zero) v.fill(0);
    return v;
  }

  /** Every buffer handed out since the last reset is free again. */
  reset(): void {
    for (const b of this.used) {
      const list = this.free.get(b.length);
      if (list === undefined) this.free.set(b.length, [b]);
      else list.push(b);
    }
    this.used = [];
  }
}

/** The native float32 products, or null when the engine's native kernels did not build. */
export const f32Ops: Ops | null = makeF32Ops();

/** Kernel threads of the native products (process-wide; bits do not depend on it). */
export function setTrainThreads(n: number): void {
  nativeKernelsAddon?.setThreads(n);
}

export function opsFor(precision: Precision): Ops {
  if (precision === "f64") return f64Ops;
  if (f32Ops === null) throw new Error("float32 training needs the engine's native kernels (packages/engine-native did not build)");
  return f32Ops;
}
