/**
 * The few dense products training spends its time in, over row-major arrays, with two interchangeable backends:
 *   - `f64`: Float64Array, plain TypeScript loops in doubles (the gradient checks and the reference);
 *   - `f32`: Float32Array, the engine's native kernels (float32 fused multiply-add, multi-threaded, every output
 *     element computed in an order that depends on nothing but its own inputs, so bits never depend on threads).
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

const KIND_F32 = 0;

/** Time spent in the native products and in the transposes feeding them (when profiling is on). */
export const opsProfile = { on: false, nativeMs: 0, transposeMs: 0, flops: 0 };
let scratch32: Float32Array = new Float32Array(1 << 16);
let transA: Float32Array = new Float32Array(1 << 16);
let transB: Float32Array = new Float32Array(1 << 16);

function grow(a: Float32Array, n: number): Float32Array {
  return a.length >= n ? a : new Float32Array(Math.max(n, Math.ceil(a.length * 1.5)));
}

function f32(v: Vec): Float32Array {
  if (!(v instanceof Float32Array)) throw new TypeError("the f32 ops take Float32Array operands");
  return v;
}

/** Transpose A [r, c] into out [c, r] (blocks of 32 x 32, one monomorphic loop per element type). */
export function transpose(A: Vec, r: number, c: number, out: Vec): void {
  if (A instanceof Float32Array && out instanceof Float32Array) transpose32(A, r, c, out);
  else transposeAny(A, r, c, out);
}

/** Eight source rows at a time (each output run gets 8 contiguous values), columns in blocks of 256 (~3x the plain loop). */
function transpose32(A: Float32Array, r: number, c: number, out: Float32Array): void {
  const CB = 256;
  for (let j0 = 0; j0 < c; j0 += CB) {
    const j1 = Math.min(c, j0 + CB);
    let i = 0;
    for (; i + 8 <= r; i += 8) {
      const a0 = i * c;
      for (let j = j0; j < j1; j++) {
        const o = j * r + i;
        const s = a0 + j;
        out[o] = A[s]!;
        out[o + 1] = A[s + c]!;
        out[o + 2] = A[s + 2 * c]!;
        out[o + 3] = A[s + 3 * c]!;
        out[o + 4] = A[s + 4 * c]!;
        out[o + 5] = A[s + 5 * c]!;
        out[o + 6] = A[s + 6 * c]!;
        out[o + 7] = A[s + 7 * c]!;
      }
    }
    for (; i < r; i++) for (let j = j0; j < j1; j++) out[j * r + i] = A[i * c + j]!;
  }
}

function transposeAny(A: Vec, r: number, c: number, out: Vec): void {
  const B = 32;
  for (let i0 = 0; i0 < r; i0 += B) {
    const i1 = Math.min(r, i0 + B);
    for (let j0 = 0; j0 < c; j0 += B) {
      const j1 = Math.min(c, j0 + B);
      for (let i = i0; i < i1; i++) for (let j = j0; j < j1; j++) out[j * r + i] = A[i * c + j]!;
    }
  }
}

function addInto(C: Float32Array, S: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) C[i] = C[i]! + S[i]!;
}

function makeF32Ops(): Ops | null {
  const k = nativeKernelsAddon;
  if (k === null) return null;
  // C = A B^T: the engine's matmul with B as the weight [n, k] and A's rows as the tokens.
  const nt = (A: Vec, B: Vec, m: number, n: number, kk: number, C: Vec, acc = false): void => {
    if (m === 0 || n === 0) return;
    const c = f32(C);
    let y = c;
    if (acc) y = scratch32 = grow(scratch32, m * n);
    const t0 = opsProfile.on ? performance.now() : 0;
    k.matmul(KIND_F32, f32(B), null, n, kk, 0, 0, f32(A), 0, kk, m, y, 0, n, 0, n, 1, 0, 0, 0);
    if (opsProfile.on) {
      opsProfile.nativeMs += performance.now() - t0;
      opsProfile.flops += 2 * m * n * kk;
    }
    if (acc) addInto(c, y, m * n);
  };
  // C = A B = A (B^T)^T: B [k, n] transposed into [n, k], then nt (the engine's matmul is its fastest product).
  const nn = (A: Vec, B: Vec, m: number, n: number, kk: number, C: Vec, acc = false): void => {
    if (m === 0 || n === 0) return;
    if (kk === 0) {
      if (!acc) C.fill(0, 0, m * n);
      return;
    }
    transB = grow(transB, n * kk);
    const bt = transB.subarray(0, n * kk);
    const t0 = opsProfile.on ? performance.now() : 0;
    transpose(B, kk, n, bt);
    if (opsProfile.on) opsProfile.transposeMs += performance.now() - t0;
    nt(A, bt, m, n, kk, C, acc);
  };
  // C = A^T B = (A^T) (B^T)^T: both transposed, then nt.
  const tn = (A: Vec, B: Vec, m: number, n: number, kk: number, C: Vec, acc = false): void => {
    if (m === 0 || n === 0) return;
    if (kk === 0) {
      if (!acc) C.fill(0, 0, m * n);
      return;
    }
    transA = grow(transA, m * kk);
    transB = grow(transB, n * kk);
    const at = transA.subarray(0, m * kk);
    const bt = transB.subarray(0, n * kk);
    const t0 = opsProfile.on ? performance.now() : 0;
    transpose(A, kk, m, at);
    transpose(B, kk, n, bt);
    if (opsProfile.on) opsProfile.transposeMs += performance.now() - t0;
    nt(at, bt, m, n, kk, C, acc);
  };
  return { precision: "f32", alloc: (n) => new Float32Array(n), scratch: (n) => new Float32Array(n), nt, nn, tn };
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
