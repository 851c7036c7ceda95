// CPU kernels of reparameterize / gaussian_kl: rows run in parallel (at::parallel_for), each range of rows in
// the active ISA's copy of the row loops (reparam_rows.h; the loops themselves in reparam_rows_impl.h).

#include "reparam_kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "isa.h"
#include "reparam_rows.h"

namespace fused_kingma::cpu {
namespace {

int64_t grain_rows(int64_t D) { return D >= 4096 ? 1 : 4096 / (D > 0 ? D : 1); }

// Rows per group of the per-dim KL sums: a function of the shape alone, so the sums (each group's rows in order,
// then the groups in order) come out the same for any thread count. At most ~128 groups: the partial sums stay
// small next to mu, and there are still enough groups to share out over the threads.
int64_t kl_group_rows(int64_t R, int64_t D) { return std::max(grain_rows(D), (R + 127) / 128); }

template <class A>
void store_kl_per_dim(const std::vector<double>& total, void* kl) {
  A* __restrict out = static_cast<A*>(kl);
  for (size_t j = 0; j < total.size(); ++j) out[j] = static_cast<A>(total[j]);
}

}  // namespace

void reparam_forward_cpu(const ReparamFwdArgs& a) {
  const int64_t rows = a.K > 0 ? a.K * a.R : a.R;
  const auto run = for_active_isa(&reparam_fwd_rows<IsaAvx512>, &reparam_fwd_rows<IsaAvx2>,
                                  &reparam_fwd_rows<IsaBaseline>);
  if (!a.kl_per_dim) {
    at::parallel_for(0, rows, grain_rows(a.D), [&](int64_t lo, int64_t hi) { run(a, lo, hi); });
    return;
  }
  // Per-dim KL: each group of G rows (of sample 0) sums its rows into its own partial row; the threads get
  // whole groups, so a group's rows run in order on one thread. The sums are double: the terms are >= 0, so
  // a float sum over a long group would drift by up to G ulp; double costs one conversion per term.
  const int64_t G = kl_group_rows(a.R, a.D), groups = (a.R + G - 1) / G, D = a.D;
  std::vector<double> partial(static_cast<size_t>(groups * D), 0.0);
  ReparamFwdArgs args = a;
  args.kl_partial = partial.data();
  args.kl_group_rows = G;
  const int64_t units = (rows + G - 1) / G;  // groups of G rows of the (sample, row) items
  at::parallel_for(0, units, std::max<int64_t>(1, grain_rows(D) / G), [&](int64_t lo, int64_t hi) {
    run(args, lo * G, std::min(hi * G, rows));
  });
  std::vector<double> total(static_cast<size_t>(D), 0.0);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t j = 0; j < D; ++j) total[j] += partial[g * D + j];
  // The compute type: double for F64, float otherwise.
  if (a.dtype == ReparamDtype::F64) store_kl_per_dim<double>(total, a.kl);
  else store_kl_per_dim<float>(total, a.kl);
}

void reparam_backward_cpu(const ReparamBwdArgs& a) {
  const auto run = for_active_isa(&reparam_bwd_rows<IsaAvx512>, &reparam_bwd_rows<IsaAvx2>,
                                  &reparam_bwd_rows<IsaBaseline>);
  at::parallel_for(0, a.R, grain_rows(a.D * (a.K > 0 ? a.K : 1)), [&](int64_t lo, int64_t hi) { run(a, lo, hi); });
}

void philox_debug_cpu(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t nblocks, int kind, void* out) {
  ReparamDebugArgs d;
  d.philox = true;
  d.seed = seed;
  d.offset = offset;
  d.first_block = first_block;
  d.nblocks = nblocks;
  d.kind = kind;
  d.out = out;
  for_active_isa(&reparam_debug<IsaAvx512>, &reparam_debug<IsaAvx2>, &reparam_debug<IsaBaseline>)(d);
}

void fastmath_debug_cpu(const float* x, float* y, int64_t n, int fn) {
  ReparamDebugArgs d;
  d.x = x;
  d.y = y;
  d.n = n;
  d.fn = fn;
  for_active_isa(&reparam_debug<IsaAvx512>, &reparam_debug<IsaAvx2>, &reparam_debug<IsaBaseline>)(d);
}

}  // namespace fused_kingma::cpu
