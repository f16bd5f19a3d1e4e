// Sixteen float32 lanes, three ways: AVX-512 (one zmm), AVX2 (two ymm) and portable C (an array and fmaf).
//
// Every kernel in kernels-impl.h is written once against this interface, so the three instruction sets run
// the same arithmetic in the same order: lane j of an accumulator takes the elements whose index is j mod 16,
// each multiply-add is one fused multiply-add (one rounding), and lanes are summed by one fixed tree
// (lanes.h). That is what makes a process on an AVX2 machine give the same bits as one on an AVX-512 machine.
//
// This header is compiled into several translation units with different -m flags. Everything in it lives in
// the namespace MOELA_ISA_NS and is static inline, so no inline function compiled for AVX-512 can be merged
// by the linker into code that runs on a machine without it.
#pragma once
#include <stdint.h>
#include <string.h>
#include <math.h>

#if defined(MOELA_ISA_AVX512) || defined(MOELA_ISA_AVX2)
#include <immintrin.h>
#endif

namespace MOELA_ISA_NS {

#define MOELA_INLINE static inline __attribute__((always_inline))

// e4m3fn -> float32, 2^8 times too small: the byte shifted into a float16 (sign to bit 15, the 7 exponent and
// mantissa bits to bits 7..13) is exactly e4m3 * 2^-8, subnormals included, and the hardware widens float16
// to float32 in one instruction. Kernels multiply each block scale by 256 instead (exact: a power of two), so
// products and sums are the same values as with the true weights, only 2^8 smaller until the scale is applied.
// The NaN codes 0x7f/0xff decode as +-480 (no released checkpoint holds them).
static const float E4M3_UNSCALE = 256.0f;
static const float E4M3_PORTABLE_RESCALE = 5.192296858534828e+33f;  // 2^112: float32 bits of (code << 20) -> code * 2^-8

#if defined(MOELA_ISA_AVX512)

struct V {
  __m512 v;
};
MOELA_INLINE V vzero() { return {_mm512_setzero_ps()}; }
MOELA_INLINE V vset1(float a) { return {_mm512_set1_ps(a)}; }
MOELA_INLINE V vload(const float* p) { return {_mm512_loadu_ps(p)}; }
MOELA_INLINE __mmask16 tailmask(int n) { return (__mmask16)((1u << n) - 1u); }
MOELA_INLINE V vload_n(const float* p, int n) { return {_mm512_maskz_loadu_ps(tailmask(n), p)}; }
MOELA_INLINE void vstore(float* p, V a) { _mm512_storeu_ps(p, a.v); }
MOELA_INLINE void vstore_n(float* p, V a, int n) { _mm512_mask_storeu_ps(p, tailmask(n), a.v); }
MOELA_INLINE V vfma(V a, V b, V c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
MOELA_INLINE V vmul(V a, V b) { return {_mm512_mul_ps(a.v, b.v)}; }
MOELA_INLINE V vadd(V a, V b) { return {_mm512_add_ps(a.v, b.v)}; }
MOELA_INLINE V bf16_from_u32(__m512i w) { return {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))}; }
MOELA_INLINE V vload_bf16(const uint16_t* p) {
  return bf16_from_u32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)));
}
MOELA_INLINE V vload_bf16_n(const uint16_t* p, int n) {
  return bf16_from_u32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(tailmask(n), p)));
}
MOELA_INLINE V vload_f16(const uint16_t* p) { return {_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p))}; }
MOELA_INLINE V vload_f16_n(const uint16_t* p, int n) { return {_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tailmask(n), p))}; }
/** 16-bit lanes holding e4m3 bytes -> the float16 bits of code * 2^-8 (see E4M3_UNSCALE). */
MOELA_INLINE __m256i e4m3_f16_256(__m256i w) {
  return _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(w, 8), 1), _mm256_set1_epi16((short)0xBFFF));
}
MOELA_INLINE V vload_e4m3(const uint8_t* p) {
  return {_mm512_cvtph_ps(e4m3_f16_256(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)p))))};
}
MOELA_INLINE V vload_e4m3_n(const uint8_t* p, int n) {
  return {_mm512_cvtph_ps(e4m3_f16_256(_mm256_cvtepu8_epi16(_mm_maskz_loadu_epi8(tailmask(n), p))))};
}
/** 32 codes at once: the integer steps run on 32 lanes of one register. */
MOELA_INLINE void vload2_e4m3(const uint8_t* p, V* lo, V* hi) {
  __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)p));
  w = _mm512_and_si512(_mm512_srai_epi16(_mm512_slli_epi16(w, 8), 1), _mm512_set1_epi16((short)0xBFFF));
  lo->v = _mm512_cvtph_ps(_mm512_castsi512_si256(w));
  hi->v = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(w, 1));
}

