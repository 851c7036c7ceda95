// CUDA kernels of the reparameterization ops (schemas in csrc/ops.cpp; CPU twin
// csrc/cpu/reparam_cpu.cpp): checks, layout (rows x dim, contiguous; a broadcast prior expanded
// to mu's shape), (seed, offset) as a 2-element int64 tensor on the GPU (a captured graph reads it
// at replay, so the Python side can advance it without re-capturing), then csrc/cuda/reparam.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "cuda/launch.h"
#include "cuda_glue/glue.h"

namespace fused_kingma::cuda_glue {
namespace {

void check_float(const at::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, name,
                   " must be float32, float64, float16 or bfloat16, got ", dtype_str(dt));
}

void check_on(const at::Tensor& t, const at::Tensor& mu, const char* name) {
  TORCH_CHECK(t.device() == mu.device(), name, " is on ", t.device(), " but mu is on ", mu.device());
}

void check_same(const at::Tensor& t, const at::Tensor& mu, const char* name) {
  check_on(t, mu, name);
  TORCH_CHECK_TYPE(t.scalar_type() == mu.scalar_type(), name, " has dtype ", dtype_str(t.scalar_type()),
                   " but mu has ", dtype_str(mu.scalar_type()));
}

// (seed, offset) as int64[2] on mu's device.
at::Tensor seed_offset_on(const at::Tensor& seed_offset, const at::Tensor& mu) {
  TORCH_CHECK_VALUE(seed_offset.numel() == 2 && seed_offset.scalar_type() == at::kLong,
                    "seed_offset must hold 2 int64 values (seed, offset), got shape ", shape_str(seed_offset.sizes()),
                    " ", dtype_str(seed_offset.scalar_type()));
  TORCH_CHECK(seed_offset.device().is_cpu() || seed_offset.device() == mu.device(), "seed_offset is on ",
              seed_offset.device(), " but mu is on ", mu.device());
  return seed_offset.to(mu.device(), /*non_blocking=*/false, /*copy=*/false).contiguous();
}

// A prior given as broadcastable to mu: expanded and made dense, so the kernel indexes it like mu.
at::Tensor prior_like(const std::optional<at::Tensor>& p, const at::Tensor& mu, const char* name) {
  check_same(*p, mu, name);
  TORCH_CHECK_VALUE(p->dim() <= mu.dim(), name, " of shape ", shape_str(p->sizes()),
                    " does not broadcast to mu's shape ", shape_str(mu.sizes()));
  for (int64_t d = 1; d <= p->dim(); ++d) {
    const int64_t ps = p->size(-d), ms = mu.size(-d);
    TORCH_CHECK_VALUE(ps == ms || ps == 1, name, " of shape ", shape_str(p->sizes()),
                      " does not broadcast to mu's shape ", shape_str(mu.sizes()));
  }
  return p->expand(mu.sizes()).contiguous();
}

struct Layout {
  int64_t rows, dim;
};

Layout layout_of(const at::Tensor& mu) {
  TORCH_CHECK_VALUE(mu.dim() >= 1, "mu must have at least one dimension (the latent dimension), got a scalar");
  const int64_t dim = mu.size(-1);
  return {dim == 0 ? 0 : mu.numel() / dim, dim};
}

}  // namespace

