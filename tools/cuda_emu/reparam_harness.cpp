// C entry points over the emulated CUDA reparam kernels (see emu.h), called through ctypes by
// tests/test_cuda_emulated.py with CPU tensors' pointers. reparam_emu.cu is csrc/cuda/reparam.cu with
// each `kernel<<<grid, block, 0, stream>>>(args)` rewritten to `emu::launch(grid, block, kernel, args)`.
// kl_per_dim: the caller passes the (groups, dim) partials scratch the CUDA glue would allocate (nullptr for
// one group); emu_reparam_kl_groups tells how many rows it has.
#include "emu.h"
#include "reparam_emu.cu"

using fused_kingma::cuda::Dtype;

// The inputs both kernels read, as the CUDA glue fills them.
static fused_kingma::cuda::ReparamInputs inputs(int dtype, const void* mu, const void* lv, const void* pm,
                                                const void* plv, int64_t pm_stride, int64_t plv_stride,
                                                const int64_t* seed_offset, int64_t rows, int64_t dim,
                                                int64_t num_samples, int kl_per_dim) {
  fused_kingma::cuda::ReparamInputs in{};
  in.dtype = static_cast<Dtype>(dtype);
  in.mu = mu;
  in.logvar = lv;
  in.prior_mu = pm;
  in.prior_logvar = plv;
  in.prior_mu_row_stride = pm_stride;
  in.prior_logvar_row_stride = plv_stride;
  in.seed_offset = seed_offset;
  in.rows = rows;
  in.dim = dim;
  in.num_samples = num_samples;
  in.kl_per_dim = kl_per_dim != 0;
  return in;
}

extern "C" int emu_reparam_forward(int dtype, const void* mu, const void* lv, const void* pm, const void* plv,
                                   int64_t pm_stride, int64_t plv_stride, const int64_t* seed_offset, void* z,
                                   void* kl, void* lq, void* lp, int64_t rows, int64_t dim, int64_t num_samples,
                                   int kl_per_dim, void* kl_partials) {
  fused_kingma::cuda::ReparamForwardArgs a{};
  static_cast<fused_kingma::cuda::ReparamInputs&>(a) =
      inputs(dtype, mu, lv, pm, plv, pm_stride, plv_stride, seed_offset, rows, dim, num_samples, kl_per_dim);
  a.z = z;
  a.kl = kl;
  a.log_q = lq;
  a.log_p = lp;
  a.kl_partials = kl_partials;
  return static_cast<int>(fused_kingma::cuda::reparam_forward(a, nullptr));
}

extern "C" int emu_reparam_backward(int dtype, const void* mu, const void* lv, const void* pm, const void* plv,
                                    int64_t pm_stride, int64_t plv_stride, const int64_t* seed_offset,
                                    const void* gz, const void* gkl, const void* glq, const void* glp, void* gmu,
                                    void* glv, void* gpm, void* gplv, int64_t rows, int64_t dim,
                                    int64_t num_samples, int kl_per_dim) {
  fused_kingma::cuda::ReparamBackwardArgs a{};
  static_cast<fused_kingma::cuda::ReparamInputs&>(a) =
      inputs(dtype, mu, lv, pm, plv, pm_stride, plv_stride, seed_offset, rows, dim, num_samples, kl_per_dim);
  a.grad_z = gz;
  a.grad_kl = gkl;
  a.grad_log_q = glq;
  a.grad_log_p = glp;
  a.grad_mu = gmu;
  a.grad_logvar = glv;
  a.grad_prior_mu = gpm;
  a.grad_prior_logvar = gplv;
  return static_cast<int>(fused_kingma::cuda::reparam_backward(a, nullptr));
}

// launch.h's per-dim KL grouping, for the tests (rows per group, and groups = the partials' rows).
extern "C" int64_t emu_reparam_kl_group_rows(int64_t rows) { return fused_kingma::cuda::reparam_kl_group_rows(rows); }
extern "C" int64_t emu_reparam_kl_groups(int64_t rows) { return fused_kingma::cuda::reparam_kl_groups(rows); }
