/** SwiGLU MLP (dense layers, shared experts, routed experts): down(silu(gate(x)) * up(x)). */
import { defaultKernels } from "../kernels/index.js";
import type { KernelBackend } from "../kernels/types.js";
import type { MatmulFn } from "../tensor/parallel.js";
import type { MlpWeights } from "../weights.js";
import { ScratchBuffer } from "../workspace.js";

/**
 * The MLP helpers' scratch, each buffer grown to the largest call (T tokens of a group; inter: the MLP's
 * intermediate size, which differs between dense layers, shared and routed experts).
 */
export interface MlpScratch {
  readonly gate: ScratchBuffer<Float32Array>; // [T, inter] gate(x), then silu(gate(x)) * up(x)
  readonly up: ScratchBuffer<Float32Array>; // [T, inter] up(x)
  readonly meta: ScratchBuffer<Int32Array>; // [entries, 17] the fast kernels' per-entry ints (kernels/native.ts)
}

export function createMlpScratch(): MlpScratch {
  return { gate: ScratchBuffer.f32(), up: ScratchBuffer.f32(), meta: ScratchBuffer.i32() };
}

/** out[t] = mlp(x[t]) for t < T. x: [T, hidden] -> out: [T, hidden]. `mm`: the kernel (a MatmulPool's to use threads). */
export function mlpForward(m: MlpWeights, x: Float32Array, T: number, out: Float32Array, scratch: MlpScratch, mm: MatmulFn = defaultKernels().matmul): void {
  const inter = m.gate.rows;
  const g = scratch.gate.get(T * inter); // [T, inter]
  const u = scratch.up.get(T * inter); // [T, inter]
  mm(m.gate, x, T, g);
  mm(m.up, x, T, u);
  for (let i = 0; i < T * inter; i++) {
    const a = g[i]!;
    g[i] = (a / (1 + Math.exp(-a))) * u[i]!;
  }
  mm(m.down, g, T, out);
}

/**
 * A group of MLPs over consecutive row ranges: entry e maps x rows [r_e, r_e + counts[e]) to the same out rows,
 * r_e = counts[0] + ... + counts[e-1] (a MoE layer's experts over their gathered tokens). The fast kernels run
 * the whole group in one call; the TypeScript backends run mlpForward per entry with `mm`.
 */
export function mlpForwardGroup(
  group: readonly MlpWeights[],
  counts: ArrayLike<number>,
  x: Float32Array,
  out: Float32Array,
  scratch: MlpScratch,
  k: KernelBackend = defaultKernels(),
  mm: MatmulFn = k.matmul,
): void {
  if (group.length === 0) return;
  if (k.mlpGroup !== undefined) {
    k.mlpGroup(group, counts, x, out, scratch);
    return;
  }
  const hidden = group[0]!.gate.cols;
  let r = 0;
  for (let e = 0; e < group.length; e++) {
    const n = counts[e]!;
    if (n > 0) mlpForward(group[e]!, x.subarray(r * hidden, (r + n) * hidden), n, out.subarray(r * hidden, (r + n) * hidden), scratch, mm);
    r += n;
  }
}

/**
 * mlpForwardGroup, awaited: a group of at least `offLoopMinWork` multiply-adds (Infinity: never; services use
 * OFF_LOOP_MIN_WORK) runs on a kernel thread of the fast kernels while the event loop runs (same bits).
 */
export async function mlpForwardGroupAsync(
  group: readonly MlpWeights[],
  counts: ArrayLike<number>,
  x: Float32Array,
  out: Float32Array,
  scratch: MlpScratch,
  k: KernelBackend,
  mm: MatmulFn,
  offLoopMinWork: number,
): Promise<void> {
  let work = 0;
  for (let e = 0; e < group.length; e++) work += 3 * counts[e]! * group[e]!.gate.rows * group[e]!.gate.cols;
  if (work >= offLoopMinWork && k.mlpGroupAsync !== undefined && group.length > 0) await k.mlpGroupAsync(group, counts, x, out, scratch);
  else mlpForwardGroup(group, counts, x, out, scratch, k, mm);
}

/**
 * The smallest product (multiply-adds, about 1-3 ms here) moved off the event loop. Each hand-off to a kernel thread
 * and back costs tens of microseconds, so below this the loop is better kept busy a little longer; it is then never
 * blocked for more than a few milliseconds at a time (measured on large-v3: at 2^23 the hand-offs cost 6-15% of
 * decode throughput, at 2^26 none is measurable at batch 1).
 */
export const OFF_LOOP_MIN_WORK = 1 << 26;
