// The free-bits KL objective (Kingma et al. 2016, IAF) from the per-dim KL sums of reparam_fwd(kl_per_dim=True):
// sum_j max(lam, kl_j / batch), rounded once to the output dtype, with its autograd (the gradient of dim j is
// grad / batch where its mean is at or above the floor, else 0, as torch.clamp_min's).
//
// Why an op: the same four torch ops from Python (div, clamp, sum, to) and their autograd nodes took ~53 us per
// training step, forward + backward, a third of a fused step at a typical VAE batch (128x32), and still ~50 us
// as ATen calls from C++. Here the forward and the backward are one loop each over the D sums on the CPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd_bypass.h"
#include "typed_op.h"

namespace fused_kingma {
namespace {

void check_args(const at::Tensor& kl, int64_t batch) {
  TORCH_CHECK(kl.dim() == 1, "free_bits_kl: kl_per_dim must be 1-D (one sum per latent dim), got shape ",
              kl.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(kl.scalar_type()), "free_bits_kl: kl_per_dim must be floating point, got ",
                   kl.scalar_type());
  TORCH_CHECK(batch >= 0, "free_bits_kl: batch must be >= 0, got ", batch);
}

// The objective. CPU: the D terms in the sums' dtype (mean, then floor; NaN stays NaN as in clamp_min), added in
// double. Elsewhere: the same as ATen ops.
at::Tensor free_bits_kl(const at::Tensor& kl, int64_t batch, double free_bits, at::ScalarType out_dtype) {
  check_args(kl, batch);
  if (!kl.device().is_cpu()) return at::clamp_min(kl / static_cast<double>(batch), free_bits).sum().to(out_dtype);
  const at::Tensor c = kl.contiguous();
  double total = 0;
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "free_bits_kl", [&] {
    const scalar_t* p = c.data_ptr<scalar_t>();
    const scalar_t rows = static_cast<scalar_t>(batch), floor = static_cast<scalar_t>(free_bits);
    for (int64_t j = 0; j < c.numel(); ++j) {
      const scalar_t mean = p[j] / rows;
      total += static_cast<double>(mean >= floor || mean != mean ? mean : floor);
    }
  });
  return at::scalar_tensor(total, kl.options().dtype(at::kDouble)).to(out_dtype);
}

// The gradient w.r.t. kl_per_dim: grad / batch for dims whose mean is at or above the floor, else 0 (NaN: 0, as
// torch.clamp_min's backward). CPU: one loop; elsewhere ATen ops.
at::Tensor free_bits_kl_backward(const at::Tensor& grad, const at::Tensor& kl, int64_t batch, double free_bits) {
  check_args(kl, batch);
  const double rows = static_cast<double>(batch);
  if (!kl.device().is_cpu()) {
    return at::where((kl / rows) >= free_bits, grad.to(kl.scalar_type()) / rows, at::zeros({}, kl.options()));
  }
  const at::Tensor c = kl.contiguous();
  at::Tensor out = at::empty_like(c);
  const double g = grad.to(at::kDouble).item<double>();  // a CPU scalar: no device sync
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "free_bits_kl_backward", [&] {
    const scalar_t* p = c.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t n = static_cast<scalar_t>(batch), floor = static_cast<scalar_t>(free_bits);
    const scalar_t per_row = static_cast<scalar_t>(g) / n;
    for (int64_t j = 0; j < c.numel(); ++j) o[j] = p[j] / n >= floor ? per_row : scalar_t(0);
  });
  return out;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const auto& free_bits_op() {
  static const auto op =
      typed_op<at::Tensor(const at::Tensor&, int64_t, double, at::ScalarType)>("fused_kingma::free_bits_kl");
  return op;
}

struct FreeBitsFunction : public torch::autograd::Function<FreeBitsFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& kl, int64_t batch, double free_bits,
                            at::ScalarType out_dtype) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({kl});
    ctx->saved_data["batch"] = batch;
    ctx->saved_data["free_bits"] = free_bits;
    return free_bits_op().call(kl, batch, free_bits, out_dtype);
  }

  // An op of its own (not a loop here): torch.compile traces this backward with fake tensors.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double)>(
        "fused_kingma::free_bits_kl_backward");
    const at::Tensor grad_kl = op.call(grads[0], ctx->get_saved_variables()[0], ctx->saved_data["batch"].toInt(),
                                       ctx->saved_data["free_bits"].toDouble());
    return {grad_kl, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor free_bits_kl_autograd(const at::Tensor& kl, int64_t batch, double free_bits, at::ScalarType out_dtype) {
  if (!needs_graph({&kl})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return free_bits_op().call(kl, batch, free_bits, out_dtype);
  }
  return FreeBitsFunction::apply(kl, batch, free_bits, out_dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_kingma, CompositeExplicitAutograd, m) {
  m.impl("free_bits_kl", &free_bits_kl);
  m.impl("free_bits_kl_backward", &free_bits_kl_backward);
}
TORCH_LIBRARY_IMPL(fused_kingma, Autograd, m) { m.impl("free_bits_kl", &free_bits_kl_autograd); }

}  // namespace fused_kingma
