// One-element update rules of the Adam family (Kingma & Ba 2014): Adam / AdamW (+ amsgrad),
// Adamax (section 7.1) and the parameter EMA ("temporal averaging", section 7.2).
//
// The order of floating-point operations follows torch.optim's single-tensor implementation
// (torch/optim/adam.py `_single_tensor_adam`, adamax.py `_single_tensor_adamax`), so fp32 results
// agree with torch to rounding. T is the compute type: float for fp16/bf16/fp32, double for fp64.
// Scalars that torch computes in Python (bias corrections, step sizes) are computed in double by
// the host and handed in as T, which is what torch's kernels do with a Python scalar.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.h"

namespace fused_kingma::math {


// torch.maximum: NaN in either operand gives NaN.
template <class T>
FK_FN T nan_max(T a, T b) {
  return ((a > b) | (a != a)) ? a : b;
}

// Fused multiply-add where aten's vectorized CPU kernels fuse (lerp, addcmul, add with alpha), so
// results match torch bit for bit; every other product is rounded on its own. (The kernels are
// built with contraction allowed, but once the fusable products are explicit fma there is nothing
// left the compiler could contract.) kFma = false (the CPU baseline build, like torch's own
// baseline kernels on a CPU without FMA) multiplies and adds separately.
template <bool kFma, class T>
FK_FN T fma(T a, T b, T c) {
  if constexpr (kFma) {
    return std::fma(a, b, c);
  } else {
    return a * b + c;
  }
}

template <class T>
struct UintOf;
template <>
struct UintOf<float> {
  using type = uint32_t;
};
template <>
struct UintOf<double> {
  using type = uint64_t;
};

// `pick_a ? a : b` for a loop-invariant condition, as bit operations on values computed anyway:
// no control flow, so GCC vectorizes the loop for every ISA (a ?: on a loop-invariant bool can
// stay a branch inside the loop and block vectorization).
template <class T>
FK_FN T select(bool pick_a, T a, T b) {
  using U = typename UintOf<T>::type;
  const U mask = U(0) - static_cast<U>(pick_a);
  U ua, ub;
  std::memcpy(&ua, &a, sizeof(T));
  std::memcpy(&ub, &b, sizeof(T));
  const U r = (ua & mask) | (ub & ~mask);
  T out;
  std::memcpy(&out, &r, sizeof(T));
  return out;
}

// torch.lerp(start, end, w) for a scalar weight, as aten's vectorized kernel computes it:
// |w| < 0.5: start + w * (end - start), else end + (w - 1) * (end - start), fused. The choice is
// made once per tensor (LerpWeight), not per element.
template <class T>
struct LerpWeight {
  T coef;        // w or w - 1
  T from_start;  // 1: base is start, 0: base is end
};

template <class T>
FK_FN LerpWeight<T> lerp_weight(double w) {
  const bool small = w < 0.5 && w > -0.5;
  return LerpWeight<T>{static_cast<T>(small ? w : w - 1.0), small ? T(1) : T(0)};
}

template <bool kFma = true, class T>
FK_FN T lerp(T start, T end, LerpWeight<T> w) {
  return fma<kFma>(w.coef, end - start, select(w.from_start != T(0), start, end));
}

// Per-tensor constants (they depend on the tensor's own step count).
template <class T>
struct AdamConsts {
  T grad_scale;          // grads are divided by it (1 without a GradScaler: exact)
  T grad_sign;           // -1 with maximize=True (exact)
  T l2;                  // 1: add weight_decay * param to the grad (Adam without decoupling; Adamax), else 0
  T weight_decay;
  T decay_factor;        // 1 - lr * weight_decay for decoupled decay, else 1 (exact no-op)
  LerpWeight<T> first_weight;  // lerp weight 1 - beta1 of the first moment
  T beta2;
  T one_minus_beta2;
  T eps;
  T bias_correction2_sqrt;  // sqrt(1 - beta2^t) (Adam)
  T neg_step_size;          // -lr / (1 - beta1^t)
  LerpWeight<T> ema_weight;  // 1 - ema_decay
};

// The gradient the rule sees: unscaled, sign-flipped for maximize, plus the L2 term when asked.
// kScaled = false when there is no GradScaler (grad_scale == 1): the division, exact then, is skipped (on the
// CPU it was one of the three vector divisions that bound the fp16 loop).
template <bool kFma = true, bool kScaled = true, class T>
FK_FN T effective_grad(T grad, T param, const AdamConsts<T>& c) {
  T g = (kScaled ? grad / c.grad_scale : grad) * c.grad_sign;
  // Selected, not multiplied by 0: an inf param must not turn the grad into NaN.
  return select(c.l2 != T(0), fma<kFma>(c.weight_decay, param, g), g);
}

// Adam / AdamW step on one element. `param` has had decoupled decay applied already.
// kAmsgrad: `max_second` keeps the running maximum of the second moment and normalizes the step.
template <bool kAmsgrad, bool kFma = true, class T>
FK_FN void adam_element(T& param, T& first, T& second, T& max_second, T g, const AdamConsts<T>& c) {
  first = lerp<kFma>(first, g, c.first_weight);
  second = fma<kFma>(c.one_minus_beta2 * g, g, second * c.beta2);  // exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2)
  T second_used = second;
  if (kAmsgrad) {
    max_second = nan_max(max_second, second);
    second_used = max_second;
  }
  const T denom = std::sqrt(second_used) / c.bias_correction2_sqrt + c.eps;
  param = param + c.neg_step_size * first / denom;
}

// Adamax step on one element: `inf_norm` is the exponentially weighted infinity norm (exp_inf).
template <bool kFma = true, class T>
FK_FN void adamax_element(T& param, T& first, T& inf_norm, T g, const AdamConsts<T>& c) {
  first = lerp<kFma>(first, g, c.first_weight);
  inf_norm = nan_max(inf_norm * c.beta2, std::fabs(g) + c.eps);
  param = param + c.neg_step_size * first / inf_norm;
}

// Raw (not bias-corrected) EMA of the parameter: ema <- lerp(ema, param, 1 - decay). Starting from
// 0, the average after t updates is ema / (1 - decay^t) (Adam paper section 7.2).
template <bool kFma = true, class T>
FK_FN T ema_update(T ema, T param, const AdamConsts<T>& c) {
  return lerp<kFma>(ema, param, c.ema_weight);
}

}  // namespace fused_kingma::math
