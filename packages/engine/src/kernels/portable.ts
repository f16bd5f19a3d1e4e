/**
 * The `portable` backend: the fast backend's algorithms (all heads' absorption in one product, attention over
 * the latent rows by one kernel) in TypeScript with float64 accumulation, for machines where the native
 * kernels did not build. The linear kernel is the reference `matmul`, so a portable model's linear layers give
 * the reference bits; only attention differs (it never forms per-head rows in doubles).
 */
import { decodeRow, matmul, type WeightMatrix } from "../tensor/matrix.js";
import type { AttendArgs, GroupedLayout, GroupedMatmulFn, KernelBackend, TransposedLayout } from "./types.js";
import type { MatmulFn } from "../tensor/parallel.js";
import { softmaxExp } from "../tensor/softmax.js";

/** A grouped matmul from a plain one: one call per group (each call's elements are computed independently). */
export function groupedMatmul(mm: MatmulFn): GroupedMatmulFn {
  return (w, x, T, y, layout) => {
    const groups = layout?.groups ?? 1;
    if (groups === 1 || layout === undefined) {
      mm(w, x, T, y, layout);
      return;
    }
    const base: GroupedLayout = layout;
    for (let g = 0; g < groups; g++) {
      mm(w, x, T, y, {
        xStride: base.xStride ?? w.cols,
        yStride: base.yStride ?? base.nRows ?? w.rows,
        nRows: base.nRows ?? w.rows,
        r0: (base.r0 ?? 0) + g * (base.rowStep ?? 0),
        xOff: (base.xOff ?? 0) + g * (base.xStep ?? 0),
        yOff: (base.yOff ?? 0) + g * (base.yStep ?? 0),
      });
    }
  };
}

let rowScratch = new Float64Array(1024);
let accScratch = new Float64Array(1024);
let scoreScratch = new Float64Array(1024);

/** out[t, c] = sum_i v[t, i] * w[r0 + i, c], i ascending, in doubles. */
export function matmulTransposed(w: WeightMatrix, v: Float32Array, T: number, out: Float32Array, layout: TransposedLayout = {}): void {
  const cols = w.cols;
  const n = layout.n ?? w.rows;
  const vStride = layout.vStride ?? n;
  const outStride = layout.outStride ?? cols;
  if (rowScratch.length < cols) rowScratch = new Float64Array(cols);
  if (accScratch.length < T * cols) accScratch = new Float64Array(T * cols);
  const row = rowScratch;
  const acc = accScratch;
  for (let g = 0; g < (layout.groups ?? 1); g++) {
    const r0 = (layout.r0 ?? 0) + g * (layout.rowStep ?? 0);
    const vOff = (layout.vOff ?? 0) + g * (layout.vStep ?? 0);
    const outOff = (layout.outOff ?? 0) + g * (layout.outStep ?? 0);
    acc.fill(0, 0, T * cols);
    for (let i = 0; i < n; i++) {
      decodeRow(w, r0 + i, row);
      for (let t = 0; t < T; t++) {
        const a = v[vOff + t * vStride + i]!;
        const o = t * cols;
        for (let c = 0; c < cols; c++) acc[o + c] = acc[o + c]! + a * row[c]!;
      }
    }
    for (let t = 0; t < T; t++) for (let c = 0; c < cols; c++) out[outOff + t * outStride + c] = acc[t * cols + c]!;
  }
}

/** The row of position p: paged through the block table when there is one. */
function rowOf(a: AttendArgs, p: number): number {
  if (a.blockTable === undefined) return p;
  const bs = a.blockSize!;
  return a.blockTable[Math.floor(p / bs)]! * bs + (p % bs);
}

/** AttendArgs' causal softmax attention, in doubles. */
export function attendTs(a: AttendArgs): void {
  if (scoreScratch.length < a.start + a.n) scoreScratch = new Float64Array(a.start + a.n);
  if (accScratch.length < a.lenV) accScratch = new Float64Array(a.lenV);
  const s = scoreScratch;
  const o = accScratch;
  for (let j = 0; j < a.n; j++) {
    const upto = a.start + j + 1;
    for (let h = 0; h < a.H; h++) {
      const qa = a.qaOff + j * a.qaTok + h * a.qaHead;
      const qb = a.qbOff + j * a.qbTok + h * a.qbHead;
      for (let p = 0; p < upto; p++) {
        const row = rowOf(a, p);
        const ka = a.kaOff + row * a.kaPos + h * a.kaHead;
        const kb = a.kbOff + row * a.kbPos + h * a.kbHead;
        let sc = 0;
        for (let r = 0; r < a.lenA; r++) sc += a.qa[qa + r]! * a.ka[ka + r]!;
        for (let r = 0; r < a.lenB; r++) sc += a.qb[qb + r]! * a.kb[kb + r]!;
        s[p] = sc * a.scale;
      }
      const z = softmaxExp(s, 0, s, upto);
      o.fill(0, 0, a.lenV);
      for (let p = 0; p < upto; p++) {
        const e = s[p]!;
        const vo = a.valOff + rowOf(a, p) * a.valPos + h * a.valHead;
        for (let c = 0; c < a.lenV; c++) o[c] = o[c]! + e * a.val[vo + c]!;
      }
      const out = a.outOff + j * a.outTok + h * a.outHead;
      for (let c = 0; c < a.lenV; c++) a.out[out + c] = o[c]! / z;
    }
  }
}

export const portableKernels: KernelBackend = {
  name: "portable",
  isa: "typescript",
  matmul: groupedMatmul(matmul),
  matmulT: matmulTransposed,
  attend: attendTs,
  threadsAreProcessWide: false,
};

/** The reference backend's products (its attention is the model's own per-head float64 code). */
export const referenceKernels: KernelBackend = { ...portableKernels, name: "reference" };
