// The kernels, written once over simd.h and compiled once per instruction set (isa-*.cc).
//
// Numerics (the contract the engine's invariance tests rest on): an output element is computed from its own
// weight row and input row only, by the same sequence of operations whatever the batch, the tile it falls in,
// the thread that computes it or the instruction set:
//   matmul: lane j of 16 accumulates w[c] * x[c] for c = j mod 16 by fused multiply-add, c ascending. An FP8
//           weight accumulates each 128-column scale block into fresh lanes p, then acc = fma(p, scale, acc);
//           the lanes are summed by vsum's fixed tree. Rows and tokens beyond the edge of a tile are padded
//           with copies of real ones, never mixed into real results.
//   matmul_t: out[c] accumulates v[i] * w[i, c] by fused multiply-add, i ascending (FP8: w = code * scale).
//   attend: scores by 16-lane dots (vsum's tree), softmax with the max subtracted, exp by vexp_nonpositive's
//           float32 polynomial and the sum in 16 double lanes (vdsum's tree), the weighted sum of values by fused
//           multiply-add over positions ascending, then one multiply by 1/z (heads and a sequence's tokens are
//           grouped only to share the reads of a position's row, never in the arithmetic).
#pragma once
#include "kernels.h"
#include "simd.h"
#include <stdlib.h>

