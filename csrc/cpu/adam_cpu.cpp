// CPU kernel of fused_kingma::adam_step_ (schema in csrc/ops.cpp): one call updates every tensor
// of a param group. It checks every tensor first (so a bad one leaves everything untouched),
// increments the step counters, then cuts all tensors into one list of fixed-size chunks that
// at::parallel_for splits by element count over the threads (thousands of tiny params cost one
// call, not thousands). The loops over the chunks are in adam_chunks.h.

// No contraction of a * b + c into an fma in this file either (see adam_chunks_impl.h): the step's constants
// (1 - lr * weight_decay, ...) are computed as torch computes them in Python, each product rounded on its own.
#pragma GCC optimize("fp-contract=off")

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "boxed_adam.h"
#include "cpu/adam_chunks.h"
#include "cpu/adam_kernel.h"
#include "flat_staging.h"
#include "host_steps.h"
#include "tensor_prefetch.h"
#include "tensor_checks.h"
#include "cpu/isa.h"

namespace fused_kingma::cpu {
namespace {

using adam::Rule;
using adam::TensorJob;

constexpr int64_t kChunk = 1 << 14;      // elements per chunk
constexpr int64_t kPartMin = 1 << 15;    // fewest elements worth a thread of their own

// Chunks [chunk_begin, chunk_end) in the active ISA's loops (adam_chunks.h).
void adam_chunks_active(const AdamPlan& plan, int64_t chunk_begin, int64_t chunk_end) {
  for_active_isa(&adam_chunks<IsaAvx512>, &adam_chunks<IsaAvx2>, &adam_chunks<IsaBaseline>)(plan, chunk_begin,
                                                                                            chunk_end);
}

// ---- the op ----

void adam_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList second_moments,
                   at::TensorList max_second_moments, at::TensorList steps, at::TensorList master_params,
                   at::TensorList emas, c10::string_view rule, double lr, double beta1, double beta2, double eps,
                   double weight_decay, bool decoupled_weight_decay, bool amsgrad, bool maximize, double ema_decay,
                   bool stochastic_rounding, int64_t seed, bool lr_is_fp32_tensor, const std::optional<at::Tensor>& grad_scale,
                   const std::optional<at::Tensor>& found_inf, bool check_only) {
  const size_t n = params.size();
  const AdamCall call = check_adam_arguments(n, grads, exp_avgs, second_moments, max_second_moments, steps,
                                             master_params, emas, rule, lr, beta1, beta2, eps, weight_decay, amsgrad,
                                             ema_decay, grad_scale.has_value());
  for (const auto* opt : {&grad_scale, &found_inf}) {
    if (opt->has_value()) {
      const at::Tensor& t = **opt;
      TORCH_CHECK_VALUE(t.numel() == 1 && t.device().is_cpu() && t.is_floating_point(),
                        "grad_scale / found_inf must be 1-element floating-point CPU tensors, got shape ",
                        shape_str(t.sizes()), " ", dtype_str(t.scalar_type()), " on ", t.device());
    }
  }

  // Every list of the call, for the prefetches of their metadata (tensor_prefetch.h).
  const auto lists = {params, grads, exp_avgs, second_moments, max_second_moments, steps, master_params, emas};
  for (size_t i = 0; i < n; ++i) {
    prefetch_for_checks(i, lists);
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.defined(), "tensor ", i, ": the parameter is missing (None)");
    TORCH_CHECK(p.device().is_cpu(), "tensor ", i, ": the parameter is on ", p.device(), "; this kernel is for CPU");
    check_adam_tensor(i, call, params, grads, exp_avgs, second_moments, max_second_moments, master_params, emas);
    const at::Tensor& s = steps[i];
    TORCH_CHECK_VALUE(s.defined() && s.numel() == 1 && s.device().is_cpu() &&
                          (s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble),
                      "tensor ", i, ": state 'step' must be a 1-element float32/float64 CPU tensor, got ",
                      s.defined() ? shape_str(s.sizes()) + " " + dtype_str(s.scalar_type()) : std::string("None"));
  }
  if (check_only) return;
  if (found_inf.has_value() && found_inf->item<double>() != 0.0) return;  // GradScaler found inf/NaN: skip the step

