// Raw-pointer CPU kernels of the reparameterization op (no torch tensors here; glue in reparam_cpu.cpp).
#pragma once

#include <cstdint>

namespace fused_kingma::cpu {

enum class ReparamDtype : int { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

// mu, logvar: (R, D) contiguous; prior rows: row r of mp starts at mp + r * mp_row_stride (stride D, or 0 for
// a prior shared by every row), the same for lvp; z: (K, R, D); kl: (R,); lq, lp: (K, R).
// K == 0: KL only. Pointers not needed are null.
// kl_per_dim: kl is instead (D,) in the compute type (float, double for F64): the KL summed over the rows, per
// latent dim (see reparam_forward_cpu for the order). kl_partial / kl_group_rows are set there, not by callers.
struct ReparamFwdArgs {
  ReparamDtype dtype;
  const void *mu, *lv, *mp, *lvp;
  void *z, *kl, *lq, *lp;
  int64_t R, D, K;
  uint64_t seed, offset;
  int64_t mp_row_stride, lvp_row_stride;
  bool kl_per_dim = false;
  double* kl_partial = nullptr;  // per-dim sums of each group of kl_group_rows rows: (groups, D)
  int64_t kl_group_rows = 0;
};

// Gradients. gz: (K, R, D) or null (then K must be 0); gkl: (R,), or with kl_per_dim (D,) in the compute type;
// glq, glp: (K, R) or null.
// Outputs gmu, glv: (R, D); gmp, glvp: (R, D) when a prior is given (prior rows read as in ReparamFwdArgs).
struct ReparamBwdArgs {
  ReparamDtype dtype;
  const void *gz, *gkl, *glq, *glp;
  const void *mu, *lv, *mp, *lvp;
  void *gmu, *glv, *gmp, *glvp;
  int64_t R, D, K;
  uint64_t seed, offset;
  int64_t mp_row_stride, lvp_row_stride;
  bool kl_per_dim = false;
};

void reparam_forward_cpu(const ReparamFwdArgs& a);
void reparam_backward_cpu(const ReparamBwdArgs& a);

// Debug/test helpers: raw Philox words (kind 0, as uint32 in int64), uniforms (1) or normals (2) of
// blocks first_block .. first_block + nblocks - 1, written as 4 * nblocks values; float or int64 out.
void philox_debug_cpu(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t nblocks, int kind, void* out);
// fn: 0 fast_logf, 1 fast_expf, 2 sin(2 pi x), 3 cos(2 pi x), 4 fast_expf_moderate (|x| <= 87 only),
// elementwise on float32.
void fastmath_debug_cpu(const float* x, float* y, int64_t n, int fn);

}  // namespace fused_kingma::cpu