// Forward: z (num_samples, *mu.shape), kl (mu.shape[:-1]), per-element KL (mu.shape) when
// `kl_elementwise`, and log q / log p of the samples (num_samples, *mu.shape[:-1]) when `log_probs`.
// Undefined tensors for outputs not asked for.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> reparam_forward_cuda(
    const at::Tensor& mu_in, const at::Tensor& logvar_in, const std::optional<at::Tensor>& prior_mu,
    const std::optional<at::Tensor>& prior_logvar, const at::Tensor& seed_offset, int64_t num_samples,
    bool kl_elementwise, bool log_probs) {
  TORCH_CHECK(mu_in.is_cuda(), "mu is on ", mu_in.device(), "; this is the CUDA kernel");
  check_float(mu_in, "mu");
  check_same(logvar_in, mu_in, "logvar");
  TORCH_CHECK_VALUE(logvar_in.sizes() == mu_in.sizes(), "logvar has shape ", shape_str(logvar_in.sizes()),
                    " but mu has shape ", shape_str(mu_in.sizes()));
  TORCH_CHECK_VALUE(num_samples >= 1, "num_samples must be >= 1, got ", num_samples);
  TORCH_CHECK_VALUE(prior_mu.has_value() == prior_logvar.has_value(),
                    "prior must give both a mean and a log-variance");
  const Layout lay = layout_of(mu_in);
  const at::Tensor so = seed_offset_on(seed_offset, mu_in);
  at::Tensor pm, plv;
  if (prior_mu.has_value()) {
    pm = prior_like(prior_mu, mu_in, "prior mean");
    plv = prior_like(prior_logvar, mu_in, "prior log-variance");
  }
  const c10::cuda::CUDAGuard guard(mu_in.device());
  const at::Tensor mu = mu_in.contiguous(), logvar = logvar_in.contiguous();

  std::vector<int64_t> z_shape{num_samples};
  z_shape.insert(z_shape.end(), mu.sizes().begin(), mu.sizes().end());
  const std::vector<int64_t> row_shape(mu.sizes().begin(), mu.sizes().end() - 1);
  std::vector<int64_t> sample_row_shape{num_samples};
  sample_row_shape.insert(sample_row_shape.end(), row_shape.begin(), row_shape.end());

  at::Tensor z = at::empty(z_shape, mu.options());
  at::Tensor kl = at::empty(row_shape, mu.options());
  at::Tensor kl_elem = kl_elementwise ? at::empty_like(mu) : at::Tensor();
  at::Tensor log_q = log_probs ? at::empty(sample_row_shape, mu.options()) : at::Tensor();
  at::Tensor log_p = log_probs ? at::empty(sample_row_shape, mu.options()) : at::Tensor();
  if (lay.dim == 0) {  // an empty latent dimension: the sums are 0
    kl.zero_();
    if (log_probs) {
      log_q.zero_();
      log_p.zero_();
    }
  }

  cuda::ReparamForwardArgs a{};
  a.dtype = kernel_dtype(mu.scalar_type());
  a.mu = mu.data_ptr();
  a.logvar = logvar.data_ptr();
  a.prior_mu = pm.defined() ? pm.data_ptr() : nullptr;
  a.prior_logvar = plv.defined() ? plv.data_ptr() : nullptr;
  a.seed_offset = so.data_ptr<int64_t>();
  a.z = z.data_ptr();
  a.kl = kl.data_ptr();
  a.kl_elem = kl_elem.defined() ? kl_elem.data_ptr() : nullptr;
  a.log_q = log_probs ? log_q.data_ptr() : nullptr;
  a.log_p = log_probs ? log_p.data_ptr() : nullptr;
  a.rows = lay.rows;
  a.dim = lay.dim;
  a.num_samples = num_samples;
  check_launch(cuda::reparam_forward(a, c10::cuda::getCurrentCUDAStream().stream()), "reparam forward");
  return {z, kl, kl_elem, log_q, log_p};
}

