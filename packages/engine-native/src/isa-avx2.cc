// The kernels for avx2 (compile flags in binding.gyp). See kernels-impl.h.
#define MOELA_ISA_NS isa_avx2
#define MOELA_ISA_AVX2 1
#include "kernels-impl.h"
#include "gemm-impl.h"

static const KernelTable TABLE = {"avx2", isa_avx2::matmul, isa_avx2::matmul_t, isa_avx2::attend, isa_avx2::log_sum_exp, isa_avx2::softmax_weights, isa_avx2::argmax_first, isa_avx2::gemm, isa_avx2::gemm_items};
const KernelTable* moela_kernels_avx2() { return &TABLE; }
