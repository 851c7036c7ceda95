// Autograd for reparam_fwd, in C++ for every backend (the Autograd dispatch key). The backward calls
// reparam_bwd, which regenerates the noise from the saved int64[2] seed_offset: only mu, logvar, the prior
// and seed_offset are saved, nothing of z's size.
//
// Why C++: the same rule registered from Python (torch.library.register_autograd) ran Python frames on every
// call: a 64x8 fp32 forward+backward took 163 us with it and 99 us with this (eager code: 148 us).
// torch.compile traces through it like through any C++ autograd kernel.
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd_bypass.h"
#include "reparam_glue.h"
#include "typed_op.h"

namespace fused_kingma {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;
using FourTensors = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

const auto& fwd_op() {
  static const auto op = typed_op<FourTensors(const at::Tensor&, const at::Tensor&, const OptTensor&,
                                              const OptTensor&, const at::Tensor&, int64_t, bool, bool)>(
      "fused_kingma::reparam_fwd");
  return op;
}

const auto& bwd_op() {
  static const auto op = typed_op<FourTensors(const OptTensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                                              const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                                              const at::Tensor&, int64_t, bool)>("fused_kingma::reparam_bwd");
  return op;
}

OptTensor opt(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

constexpr const char* kNoDoubleBackward =
    "fused_kingma.reparameterize / gaussian_kl do not support double backward (create_graph=True through "
    "their backward); use fused_kingma.reference.reparameterize_reference for higher-order gradients.";

// reparam_bwd's own autograd: its outputs get a node that refuses to be differentiated, so create_graph=True
// through reparameterize fails loudly at the second backward instead of silently giving no gradient.
struct ReparamBackwardFunction : public torch::autograd::Function<ReparamBackwardFunction> {
  static variable_list forward(AutogradContext*, const OptTensor& grad_z, const at::Tensor& grad_kl,
                               const OptTensor& grad_log_q, const OptTensor& grad_log_p, const at::Tensor& mu,
                               const at::Tensor& logvar, const OptTensor& prior_mu, const OptTensor& prior_logvar,
                               const at::Tensor& seed_offset, int64_t num_samples, bool kl_per_dim) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [g_mu, g_lv, g_pmu, g_plv] = bwd_op().call(grad_z, grad_kl, grad_log_q, grad_log_p, mu, logvar, prior_mu,
                                                    prior_logvar, seed_offset, num_samples, kl_per_dim);
    return {g_mu, g_lv, g_pmu, g_plv};
  }
  static variable_list backward(AutogradContext*, variable_list) { TORCH_CHECK(false, kNoDoubleBackward); }
};

FourTensors reparam_bwd_autograd(const OptTensor& grad_z, const at::Tensor& grad_kl, const OptTensor& grad_log_q,
                                 const OptTensor& grad_log_p, const at::Tensor& mu, const at::Tensor& logvar,
                                 const OptTensor& prior_mu, const OptTensor& prior_logvar,
                                 const at::Tensor& seed_offset, int64_t num_samples, bool kl_per_dim) {
  const auto ptr = [](const OptTensor& t) { return t ? &*t : nullptr; };
  if (!needs_graph({ptr(grad_z), &grad_kl, ptr(grad_log_q), ptr(grad_log_p), &mu, &logvar, ptr(prior_mu),
                    ptr(prior_logvar)})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return bwd_op().call(grad_z, grad_kl, grad_log_q, grad_log_p, mu, logvar, prior_mu, prior_logvar, seed_offset,
                         num_samples, kl_per_dim);
  }
  const variable_list out = ReparamBackwardFunction::apply(grad_z, grad_kl, grad_log_q, grad_log_p, mu, logvar,
                                                           prior_mu, prior_logvar, seed_offset, num_samples,
                                                           kl_per_dim);
  return {out[0], out[1], out[2], out[3]};
}

struct ReparamFunction : public torch::autograd::Function<ReparamFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& logvar,
                               const OptTensor& prior_mu, const OptTensor& prior_logvar,
                               const at::Tensor& seed_offset, int64_t num_samples, bool with_log_prob,
                               bool kl_per_dim) {
    at::Tensor z, kl, log_q, log_p;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(z, kl, log_q, log_p) =
          fwd_op().call(mu, logvar, prior_mu, prior_logvar, seed_offset, num_samples, with_log_prob, kl_per_dim);
    }
    ctx->save_for_backward({mu, logvar, prior_mu.value_or(at::Tensor()), prior_logvar.value_or(at::Tensor()),
                            seed_offset});
    ctx->saved_data["num_samples"] = num_samples;
    ctx->saved_data["with_log_prob"] = with_log_prob && num_samples > 0;
    ctx->saved_data["kl_per_dim"] = kl_per_dim;
    ctx->set_materialize_grads(false);  // a missing output gradient is handled below, without a zeros tensor
    return {z, kl, log_q, log_p};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &mu = saved[0], &logvar = saved[1], &prior_mu = saved[2], &prior_logvar = saved[3];
    const int64_t K = ctx->saved_data["num_samples"].toInt();
    const bool with_log_prob = ctx->saved_data["with_log_prob"].toBool();
    const bool kl_per_dim = ctx->saved_data["kl_per_dim"].toBool();
    // A missing kl gradient is zeros of the kl's shape: (D,) per dim, else the batch shape.
    const auto kl_shape = kl_per_dim ? mu.sizes().slice(mu.dim() - 1) : mu.sizes().slice(0, mu.dim() - 1);
    at::Tensor grad_kl = grads[1].defined() ? grads[1] : at::zeros(kl_shape, mu.options());
    OptTensor grad_z;
    if (K > 0) grad_z = grads[0].defined() ? grads[0] : at::zeros(with_samples(mu.sizes(), K), mu.options());
    const OptTensor grad_log_q = with_log_prob ? opt(grads[2]) : std::nullopt;
    const OptTensor grad_log_p = with_log_prob ? opt(grads[3]) : std::nullopt;
    auto [g_mu, g_lv, g_pmu_full, g_plv_full] = reparam_bwd_autograd(
        grad_z, grad_kl, grad_log_q, grad_log_p, mu, logvar, opt(prior_mu), opt(prior_logvar), saved[4], K, kl_per_dim);
    at::Tensor g_pmu, g_plv;  // the kernel gives the prior's gradients expanded to mu's shape
    if (prior_mu.defined() && ctx->needs_input_grad(2)) g_pmu = g_pmu_full.sum_to_size(prior_mu.sizes());
    if (prior_logvar.defined() && ctx->needs_input_grad(3)) g_plv = g_plv_full.sum_to_size(prior_logvar.sizes());
    return {g_mu, g_lv, g_pmu, g_plv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

FourTensors reparam_fwd_autograd(const at::Tensor& mu, const at::Tensor& logvar, const OptTensor& prior_mu,
                                 const OptTensor& prior_logvar, const at::Tensor& seed_offset, int64_t num_samples,
                                 bool with_log_prob, bool kl_per_dim) {
  if (!needs_graph({&mu, &logvar, prior_mu ? &*prior_mu : nullptr, prior_logvar ? &*prior_logvar : nullptr})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fwd_op().call(mu, logvar, prior_mu, prior_logvar, seed_offset, num_samples, with_log_prob, kl_per_dim);
  }
  const variable_list out = ReparamFunction::apply(mu, logvar, prior_mu, prior_logvar, seed_offset, num_samples,
                                                   with_log_prob, kl_per_dim);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_kingma, Autograd, m) {
  m.impl("reparam_fwd", &reparam_fwd_autograd);
  m.impl("reparam_bwd", &reparam_bwd_autograd);
}

}  // namespace fused_kingma
