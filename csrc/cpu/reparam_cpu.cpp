// CPU glue of the reparameterization ops: checks, output allocation, raw pointers -> reparam_kernels.cpp.
// Inputs are made contiguous and the prior expanded to mu's shape here (documented in functional.py).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "output_cache.h"
#include "reparam_glue.h"
#include "reparam_kernels.h"

namespace fused_kingma::cpu {
namespace {

ReparamDtype dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return ReparamDtype::F32;
    case at::kDouble: return ReparamDtype::F64;
    case at::kHalf: return ReparamDtype::F16;
    case at::kBFloat16: return ReparamDtype::BF16;
    default: TORCH_CHECK(false, "fused_kingma reparameterize: mu must be float32/float64/float16/bfloat16, got ",
                         t.scalar_type());
  }
}

std::pair<uint64_t, uint64_t> read_seed_offset(const at::Tensor& so) {
  TORCH_CHECK(so.scalar_type() == at::kLong && so.numel() == 2, "seed_offset must be an int64 tensor of 2 elements");
  const at::Tensor c = so.to(at::kCPU).contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  return {static_cast<uint64_t>(p[0]), static_cast<uint64_t>(p[1])};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> reparam_fwd(const at::Tensor& mu_in, const at::Tensor& lv_in,
                                                                      const c10::optional<at::Tensor>& prior_mu,
                                                                      const c10::optional<at::Tensor>& prior_logvar,
                                                                      const at::Tensor& seed_offset,
                                                                      int64_t num_samples, bool with_log_prob,
                                                                      bool kl_per_dim) {
  check_reparam_args(mu_in, lv_in, prior_mu, prior_logvar, num_samples);
  const at::Tensor mu = mu_in.contiguous(), lv = lv_in.contiguous();
  const bool has_prior = prior_mu.has_value();
  const auto [mp, lvp] = prior_of(prior_mu, prior_logvar, mu);
  const auto [seed, offset] = read_seed_offset(seed_offset);
  const int64_t D = mu.size(-1);
  const auto batch = mu.sizes().slice(0, mu.dim() - 1);
  const int64_t rows = c10::multiply_integers(batch);
  const int64_t K = num_samples;
  at::Tensor z = K > 0 ? empty_cached_output(with_samples(mu.sizes(), K), mu.options()) : at::empty({0}, mu.options());
  // Per dim: (D,) in the compute dtype; zeros, the sum over no rows, when there are none.
  at::Tensor kl = kl_per_dim ? at::zeros({D}, mu.options().dtype(compute_dtype(mu))) : at::empty(batch, mu.options());
  at::Tensor lq = with_log_prob && K > 0 ? at::empty(with_samples(batch, K), mu.options()) : at::empty({0}, mu.options());
  at::Tensor lp = with_log_prob && K > 0 ? at::empty(with_samples(batch, K), mu.options()) : at::empty({0}, mu.options());
  ReparamFwdArgs a{dtype_of(mu),
                   mu.data_ptr(),
                   lv.data_ptr(),
                   has_prior ? mp.rows.data_ptr() : nullptr,
                   has_prior ? lvp.rows.data_ptr() : nullptr,
                   K > 0 ? z.data_ptr() : nullptr,
                   kl.data_ptr(),
                   with_log_prob && K > 0 ? lq.data_ptr() : nullptr,
                   with_log_prob && K > 0 ? lp.data_ptr() : nullptr,
                   rows,
                   D,
                   K,
                   seed,
                   offset,
                   mp.row_stride,
                   lvp.row_stride,
                   kl_per_dim};
  if (rows > 0) reparam_forward_cpu(a);
  return {z, kl, lq, lp};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> reparam_bwd(
    const c10::optional<at::Tensor>& grad_z, const at::Tensor& grad_kl, const c10::optional<at::Tensor>& grad_log_q,
    const c10::optional<at::Tensor>& grad_log_p, const at::Tensor& mu_in, const at::Tensor& lv_in,
    const c10::optional<at::Tensor>& prior_mu, const c10::optional<at::Tensor>& prior_logvar,
    const at::Tensor& seed_offset, int64_t num_samples, bool kl_per_dim) {
  check_reparam_args(mu_in, lv_in, prior_mu, prior_logvar, num_samples);
  const at::Tensor mu = mu_in.contiguous(), lv = lv_in.contiguous();
  const bool has_prior = prior_mu.has_value();
  const auto [mp, lvp] = prior_of(prior_mu, prior_logvar, mu);
  const int64_t K = num_samples, D = mu.size(-1);
  const auto batch = mu.sizes().slice(0, mu.dim() - 1);
  const int64_t rows = c10::multiply_integers(batch);
  TORCH_CHECK(K == 0 || grad_z.has_value(), "reparam_bwd: grad_z is required when sampling");
  at::Tensor gz = K > 0 ? grad_z->to(mu.scalar_type()).contiguous() : at::Tensor();
  TORCH_CHECK(K == 0 || gz.numel() == K * mu.numel(), "reparam_bwd: grad_z has the wrong size");
  const at::Tensor gkl = kl_grad_for_kernels(grad_kl, mu, kl_per_dim);
  at::Tensor glq, glp;
  if (grad_log_q.has_value() && K > 0) glq = grad_log_q->to(mu.scalar_type()).contiguous();
  if (grad_log_p.has_value() && K > 0) glp = grad_log_p->to(mu.scalar_type()).contiguous();
  at::Tensor gmu = empty_cached_output(mu.sizes(), mu.options()), glv = empty_cached_output(mu.sizes(), mu.options());
  at::Tensor gmp = has_prior ? empty_cached_output(mu.sizes(), mu.options()) : at::empty({0}, mu.options());
  at::Tensor glvp = has_prior ? empty_cached_output(mu.sizes(), mu.options()) : at::empty({0}, mu.options());
  const auto [seed, offset] = read_seed_offset(seed_offset);
  ReparamBwdArgs a{dtype_of(mu),
                   K > 0 ? gz.data_ptr() : nullptr,
                   gkl.data_ptr(),
                   glq.defined() ? glq.data_ptr() : nullptr,
                   glp.defined() ? glp.data_ptr() : nullptr,
                   mu.data_ptr(),
                   lv.data_ptr(),
                   has_prior ? mp.rows.data_ptr() : nullptr,
                   has_prior ? lvp.rows.data_ptr() : nullptr,
                   gmu.data_ptr(),
                   glv.data_ptr(),
                   has_prior ? gmp.data_ptr() : nullptr,
                   has_prior ? glvp.data_ptr() : nullptr,
                   rows,
                   D,
                   K,
                   seed,
                   offset,
                   mp.row_stride,
                   lvp.row_stride,
                   kl_per_dim};
  if (rows > 0 && D > 0) reparam_backward_cpu(a);
  return {gmu, glv, gmp, glvp};
}

at::Tensor philox_debug(int64_t seed, int64_t offset, int64_t first_block, int64_t nblocks, int64_t kind) {
  TORCH_CHECK(kind >= 0 && kind <= 2 && nblocks >= 0, "philox_debug: kind 0 (bits), 1 (uniforms), 2 (normals)");
  at::Tensor out = at::empty({4 * nblocks}, at::TensorOptions().dtype(kind == 0 ? at::kLong : at::kFloat));
  char* base = static_cast<char*>(out.data_ptr());
  const int64_t bytes_per_block = 4 * static_cast<int64_t>(out.element_size());
  at::parallel_for(0, nblocks, 2048, [&](int64_t lo, int64_t hi) {  // parallel, so the benchmark can time the noise
    philox_debug_cpu(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                     static_cast<uint64_t>(first_block) + static_cast<uint64_t>(lo), hi - lo, static_cast<int>(kind),
                     base + lo * bytes_per_block);
  });
  return out;
}

at::Tensor fastmath_debug(const at::Tensor& x, int64_t fn) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && fn >= 0 && fn <= 4, "fastmath_debug: float32 x, fn 0..4");
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc);
  fastmath_debug_cpu(xc.data_ptr<float>(), y.data_ptr<float>(), xc.numel(), static_cast<int>(fn));
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_kingma, CPU, m) {
  m.impl("reparam_fwd", &reparam_fwd);
  m.impl("reparam_bwd", &reparam_bwd);
}

TORCH_LIBRARY_IMPL(fused_kingma, CompositeExplicitAutograd, m) {
  m.impl("philox_debug", &philox_debug);
  m.impl("fastmath_debug", &fastmath_debug);
}

}  // namespace fused_kingma::cpu
