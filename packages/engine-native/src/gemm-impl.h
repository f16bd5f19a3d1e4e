// The dense float32 product training runs on (GemmArgs in kernels.h), compiled once per instruction set after
// kernels-impl.h.
//
// Numerics: C[i, j] is one fused multiply-add chain, s = fma(A(i, p), B(j, p), s) for p ascending from s = 0, then
// stored (or added to C once). Nothing else enters it: the blocks, the tile an element falls in, the thread that
// computes it and the instruction set change which elements are computed together, never an element's operations.
// So a product's bits depend on its operands only (training's thread and replica invariance rests on this).
//
// Shape: the usual packed GEMM. Per item (a block of GEMM_MC rows by GEMM_NC columns of C), for each block of
// GEMM_KC along p, A's rows and B's columns are copied into panels laid out p-major, so the micro-kernel's inner loop
// reads GEMM_NR contiguous floats of B and broadcasts GEMM_MR floats of A into GEMM_MR x GEMM_NR accumulators held in
// registers. The partial sums between p blocks wait in a per-thread tile (a float's store and reload are exact).
#pragma once
#include "kernels-impl.h"

namespace MOELA_ISA_NS {

#if defined(MOELA_ISA_AVX512)
// 12 x 2 vectors of sums + 2 of B + a broadcast: 27 of the 32 registers.
static const int GEMM_MR = 12;
static const int GEMM_NV = 2;
#elif defined(MOELA_ISA_AVX2)
// A V is two of AVX2's 16 registers: 6 x 1 vectors of sums (12) + B (2) + a broadcast.
static const int GEMM_MR = 6;
static const int GEMM_NV = 1;
#else
static const int GEMM_MR = 4;
static const int GEMM_NV = 1;
#endif
static const int GEMM_NR = 16 * GEMM_NV;
/** p per block: a micro-panel of B (GEMM_KC x GEMM_NR floats, 32 KiB on AVX-512) stays in L1 across a block's rows. */
static const int GEMM_KC = 256;
/** Rows per item: the packed A block (GEMM_MC x GEMM_KC) stays in L2 while B's micro-panels go by. */
static const int GEMM_MC = GEMM_MR * 8;
/** Columns per item. */
static const int GEMM_NC = 512;

static thread_local Scratch gemmA = {nullptr, 0};
static thread_local Scratch gemmB = {nullptr, 0};
static thread_local Scratch gemmTile = {nullptr, 0};

/** out[panel][p * R + r] = X(x0 + panel * R + r, p0 + p) for rows below n (rows past n are 0): R rows a panel. */
template <int R>
static void gemm_pack(const float* X, size_t rs, size_t cs, int x0, int n, int p0, int kc, float* out) {
  for (int r0 = 0; r0 < n; r0 += R) {
    const int nr = imin(R, n - r0);
    float* o = out + (size_t)r0 * kc;
    if (cs == 1) {
      // p contiguous in each source row: walk a row, write every R-th float.
      for (int r = 0; r < nr; r++) {
        const float* src = X + (size_t)(x0 + r0 + r) * rs + p0;
        for (int p = 0; p < kc; p++) o[(size_t)p * R + r] = src[p];
      }
      for (int r = nr; r < R; r++)
        for (int p = 0; p < kc; p++) o[(size_t)p * R + r] = 0.0f;
    } else {
      // Rows contiguous at each p (rs == 1 for a transposed operand): copy R at a time.
      for (int p = 0; p < kc; p++) {
        const float* src = X + (size_t)(p0 + p) * cs + (size_t)(x0 + r0) * rs;
        float* d = o + (size_t)p * R;
        int r = 0;
        if (rs == 1)
          for (; r < nr; r++) d[r] = src[r];
        else
          for (; r < nr; r++) d[r] = src[(size_t)r * rs];
        for (; r < R; r++) d[r] = 0.0f;
      }
    }
  }
}

/** acc = (first ? 0 : T) + sum over kc of Ap x Bp, into T (GEMM_MR rows, GEMM_NR columns, row stride ts). */
static void gemm_micro(int kc, const float* Ap, const float* Bp, float* T, int ts, bool first) {
  V acc[GEMM_MR][GEMM_NV];
  MOELA_UNROLL for (int r = 0; r < GEMM_MR; r++)
    MOELA_UNROLL for (int v = 0; v < GEMM_NV; v++) acc[r][v] = first ? vzero() : vload(T + (size_t)r * ts + 16 * v);
  for (int p = 0; p < kc; p++) {
    V b[GEMM_NV];
    MOELA_UNROLL for (int v = 0; v < GEMM_NV; v++) b[v] = vload(Bp + (size_t)p * GEMM_NR + 16 * v);
    const float* a = Ap + (size_t)p * GEMM_MR;
    MOELA_UNROLL for (int r = 0; r < GEMM_MR; r++) {
      const V ar = vset1(a[r]);
      MOELA_UNROLL for (int v = 0; v < GEMM_NV; v++) acc[r][v] = vfma(ar, b[v], acc[r][v]);
    }
  }
  MOELA_UNROLL for (int r = 0; r < GEMM_MR; r++)
    MOELA_UNROLL for (int v = 0; v < GEMM_NV; v++) vstore(T + (size_t)r * ts + 16 * v, acc[r][v]);
}

static inline int gemm_col_blocks(const GemmArgs* a) { return (a->n + GEMM_NC - 1) / GEMM_NC; }

/** Items: row blocks of GEMM_MC by column blocks of GEMM_NC. */
static int gemm_items(const GemmArgs* a) { return ((a->m + GEMM_MC - 1) / GEMM_MC) * gemm_col_blocks(a); }

static void gemm(const GemmArgs* a, int i0, int i1) {
  const int colBlocks = gemm_col_blocks(a);
  for (int item = i0; item < i1; item++) {
    const int ic = (item / colBlocks) * GEMM_MC, jc = (item % colBlocks) * GEMM_NC;
    const int mc = imin(GEMM_MC, a->m - ic), nc = imin(GEMM_NC, a->n - jc);
    const int mPanels = (mc + GEMM_MR - 1) / GEMM_MR, nPanels = (nc + GEMM_NR - 1) / GEMM_NR;
    // The tile holds whole panels (padding rows and columns are computed from zeros and never stored).
    const int ts = nPanels * GEMM_NR;
    float* T = scratch(&gemmTile, (size_t)mPanels * GEMM_MR * ts);
    if (a->k == 0)
      for (size_t q = 0; q < (size_t)mPanels * GEMM_MR * ts; q++) T[q] = 0.0f;
    for (int pc = 0; pc < a->k; pc += GEMM_KC) {
      const int kc = imin(GEMM_KC, a->k - pc);
      float* Ap = scratch(&gemmA, (size_t)mPanels * GEMM_MR * kc);
      float* Bp = scratch(&gemmB, (size_t)nPanels * GEMM_NR * kc);
      gemm_pack<GEMM_MR>(a->A, a->aRowStride, a->aColStride, ic, mc, pc, kc, Ap);
      gemm_pack<GEMM_NR>(a->B, a->bRowStride, a->bColStride, jc, nc, pc, kc, Bp);
      for (int jp = 0; jp < nPanels; jp++)
        for (int ip = 0; ip < mPanels; ip++)
          gemm_micro(kc, Ap + (size_t)ip * GEMM_MR * kc, Bp + (size_t)jp * GEMM_NR * kc,
                     T + (size_t)ip * GEMM_MR * ts + (size_t)jp * GEMM_NR, ts, pc == 0);
    }
    for (int i = 0; i < mc; i++) {
      float* c = a->C + (size_t)(ic + i) * a->cStride + jc;
      const float* t = T + (size_t)i * ts;
      if (a->accumulate)
        for (int j = 0; j < nc; j++) c[j] = c[j] + t[j];
      else
        for (int j = 0; j < nc; j++) c[j] = t[j];
    }
  }
}

}  // namespace MOELA_ISA_NS
