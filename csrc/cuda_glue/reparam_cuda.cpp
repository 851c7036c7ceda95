// CUDA kernels of the reparameterization ops (schemas in csrc/ops.cpp), with the semantics of the CPU
// twin csrc/cpu/reparam_cpu.cpp: the same output shapes (num_samples 0 / 1 / K), a prior shared by
// every row read in place with row stride 0 (any other broadcast expanded), the prior's gradients
// expanded to mu's shape. (seed, offset) stay on the GPU: the kernels read them from seed_offset,
// which fused_kingma draws there with a torch RNG op, so nothing here syncs with the host and a
// captured graph draws fresh noise on each replay. A seed_offset on the CPU (explicit seeds for a
// CUDA mu) is copied over, which is not capturable. kl_per_dim (free_bits): kl is (D,) in the compute dtype,
// summed over the rows by two kernels through a (groups, D) scratch this file allocates; the backward reads
// grad_kl as (D,) in the compute dtype.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "cuda/launch.h"
#include "cuda_glue/glue.h"
#include "reparam_glue.h"

namespace fused_kingma::cuda_glue {
namespace {

// (seed, offset) as a contiguous int64[2] on mu's device.
at::Tensor seed_offset_on(const at::Tensor& so, const at::Tensor& mu) {
  TORCH_CHECK_VALUE(so.scalar_type() == at::kLong && so.numel() == 2,
                    "seed_offset must be an int64 tensor of 2 elements (seed, offset), got shape ",
                    shape_str(so.sizes()), " ", dtype_str(so.scalar_type()));
  TORCH_CHECK(so.device().is_cpu() || so.device() == mu.device(), "seed_offset must be on mu's device ", mu.device(),
              " or the CPU, got ", so.device());
  return so.to(mu.device()).contiguous();
}

void* ptr_or_null(const at::Tensor& t) { return t.defined() && t.numel() > 0 ? t.data_ptr() : nullptr; }

cudaStream_t current_stream(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

// The inputs both kernels read (the tensors must stay alive until the launch is enqueued).
cuda::ReparamInputs reparam_inputs(cuda::Dtype dtype, const at::Tensor& mu, const at::Tensor& lv, const PriorRows& mp,
                                   const PriorRows& lvp, const at::Tensor& so, int64_t K, bool kl_per_dim) {
  cuda::ReparamInputs in{};
  in.dtype = dtype;
  in.mu = mu.data_ptr();
  in.logvar = lv.data_ptr();
  in.prior_mu = mp.rows.defined() ? mp.rows.data_ptr() : nullptr;  // rows stay undefined without a prior
  in.prior_logvar = lvp.rows.defined() ? lvp.rows.data_ptr() : nullptr;
  in.prior_mu_row_stride = mp.row_stride;
  in.prior_logvar_row_stride = lvp.row_stride;
  in.seed_offset = so.data_ptr<int64_t>();
  in.rows = c10::multiply_integers(mu.sizes().slice(0, mu.dim() - 1));
  in.dim = mu.size(-1);
  in.num_samples = K;
  in.kl_per_dim = kl_per_dim;
  return in;
}

// The dispatcher picks this kernel when any input is on a GPU; mu (and so the outputs) must be.
void check_mu_on_cuda(const at::Tensor& mu, const char* op) {
  TORCH_CHECK(mu.is_cuda(), op, ": mu is on ", mu.device(),
              " but another input (logvar, the prior or seed_offset) is on a GPU; put them all on mu's device");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> reparam_fwd_cuda(
    const at::Tensor& mu_in, const at::Tensor& lv_in, const std::optional<at::Tensor>& prior_mu,
    const std::optional<at::Tensor>& prior_logvar, const at::Tensor& seed_offset, int64_t num_samples,
    bool with_log_prob, bool kl_per_dim) {
  check_reparam_args(mu_in, lv_in, prior_mu, prior_logvar, num_samples);
  check_mu_on_cuda(mu_in, "reparam_fwd");
  const cuda::Dtype dtype = kernel_dtype(mu_in.scalar_type());
  const c10::cuda::CUDAGuard guard(mu_in.device());
  const at::Tensor mu = mu_in.contiguous(), lv = lv_in.contiguous();
  const auto [mp, lvp] = prior_of(prior_mu, prior_logvar, mu);
  const at::Tensor so = seed_offset_on(seed_offset, mu);
  const auto batch = mu.sizes().slice(0, mu.dim() - 1);
  const int64_t K = num_samples;
  const bool log_prob = with_log_prob && K > 0;
  at::Tensor z = K > 0 ? at::empty(with_samples(mu.sizes(), K), mu.options()) : at::empty({0}, mu.options());
  const int64_t rows = c10::multiply_integers(batch), D = mu.size(-1);
  const at::TensorOptions per_dim = mu.options().dtype(compute_dtype(mu));
  // Per-dim with no rows: the sum over none is 0, and no kernel runs to write it.
  at::Tensor kl = !kl_per_dim ? at::empty(batch, mu.options())
                  : rows > 0  ? at::empty({D}, per_dim)
                              : at::zeros({D}, per_dim);
  // The groups' partial sums (none for a single group: its sum goes to kl). Freed on return, after the launches
  // are enqueued: the caching allocator hands the block out again only to work queued after them on this stream.
  const int64_t groups = kl_per_dim ? cuda::reparam_kl_groups(rows) : 0;
  const at::Tensor kl_partials = groups > 1 ? at::empty({groups, D}, mu.options().dtype(at::kDouble)) : at::Tensor();
  at::Tensor lq = log_prob ? at::empty(with_samples(batch, K), mu.options()) : at::empty({0}, mu.options());
  at::Tensor lp = log_prob ? at::empty(with_samples(batch, K), mu.options()) : at::empty({0}, mu.options());

  cuda::ReparamForwardArgs a{};
  static_cast<cuda::ReparamInputs&>(a) = reparam_inputs(dtype, mu, lv, mp, lvp, so, K, kl_per_dim);
  a.z = ptr_or_null(z);
  a.kl = ptr_or_null(kl);
  a.log_q = ptr_or_null(lq);  // empty without log-probs
  a.log_p = ptr_or_null(lp);
  a.kl_partials = ptr_or_null(kl_partials);  // undefined unless per-dim with several groups
  check_launch(cuda::reparam_forward(a, current_stream(mu)), "reparam_fwd");
  return {z, kl, lq, lp};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> reparam_bwd_cuda(
    const std::optional<at::Tensor>& grad_z, const at::Tensor& grad_kl, const std::optional<at::Tensor>& grad_log_q,
    const std::optional<at::Tensor>& grad_log_p, const at::Tensor& mu_in, const at::Tensor& lv_in,
    const std::optional<at::Tensor>& prior_mu, const std::optional<at::Tensor>& prior_logvar,
    const at::Tensor& seed_offset, int64_t num_samples, bool kl_per_dim) {
  check_reparam_args(mu_in, lv_in, prior_mu, prior_logvar, num_samples);
  check_mu_on_cuda(mu_in, "reparam_bwd");
  const cuda::Dtype dtype = kernel_dtype(mu_in.scalar_type());
  const c10::cuda::CUDAGuard guard(mu_in.device());
  const at::Tensor mu = mu_in.contiguous(), lv = lv_in.contiguous();
  const bool has_prior = prior_mu.has_value();
  const auto [mp, lvp] = prior_of(prior_mu, prior_logvar, mu);
  const int64_t K = num_samples;
  const int64_t rows = c10::multiply_integers(mu.sizes().slice(0, mu.dim() - 1));
  // Output grads on mu's device (their conversions are device kernels), as dense tensors of mu's dtype.
  const auto on_device = [&](const at::Tensor& g, const char* name) -> const at::Tensor& {
    TORCH_CHECK(g.device() == mu.device(), "reparam_bwd: ", name, " must be on mu's device ", mu.device(), ", got ",
                g.device());
    return g;
  };
  const auto dense = [&](const at::Tensor& g, const char* name) {
    return on_device(g, name).to(mu.scalar_type()).contiguous();
  };
  TORCH_CHECK(K == 0 || grad_z.has_value(), "reparam_bwd: grad_z is required when sampling");
  const at::Tensor gz = K > 0 ? dense(*grad_z, "grad_z") : at::Tensor();
  TORCH_CHECK(K == 0 || gz.numel() == K * mu.numel(), "reparam_bwd: grad_z has the wrong size");
  const at::Tensor gkl = kl_grad_for_kernels(on_device(grad_kl, "grad_kl"), mu, kl_per_dim);
  at::Tensor glq, glp;
  if (grad_log_q.has_value() && K > 0) glq = dense(*grad_log_q, "grad_log_q");
  if (grad_log_p.has_value() && K > 0) glp = dense(*grad_log_p, "grad_log_p");
  TORCH_CHECK(!glq.defined() || glq.numel() == K * rows, "reparam_bwd: grad_log_q has the wrong size");
  TORCH_CHECK(!glp.defined() || glp.numel() == K * rows, "reparam_bwd: grad_log_p has the wrong size");
  at::Tensor gmu = at::empty(mu.sizes(), mu.options()), glv = at::empty(mu.sizes(), mu.options());
  at::Tensor gmp = has_prior ? at::empty(mu.sizes(), mu.options()) : at::empty({0}, mu.options());
  at::Tensor glvp = has_prior ? at::empty(mu.sizes(), mu.options()) : at::empty({0}, mu.options());
  const at::Tensor so = seed_offset_on(seed_offset, mu);

  cuda::ReparamBackwardArgs a{};
  static_cast<cuda::ReparamInputs&>(a) = reparam_inputs(dtype, mu, lv, mp, lvp, so, K, kl_per_dim);
  a.grad_z = ptr_or_null(gz);  // undefined for K == 0
  a.grad_kl = ptr_or_null(gkl);
  a.grad_log_q = ptr_or_null(glq);
  a.grad_log_p = ptr_or_null(glp);
  a.grad_mu = ptr_or_null(gmu);
  a.grad_logvar = ptr_or_null(glv);
  a.grad_prior_mu = ptr_or_null(gmp);  // empty without a prior
  a.grad_prior_logvar = ptr_or_null(glvp);
  check_launch(cuda::reparam_backward(a, current_stream(mu)), "reparam_bwd");
  return {gmu, glv, gmp, glvp};
}

// The CUDA twin of philox_debug for tests: uniforms (kind 1) or normals (kind 2) 0 .. n - 1 of the
// (seed, offset) held in the int64[2] CUDA tensor seed_offset.
at::Tensor philox_debug_cuda(const at::Tensor& seed_offset, int64_t n, int64_t kind) {
  TORCH_CHECK(seed_offset.is_cuda(), "philox_debug_cuda: seed_offset must be a CUDA tensor, got ",
              seed_offset.device());
  TORCH_CHECK_VALUE(n >= 0 && (kind == 1 || kind == 2), "philox_debug_cuda: n >= 0 and kind 1 (uniforms) or 2 "
                    "(normals), got n=", n, ", kind=", kind);
  const c10::cuda::CUDAGuard guard(seed_offset.device());
  const at::Tensor so = seed_offset_on(seed_offset, seed_offset);
  at::Tensor out = at::empty({n}, so.options().dtype(at::kFloat));
  check_launch(cuda::philox_noise(out.data_ptr<float>(), n, static_cast<int>(kind), so.data_ptr<int64_t>(),
                                  current_stream(so)),
               "philox_debug_cuda");
  return out;
}

}  // namespace

// A CUDA-build-only test helper, so it is declared here rather than in csrc/ops.cpp.
TORCH_LIBRARY_FRAGMENT(fused_kingma, m) {
  m.def("philox_debug_cuda(Tensor seed_offset, int n, int kind) -> Tensor");
}

TORCH_LIBRARY_IMPL(fused_kingma, CUDA, m) {
  m.impl("reparam_fwd", &reparam_fwd_cuda);
  m.impl("reparam_bwd", &reparam_bwd_cuda);
  m.impl("philox_debug_cuda", &philox_debug_cuda);
}

}  // namespace fused_kingma::cuda_glue
