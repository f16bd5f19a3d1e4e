/**
 * Routed experts computed in this process: the engine's own ExpertExecutor (used by `moela generate`)
 * and the kernel an expert-host runs over its shard.
 */
import type { ExpertExecutor } from "../ports.js";
import type { MlpWeights, MoeWeights } from "../weights.js";
import { ScratchBuffer } from "../workspace.js";
import { createMlpScratch, mlpForwardGroup, mlpForwardGroupAsync, type MlpScratch } from "./mlp.js";
import { defaultKernels } from "../kernels/index.js";
import type { KernelBackend } from "../kernels/types.js";
import type { MatmulFn } from "../tensor/parallel.js";

/**
 * The routed-expert helpers' scratch, each buffer grown to the largest call (E experts, P routed entries), and
 * their experts' MLP scratch (the same object, so one scratch serves a whole expert group).
 */
export interface ExpertScratch extends MlpScratch {
  readonly fill: ScratchBuffer<Int32Array>; // [E] bucketByExpert's next free slot per bucket
  readonly sizes: ScratchBuffer<Int32Array>; // [E] token counts of the experts with tokens
  readonly xs: ScratchBuffer<Float32Array>; // [P, hidden] every entry's token row, grouped by expert
  readonly ys: ScratchBuffer<Float32Array>; // [P, hidden] the experts' outputs, in xs's order
}

export function createExpertScratch(): ExpertScratch {
  return { ...createMlpScratch(), fill: ScratchBuffer.i32(), sizes: ScratchBuffer.i32(), xs: ScratchBuffer.f32(), ys: ScratchBuffer.f32() };
}

/** Counting sort of entries [0, P) by expert id: bucket e is order[start[e] .. start[e+1]), entries ascending within it. */
export function bucketByExpert(E: number, ids: ArrayLike<number>, P: number, start: Int32Array, order: Int32Array, scratch: ExpertScratch): void {
  start.fill(0, 0, E + 1);
  for (let i = 0; i < P; i++) start[ids[i]! + 1]!++;
  for (let e = 0; e < E; e++) start[e + 1]! += start[e]!;
  const fill = scratch.fill.get(E);
  fill.set(start.subarray(0, E));
  for (let i = 0; i < P; i++) order[fill[ids[i]!]!++] = i;
}

/**
 * What runExpertGroup computes: entries `order` grouped by expert (bucket e is order[start[e] .. start[e+1])),
 * entry p naming token tokenOf(p) with weight weights[p]; out [T, hidden] gets the weighted sum per token.
 */
export interface ExpertGroupArgs {
  readonly experts: ReadonlyArray<MlpWeights | null>;
  readonly x: Float32Array; // [tokens, hidden]
  readonly hidden: number;
  readonly start: Int32Array; // [E + 1] bucket starts
  readonly order: Int32Array; // [P] entries grouped by expert
  readonly weights: ArrayLike<number>; // [P]
  readonly T: number;
  readonly out: Float32Array; // [T, hidden]
  /** The scratch of the whole group (named `ws`: callers pass their Workspace, which is an ExpertScratch). */
  readonly ws: ExpertScratch;
  readonly kernels: KernelBackend;
  /** The linear kernel of the TypeScript backends. */
  readonly mm: MatmulFn;
  /** The token row of entry p (floor(p / k) for a [T, k] routing). */
  readonly tokenOf: (entry: number) => number;
  /**
   * An MLP that every token row of x goes through unweighted, computed as one more entry of the same group (one
   * process's shared expert): out [T, hidden], overwritten. Each entry's rows are computed alone, so its bits are
   * those of a group of its own.
   */
  readonly shared?: { readonly mlp: MlpWeights; readonly out: Float32Array };
}

/** The shared tail of computeRoutedExperts and an expert-host's partial sum: every expert once over its tokens, then the sum. */
export function runExpertGroup(g: ExpertGroupArgs): void {
  const grouped = gatherExpertGroup(g);
  mlpForwardGroup(grouped.group, grouped.sizes, grouped.xs, grouped.ys, g.ws, g.kernels, g.mm);
  addExpertGroup(g, grouped.ys);
}

/** runExpertGroup with the experts' products off the event loop from `offLoopMinWork` multiply-adds (mlpForwardGroupAsync). */
export async function runExpertGroupAsync(g: ExpertGroupArgs, offLoopMinWork: number): Promise<void> {
  const grouped = gatherExpertGroup(g);
  await mlpForwardGroupAsync(grouped.group, grouped.sizes, grouped.xs, grouped.ys, g.ws, g.kernels, g.mm, offLoopMinWork);
  addExpertGroup(g, grouped.ys);
}

/**
 * The experts with tokens, their token counts, and every entry's token row gathered by expert; then, with
 * g.shared, the shared MLP as one more entry over the T token rows.
 */
