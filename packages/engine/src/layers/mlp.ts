/** SwiGLU MLP (dense layers, shared experts, routed experts): down(silu(gate(x)) * up(x)). */
import { defaultKernels } from "../kernels/index.js";
import type { KernelBackend } from "../kernels/types.js";
import type { MatmulFn } from "../tensor/parallel.js";
import type { MlpWeights } from "../weights.js";
import type { Workspace } from "../workspace.js";

/** out[t] = mlp(x[t]) for t < T. x: [T, hidden] -> out: [T, hidden]. `mm`: the kernel (a MatmulPool's to use threads). */
export function mlpForward(m: MlpWeights, x: Float32Array, T: number, out: Float32Array, ws: Workspace, mm: MatmulFn = defaultKernels().matmul): void {
  const inter = m.gate.rows;
  const g = ws.f32("mlp.gate", T * inter); // [T, inter]
  const u = ws.f32("mlp.up", T * inter); // [T, inter]
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
  ws: Workspace,
  k: KernelBackend = defaultKernels(),
  mm: MatmulFn = k.matmul,
): void {
  if (group.length === 0) return;
  if (k.mlpGroup !== undefined) {
    k.mlpGroup(group, counts, x, out, ws);
    return;
  }
  const hidden = group[0]!.gate.cols;
  let r = 0;
  for (let e = 0; e < group.length; e++) {
    const n = counts[e]!;
    if (n > 0) mlpForward(group[e]!, x.subarray(r * hidden, (r + n) * hidden), n, out.subarray(r * hidden, (r + n) * hidden), ws, mm);
    r += n;
  }
}