// For the log-softmax normalizer (kernels-impl.h, log_normalizer): max, round to nearest even, 2^n, a select, and
// 16 double lanes that sum float lanes exactly widened.
MOELA_INLINE V vmax(V a, V b) { return {_mm512_max_ps(a.v, b.v)}; }  // a > b ? a : b, lane by lane (so b if either is NaN)
MOELA_INLINE V vround(V a) { return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
/** 2^n for integral n in [-126, 127] (other lanes: any value). */
MOELA_INLINE V vpow2i(V n) {
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n.v), _mm512_set1_epi32(127)), 23))};
}
/** x < lim ? lo : v, lane by lane (NaN x keeps v). */
MOELA_INLINE V vbelow(V x, float lim, V lo, V v) { return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(x.v, _mm512_set1_ps(lim), _CMP_LT_OQ), v.v, lo.v)}; }
struct VD {
  __m512d lo, hi;  // lanes 0..7, 8..15
};
MOELA_INLINE VD vdzero() { return {_mm512_setzero_pd(), _mm512_setzero_pd()}; }
MOELA_INLINE VD vdadd(VD a, V b) {
  const __m256 bhi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(b.v), 1));
  return {_mm512_add_pd(a.lo, _mm512_cvtps_pd(_mm512_castps512_ps256(b.v))), _mm512_add_pd(a.hi, _mm512_cvtps_pd(bhi))};
}
MOELA_INLINE void vdstore(double* p, VD a) {
  _mm512_storeu_pd(p, a.lo);
  _mm512_storeu_pd(p + 8, a.hi);
}

#elif defined(MOELA_ISA_AVX2)