function gatherExpertGroup(g: ExpertGroupArgs): { group: MlpWeights[]; sizes: Int32Array; xs: Float32Array; ys: Float32Array } {
  const { experts, x, hidden, start, order, ws, tokenOf, T, shared } = g;
  const E = experts.length;
  const P = start[E]!;
  const rows = P + (shared ? T : 0);
  const group: MlpWeights[] = [];
  const sizes = ws.sizes.get(E + 1);
  for (let e = 0; e < E; e++) {
    const n = start[e + 1]! - start[e]!;
    if (n === 0) continue;
    const w = experts[e];
    if (w === null || w === undefined) throw new Error(`expert ${e} is not held by this process`);
    sizes[group.length] = n;
    group.push(w);
  }
  const xs = ws.xs.get(rows * hidden); // [rows, hidden] every entry's token, grouped by expert, then the shared MLP's
  for (let i = 0; i < P; i++) {
    const t = tokenOf(order[i]!);
    xs.set(x.subarray(t * hidden, (t + 1) * hidden), i * hidden);
  }
  if (shared && T > 0) {
    sizes[group.length] = T;
    group.push(shared.mlp);
    xs.set(x.subarray(0, T * hidden), P * hidden);
  }
  return { group, sizes: sizes.subarray(0, group.length), xs, ys: ws.ys.get(rows * hidden) };
}

/**
 * out[t] = sum of weight * expert output over t's entries, in ascending expert id (the buckets' order); the shared
 * MLP's rows (after the routed entries' P rows of ys) into g.shared.out. ys: [P (+ T), hidden].
 */
function addExpertGroup(g: ExpertGroupArgs, ys: Float32Array): void {
  const { order, weights, hidden, T, out, tokenOf, start, experts, shared } = g;
  out.fill(0, 0, T * hidden);
  const P = start[experts.length]!;
  if (shared) shared.out.set(ys.subarray(P * hidden, (P + T) * hidden));
  for (let i = 0; i < P; i++) {
    const p = order[i]!;
    const t = tokenOf(p);
    const w = weights[p]!;
    for (let c = 0; c < hidden; c++) out[t * hidden + c] = out[t * hidden + c]! + w * ys[i * hidden + c]!;
  }
}

/** All routed experts in this process (single-process serving and tests). */
export class LocalExpertExecutor implements ExpertExecutor {
  readonly computesSharedExpert = true;
  private readonly moeByLayer: ReadonlyMap<number, MoeWeights>;
  private readonly hidden: number;
  private readonly k: number;
  private readonly scratch: ExpertScratch;
  /** runRouted's buckets: [E + 1] bucket starts, [T * k] entries grouped by expert. */
  private readonly buckets = { start: ScratchBuffer.i32(), order: ScratchBuffer.i32() };
  private readonly kernels: KernelBackend;
  private readonly mm: MatmulFn;
  /** Multiply-adds from which the experts' products run off the event loop (Infinity: never). */
  private readonly offLoopMinWork: number;

  /** `mm`: the linear kernel of the TypeScript backends (the model's MatmulPool kernel when it uses threads). */
  constructor(
    moeByLayer: ReadonlyMap<number, MoeWeights>,
    hidden: number,
    k: number,
    scratch: ExpertScratch,
    kernels: KernelBackend = defaultKernels(),
    mm: MatmulFn = kernels.matmul,
    offLoopMinWork = Infinity,
  ) {
    this.moeByLayer = moeByLayer;
    this.hidden = hidden;
    this.k = k;
    this.scratch = scratch;
    this.kernels = kernels;
    this.mm = mm;
    this.offLoopMinWork = offLoopMinWork;
  }

  /**
   * With sharedOut, the layer's shared expert goes into the same group of products as the routed experts (one job
   * for the kernel threads instead of two, the same bits as computed alone); a layer without one gives zeros.
   */
  async runRouted(
    layer: number,
    x: Float32Array,
    T: number,
    ids: Int32Array,
    weights: Float32Array,
    out: Float32Array,
    sharedOut?: Float32Array,
  ): Promise<void> {
    const moe = this.moeByLayer.get(layer);
    if (moe === undefined) throw new Error(`layer ${layer} has no routed experts`);
    if (sharedOut !== undefined && moe.shared === null) sharedOut.fill(0, 0, T * this.hidden);
    const start = this.buckets.start.get(moe.experts.length + 1);
    const order = this.buckets.order.get(T * this.k);
    bucketByExpert(moe.experts.length, ids, T * this.k, start, order, this.scratch);
    const k = this.k;
    const g = {
      experts: moe.experts,
      x,
      hidden: this.hidden,
      start,
      order,
      weights,
      T,
      out,
      ws: this.scratch,
      kernels: this.kernels,
      mm: this.mm,
      tokenOf: (p: number) => Math.floor(p / k),
      ...(sharedOut !== undefined && moe.shared !== null ? { shared: { mlp: moe.shared, out: sharedOut } } : {}),
    };
    await runExpertGroupAsync(g, this.offLoopMinWork);
  }
}
