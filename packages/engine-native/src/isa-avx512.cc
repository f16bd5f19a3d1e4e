// The kernels for avx512 (compile flags in binding.gyp). See kernels-impl.h.
#define MOELA_ISA_NS isa_avx512
#define MOELA_ISA_AVX512 1
#include "kernels-impl.h"
#include "gemm-impl.h"

static const KernelTable TABLE = {"avx512", isa_avx512::matmul, isa_avx512::matmul_t, isa_avx512::attend, isa_avx512::log_sum_exp, isa_avx512::softmax_weights, isa_avx512::argmax_first, isa_avx512::gemm, isa_avx512::gemm_items};
const KernelTable* moela_kernels_avx512() { return &TABLE; }
