// The plain-C boundary between the addon (addon.cc: N-API, threads, ISA choice) and the kernels compiled once
// per instruction set (isa-*.cc over kernels-impl.h). Only POD types cross it.
#pragma once
#include <stddef.h>
#include <stdint.h>

enum WeightKind { W_F32 = 0, W_BF16 = 1, W_F16 = 2, W_FP8 = 3 };

/** A linear weight [rows, cols] in its checkpoint format; scale is the FP8 block-scale grid or null. */
struct WeightView {
  int kind;
  const void* data;
  const float* scale;  // [ceil(rows/blockRows), ceil(cols/blockCols)] for W_FP8
  int rows, cols, blockRows, blockCols;
};

/**
 * y[t, i] = sum_c w[r0 + i, c] * x[t, c] for t < T and i < nRows, for each of `groups` groups g, whose rows
 * start at r0 + g * rowStep, inputs at x + g * xStep and outputs at y + g * yStep (heads of kv_b_proj).
 */
struct MatmulArgs {
  WeightView w;
  const float* x;
  int xStride, T;
  float* y;
  int yStride, r0, nRows;
  int groups, rowStep, xStep, yStep;
};

/**
 * out[t, c] = sum_{i < n} v[t, i] * w[r0 + i, c] for t < T and c < w.cols (the product with w transposed), per
 * group g with rows from r0 + g * rowStep, v from v + g * vStep and out from out + g * outStep.
 */
struct MatmulTArgs {
  WeightView w;
  const float* v;
  int vStride, T;
  float* out;
  int outStride, r0, n;
  int groups, rowStep, vStep, outStep;
};

/**
 * Causal attention of n query tokens (positions start .. start+n-1) of one sequence, H heads each:
 *   s_p = (qa . ka_p + qb . kb_p) * scale for p <= start + j,  out = sum_p softmax(s)_p * val_p.
 * Pointers are at token 0 / position 0 / head 0; strides are in floats.
 */
/**
 * With `table` (a block table, blockSize rows per block), position p's row is table[p / blockSize] * blockSize +
 * p % blockSize: attention reads a paged cache slab in place. Without it, row p is p.
 */
struct AttendArgs {
  const float* qa; int qaTok, qaHead, lenA;
  const float* qb; int qbTok, qbHead, lenB;
  const float* ka; int kaPos, kaHead;
  const float* kb; int kbPos, kbHead;
  const float* val; int valPos, valHead, lenV;
  float* out; int outTok, outHead;
  int n, H, start;
  float scale;
  const int32_t* table;
  int blockSize;
  /** Tokens an item attends together (1 .. ATTEND_PAIRS / headGroup): they share the reads of each position's row. */
  int tokenBlock;
  /** Heads an item attends together (1 .. ATTEND_HEAD_GROUP): they share a position's row only where it is one row
   * for every head (absorbed MLA's latent); with a row per head (decompressed MLA) an item holds one head. */
  int headGroup;
};

/** Heads an attend item holds at most. */
static const int ATTEND_HEAD_GROUP = 8;
/** (token, head) pairs an attend item holds at most: their accumulators (2 vectors each) stay in registers. */
static const int ATTEND_PAIRS = 12;
/** attend's items: blocks of AttendArgs.tokenBlock tokens x groups of AttendArgs.headGroup heads. */
static inline int attend_items(const AttendArgs* a) {
  return ((a->n + a->tokenBlock - 1) / a->tokenBlock) * ((a->H + a->headGroup - 1) / a->headGroup);
}

/**
 * C[i, j] (=, or += with accumulate) sum_{p < k} A(i, p) B(j, p) for i < m, j < n, where A(i, p) is
 * A[i * aRowStride + p * aColStride] and B(j, p) is B[j * bRowStride + p * bColStride]: the strides say whether an
 * operand is read as stored or transposed. C's rows are cStride apart. (Training's products; see gemm-impl.h.)
 */
struct GemmArgs {
  const float* A;
  size_t aRowStride, aColStride;
  const float* B;
  size_t bRowStride, bColStride;
  float* C;
  size_t cStride;
  int m, n, k;
  bool accumulate;
};

/** One instruction set's kernels. Each computes the items [i0, i1) of its product; threads split the items. */
struct KernelTable {
  const char* isa;
  /** Items: groups * ceil(nRows / 4) row quads. */
  void (*matmul)(const MatmulArgs* a, int i0, int i1);
  /** Items: groups * ceil(cols / 64) column blocks. */
  void (*matmul_t)(const MatmulTArgs* a, int i0, int i1);
  /** Items: attend_items (a block of tokens, a group of heads). */
  void (*attend)(const AttendArgs* a, int i0, int i1);
  /** log(sum_c exp(x[c] - m)) over n >= 1 floats and their maximum m (*max): a log-softmax's normalizer. */
  double (*log_sum_exp)(const float* x, int n, float* max);
  /** out[j] = exp((x[ids[j] or j] - max) * invT), 0 below minP, for j < n; returns their sum (a sampler's weights). */
  double (*softmax_weights)(const float* x, const int32_t* ids, int n, float max, float invT, float minP, double* out);
  /** The index of the first largest of x[0 .. n), or -1 when x holds a NaN or +inf. */
  int (*argmax_first)(const float* x, int n);
  /** Items: gemm_items(a), blocks of C's rows by blocks of its columns. */
  void (*gemm)(const GemmArgs* a, int i0, int i1);
  int (*gemm_items)(const GemmArgs* a);
};

const KernelTable* moela_kernels_avx512();
const KernelTable* moela_kernels_avx2();
const KernelTable* moela_kernels_portable();
