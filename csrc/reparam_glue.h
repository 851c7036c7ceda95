// Torch-side argument handling shared by the CPU op and the CUDA glue of reparam_fwd / reparam_bwd, so both
// backends read the prior the same way and reject bad input with the same words.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "tensor_checks.h"

namespace fused_kingma {

// logvar and the prior must match mu's dtype and device (the Python layer checks first; this guards direct
// torch.ops calls).
inline void check_like_mu(const at::Tensor& t, const at::Tensor& mu, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == mu.scalar_type(), name, " must have mu's dtype ", dtype_str(mu.scalar_type()),
                   ", got ", dtype_str(t.scalar_type()));
  TORCH_CHECK(t.device() == mu.device(), name, " must be on mu's device ", mu.device(), ", got ", t.device());
}

// What reparam_fwd and reparam_bwd need of their inputs on every backend, checked before anything is read
// (the Python layer checks first, with its own words; this guards direct torch.ops calls).
inline void check_reparam_args(const at::Tensor& mu, const at::Tensor& lv, const std::optional<at::Tensor>& prior_mu,
                               const std::optional<at::Tensor>& prior_logvar, int64_t num_samples) {
  TORCH_CHECK(mu.dim() >= 1, "mu must have at least one dimension");
  TORCH_CHECK(mu.sizes() == lv.sizes(), "logvar must have mu's shape");
  TORCH_CHECK(num_samples >= 0, "num_samples must be >= 0");
  TORCH_CHECK(prior_mu.has_value() == prior_logvar.has_value(), "prior needs both mean and logvar");
  check_like_mu(lv, mu, "logvar");
}

// The dtype the kernels compute in: float64 for float64, else float32 (also the per-dim kl's dtype).
inline at::ScalarType compute_dtype(const at::Tensor& mu) {
  return mu.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// reparam_bwd's grad_kl as the kernels read it, dense: per row (mu's dtype, the batch shape) or, with kl_per_dim,
// per latent dim ((D,), the compute dtype). Whatever broadcasts to that shape is taken, else a clear error.
inline at::Tensor kl_grad_for_kernels(const at::Tensor& grad_kl, const at::Tensor& mu, bool kl_per_dim) {
  const auto shape = kl_per_dim ? mu.sizes().slice(mu.dim() - 1) : mu.sizes().slice(0, mu.dim() - 1);
  TORCH_CHECK(at::is_expandable_to(grad_kl.sizes(), shape), "reparam_bwd: grad_kl of shape ", grad_kl.sizes(),
              " does not broadcast to the kl's shape ", shape);
  return grad_kl.to(kl_per_dim ? compute_dtype(mu) : mu.scalar_type()).expand(shape).contiguous();
}

// The prior as rows the kernels read through a row stride: a prior shared by every row (shape (D,) or
// (1, ..., 1, D), the common case) is read in place with stride 0 instead of being expanded to mu's size;
// a prior already of mu's layout is read as is; any other broadcast is expanded and made contiguous.
struct PriorRows {
  at::Tensor rows;
  int64_t row_stride = 0;
};

inline PriorRows prior_rows(const std::optional<at::Tensor>& p, const at::Tensor& mu, const char* name) {
  check_like_mu(*p, mu, name);
  const at::Tensor e = p->expand(mu.sizes());
  const int64_t D = mu.size(-1);
  bool shared = true;
  for (int64_t d = 0; d + 1 < e.dim(); ++d) shared = shared && (e.stride(d) == 0 || e.size(d) == 1);
  if (shared && (e.stride(-1) == 1 || D <= 1)) return {e, 0};
  return {e.contiguous(), D};
}

// Both prior tensors as rows (empty rows with stride 0 when there is no prior).
struct Prior {
  PriorRows mean, logvar;
};

inline Prior prior_of(const std::optional<at::Tensor>& prior_mu, const std::optional<at::Tensor>& prior_logvar,
                      const at::Tensor& mu) {
  if (!prior_mu.has_value()) return {};
  return {prior_rows(prior_mu, mu, "prior mean"), prior_rows(prior_logvar, mu, "prior logvar")};
}

// Output shape with the samples dim: (K, *shape) for K > 1, shape itself for K = 1.
inline std::vector<int64_t> with_samples(at::IntArrayRef shape, int64_t K) {
  std::vector<int64_t> s(shape.begin(), shape.end());
  if (K > 1) s.insert(s.begin(), K);
  return s;
}

}  // namespace fused_kingma