namespace MOELA_ISA_NS {

MOELA_INLINE int imin(int a, int b) { return a < b ? a : b; }

/** 16 weights of kind K at element offset `off`, widened to float32 (FP8: code * 2^-8, see simd.h). */
template <int K>
MOELA_INLINE V wload(const void* base, size_t off) {
  if (K == W_F32) return vload((const float*)base + off);
  if (K == W_BF16) return vload_bf16((const uint16_t*)base + off);
  if (K == W_F16) return vload_f16((const uint16_t*)base + off);
  return vload_e4m3((const uint8_t*)base + off);
}
template <int K>
MOELA_INLINE V wload_n(const void* base, size_t off, int n) {
  if (K == W_F32) return vload_n((const float*)base + off, n);
  if (K == W_BF16) return vload_bf16_n((const uint16_t*)base + off, n);
  if (K == W_F16) return vload_f16_n((const uint16_t*)base + off, n);
  return vload_e4m3_n((const uint8_t*)base + off, n);
}

/** Grow-only scratch owned by the calling thread (never freed: one per kernel thread, reused forever). */
struct Scratch {
  float* p;
  size_t n;
};
static float* scratch(Scratch* s, size_t n) {
  if (s->n < n) {
    free(s->p);
    s->p = (float*)malloc(n * sizeof(float));
    s->n = s->p ? n : 0;
    if (!s->p) abort();
  }
  return s->p;
}
static thread_local Scratch panelScratch = {nullptr, 0};
static thread_local Scratch scoreScratch = {nullptr, 0};

// A tile's shape: TILE_ROWS weight rows by up to TILE_TOKENS tokens, each pair with its own accumulator, plus (for
// FP8) a second set for the current scale block. AVX-512's 32 registers take a 4 x 4 tile's partial sums. AVX2 has
// 16, and a V takes two of them, so there a 4 x 4 tile (or the FP8 loop's 32-code pairs of vectors) went through the
// stack on every step; an FP8 tile of 2 x 2 fits, and so do 4 rows without the second set (other kinds) or with one
// token. The shape only groups outputs: each output's operations and their order are the same whatever the shape
// (see the top of this file). scripts/bench/kernels-ab.ts measured each choice against the 4 x 4 tile.
// On a widened panel, AVX2 takes tile_halves instead (4 rows x 2 tokens, one half of the lanes at a time), and FP8 over
// 3 or 4 tokens one row by all of them (each row widened once; 2 x 2 tiles widened it twice).
#if defined(MOELA_ISA_AVX2)
// Unrolled before GCC decides where arrays live, so the accumulator arrays stay in registers.
#define MOELA_UNROLL _Pragma("GCC unroll 16")
static const int TILE_ROWS = 2;
static const int TILE_ROWS_UNSCALED = 4;  // without FP8's second set of sums
static const int TILE_ROWS_1 = 4;  // rows of a one-token tile
static const int TILE_TOKENS = 2;
static const bool FP8_PAIRS = false;
static const bool ONE_TOKEN_ROW_BY_ROW = true;  // dot_span: see there
#else
#define MOELA_UNROLL
static const int TILE_ROWS = 4;
static const int TILE_ROWS_UNSCALED = 4;
static const int TILE_ROWS_1 = 4;
static const int TILE_TOKENS = 4;
static const bool FP8_PAIRS = true;
static const bool ONE_TOKEN_ROW_BY_ROW = false;
#endif

/** a[r][t] += w_r[c..c1) * x_t[c..c1), 16 lanes, c ascending. */
template <int K, int RB, int TB>
MOELA_INLINE void dot_span(V (&a)[RB][TB], const void* w, const size_t* rowOff, const float* const* xs, int c, int c1, size_t pfAhead) {
  const int esize = K == W_FP8 ? 1 : K == W_F32 ? 4 : 2;
  if (K == W_FP8 && FP8_PAIRS) {
    // Two vectors of codes per step (decoding 32 at once is cheaper); the same operations in the same order.
    for (; c + 32 <= c1; c += 32) {
      V lo[RB], hi[RB];
      if (pfAhead > 0 && (c & 63) == 0)
        MOELA_UNROLL for (int r = 0; r < RB; r++) __builtin_prefetch((const char*)w + rowOff[r] + c + pfAhead, 0, 3);
      MOELA_UNROLL for (int r = 0; r < RB; r++) vload2_e4m3((const uint8_t*)w + rowOff[r] + c, &lo[r], &hi[r]);
      MOELA_UNROLL for (int t = 0; t < TB; t++) {
        const V xv = vload(xs[t] + c);
        MOELA_UNROLL for (int r = 0; r < RB; r++) a[r][t] = vfma(lo[r], xv, a[r][t]);
      }
      MOELA_UNROLL for (int t = 0; t < TB; t++) {
        const V xv = vload(xs[t] + c + 16);
        MOELA_UNROLL for (int r = 0; r < RB; r++) a[r][t] = vfma(hi[r], xv, a[r][t]);
      }
    }
  }
  for (; c + 16 <= c1; c += 16) {
    V wv[RB];
    if (pfAhead > 0 && ((c * esize) & 63) == 0)
      MOELA_UNROLL for (int r = 0; r < RB; r++) __builtin_prefetch((const char*)w + (rowOff[r] + c) * esize + pfAhead, 0, 3);
    if (TB == 1 && ONE_TOKEN_ROW_BY_ROW) {
      // One token: each row's weights used as soon as they are widened, so only one row's are live at a time (on
      // AVX2, four rows' widened weights and the sums took more than its 16 registers).
      const V xv = vload(xs[0] + c);
      MOELA_UNROLL for (int r = 0; r < RB; r++) a[r][0] = vfma(wload<K>(w, rowOff[r] + c), xv, a[r][0]);
      continue;
    }
    MOELA_UNROLL for (int r = 0; r < RB; r++) wv[r] = wload<K>(w, rowOff[r] + c);
    MOELA_UNROLL for (int t = 0; t < TB; t++) {
      const V xv = vload(xs[t] + c);
      MOELA_UNROLL for (int r = 0; r < RB; r++) a[r][t] = vfma(wv[r], xv, a[r][t]);
    }
  }
  if (c < c1) {
    const int n = c1 - c;
    V wv[RB];
    MOELA_UNROLL for (int r = 0; r < RB; r++) wv[r] = wload_n<K>(w, rowOff[r] + c, n);
    MOELA_UNROLL for (int t = 0; t < TB; t++) {
      const V xv = vload_n(xs[t] + c, n);
      MOELA_UNROLL for (int r = 0; r < RB; r++) a[r][t] = vfma(wv[r], xv, a[r][t]);
    }
  }
}

/**
 * out[r * TB + t] = row r . token t for RB rows and TB tokens. SCALED: per block of bcols columns, the block's
 * partial lanes times the row's scale for that block (scl[r][block]).
 */
template <int K, bool SCALED, int RB, int TB>
static void tile(const void* w, const size_t* rowOff, int cols, int bcols, const float* const* scl, const float* const* xs, float* out) {
  V acc[RB][TB];
  MOELA_UNROLL for (int r = 0; r < RB; r++)
    MOELA_UNROLL for (int t = 0; t < TB; t++) acc[r][t] = vzero();
  // Where the weights stream from memory (not a widened panel), the next row quad's lines are fetched while this
  // one computes: the hardware prefetchers restart at every quad (seen on Zen 2 and on Sapphire Rapids), and the
  // products then wait on memory.
  const size_t pfAhead = K != W_F32 ? (size_t)4 * cols * (K == W_FP8 ? 1 : 2) : 0;
  if (!SCALED) {
    dot_span<K, RB, TB>(acc, w, rowOff, xs, 0, cols, pfAhead);
  } else {
#if defined(MOELA_ISA_AVX2)
    // AVX2: the scaled sums wait in memory between blocks (a store and its reload are exact). Held in registers
    // next to the block's sums, they left no room for the weights: GCC kept three of a one-token tile's eight block
    // sums on the stack, a load and a store on every multiply-add.
    alignas(32) float accm[RB][TB][16];
    MOELA_UNROLL for (int r = 0; r < RB; r++)
      MOELA_UNROLL for (int t = 0; t < TB; t++) vstore(accm[r][t], acc[r][t]);
#endif
    for (int c0 = 0, b = 0; c0 < cols; c0 += bcols, b++) {
      V p[RB][TB];
      MOELA_UNROLL for (int r = 0; r < RB; r++)
        MOELA_UNROLL for (int t = 0; t < TB; t++) p[r][t] = vzero();
      dot_span<K, RB, TB>(p, w, rowOff, xs, c0, imin(cols, c0 + bcols), pfAhead);
      MOELA_UNROLL for (int r = 0; r < RB; r++) {
        const V s = vset1(scl[r][b] * E4M3_UNSCALE);
#if defined(MOELA_ISA_AVX2)
        MOELA_UNROLL for (int t = 0; t < TB; t++) vstore(accm[r][t], vfma(p[r][t], s, vload(accm[r][t])));
#else
        MOELA_UNROLL for (int t = 0; t < TB; t++) acc[r][t] = vfma(p[r][t], s, acc[r][t]);
#endif
      }
    }
#if defined(MOELA_ISA_AVX2)
    MOELA_UNROLL for (int r = 0; r < RB; r++)
      MOELA_UNROLL for (int t = 0; t < TB; t++) acc[r][t] = vload(accm[r][t]);
#endif
  }
#if defined(MOELA_ISA_AVX512)
  V all[16];
  for (int r = 0; r < RB; r++)
    for (int t = 0; t < TB; t++) all[r * TB + t] = acc[r][t];
  for (int k = RB * TB; k < 16; k++) all[k] = vzero();
  vsum16(all, out);
#else
  // vsum16 is vsum per accumulator on these: reduce only the tile's own.
  MOELA_UNROLL for (int r = 0; r < RB; r++)
    MOELA_UNROLL for (int t = 0; t < TB; t++) out[r * TB + t] = vsum(acc[r][t]);
#endif
}

typedef void (*TileFn)(const void*, const size_t*, int, int, const float* const*, const float* const*, float*);

#if defined(MOELA_ISA_AVX2)
/**
 * tile's product on a widened float32 panel, for AVX2: one 8-lane half of the accumulators at a time (lanes 0..7,
 * then 8..15), so RB x TB partial sums take one register each instead of two. In tile, a 2 x 2 tile's sums held all
 * 16 registers, and GCC loaded every weight and input vector again for each of its two uses (16 loads for 8
 * multiply-adds). Here 4 rows x 2 tokens' sums (8 registers), the two inputs and one weight vector fit, and each
 * loaded vector is used by every multiply-add that needs it. A lane's operations are tile's, in tile's order: lane j
 * of an output accumulates its columns c = j mod 16 ascending (the zero-padded tail included), per scale block into
 * fresh sums then into acc by one multiply-add, then vsum over both halves. scripts/bench/kernels-ab.ts against tile:
 * 1.2-1.7x on FP8 and 1.0-1.2x on BF16 from 16 tokens (Zen 3), the same bits.
 */
template <bool SCALED, int RB, int TB>
static void tile_halves(const void* w, const size_t* rowOff, int cols, int bcols, const float* const* scl, const float* const* xs, float* out) {
  const float* wf = (const float*)w;
  // Both halves' accumulators wait here between blocks (a store and its reload are exact). The halves take turns
  // block by block, so a block's weights and inputs are still in L1 when the second half reads them.
  alignas(32) float sums[2][RB][TB][8];
  for (int half = 0; half < 2; half++)
    for (int r = 0; r < RB; r++)
      for (int t = 0; t < TB; t++) _mm256_store_ps(sums[half][r][t], _mm256_setzero_ps());
  // Unscaled products have no blocks of their own: 128 columns at a time, for the same reason.
  const int step = SCALED ? bcols : 128;
  for (int c0 = 0, b = 0; c0 < cols; c0 += step, b++) {
    const int c1 = imin(cols, c0 + step);
    for (int half = 0; half < 2; half++) {
      const int h = half * 8;
      __m256 p[RB][TB];
      MOELA_UNROLL for (int r = 0; r < RB; r++)
        MOELA_UNROLL for (int t = 0; t < TB; t++) p[r][t] = SCALED ? _mm256_setzero_ps() : _mm256_load_ps(sums[half][r][t]);
      int c = c0;
      for (; c + 16 <= c1; c += 16) {
        __m256 xv[TB];
        MOELA_UNROLL for (int t = 0; t < TB; t++) xv[t] = _mm256_loadu_ps(xs[t] + c + h);
        MOELA_UNROLL for (int r = 0; r < RB; r++) {
          __m256 wv = _mm256_loadu_ps(wf + rowOff[r] + c + h);
          // Held in a register: GCC would otherwise fold the load into each of its TB multiply-adds.
          __asm__("" : "+x"(wv));
          MOELA_UNROLL for (int t = 0; t < TB; t++) p[r][t] = _mm256_fmadd_ps(wv, xv[t], p[r][t]);
        }
      }
      if (c < c1) {
        // tile's tail: both operands zero past the row's end, the multiply-add still applied to every lane.
        const int n = c1 - c - h;
        __m256 xv[TB];
        MOELA_UNROLL for (int t = 0; t < TB; t++) xv[t] = load8_f32_n(xs[t] + c + h, n);
        MOELA_UNROLL for (int r = 0; r < RB; r++) {
          const __m256 wv = load8_f32_n(wf + rowOff[r] + c + h, n);
          MOELA_UNROLL for (int t = 0; t < TB; t++) p[r][t] = _mm256_fmadd_ps(wv, xv[t], p[r][t]);
        }
      }
      MOELA_UNROLL for (int r = 0; r < RB; r++) {
        if (SCALED) {
          const __m256 sv = _mm256_set1_ps(scl[r][b] * E4M3_UNSCALE);
          MOELA_UNROLL for (int t = 0; t < TB; t++)
            _mm256_store_ps(sums[half][r][t], _mm256_fmadd_ps(p[r][t], sv, _mm256_load_ps(sums[half][r][t])));
        } else {
          MOELA_UNROLL for (int t = 0; t < TB; t++) _mm256_store_ps(sums[half][r][t], p[r][t]);
        }
      }
    }
  }
  for (int r = 0; r < RB; r++)
    for (int t = 0; t < TB; t++) out[r * TB + t] = vsum(V{_mm256_load_ps(sums[0][r][t]), _mm256_load_ps(sums[1][r][t])});
}
static const int PANEL_TILE_ROWS = 4;
static const int PANEL_TILE_TOKENS = 2;
template <bool SCALED>
static TileFn panel_tile_for(int tb) {
  return tb == 1 ? tile_halves<SCALED, PANEL_TILE_ROWS, 1> : tile_halves<SCALED, PANEL_TILE_ROWS, PANEL_TILE_TOKENS>;
}
#endif

/** Weight rows per tile of tb tokens; tile_for and matmul's row loop both take it from here. */
static constexpr int tile_rows(bool scaled, int tb) { return tb == 1 ? TILE_ROWS_1 : scaled ? TILE_ROWS : TILE_ROWS_UNSCALED; }
static constexpr int tile_tokens(int tb) { return tb < TILE_TOKENS ? tb : TILE_TOKENS; }

template <int K, bool SCALED>
static TileFn tile_for(int tb) {
  switch (tb) {
    case 1: return tile<K, SCALED, tile_rows(SCALED, 1), 1>;
    case 2: return tile<K, SCALED, tile_rows(SCALED, 2), tile_tokens(2)>;
    case 3: return tile<K, SCALED, tile_rows(SCALED, 3), tile_tokens(3)>;
    default: return tile<K, SCALED, tile_rows(SCALED, 4), tile_tokens(4)>;
  }
}

/**
 * Tokens per block that share one widened weight panel: as many as keep the block's inputs within 256 KiB (in L2
 * while the rows stream by; half the smallest L2 seen on these VMs), 32 to 128, the call's tokens split into equal
 * blocks (multiples of 4, the tile's width). Each block widens every row once, so fewer blocks widen less.
 */
static int token_block(int T, int cols) {
  int most = (256 * 1024) / (cols * (int)sizeof(float));
  most = most < 32 ? 32 : most > 128 ? 128 : most;
  const int blocks = (T + most - 1) / most;
  return ((T + blocks - 1) / blocks + 3) / 4 * 4;
}

/** One weight row widened to float32 (FP8: code * 2^-8, not scaled): the same values the fused loads give. */
template <int K>
static void widen_row_kind(const void* data, size_t off, int cols, float* out) {
  int c = 0;
  for (; c + 16 <= cols; c += 16) vstore(out + c, wload<K>(data, off + c));
  if (c < cols) vstore_n(out + c, wload_n<K>(data, off + c, cols - c), cols - c);
}
static void widen_row(int kind, const void* data, size_t off, int cols, float* out) {
  switch (kind) {
    case W_BF16: widen_row_kind<W_BF16>(data, off, cols, out); break;
    case W_F16: widen_row_kind<W_F16>(data, off, cols, out); break;
    case W_FP8: widen_row_kind<W_FP8>(data, off, cols, out); break;
    default: widen_row_kind<W_F32>(data, off, cols, out); break;
  }
}

static void matmul(const MatmulArgs* a, int i0, int i1) {
  const WeightView& w = a->w;
  const int cols = w.cols;
  const int quads = (a->nRows + 3) / 4;
  const bool fp8 = w.kind == W_FP8;
  const int scaleCols = fp8 ? (cols + w.blockCols - 1) / w.blockCols : 0;
  const int bcols = fp8 ? w.blockCols : cols;
  // Token blocks outside, row quads inside: a block's inputs stay in cache while the thread's rows stream by.
  const int tokenBlock = token_block(a->T, cols);
  for (int tb0 = 0; tb0 < a->T; tb0 += tokenBlock) {
    const int tb1 = imin(a->T, tb0 + tokenBlock);
    // Many tokens: widen the four rows once into a float panel, then every token tile reads the panel.
    const bool panel = w.kind != W_F32 && tb1 - tb0 > 4;
    for (int item = i0; item < i1; item++) {
      const int g = item / quads;
      const int i = (item % quads) * 4;
      const int nr = imin(4, a->nRows - i);
      const float* x = a->x + (size_t)g * a->xStep;
      float* y = a->y + (size_t)g * a->yStep;
      size_t off[4];
      const float* scl[4];
      for (int k = 0; k < 4; k++) {
        const int r = a->r0 + g * a->rowStep + i + imin(k, nr - 1);  // padding rows repeat the last real row
        off[k] = (size_t)r * cols;
        scl[k] = fp8 ? w.scale + (size_t)(r / w.blockRows) * scaleCols : nullptr;
      }
      const void* src = w.data;
      if (panel) {
        // The next quad's rows (this thread's next item, or the next call's in a group of MLPs) are fetched while
        // this panel's tiles compute: otherwise the widening waits on memory at every quad.
        const int next = a->r0 + g * a->rowStep + i + 4;
        if (i + 4 < a->nRows) {
          const char* nb = (const char*)w.data + (size_t)next * cols * (w.kind == W_FP8 ? 1 : 2);
          const size_t bytes = (size_t)imin(4, a->nRows - i - 4) * cols * (w.kind == W_FP8 ? 1 : 2);
          for (size_t b = 0; b < bytes; b += 64) __builtin_prefetch(nb + b, 0, 3);
        }
        float* p = scratch(&panelScratch, (size_t)4 * cols);
        for (int k = 0; k < 4; k++) {
          widen_row(w.kind, w.data, off[k], cols, p + (size_t)k * cols);
          off[k] = (size_t)k * cols;
        }
        src = p;
      }
#if defined(MOELA_ISA_AVX2)
      // FP8 over 3 or 4 tokens: one row by all of them (rowByAll below), not 2 x 2 tiles that widen each row twice.
      const bool rowByAll = !panel && fp8 && tb1 - tb0 >= 3;
      const int tokenStep = panel ? PANEL_TILE_TOKENS : rowByAll ? tb1 - tb0 : TILE_TOKENS;
#else
      const int tokenStep = TILE_TOKENS;
#endif
      for (int t0 = tb0; t0 < tb1; t0 += tokenStep) {
        const int tb = imin(tokenStep, tb1 - t0);
        const float* xs[4];
        for (int k = 0; k < tb; k++) xs[k] = x + (size_t)(t0 + k) * a->xStride;
        TileFn fn;
        // FP8 tiles, direct or on a panel, carry the block's scaled sums.
        int tileRows = tile_rows(fp8, tb);
        if (panel) {
#if defined(MOELA_ISA_AVX2)
          fn = fp8 ? panel_tile_for<true>(tb) : panel_tile_for<false>(tb);
          tileRows = PANEL_TILE_ROWS;
#else
          fn = fp8 ? tile_for<W_F32, true>(tb) : tile_for<W_F32, false>(tb);
#endif
        } else {
#if defined(MOELA_ISA_AVX2)
          if (rowByAll) {
            fn = tb == 3 ? tile<W_FP8, true, 1, 3> : tile<W_FP8, true, 1, 4>;
            tileRows = 1;
          } else
#endif
          switch (w.kind) {
            case W_F32: fn = tile_for<W_F32, false>(tb); break;
            case W_BF16: fn = tile_for<W_BF16, false>(tb); break;
            case W_F16: fn = tile_for<W_F16, false>(tb); break;
            default: fn = tile_for<W_FP8, true>(tb); break;
          }
        }
        // The quad's rows tileRows at a time (a tile past the quad's last real row is not computed).
        for (int r0 = 0; r0 < nr; r0 += tileRows) {
          float out[16];
          fn(src, off + r0, cols, bcols, scl + r0, xs, out);
          for (int k = 0; k < imin(tileRows, nr - r0); k++)
            for (int t = 0; t < tb; t++) y[(size_t)(t0 + t) * a->yStride + i + r0 + k] = out[k * tb + t];
        }
      }
    }
  }
}

/** 16 columns of weight row r from column c (n of them), dequantized: FP8 times its block's scale. */
template <int K>
MOELA_INLINE V wrow(const WeightView& w, int r, int c, int n, int scaleCols) {
  const size_t off = (size_t)r * w.cols + c;
  V v = n == 16 ? wload<K>(w.data, off) : wload_n<K>(w.data, off, n);
  if (K == W_FP8) {
    const float* srow = w.scale + (size_t)(r / w.blockRows) * scaleCols;
    const int b0 = c / w.blockCols;
    if ((c + n - 1) / w.blockCols == b0) {
      v = vmul(v, vset1(srow[b0] * E4M3_UNSCALE));
    } else {
      float s[16];
      for (int j = 0; j < 16; j++) s[j] = srow[imin(c + j, c + n - 1) / w.blockCols] * E4M3_UNSCALE;
      v = vmul(v, vload(s));
    }
  }
  return v;
}

/**
 * matmul_t's whole block of 64 columns (4 vectors) from c0 for TB tokens from t0: TB known, so the sums stay in
 * registers; the same operations as the general loop in matmul_t_kind.
 */
template <int K, int TB>
static void matmul_t_block(const MatmulTArgs* a, const WeightView& w, int r0, const float* v, float* out, int c0, int t0, int scaleCols) {
  V acc[4][TB];
  MOELA_UNROLL for (int k = 0; k < 4; k++)
    MOELA_UNROLL for (int t = 0; t < TB; t++) acc[k][t] = vzero();
  // FP8: each vector's scale column, found once (wrow divides for it at every row), where the vector lies in one
  // scale block; the row's scale row moves on every blockRows rows. The same products as wrow's.
  int scaleCol[4];
  bool oneBlock = K == W_FP8;
  if (K == W_FP8) {
    for (int k = 0; k < 4; k++) {
      scaleCol[k] = (c0 + 16 * k) / w.blockCols;
      oneBlock = oneBlock && (c0 + 16 * k + 15) / w.blockCols == scaleCol[k];
    }
  }
  int scaleRow = K == W_FP8 ? r0 / w.blockRows : 0;
  int nextScaleRow = K == W_FP8 ? (scaleRow + 1) * w.blockRows : 0;
  for (int i = 0; i < a->n; i++) {
    V wv[4];
    if (K == W_FP8 && oneBlock) {
      if (r0 + i == nextScaleRow) {
        scaleRow++;
        nextScaleRow += w.blockRows;
      }
      const float* srow = w.scale + (size_t)scaleRow * scaleCols;
      const size_t off = (size_t)(r0 + i) * w.cols + c0;
      MOELA_UNROLL for (int k = 0; k < 4; k++) wv[k] = vmul(wload<K>(w.data, off + 16 * k), vset1(srow[scaleCol[k]] * E4M3_UNSCALE));
    } else {
      MOELA_UNROLL for (int k = 0; k < 4; k++) wv[k] = wrow<K>(w, r0 + i, c0 + 16 * k, 16, scaleCols);
    }
    MOELA_UNROLL for (int t = 0; t < TB; t++) {
      const V s = vset1(v[(size_t)(t0 + t) * a->vStride + i]);
      MOELA_UNROLL for (int k = 0; k < 4; k++) acc[k][t] = vfma(s, wv[k], acc[k][t]);
    }
  }
  MOELA_UNROLL for (int t = 0; t < TB; t++)
    MOELA_UNROLL for (int k = 0; k < 4; k++) vstore(out + (size_t)(t0 + t) * a->outStride + c0 + 16 * k, acc[k][t]);
}

template <int K>
static void matmul_t_kind(const MatmulTArgs* a, int i0, int i1) {
  const WeightView& w = a->w;
  const int cols = w.cols;
  const int blocks = (cols + 63) / 64;
  const int scaleCols = K == W_FP8 ? (cols + w.blockCols - 1) / w.blockCols : 0;
  for (int item = i0; item < i1; item++) {
    const int g = item / blocks;
    const int c0 = (item % blocks) * 64;
    const int nv = imin(4, (cols - c0 + 15) / 16);  // vectors in this block
    const int r0 = a->r0 + g * a->rowStep;
    const float* v = a->v + (size_t)g * a->vStep;
    float* out = a->out + (size_t)g * a->outStep;
    for (int t0 = 0; t0 < a->T; t0 += 4) {
      const int tb = imin(4, a->T - t0);
      if (nv == 4 && cols - c0 >= 64) {
        switch (tb) {
          case 1: matmul_t_block<K, 1>(a, w, r0, v, out, c0, t0, scaleCols); break;
          case 2: matmul_t_block<K, 2>(a, w, r0, v, out, c0, t0, scaleCols); break;
          case 3: matmul_t_block<K, 3>(a, w, r0, v, out, c0, t0, scaleCols); break;
          default: matmul_t_block<K, 4>(a, w, r0, v, out, c0, t0, scaleCols); break;
        }
        continue;
      }
      V acc[4][4];
      for (int k = 0; k < 4; k++)
        for (int t = 0; t < 4; t++) acc[k][t] = vzero();
      for (int i = 0; i < a->n; i++) {
        V wv[4];
        for (int k = 0; k < nv; k++) wv[k] = wrow<K>(w, r0 + i, c0 + 16 * k, imin(16, cols - c0 - 16 * k), scaleCols);
        for (int t = 0; t < tb; t++) {
          const V s = vset1(v[(size_t)(t0 + t) * a->vStride + i]);
          for (int k = 0; k < nv; k++) acc[k][t] = vfma(s, wv[k], acc[k][t]);
        }
      }
      for (int t = 0; t < tb; t++)
        for (int k = 0; k < nv; k++) {
          float* o = out + (size_t)(t0 + t) * a->outStride + c0 + 16 * k;
          const int n = imin(16, cols - c0 - 16 * k);
          if (n == 16) vstore(o, acc[k][t]);
          else vstore_n(o, acc[k][t], n);
        }
    }
  }
}

static void matmul_t(const MatmulTArgs* a, int i0, int i1) {
  switch (a->w.kind) {
    case W_F32: matmul_t_kind<W_F32>(a, i0, i1); break;
    case W_BF16: matmul_t_kind<W_BF16>(a, i0, i1); break;
    case W_F16: matmul_t_kind<W_F16>(a, i0, i1); break;
    default: matmul_t_kind<W_FP8>(a, i0, i1); break;
  }
}

/**
 * exp(x) for x <= 0 in float32 (Cephes' expf): n = round(x log2 e), r = x - n ln 2 in two fused steps, a degree-7
 * polynomial in r by fused multiply-adds, times 2^n. Below EXP_LOW the result is 0 (it would not be a normal float).
 */
static const float EXP_LOW = -87.0f;
MOELA_INLINE V vexp_nonpositive(V x) {
  const V n = vround(vmul(x, vset1(1.44269504088896341f)));
  V r = vfma(n, vset1(-0.693359375f), x);
  r = vfma(n, vset1(2.12194440e-4f), r);
  V q = vset1(1.9875691500e-4f);
  q = vfma(q, r, vset1(1.3981999507e-3f));
  q = vfma(q, r, vset1(8.3334519073e-3f));
  q = vfma(q, r, vset1(4.1665795894e-2f));
  q = vfma(q, r, vset1(1.6666665459e-1f));
  q = vfma(q, r, vset1(5.0000001201e-1f));
  const V p = vadd(vfma(q, vmul(r, r), r), vset1(1.0f));
  return vbelow(x, EXP_LOW, vzero(), vmul(p, vpow2i(n)));
}

// A score tile: SCORE_PAIRS (token, head) pairs by SCORE_POS positions, each dot in its own accumulator, so a
// step loads SCORE_PAIRS query vectors and SCORE_POS rows for SCORE_PAIRS x SCORE_POS fused multiply-adds. AVX2's
// 16 registers hold a tile of half the pairs (a V takes two of them).
#if defined(MOELA_ISA_AVX2)
static const int SCORE_PAIRS = 2;
#else
static const int SCORE_PAIRS = 4;
#endif
static const int SCORE_POS = 4;

/**
 * out[k * SCORE_POS + q] = xs[k] . rows[q] over len floats: lane j accumulates c = j mod 16 by fused multiply-add,
 * c ascending, then each dot is reduced by vsum's tree (vsum16 on AVX-512 reduces all of them together).
 */
MOELA_INLINE void score_tile(const float* const* xs, const float* const* rows, int len, float* out) {
  V acc[SCORE_PAIRS][SCORE_POS];
  MOELA_UNROLL for (int k = 0; k < SCORE_PAIRS; k++)
    MOELA_UNROLL for (int q = 0; q < SCORE_POS; q++) acc[k][q] = vzero();
  int c = 0;
  for (; c + 16 <= len; c += 16) {
    V r[SCORE_POS];
    MOELA_UNROLL for (int q = 0; q < SCORE_POS; q++) r[q] = vload(rows[q] + c);
    MOELA_UNROLL for (int k = 0; k < SCORE_PAIRS; k++) {
      const V xv = vload(xs[k] + c);
      MOELA_UNROLL for (int q = 0; q < SCORE_POS; q++) acc[k][q] = vfma(xv, r[q], acc[k][q]);
    }
  }
  if (c < len) {
    const int n = len - c;
    V r[SCORE_POS];
    MOELA_UNROLL for (int q = 0; q < SCORE_POS; q++) r[q] = vload_n(rows[q] + c, n);
    MOELA_UNROLL for (int k = 0; k < SCORE_PAIRS; k++) {
      const V xv = vload_n(xs[k] + c, n);
      MOELA_UNROLL for (int q = 0; q < SCORE_POS; q++) acc[k][q] = vfma(xv, r[q], acc[k][q]);
    }
  }
#if defined(MOELA_ISA_AVX512)
  static_assert(SCORE_PAIRS * SCORE_POS == 16, "vsum16 reduces the whole tile");
  vsum16(&acc[0][0], out);
#else
  MOELA_UNROLL for (int k = 0; k < SCORE_PAIRS; k++)
    MOELA_UNROLL for (int q = 0; q < SCORE_POS; q++) out[k * SCORE_POS + q] = vsum(acc[k][q]);
#endif
}

/**
 * An item attends a block of a sequence's tokens over a group of heads (kernels.h, AttendArgs.tokenBlock and
 * headGroup): a position's row is read once for all of its (token, head) pairs (absorbed MLA's heads share the
 * latent row; a decompressed item holds one head, whose row its tokens share), and the weighted sum keeps 2 vectors
 * per pair in registers while the positions stream by.
 * Each pair's arithmetic is the same whatever the block around it.
 */
MOELA_INLINE size_t row_of(const AttendArgs* a, int p) {
  return a->table ? (size_t)a->table[p / a->blockSize] * a->blockSize + p % a->blockSize : (size_t)p;
}

/**
 * out[j, h] = (sum_p e[j, h, p] * val_p) * inv[pair], 32 values of every pair at a time, positions ascending, for an
 * item's NP = J * G (token, head) pairs (pair k = jj * G + g, its weights at s + k * upto). NP is a constant so that
 * the sums stay in registers; each pair's operations are the same for every NP.
 */
template <int NP, bool SAME_VALUES>
static void weighted_values(const AttendArgs* a, const float* s, int upto, int j0, int h0, int G, const float* inv) {
  static_assert(NP <= ATTEND_PAIRS, "kernels.h bounds an item's pairs");
  int last[NP];  // pair k's last position (its token's causal limit)
  size_t head[NP];  // pair k's offset into a position's values
  for (int k = 0; k < NP; k++) {
    last[k] = a->start + j0 + k / G;
    head[k] = (size_t)(h0 + k % G) * a->valHead;
  }
  const int shared = a->start + j0 + 1;  // positions [0, shared) are seen by every pair
  for (int c0 = 0; c0 < a->lenV; c0 += 32) {
    const int n0 = imin(16, a->lenV - c0);
    const int n1 = imin(16, a->lenV - c0 - 16);  // <= 0: no second vector
    V acc[NP][2];
    for (int k = 0; k < NP; k++) acc[k][0] = acc[k][1] = vzero();
    int p = 0;
    if (n0 == 16 && n1 == 16) {
      if (SAME_VALUES) {
        // Every pair reads the same values (one head's, or the latent row all heads share): load them once per
        // position.
        for (; p < shared; p++) {
          const float* vp = a->val + row_of(a, p) * a->valPos + c0 + head[0];
          const V v0 = vload(vp), v1 = vload(vp + 16);
          MOELA_UNROLL for (int k = 0; k < NP; k++) {
            const V e = vset1(s[(size_t)k * upto + p]);
            acc[k][0] = vfma(e, v0, acc[k][0]);
            acc[k][1] = vfma(e, v1, acc[k][1]);
          }
        }
      }
      for (; p < shared; p++) {
        const float* vp = a->val + row_of(a, p) * a->valPos + c0;
        MOELA_UNROLL for (int k = 0; k < NP; k++) {
          const V e = vset1(s[(size_t)k * upto + p]);
          acc[k][0] = vfma(e, vload(vp + head[k]), acc[k][0]);
          acc[k][1] = vfma(e, vload(vp + head[k] + 16), acc[k][1]);
        }
      }
    }
    for (; p < upto; p++) {
      const float* vp = a->val + row_of(a, p) * a->valPos + c0;
      for (int k = 0; k < NP; k++) {
        if (p > last[k]) continue;
        const float* v = vp + head[k];
        const V e = vset1(s[(size_t)k * upto + p]);
        acc[k][0] = vfma(e, n0 == 16 ? vload(v) : vload_n(v, n0), acc[k][0]);
        if (n1 > 0) acc[k][1] = vfma(e, n1 == 16 ? vload(v + 16) : vload_n(v + 16, n1), acc[k][1]);
      }
    }
    for (int k = 0; k < NP; k++) {
      float* out = a->out + (size_t)(j0 + k / G) * a->outTok + (size_t)(h0 + k % G) * a->outHead + c0;
      const V iv = vset1(inv[k]);
      if (n0 == 16) vstore(out, vmul(acc[k][0], iv));
      else vstore_n(out, vmul(acc[k][0], iv), n0);
      if (n1 == 16) vstore(out + 16, vmul(acc[k][1], iv));
      else if (n1 > 0) vstore_n(out + 16, vmul(acc[k][1], iv), n1);
    }
  }
}

static void attend(const AttendArgs* a, int i0, int i1) {
  const int HG = a->headGroup;
  const int groups = (a->H + HG - 1) / HG;
  const int TB = a->tokenBlock;
  for (int item = i0; item < i1; item++) {
    const int j0 = (item / groups) * TB;
    const int J = imin(TB, a->n - j0);
    const int h0 = (item % groups) * HG;
    const int G = imin(HG, a->H - h0);
    const int upto = a->start + j0 + J;  // positions [0, upto) of the block's last token; token j sees [0, start + j]
    float* s = scratch(&scoreScratch, (size_t)J * G * upto);  // [pair, upto] scores, then weights; pair k = jj * G + g
    float m[ATTEND_PAIRS];
    for (int k = 0; k < J * G; k++) m[k] = -INFINITY;
    // Scores by tiles of pairs x positions. Every pair of an item reads the same row of a position (its heads share
    // the row, or it holds one head: see prep_attend), so the rows are found once per position.
    const int NP = J * G;
    const float* qa[ATTEND_PAIRS];
    const float* qb[ATTEND_PAIRS];
    int last[ATTEND_PAIRS];  // pair k's last position (its token's causal limit), ascending in k
    for (int k = 0; k < NP; k++) {
      const int j = j0 + k / G, h = h0 + k % G;
      qa[k] = a->qa + (size_t)j * a->qaTok + (size_t)h * a->qaHead;
      qb[k] = a->lenB > 0 ? a->qb + (size_t)j * a->qbTok + (size_t)h * a->qbHead : nullptr;
      last[k] = a->start + j;
    }
    const float* ka = a->ka + (size_t)h0 * a->kaHead;
    const float* kb = a->lenB > 0 ? a->kb + (size_t)h0 * a->kbHead : nullptr;
    for (int p0 = 0; p0 < upto; p0 += SCORE_POS) {
      const int np = imin(SCORE_POS, upto - p0);
      const float* ra[SCORE_POS];
      const float* rb[SCORE_POS];
      for (int q = 0; q < SCORE_POS; q++) {
        const size_t row = row_of(a, p0 + imin(q, np - 1));  // padding positions repeat the last real one
        ra[q] = ka + row * a->kaPos;
        rb[q] = kb ? kb + row * a->kbPos : nullptr;
      }
      for (int k0 = 0; k0 < NP; k0 += SCORE_PAIRS) {
        const int nk = imin(SCORE_PAIRS, NP - k0);
        if (p0 > last[k0 + nk - 1]) continue;  // no pair of these sees the positions
        const float* xa[SCORE_PAIRS];
        const float* xb[SCORE_PAIRS];
        for (int kk = 0; kk < SCORE_PAIRS; kk++) {  // padding pairs repeat the last real one
          xa[kk] = qa[k0 + imin(kk, nk - 1)];
          xb[kk] = qb[k0 + imin(kk, nk - 1)];
        }
        float sa[SCORE_PAIRS * SCORE_POS], sb[SCORE_PAIRS * SCORE_POS];
        score_tile(xa, ra, a->lenA, sa);
        if (a->lenB > 0) score_tile(xb, rb, a->lenB, sb);
        for (int kk = 0; kk < nk; kk++) {
          const int k = k0 + kk;
          float* sk = s + (size_t)k * upto;
          for (int q = 0; q < np && p0 + q <= last[k]; q++) {
            float sc = sa[kk * SCORE_POS + q];
            if (a->lenB > 0) sc = sc + sb[kk * SCORE_POS + q];
            sc = sc * a->scale;
            sk[p0 + q] = sc;
            if (sc > m[k]) m[k] = sc;
          }
        }
      }
    }
    float inv[ATTEND_PAIRS];
    for (int jj = 0; jj < J; jj++) {
      const int seen = a->start + j0 + jj + 1;
      for (int g = 0; g < G; g++) {
        const int k = jj * G + g;
        float* sk = s + (size_t)k * upto;
        // e = exp(score - max) by vexp_nonpositive, 16 at a time; z in 16 double lanes (vdsum).
        const V negm = vset1(-m[k]);
        VD z = vdzero();
        int p = 0;
        for (; p + 16 <= seen; p += 16) {
          const V e = vexp_nonpositive(vadd(vload(sk + p), negm));
          vstore(sk + p, e);
          z = vdadd(z, e);
        }
        if (p < seen) {
          float t[16];
          for (int q = 0; q < 16; q++) t[q] = p + q < seen ? sk[p + q] : -INFINITY;  // exp(-inf) adds an exact 0
          const V e = vexp_nonpositive(vadd(vload(t), negm));
          vstore_n(sk + p, e, seen - p);
          z = vdadd(z, e);
        }
        inv[k] = (float)(1.0 / vdsum(z));
      }
    }
    switch (J * G) {
#define MOELA_PAIRS_CASE(NP) \
  case NP: \
    if (G == 1 || a->valHead == 0) weighted_values<NP, true>(a, s, upto, j0, h0, G, inv); \
    else weighted_values<NP, false>(a, s, upto, j0, h0, G, inv); \
    break;
      MOELA_PAIRS_CASE(1)
      MOELA_PAIRS_CASE(2)
      MOELA_PAIRS_CASE(3)
      MOELA_PAIRS_CASE(4)
      MOELA_PAIRS_CASE(5)
      MOELA_PAIRS_CASE(6)
      MOELA_PAIRS_CASE(7)
      MOELA_PAIRS_CASE(8)
      MOELA_PAIRS_CASE(9)
      MOELA_PAIRS_CASE(10)
      MOELA_PAIRS_CASE(11)
      MOELA_PAIRS_CASE(12)
#undef MOELA_PAIRS_CASE
      default: abort();  // kernels.h: J * G <= ATTEND_PAIRS
    }
  }
}

/**
 * log(sum_c exp(x[c] - m)) over n >= 1 values, m (written to *max) their maximum: with m, a log-softmax's
 * normalizer (logprob = (x - m) - this). x[c] - m and exp in float32; lane j of 16 sums the terms c = j mod 16 in
 * double, c ascending, then vdsum's tree. NaN anywhere gives NaN, as does an x of only -inf or one holding +inf.
 */
static double log_sum_exp(const float* x, int n, float* max) {
  V mv = vset1(-INFINITY);
  int c = 0;
  for (; c + 16 <= n; c += 16) mv = vmax(vload(x + c), mv);
  float lanes[16];
  vstore(lanes, mv);
  float m = -INFINITY;
  for (int j = 0; j < 16; j++) m = lanes[j] > m ? lanes[j] : m;
  for (int k = c; k < n; k++) m = x[k] > m ? x[k] : m;
  const V negm = vset1(-m);
  VD acc = vdzero();
  for (c = 0; c + 16 <= n; c += 16) acc = vdadd(acc, vexp_nonpositive(vadd(vload(x + c), negm)));
  if (c < n) {
    float t[16];
    for (int j = 0; j < 16; j++) t[j] = c + j < n ? x[c + j] : -INFINITY;  // exp(-inf - m) adds an exact 0
    acc = vdadd(acc, vexp_nonpositive(vadd(vload(t), negm)));
  }
  *max = m;
  return log(vdsum(acc));  // a NaN among x reaches the sum through its term
}

/**
 * A sampler's weights: out[j] = exp((x[id_j] - max) * invT) for j < n (id_j = ids[j], or j without ids), 0 where that
 * is below minP; returns their sum. (x - max) * invT and exp in float32 (vexp_nonpositive), the sum in 16 double
 * lanes (vdsum). The largest logit's weight is exactly 1.
 */
static double softmax_weights(const float* x, const int32_t* ids, int n, float max, float invT, float minP, double* out) {
  const V negm = vset1(-max);
  const V it = vset1(invT);
  VD z = vdzero();
  for (int j = 0; j < n; j += 16) {
    const int k = imin(16, n - j);
    float t[16];
    if (ids == nullptr && k == 16) {
      vstore(t, vload(x + j));
    } else {
      for (int q = 0; q < 16; q++) t[q] = q < k ? x[ids == nullptr ? j + q : ids[j + q]] : -INFINITY;  // exp(-inf) is 0
    }
    const V e = vexp_nonpositive(vmul(vadd(vload(t), negm), it));
    const V w = vbelow(e, minP, vzero(), e);
    z = vdadd(z, w);
    vstore(t, w);
    for (int q = 0; q < k; q++) out[j + q] = t[q];
  }
  return vdsum(z);
}

/**
 * The index of the first largest of x[0 .. n), n >= 1, or -1 when x holds a NaN or +inf (the caller reports those).
 * vmax drops NaN lanes, so NaN and +inf are caught apart: max(-FLT_MAX, v) * 0 is 0 for every finite v and for -inf,
 * NaN for NaN and +inf.
 */
static int argmax_first(const float* x, int n) {
  const V lowest = vset1(-3.4028234663852886e38f);
  V mv = vset1(-INFINITY);
  V bad = vzero();
  int c = 0;
  for (; c + 16 <= n; c += 16) {
    const V v = vload(x + c);
    mv = vmax(v, mv);
    bad = vadd(bad, vmul(vmax(lowest, v), vzero()));
  }
  float lanes[16], flags[16];
  vstore(lanes, mv);
  vstore(flags, bad);
  float m = -INFINITY;
  for (int j = 0; j < 16; j++) {
    if (flags[j] != 0.0f) return -1;
    m = lanes[j] > m ? lanes[j] : m;
  }
  for (int k = c; k < n; k++) {
    if (x[k] != x[k] || x[k] == INFINITY) return -1;
    m = x[k] > m ? x[k] : m;
  }
  for (int i = 0; i < n; i++)
    if (x[i] == m) return i;
  return 0;
}

}  // namespace MOELA_ISA_NS
