/**
 * AdamW and the gradient reduction, over contiguous ranges of the parameter list so that data-parallel replicas
 * can share the work: each thread reduces and updates its own range, in a fixed order within the range, and the
 * ranges' sums of squares are added in thread order. Deterministic for a given thread count.
 */
import { nativeKernelsAddon } from "@moela/engine";
import type { Vec } from "./ops.js";

/** The addon's float32 loops, when it built: the TypeScript loops' bits, AdamW in about 1/2.7 of their time and the reduction in 1/1.5-1/2. */
const native = nativeKernelsAddon;

export interface AdamHyper {
  readonly lr: number;
  readonly weightDecay: number;
  /** Multiplies every gradient (global-norm clipping). */
  readonly clipScale: number;
  readonly beta1: number;
  readonly beta2: number;
  /** Bias corrections 1 - beta^t. */
  readonly bc1: number;
  readonly bc2: number;
  readonly eps: number;
}

/** What a range of the optimizer works on: per parameter, in ParamStore order. */
export interface OptimSlot {
  readonly data: Vec;
  readonly grad: Vec;
  readonly m: Vec | null;
  readonly v: Vec | null;
  readonly decay: boolean;
  readonly trainable: boolean;
}

/** sum of g_i^2 in doubles, i ascending. */
export function sumSquares(g: Vec): number {
  let s = 0;
  for (let i = 0; i < g.length; i++) s += g[i]! * g[i]!;
  return s;
}

/** One AdamW update of w from gradient g (times clipScale), in doubles, the decoupled decay first. */
export function adamw(w: Vec, g: Vec, m: Vec, v: Vec, lr: number, decay: number, h: AdamHyper): void {
  if (native !== null && w instanceof Float32Array && g instanceof Float32Array && m instanceof Float32Array && v instanceof Float32Array)
    native.adamwF32(w, g, m, v, Float64Array.of(lr, decay, h.clipScale, h.beta1, h.beta2, h.bc1, h.bc2, h.eps));
  else adamwLoop(w, g, m, v, lr, decay, h);
}

/** adamw in TypeScript (the float64 path, and what the addon's loop must match bit for bit). */
export function adamwLoop(w: Vec, g: Vec, m: Vec, v: Vec, lr: number, decay: number, h: AdamHyper): void {
  const { clipScale, beta1, beta2, eps } = h;
  const step = lr / h.bc1;
  const rbc2 = 1 / h.bc2;
  for (let i = 0; i < w.length; i++) {
    const gi = g[i]! * clipScale;
    const mi = beta1 * m[i]! + (1 - beta1) * gi;
    const vi = beta2 * v[i]! + (1 - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    w[i] = w[i]! * decay - (step * mi) / (Math.sqrt(vi * rbc2) + eps);
  }
}

/** Cut points [0 = c_0 <= ... <= c_parts = n] of `sizes` into `parts` contiguous ranges of about equal total size. */
export function partition(sizes: readonly number[], parts: number): number[] {
  const total = sizes.reduce((a, b) => a + b, 0);
  const cuts = [0];
  let acc = 0;
  let i = 0;
  for (let p = 1; p < parts; p++) {
    const goal = (total * p) / parts;
    while (i < sizes.length && acc + sizes[i]! / 2 < goal) acc += sizes[i++]!;
    cuts.push(i);
  }
  cuts.push(sizes.length);
  return cuts;
}

/** grads[p] += others[w][p] for w ascending, p in [p0, p1); returns the sum of squares of the trainable ones. */
export function reduceRange(slots: readonly OptimSlot[], others: readonly (readonly Vec[])[], p0: number, p1: number): number {
  let ss = 0;
  for (let p = p0; p < p1; p++) {
    const g = slots[p]!.grad;
    const xs = others.map((o) => o[p]!);
    if (native !== null && g instanceof Float32Array && xs.every((x) => x instanceof Float32Array)) {
      const gg = native.addSumSquaresF32(g, xs as Float32Array[]);
      if (slots[p]!.trainable) ss += gg;
      continue;
    }
    for (const o of others) {
      const x = o[p]!;
      for (let j = 0; j < g.length; j++) g[j] = g[j]! + x[j]!;
    }
    if (slots[p]!.trainable) ss += sumSquares(g);
  }
  return ss;
}

/** AdamW over the trainable parameters in [p0, p1) (decay only on those marked). */
export function adamRange(slots: readonly OptimSlot[], p0: number, p1: number, h: AdamHyper): void {
  for (let p = p0; p < p1; p++) {
    const s = slots[p]!;
    if (!s.trainable || s.m === null || s.v === null) continue;
    adamw(s.data, s.grad, s.m, s.v, h.lr, s.decay ? 1 - h.lr * h.weightDecay : 1, h);
  }
}
