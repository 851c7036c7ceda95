// C entry points over the emulated CUDA reparam kernels (see emu.h), called through ctypes by
// tests/test_cuda_emulated.py with CPU tensors' pointers. reparam_emu.cu is csrc/cuda/reparam.cu with
// each `kernel<<<grid, block, 0, stream>>>(args)` rewritten to `emu::launch(grid, block, kernel, args)`.
#include "emu.h"
#include "reparam_emu.cu"

using fused_kingma::cuda::Dtype;

// The inputs both kernels read, as the CUDA glue fills them.
static fused_kingma::cuda::ReparamInputs inputs(int dtype, const void* mu, const void* lv, const void* pm,
                                                const void* plv, int64_t pm_stride, int64_t plv_stride,
                                                const int64_t* seed_offset, int64_t rows, int64_t dim,
                                                int64_t num_samples) {
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
  return in;
}

extern "C" int emu_reparam_forward(int dtype, const void* mu, const void* lv, const void* pm, const void* plv,
                                   int64_t pm_stride, int64_t plv_stride, const int64_t* seed_offset, void* z,
                                   void* kl, void* lq, void* lp, int64_t rows, int64_t dim, int64_t num_samples) {
  fused_kingma::cuda::ReparamForwardArgs a{};
  static_cast<fused_kingma::cuda::ReparamInputs&>(a) =
      inputs(dtype, mu, lv, pm, plv, pm_stride, plv_stride, seed_offset, rows, dim, num_samples);
  a.z = z;
  a.kl = kl;
  a.log_q = lq;
  a.log_p = lp;
  return static_cast<int>(fused_kingma::cuda::reparam_forward(a, nullptr));
}

extern "C" int emu_reparam_backward(int dtype, const void* mu, const void* lv, const void* pm, const void* plv,
                                    int64_t pm_stride, int64_t plv_stride, const int64_t* seed_offset,
                                    const void* gz, const void* gkl, const void* glq, const void* glp, void* gmu,
                                    void* glv, void* gpm, void* gplv, int64_t rows, int64_t dim,
                                    int64_t num_samples) {
  fused_kingma::cuda::ReparamBackwardArgs a{};
  static_cast<fused_kingma::cuda::ReparamInputs&>(a) =
      inputs(dtype, mu, lv, pm, plv, pm_stride, plv_stride, seed_offset, rows, dim, num_samples);
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