  const double scale = grad_scale.has_value() ? grad_scale->item<double>() : 1.0;
  AdamPlan plan;
  plan.rule = call.adamax ? Rule::Adamax : (amsgrad ? Rule::AdamAmsgrad : Rule::Adam);
  plan.ema = call.ema;
  plan.unscale = grad_scale.has_value();
  plan.seed = static_cast<uint64_t>(seed);
  plan.jobs.reserve(n);
  plan.formats.reserve(n);
  // The constants of a step count t (every tensor of a group usually shares one: computed once per value).
  double consts_step = std::nan("");
  adam::AdamConsts<double> step_consts{};
  auto consts_for = [&](double t) -> const adam::AdamConsts<double>& {
    if (t == consts_step) return step_consts;
    auto& c = step_consts;
    c.grad_scale = scale;
    c.grad_sign = maximize ? -1.0 : 1.0;
    const bool decoupled = decoupled_weight_decay && !call.adamax;
    c.l2 = !decoupled && weight_decay != 0.0 ? 1.0 : 0.0;
    c.weight_decay = weight_decay;
    c.decay_factor = decoupled && weight_decay != 0.0 ? 1.0 - lr * weight_decay : 1.0;
    c.first_weight = math::lerp_weight<double>(1.0 - beta1);
    c.beta2 = beta2;
    c.one_minus_beta2 = 1.0 - beta2;
    c.eps = eps;
    // As torch computes them in Python (double): 1 - beta**step, lr / bias_correction1, bc2 ** 0.5.
    const double bias_correction1 = 1.0 - std::pow(beta1, t);
    const double bias_correction2 = 1.0 - std::pow(beta2, t);
    c.bias_correction2_sqrt = std::pow(bias_correction2, 0.5);
    c.neg_step_size = -(lr / bias_correction1);
    if (lr_is_fp32_tensor) {
      // torch keeps a float32 tensor lr a tensor: lr / bias_correction1 and 1 - lr * weight_decay
      // are then float32 tensor arithmetic.
      auto f32 = [](double x) { return static_cast<double>(static_cast<float>(x)); };
      c.neg_step_size = -f32(f32(lr) / f32(bias_correction1));
      if (c.decay_factor != 1.0) c.decay_factor = f32(1.0 - f32(f32(lr) * f32(weight_decay)));
    }
    c.ema_weight = math::lerp_weight<double>(1.0 - ema_decay);
    consts_step = t;
    return c;
  };

  FlatStaging staging;
  HostSteps host_steps;
  for (size_t i = 0; i < n; ++i) {
    prefetch_for_pointers(i, lists);
    const double t = host_steps.next(steps[i]);
    const auto p_real = real_view(params[i]);
    const at::Tensor& p = *p_real;
    if (p.numel() == 0) continue;
    const auto dt = p.scalar_type();
    const bool with_master = call.master && is_low_precision(dt);
    AdamFormat f = dt == at::kFloat    ? AdamFormat::F32
                   : dt == at::kDouble ? AdamFormat::F64
                   : dt == at::kHalf   ? AdamFormat::F16
                                       : AdamFormat::BF16;
    if (with_master) f = dt == at::kHalf ? AdamFormat::F16Master : AdamFormat::BF16Master;
    else if (stochastic_rounding && dt == at::kBFloat16) f = AdamFormat::BF16Stochastic;

    TensorJob job;
    const FlatLayout layout(p);
    job.param = staging.flat(p, layout, true);
    job.grad = staging.flat(grads[i], layout, plan.unscale);
    job.first = staging.flat(exp_avgs[i], layout, true);
    job.second = staging.flat(second_moments[i], layout, true);
    if (amsgrad) job.max_second = staging.flat(max_second_moments[i], layout, true);
    if (with_master) job.master = static_cast<float*>(staging.flat(master_params[i], layout, true));
    if (call.ema) job.ema = staging.flat(emas[i], layout, true);
    job.numel = p.numel();
    job.consts = consts_for(t);
    // Stochastic rounding noise: Philox key = seed, counter offset = step * 2^24 + position in the list.
    job.sr_offset = (static_cast<uint64_t>(t) << 24) + static_cast<uint64_t>(i);

    const int64_t index = static_cast<int64_t>(plan.jobs.size());
    for (int64_t b = 0; b < job.numel; b += kChunk) {
      plan.chunks.push_back(AdamChunk{index, b, std::min(job.numel, b + kChunk)});
      plan.chunk_start.push_back(plan.total + b);
    }
    plan.total += job.numel;
    plan.jobs.push_back(job);
    plan.formats.push_back(f);
  }

  const int64_t nchunks = static_cast<int64_t>(plan.chunks.size());
  const int64_t parts = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), (plan.total + kPartMin - 1) / kPartMin));
  if (parts <= 1) {
    adam_chunks_active(plan, 0, nchunks);
  } else {
    // Part k takes the chunks that start in [total*k/parts, total*(k+1)/parts): equal element counts.
    auto chunk_at = [&](int64_t k) {
      const int64_t target = plan.total * k / parts;
      return static_cast<int64_t>(std::lower_bound(plan.chunk_start.begin(), plan.chunk_start.end(), target) -
                                  plan.chunk_start.begin());
    };
    at::parallel_for(0, parts, 1, [&](int64_t part_begin, int64_t part_end) {
      for (int64_t k = part_begin; k < part_end; ++k) adam_chunks_active(plan, chunk_at(k), chunk_at(k + 1));
    });
  }
  host_steps.store();
  staging.finish();
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_kingma, CPU, m) {
  m.impl("adam_step_", torch::CppFunction::makeFromBoxedFunction<&adam_step_boxed<&adam_step_cpu>>());
}

}  // namespace fused_kingma::cpu
