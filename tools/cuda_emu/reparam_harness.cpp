// C entry points over the emulated CUDA reparam kernels (see emu.h), called through ctypes by
// tests/test_cuda_emulated.py with CPU tensors' pointers. reparam_emu.cu is csrc/cuda/reparam.cu with
// each `kernel<<<grid, block, 0, stream>>>(args)` rewritten to `emu::launch(grid, block, kernel, args)`.
#include "emu.h"
#include "reparam_emu.cu"

using fused_kingma::cuda::Dtype;

extern "C" int emu_reparam_forward(int dtype, const void* mu, const void* lv, const void* pm, const void* plv,
                                   int64_t pm_stride, int64_t plv_stride, const int64_t* seed_offset, void* z,
                                   void* kl, void* lq, void* lp, int64_t rows, int64_t dim, int64_t num_samples) {
  fused_kingma::cuda::ReparamForwardArgs a{};
  a.dtype = static_cast<Dtype>(dtype);
  a.mu = mu;
  a.logvar = lv;
  a.prior_mu = pm;
  a.prior_logvar = plv;
  a.prior_mu_row_stride = pm_stride;
  a.prior_logvar_row_stride = plv_stride;
  a.seed_offset = seed_offset;
  a.z = z;
  a.kl = kl;
  a.log_q = lq;
  a.log_p = lp;
  a.rows = rows;
  a.dim = dim;
  a.num_samples = num_samples;
  return static_cast<int>(fused_kingma::cuda::reparam_forward(a, nullptr));
}

extern "C" int emu_reparam_backward(int dtype, const void* mu, const void* lv, const void* pm, const void* plv,
                                    int64_t pm_stride, int64_t plv_stride, const int64_t* seed_offset,
                                    const void* gz, const void* gkl, const void* glq, const void* glp, void* gmu,
                                    void* glv, void* gpm, void* gplv, int64_t rows, int64_t dim,
                                    int64_t num_samples) {
  fused_kingma::cuda::ReparamBackwardArgs a{};
  a.dtype = static_cast<Dtype>(dtype);
  a.mu = mu;
  a.logvar = lv;
  a.prior_mu = pm;
  a.prior_logvar = plv;
  a.prior_mu_row_stride = pm_stride;
  a.prior_logvar_row_stride = plv_stride;
  a.seed_offset = seed_offset;
  a.grad_z = gz;
  a.grad_kl = gkl;
  a.grad_log_q = glq;
  a.grad_log_p = glp;
  a.grad_mu = gmu;
  a.grad_logvar = glv;
  a.grad_prior_mu = gpm;
  a.grad_prior_logvar = gplv;
  a.rows = rows;
  a.dim = dim;
  a.num_samples = num_samples;
  return static_cast<int>(fused_kingma::cuda::reparam_backward(a, nullptr));
}