struct V {
  __m256 lo, hi;  // lanes 0..7, 8..15
};
MOELA_INLINE V vzero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
MOELA_INLINE V vset1(float a) { return {_mm256_set1_ps(a), _mm256_set1_ps(a)}; }
MOELA_INLINE V vload(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
// The partial loads (a row's last n < 16 elements) copy into a zeroed buffer. They live in functions of their own,
// each returning one register: inlined, their address-taken buffers made GCC keep the kernels' accumulator arrays in
// memory, storing every accumulator on every step of the main loops.
__attribute__((noinline)) static __m256 load8_f32_n(const float* p, int n) {
  float t[8] = {0};
  if (n > 0) memcpy(t, p, (size_t)(n < 8 ? n : 8) * 4);
  return _mm256_loadu_ps(t);
}
__attribute__((noinline)) static __m128i load8_u16_n(const uint16_t* p, int n) {
  uint16_t t[8] = {0};
  if (n > 0) memcpy(t, p, (size_t)(n < 8 ? n : 8) * 2);
  return _mm_loadu_si128((const __m128i*)t);
}
__attribute__((noinline)) static __m128i load16_u8_n(const uint8_t* p, int n) {
  uint8_t t[16] = {0};
  memcpy(t, p, (size_t)n);
  return _mm_loadu_si128((const __m128i*)t);
}
MOELA_INLINE V vload_n(const float* p, int n) { return {load8_f32_n(p, n), load8_f32_n(p + 8, n - 8)}; }
MOELA_INLINE void vstore(float* p, V a) {
  _mm256_storeu_ps(p, a.lo);
  _mm256_storeu_ps(p + 8, a.hi);
}
MOELA_INLINE void vstore_n(float* p, V a, int n) {
  float t[16];
  vstore(t, a);
  memcpy(p, t, (size_t)n * 4);
}
MOELA_INLINE V vfma(V a, V b, V c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
MOELA_INLINE V vmul(V a, V b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
MOELA_INLINE V vadd(V a, V b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
MOELA_INLINE __m256 bf16x8(__m128i w) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(w), 16)); }
MOELA_INLINE V vload_bf16(const uint16_t* p) {
  return {bf16x8(_mm_loadu_si128((const __m128i*)p)), bf16x8(_mm_loadu_si128((const __m128i*)(p + 8)))};
}
MOELA_INLINE V vload_bf16_n(const uint16_t* p, int n) { return {bf16x8(load8_u16_n(p, n)), bf16x8(load8_u16_n(p + 8, n - 8))}; }
MOELA_INLINE V vload_f16(const uint16_t* p) {
  return {_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p + 8)))};
}
MOELA_INLINE V vload_f16_n(const uint16_t* p, int n) {
  return {_mm256_cvtph_ps(load8_u16_n(p, n)), _mm256_cvtph_ps(load8_u16_n(p + 8, n - 8))};
}
/** 16 e4m3 codes -> code * 2^-8 (see E4M3_UNSCALE), through float16 bits. */
MOELA_INLINE V e4m3x16(__m128i codes) {
  __m256i w = _mm256_cvtepu8_epi16(codes);
  w = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(w, 8), 1), _mm256_set1_epi16((short)0xBFFF));
  return {_mm256_cvtph_ps(_mm256_castsi256_si128(w)), _mm256_cvtph_ps(_mm256_extracti128_si256(w, 1))};
}
MOELA_INLINE V vload_e4m3(const uint8_t* p) { return e4m3x16(_mm_loadu_si128((const __m128i*)p)); }
MOELA_INLINE V vload_e4m3_n(const uint8_t* p, int n) { return e4m3x16(load16_u8_n(p, n)); }

