// The kernels for portable (compile flags in binding.gyp). See kernels-impl.h.
#define MOELA_ISA_NS isa_portable
// portable: plain C, no -m flags
#include "kernels-impl.h"
#include "gemm-impl.h"

static const KernelTable TABLE = {"portable", isa_portable::matmul, isa_portable::matmul_t, isa_portable::attend, isa_portable::log_sum_exp, isa_portable::softmax_weights, isa_portable::argmax_first, isa_portable::gemm, isa_portable::gemm_items};
const KernelTable* moela_kernels_portable() { return &TABLE; }
