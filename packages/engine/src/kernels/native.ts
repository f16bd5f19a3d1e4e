/**
 * The `fast` backend: the native kernels of @moela/engine-native (AVX-512, AVX2 or portable C, chosen at load
 * time), with float32 fused multiply-add accumulation in a fixed lane order and a process-wide thread pool.
 */
import { nativeKernels, nativeLoadError, type NativeKernels, type NativeProductArgs } from "@moela/engine-native";
import type { WeightMatrix } from "../tensor/matrix.js";
import type { MlpWeights } from "../weights.js";
import type { MlpScratch } from "../layers/mlp.js";
import type { AttendArgs, GroupedLayout, KernelBackend, TransposedLayout } from "./types.js";

/** mlpGroup's per-entry ints: n, row0, then (kind, rows, cols, blockRows, blockCols) of gate, up, down. */
const MLP_META = 17;

const KIND = { f32: 0, bf16: 1, f16: 2, fp8: 3 } as const;

function scaleOf(w: WeightMatrix): Float32Array | null {
  return w.kind === "fp8" ? w.scaleInv : null;
}
function blockRows(w: WeightMatrix): number {
  return w.kind === "fp8" ? w.blockRows : 0;
}
function blockCols(w: WeightMatrix): number {
  return w.kind === "fp8" ? w.blockCols : 0;
}

/** The addon's argument lists, built once for the synchronous and the asynchronous call alike. */
function matmulArgs(w: WeightMatrix, x: Float32Array, T: number, y: Float32Array, l?: GroupedLayout): NativeProductArgs {
  const nRows = l?.nRows ?? w.rows;
  const yStride = l?.yStride === undefined || l.yStride < 0 ? nRows : l.yStride;
  return [
    KIND[w.kind],
    w.data,
    scaleOf(w),
    w.rows,
    w.cols,
    blockRows(w),
    blockCols(w),
    x,
    l?.xOff ?? 0,
    l?.xStride ?? w.cols,
    T,
    y,
    l?.yOff ?? 0,
    yStride,
    l?.r0 ?? 0,
    nRows,
    l?.groups ?? 1,
    l?.rowStep ?? 0,
    l?.xStep ?? 0,
    l?.yStep ?? 0,
  ];
}

/** matmulT takes matmul's argument list (NativeProductArgs), with v and out where matmul has x and y. */
function matmulTArgs(w: WeightMatrix, v: Float32Array, T: number, out: Float32Array, l: TransposedLayout = {}): NativeProductArgs {
  const n = l.n ?? w.rows;
  return matmulArgs(w, v, T, out, {
    xOff: l.vOff ?? 0,
    xStride: l.vStride ?? n,
    yOff: l.outOff ?? 0,
    yStride: l.outStride ?? w.cols,
    r0: l.r0 ?? 0,
    nRows: n,
    groups: l.groups ?? 1,
    rowStep: l.rowStep ?? 0,
    xStep: l.vStep ?? 0,
    yStep: l.outStep ?? 0,
  });
}

function attendArgs(a: AttendArgs): Parameters<NativeKernels["attend"]> {
  return [
    a.qa,
    a.qaOff,
    a.qaTok,
    a.qaHead,
    a.lenA,
    a.qb,
    a.qbOff,
    a.qbTok,
    a.qbHead,
    a.lenB,
    a.ka,
    a.kaOff,
    a.kaPos,
    a.kaHead,
    a.kb,
    a.kbOff,
    a.kbPos,
    a.kbHead,
    a.val,
    a.valOff,
    a.valPos,
    a.valHead,
    a.lenV,
    a.out,
    a.outOff,
    a.outTok,
    a.outHead,
    a.n,
    a.H,
    a.start,
    a.scale,
    a.blockTable ?? null,
    a.blockSize ?? 0,
  ];
}

function mlpGroupArgs(
  group: readonly MlpWeights[],
  counts: ArrayLike<number>,
  x: Float32Array,
  out: Float32Array,
  scratch: MlpScratch,
): Parameters<NativeKernels["mlpGroup"]> {
  const arrays: (Float32Array | Uint16Array | Uint8Array | null)[] = [];
  const meta = scratch.meta.get(group.length * MLP_META);
  let row0 = 0;
  let floats = 0; // of g and u each: sum of tokens * intermediate size
  group.forEach((m, e) => {
    const tokens = counts[e]!;
    const o = e * MLP_META;
    meta[o] = tokens;
    meta[o + 1] = row0;
    [m.gate, m.up, m.down].forEach((w, k) => {
      arrays.push(w.data, scaleOf(w));
      meta.set([KIND[w.kind], w.rows, w.cols, blockRows(w), blockCols(w)], o + 2 + 5 * k);
    });
    row0 += tokens;
    floats += tokens * m.gate.rows;
  });
  return [arrays, meta, x, out, scratch.gate.get(floats), scratch.up.get(floats)];
}

/** The fast backend over an addon: the one that loaded, or another build of it (scripts/bench/kernels-ab.ts). */
export function fastBackendOver(n: NativeKernels): KernelBackend {
  return {
    name: "fast",
    get isa() {
      return n.isa();
    },
    matmul: (w, x, T, y, l) => n.matmul(...matmulArgs(w, x, T, y, l)),
    matmulT: (w, v, T, out, l) => n.matmulT(...matmulTArgs(w, v, T, out, l)),
    attend: (a) => n.attend(...attendArgs(a)),
    mlpGroup: (group, counts, x, out, scratch) => n.mlpGroup(...mlpGroupArgs(group, counts, x, out, scratch)),
    matmulAsync: (w, x, T, y, l) => n.matmulAsync(...matmulArgs(w, x, T, y, l)),
    matmulTAsync: (w, v, T, out, l) => n.matmulTAsync(...matmulTArgs(w, v, T, out, l)),
    attendAsync: (a) => n.attendAsync(...attendArgs(a)),
    mlpGroupAsync: (group, counts, x, out, scratch) => n.mlpGroupAsync(...mlpGroupArgs(group, counts, x, out, scratch)),
    logSumExp: (logits, out) => n.logSumExp(logits, 0, logits.length, out),
    sampler: {
      argmax: (logits) => n.argmax(logits, 0, logits.length),
      softmaxWeights: (logits, ids, count, max, invT, minP, out) => n.softmaxWeights(logits, ids, count, max, invT, minP, out),
      nucleus: (logits, ids, weights, count, needed) => n.nucleus(logits, ids, weights, count, needed),
    },
    threadsAreProcessWide: true,
    callerOnly: () => {
      if (callerOnlyHolds++ === 0) n.setCallerOnly(true);
      let released = false;
      return () => {
        if (released) return;
        released = true;
        if (--callerOnlyHolds === 0) n.setCallerOnly(false);
      };
    },
  };
}

/** callerOnly's holds in this process (the addon's switch is process-wide). */
let callerOnlyHolds = 0;

/** The fast backend, or null (with `fastUnavailable` saying why) when the addon did not build or load. */
export const fastKernels: KernelBackend | null = nativeKernels === null ? null : fastBackendOver(nativeKernels);
export const fastUnavailable: Error | null = nativeLoadError;
/** The addon itself (instruction-set choice and the thread pool), when loaded. */
export const native: NativeKernels | null = nativeKernels;