MOELA_INLINE V vmax(V a, V b) { return {_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi)}; }
MOELA_INLINE V vround(V a) {
  return {_mm256_round_ps(a.lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), _mm256_round_ps(a.hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
}
MOELA_INLINE __m256 pow2i8(__m256 n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
MOELA_INLINE V vpow2i(V n) { return {pow2i8(n.lo), pow2i8(n.hi)}; }
MOELA_INLINE V vbelow(V x, float lim, V lo, V v) {
  const __m256 l = _mm256_set1_ps(lim);
  return {_mm256_blendv_ps(v.lo, lo.lo, _mm256_cmp_ps(x.lo, l, _CMP_LT_OQ)), _mm256_blendv_ps(v.hi, lo.hi, _mm256_cmp_ps(x.hi, l, _CMP_LT_OQ))};
}
struct VD {
  __m256d d[4];  // lanes 0..3, 4..7, 8..11, 12..15
};
MOELA_INLINE VD vdzero() { return {{_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()}}; }
MOELA_INLINE VD vdadd(VD a, V b) {
  return {{_mm256_add_pd(a.d[0], _mm256_cvtps_pd(_mm256_castps256_ps128(b.lo))), _mm256_add_pd(a.d[1], _mm256_cvtps_pd(_mm256_extractf128_ps(b.lo, 1))),
           _mm256_add_pd(a.d[2], _mm256_cvtps_pd(_mm256_castps256_ps128(b.hi))), _mm256_add_pd(a.d[3], _mm256_cvtps_pd(_mm256_extractf128_ps(b.hi, 1)))}};
}
MOELA_INLINE void vdstore(double* p, VD a) {
  for (int k = 0; k < 4; k++) _mm256_storeu_pd(p + 4 * k, a.d[k]);
}

#else  // portable

struct V {
  float v[16];
};
MOELA_INLINE V vzero() {
  V r;
  for (int j = 0; j < 16; j++) r.v[j] = 0.0f;
  return r;
}
MOELA_INLINE V vset1(float a) {
  V r;
  for (int j = 0; j < 16; j++) r.v[j] = a;
  return r;
}
MOELA_INLINE V vload(const float* p) {
  V r;
  memcpy(r.v, p, 64);
  return r;
}
MOELA_INLINE V vload_n(const float* p, int n) {
  V r = vzero();
  memcpy(r.v, p, (size_t)n * 4);
  return r;
}
MOELA_INLINE void vstore(float* p, V a) { memcpy(p, a.v, 64); }
MOELA_INLINE void vstore_n(float* p, V a, int n) { memcpy(p, a.v, (size_t)n * 4); }
MOELA_INLINE V vfma(V a, V b, V c) {
  V r;
  for (int j = 0; j < 16; j++) r.v[j] = fmaf(a.v[j], b.v[j], c.v[j]);
  return r;
}
MOELA_INLINE V vmul(V a, V b) {
  V r;
  for (int j = 0; j < 16; j++) r.v[j] = a.v[j] * b.v[j];
  return r;
}
MOELA_INLINE V vadd(V a, V b) {
  V r;
  for (int j = 0; j < 16; j++) r.v[j] = a.v[j] + b.v[j];
  return r;
}
MOELA_INLINE float bits_to_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
MOELA_INLINE V vload_bf16_n(const uint16_t* p, int n) {
  V r = vzero();
  for (int j = 0; j < n; j++) r.v[j] = bits_to_f32((uint32_t)p[j] << 16);
  return r;
}
MOELA_INLINE V vload_bf16(const uint16_t* p) { return vload_bf16_n(p, 16); }
MOELA_INLINE float f16_to_f32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  const int exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  if (exp == 0x1f) return bits_to_f32(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    const float m = ldexpf((float)mant, -24);
    return sign ? -m : m;
  }
  return bits_to_f32(sign | ((uint32_t)(exp - 15 + 127) << 23) | (mant << 13));
}
MOELA_INLINE V vload_f16_n(const uint16_t* p, int n) {
  V r = vzero();
  for (int j = 0; j < n; j++) r.v[j] = f16_to_f32(p[j]);
  return r;
}
MOELA_INLINE V vload_f16(const uint16_t* p) { return vload_f16_n(p, 16); }
MOELA_INLINE V vload_e4m3_n(const uint8_t* p, int n) {
  V r = vzero();
  for (int j = 0; j < n; j++) {
    const uint32_t b = p[j];
    r.v[j] = bits_to_f32(((b & 0x80u) << 24) | ((b & 0x7fu) << 20)) * E4M3_PORTABLE_RESCALE;
  }
  return r;
}
MOELA_INLINE V vload_e4m3(const uint8_t* p) { return vload_e4m3_n(p, 16); }


MOELA_INLINE V vmax(V a, V b) {
  V r;
  for (int j = 0; j < 16; j++) r.v[j] = a.v[j] > b.v[j] ? a.v[j] : b.v[j];
  return r;
}
MOELA_INLINE V vround(V a) {
  V r;
  for (int j = 0; j < 16; j++) r.v[j] = nearbyintf(a.v[j]);  // the default rounding mode: to nearest, ties to even
  return r;
}
MOELA_INLINE V vpow2i(V n) {
  V r;
  for (int j = 0; j < 16; j++) {
    const float k = n.v[j];
    r.v[j] = k >= -126.0f && k <= 127.0f ? bits_to_f32((uint32_t)((int)k + 127) << 23) : 0.0f;
  }
  return r;
}
MOELA_INLINE V vbelow(V x, float lim, V lo, V v) {
  V r;
  for (int j = 0; j < 16; j++) r.v[j] = x.v[j] < lim ? lo.v[j] : v.v[j];
  return r;
}
struct VD {
  double v[16];
};
MOELA_INLINE VD vdzero() {
  VD r;
  for (int j = 0; j < 16; j++) r.v[j] = 0.0;
  return r;
}
MOELA_INLINE VD vdadd(VD a, V b) {
  for (int j = 0; j < 16; j++) a.v[j] = a.v[j] + (double)b.v[j];
  return a;
}
MOELA_INLINE void vdstore(double* p, VD a) { memcpy(p, a.v, sizeof(a.v)); }

#endif

#if !defined(MOELA_ISA_AVX512)
MOELA_INLINE void vload2_e4m3(const uint8_t* p, V* lo, V* hi) {
  *lo = vload_e4m3(p);
  *hi = vload_e4m3(p + 16);
}
#endif

// The one lane reduction: (l_j + l_{j+8}), then halves again, to one value. Fixed, so identical on every ISA.
template <typename T>
MOELA_INLINE T tree16(T* t) {
  for (int j = 0; j < 8; j++) t[j] = t[j] + t[j + 8];
  for (int j = 0; j < 4; j++) t[j] = t[j] + t[j + 4];
  t[0] = t[0] + t[2];
  t[1] = t[1] + t[3];
  return t[0] + t[1];
}
#if defined(MOELA_ISA_AVX2)
// tree16's additions on the two halves in registers (each level adds the same operands, first operand first).
MOELA_INLINE float vsum(V a) {
  const __m256 l1 = _mm256_add_ps(a.lo, a.hi);                                               // j + (j + 8)
  const __m128 l2 = _mm_add_ps(_mm256_castps256_ps128(l1), _mm256_extractf128_ps(l1, 1));  // j + (j + 4)
  const __m128 l3 = _mm_add_ps(l2, _mm_movehl_ps(l2, l2));                                   // j + (j + 2)
  return _mm_cvtss_f32(_mm_add_ss(l3, _mm_shuffle_ps(l3, l3, 1)));                           // 0 + 1
}
#else
MOELA_INLINE float vsum(V a) {
  float t[16];
  vstore(t, a);
  return tree16(t);
}
#endif
/** vsum's tree over 16 double lanes. */
MOELA_INLINE double vdsum(VD a) {
  double t[16];
  vdstore(t, a);
  return tree16(t);
}

/**
 * out[k] = vsum(a[k]) for k < 16, with vsum's very additions (the same operand pairs, level by level), so the
 * bits are the same; AVX-512 does the 16 trees at once with 128-bit-block and in-block shuffles.
 */
#if defined(MOELA_ISA_AVX512)
MOELA_INLINE void vsum16(const V* a, float* out) {
  __m512 l1[8], l2[4], l3[2];
  for (int k = 0; k < 8; k++)  // lanes j and j+8 of a[2k] (lanes 0-7) and a[2k+1] (lanes 8-15)
    l1[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * k].v, a[2 * k + 1].v, _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm512_shuffle_f32x4(a[2 * k].v, a[2 * k + 1].v, _MM_SHUFFLE(3, 2, 3, 2)));
  for (int k = 0; k < 4; k++)  // j and j+4: 128-bit block i now holds accumulator 4k+i
    l2[k] = _mm512_add_ps(_mm512_shuffle_f32x4(l1[2 * k], l1[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_f32x4(l1[2 * k], l1[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  for (int k = 0; k < 2; k++)  // j and j+2: block i lanes 0-1 = accumulator 8k+i, lanes 2-3 = 8k+4+i
    l3[k] = _mm512_add_ps(_mm512_shuffle_ps(l2[2 * k], l2[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm512_shuffle_ps(l2[2 * k], l2[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  // 0 and 1: lane 4i+q = accumulator 4q+i
  const __m512 r = _mm512_add_ps(_mm512_shuffle_ps(l3[0], l3[1], _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_ps(l3[0], l3[1], _MM_SHUFFLE(3, 1, 3, 1)));
  float t[16];
  _mm512_storeu_ps(t, r);
  for (int i = 0; i < 4; i++)
    for (int q = 0; q < 4; q++) out[4 * q + i] = t[4 * i + q];
}
#else
MOELA_INLINE void vsum16(const V* a, float* out) {
  for (int k = 0; k < 16; k++) out[k] = vsum(a[k]);
}
#endif

}  // namespace MOELA_ISA_NS