// Backward: grads of mu and logvar (and of the prior's mean / log-variance, summed back to their
// own shapes, when `prior_grads`), from whichever output grads are defined.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> reparam_backward_cuda(
    const std::optional<at::Tensor>& grad_z, const std::optional<at::Tensor>& grad_kl,
    const std::optional<at::Tensor>& grad_kl_elem, const std::optional<at::Tensor>& grad_log_q,
    const std::optional<at::Tensor>& grad_log_p, const at::Tensor& mu_in, const at::Tensor& logvar_in,
    const std::optional<at::Tensor>& prior_mu, const std::optional<at::Tensor>& prior_logvar,
    const at::Tensor& seed_offset, int64_t num_samples, bool prior_grads) {
  TORCH_CHECK(mu_in.is_cuda(), "mu is on ", mu_in.device(), "; this is the CUDA kernel");
  check_float(mu_in, "mu");
  check_same(logvar_in, mu_in, "logvar");
  TORCH_CHECK_VALUE(num_samples >= 1, "num_samples must be >= 1, got ", num_samples);
  const Layout lay = layout_of(mu_in);
  const at::Tensor so = seed_offset_on(seed_offset, mu_in);
  at::Tensor pm, plv;
  if (prior_mu.has_value()) {
    pm = prior_like(prior_mu, mu_in, "prior mean");
    plv = prior_like(prior_logvar, mu_in, "prior log-variance");
  }
  const c10::cuda::CUDAGuard guard(mu_in.device());
  const at::Tensor mu = mu_in.contiguous(), logvar = logvar_in.contiguous();
  auto dense = [&](const std::optional<at::Tensor>& g, const char* name) -> at::Tensor {
    if (!g.has_value() || !g->defined()) return at::Tensor();
    check_same(*g, mu, name);
    return g->contiguous();
  };
  const at::Tensor gz = dense(grad_z, "grad of z"), gkl = dense(grad_kl, "grad of kl");
  const at::Tensor gke = dense(grad_kl_elem, "grad of the elementwise kl");
  const at::Tensor glq = dense(grad_log_q, "grad of log_q"), glp = dense(grad_log_p, "grad of log_p");
  TORCH_CHECK_VALUE(!gz.defined() || gz.numel() == num_samples * mu.numel(), "grad of z has ", gz.numel(),
                    " elements, expected ", num_samples * mu.numel());

  at::Tensor grad_mu = at::empty_like(mu), grad_logvar = at::empty_like(mu);
  const bool want_prior = prior_grads && pm.defined();
  at::Tensor grad_pm = want_prior ? at::empty_like(mu) : at::Tensor();
  at::Tensor grad_plv = want_prior ? at::empty_like(mu) : at::Tensor();
  cuda::ReparamBackwardArgs a{};
  a.dtype = kernel_dtype(mu.scalar_type());
  a.mu = mu.data_ptr();
  a.logvar = logvar.data_ptr();
  a.prior_mu = pm.defined() ? pm.data_ptr() : nullptr;
  a.prior_logvar = plv.defined() ? plv.data_ptr() : nullptr;
  a.seed_offset = so.data_ptr<int64_t>();
  a.grad_z = gz.defined() ? gz.data_ptr() : nullptr;
  a.grad_kl = gkl.defined() ? gkl.data_ptr() : nullptr;
  a.grad_kl_elem = gke.defined() ? gke.data_ptr() : nullptr;
  a.grad_log_q = glq.defined() ? glq.data_ptr() : nullptr;
  a.grad_log_p = glp.defined() ? glp.data_ptr() : nullptr;
  a.grad_mu = grad_mu.data_ptr();
  a.grad_logvar = grad_logvar.data_ptr();
  a.grad_prior_mu = want_prior ? grad_pm.data_ptr() : nullptr;
  a.grad_prior_logvar = want_prior ? grad_plv.data_ptr() : nullptr;
  a.rows = lay.rows;
  a.dim = lay.dim;
  a.num_samples = num_samples;
  check_launch(cuda::reparam_backward(a, c10::cuda::getCurrentCUDAStream().stream()), "reparam backward");
  if (want_prior) {  // back to the prior's own (broadcast) shapes
    grad_pm = grad_pm.sum_to_size(prior_mu->sizes());
    grad_plv = grad_plv.sum_to_size(prior_logvar->sizes());
  }
  return {grad_mu, grad_logvar, grad_pm, grad_plv};
}

// The noise alone: uniform (or standard normal) number i of (seed, offset), i in [0, n), fp32.
at::Tensor philox_noise_cuda(const at::Tensor& seed_offset, int64_t n, bool normal) {
  TORCH_CHECK(seed_offset.is_cuda(), "seed_offset is on ", seed_offset.device(), "; this is the CUDA kernel");
  TORCH_CHECK_VALUE(n >= 0, "n must be >= 0, got ", n);
  const at::Tensor so = seed_offset_on(seed_offset, seed_offset);
  const c10::cuda::CUDAGuard guard(so.device());
  at::Tensor out = at::empty({n}, so.options().dtype(at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = normal ? cuda::philox_normal(out.data_ptr<float>(), n, so.data_ptr<int64_t>(), stream)
                                 : cuda::philox_uniform(out.data_ptr<float>(), n, so.data_ptr<int64_t>(), stream);
  check_launch(err, "philox noise");
  return out;
}

}  // namespace fused_kingma::cuda_glue
