// The row loops of the CPU reparameterization kernels, one copy per ISA (isa.h): declared here, defined in
// reparam_rows_impl.h and instantiated for one ISA by each reparam_rows_<isa>.cpp, so that the three copies
// compile in parallel. reparam_kernels.cpp calls the active ISA's.
#pragma once

#include <cstdint>

#include "isa.h"
#include "reparam_kernels.h"

namespace fused_kingma::cpu {

// Rows [lo, hi) of the forward (flat (sample, row) items when a.K > 0) or of the backward (rows of mu), for any
// dtype and options of a.
template <class Isa>
void reparam_fwd_rows(const ReparamFwdArgs& a, int64_t lo, int64_t hi);
template <class Isa>
void reparam_bwd_rows(const ReparamBwdArgs& a, int64_t lo, int64_t hi);

// philox_debug_cpu (philox) or fastmath_debug_cpu (otherwise), with their arguments.
struct ReparamDebugArgs {
  bool philox = false;
  uint64_t seed = 0, offset = 0, first_block = 0;
  int64_t nblocks = 0;
  int kind = 0;
  void* out = nullptr;
  const float* x = nullptr;
  float* y = nullptr;
  int64_t n = 0;
  int fn = 0;
};
template <class Isa>
void reparam_debug(const ReparamDebugArgs& d);

extern template void reparam_fwd_rows<IsaAvx512>(const ReparamFwdArgs&, int64_t, int64_t);
extern template void reparam_fwd_rows<IsaAvx2>(const ReparamFwdArgs&, int64_t, int64_t);
extern template void reparam_fwd_rows<IsaBaseline>(const ReparamFwdArgs&, int64_t, int64_t);
extern template void reparam_bwd_rows<IsaAvx512>(const ReparamBwdArgs&, int64_t, int64_t);
extern template void reparam_bwd_rows<IsaAvx2>(const ReparamBwdArgs&, int64_t, int64_t);
extern template void reparam_bwd_rows<IsaBaseline>(const ReparamBwdArgs&, int64_t, int64_t);
extern template void reparam_debug<IsaAvx512>(const ReparamDebugArgs&);
extern template void reparam_debug<IsaAvx2>(const ReparamDebugArgs&);
extern template void reparam_debug<IsaBaseline>(const ReparamDebugArgs&);

}  // namespace fused_kingma::cpu
