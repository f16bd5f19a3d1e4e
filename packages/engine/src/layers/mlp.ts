/** SwiGLU MLP (dense layers, shared experts, routed experts): down(silu(gate(x)) * up(x)). */
import { defaultKernels } from "../kernels/index.js";
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
