/**
 * Routed experts computed in this process: the engine's own ExpertExecutor (used by `moela generate`)
 * and the kernel an expert-host runs over its shard.
 */
import type { ExpertExecutor } from "../ports.js";
import type { MlpWeights, MoeWeights } from "../weights.js";
import type { Workspace } from "../workspace.js";
import { mlpForward } from "./mlp.js";
import { defaultKernels } from "../kernels/index.js";
import type { MatmulFn } from "../tensor/parallel.js";

/**
 * out[t] = sum over j with ids[t, j] held here of weights[t, j] * expert(x[t]).
 * Experts are visited in ascending id, so each token's terms are added in ascending expert id: every
 * process that holds the same experts produces the same bits. Tokens whose experts are all elsewhere get 0.
 */
export function computeRoutedExperts(
  experts: ReadonlyArray<MlpWeights | null>,
  x: Float32Array,
  T: number,
  hidden: number,
  ids: ArrayLike<number>,
  weights: ArrayLike<number>,
  k: number,
  out: Float32Array,
  ws: Workspace,
  mm: MatmulFn = defaultKernels().matmul,
): void {
  out.fill(0, 0, T * hidden);
  const E = experts.length;
  // Bucket (token, slot) pairs by expert with a counting sort: no per-call allocation.
  const counts = ws.i32("moe.counts", E + 1);
  counts.fill(0);
  for (let i = 0; i < T * k; i++) counts[ids[i]! + 1]!++;
  for (let e = 0; e < E; e++) counts[e + 1]! += counts[e]!;
  const order = ws.i32("moe.order", T * k);
  const fill = ws.i32("moe.fill", E);
  fill.set(counts.subarray(0, E));
  for (let i = 0; i < T * k; i++) order[fill[ids[i]!]!++] = i;
  for (let e = 0; e < E; e++) {
    const n = counts[e + 1]! - counts[e]!;
    if (n === 0) continue;
    const w = experts[e];
    if (w === null || w === undefined) throw new Error(`expert ${e} is not held by this process`);
    const xs = ws.f32("moe.x", n * hidden); // [n, hidden] the tokens routed to expert e
    const ys = ws.f32("moe.y", n * hidden); // [n, hidden]
    for (let i = 0; i < n; i++) {
      const t = Math.floor(order[counts[e]! + i]! / k);
      xs.set(x.subarray(t * hidden, (t + 1) * hidden), i * hidden);
    }
    mlpForward(w, xs, n, ys, ws, mm);
    for (let i = 0; i < n; i++) {
      const slot = order[counts[e]! + i]!;
      const t = Math.floor(slot / k);
      const g = weights[slot]!;
      for (let c = 0; c < hidden; c++) out[t * hidden + c] = out[t * hidden + c]! + g * ys[i * hidden + c]!;
    }
  }
}

/** All routed experts in this process (single-process serving and tests). */
export class LocalExpertExecutor implements ExpertExecutor {
  private readonly moeByLayer: ReadonlyMap<number, MoeWeights>;
  private readonly hidden: number;
  private readonly k: number;
  private readonly ws: Workspace;
  private readonly mm: MatmulFn;

  /** `mm`: the linear kernel (the model's MatmulPool kernel when it uses threads). */
  constructor(moeByLayer: ReadonlyMap<number, MoeWeights>, hidden: number, k: number, ws: Workspace, mm: MatmulFn = defaultKernels().matmul) {
    this.moeByLayer = moeByLayer;
    this.hidden = hidden;
    this.k = k;
    this.ws = ws;
    this.mm = mm;
  }

  async runRouted(layer: number, x: Float32Array, T: number, ids: Int32Array, weights: Float32Array, out: Float32Array): Promise<void> {
    const moe = this.moeByLayer.get(layer);
    if (moe === undefined) throw new Error(`layer ${layer} has no routed experts`);
    computeRoutedExperts(moe.experts, x, T, this.hidden, ids, weights, this.k, out, this.ws, this.mm);
  }
}
