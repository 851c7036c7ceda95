// The one place where the CUDA kernels meet the shared csrc/math headers: the kernels call the
// names below, which forward to the same FK_FN functions the CPU kernels run.
// PROVISIONAL until the CPU side's adam.h / gaussian.h land: the bodies here are the DESIGN.md
// formulas written out; after the merge they become one-line forwards.
#pragma once

#include <cmath>

#include "math/common.h"
#include "math/philox.h"

namespace fused_kingma::math {

// Box-Muller on (u0, u1) and (u2, u3) (DESIGN "The noise is defined").
FK_FN void normals_from_bits(const Philox4x32& bits, float (&out)[4]) {
  const float u0 = uniform_from_bits(bits.v[0]), u1 = uniform_from_bits(bits.v[1]);
  const float u2 = uniform_from_bits(bits.v[2]), u3 = uniform_from_bits(bits.v[3]);
  const float ra = sqrtf(-2.0f * logf(u0)), rb = sqrtf(-2.0f * logf(u2));
  const float two_pi = 6.28318530717958647692f;
  out[0] = ra * cosf(two_pi * u1);
  out[1] = ra * sinf(two_pi * u1);
  out[2] = rb * cosf(two_pi * u3);
  out[3] = rb * sinf(two_pi * u3);
}

// ---- Gaussian terms for one element, compute type C (fp32, fp64 for fp64) ----
constexpr double kLog2Pi = 1.83787706640934548356;

// KL(N(mu, e^lv) || N(pm, e^plv)); std_prior: pm = 0, plv = 0.
template <class C> FK_FN C kl_term(C mu, C lv, C pm, C plv, bool std_prior) {
  if (std_prior) return C(0.5) * (mu * mu + exp(lv) - C(1) - lv);
  const C d = mu - pm;
  return C(0.5) * (plv - lv + (exp(lv) + d * d) * exp(-plv) - C(1));
}

// d kl_term / d mu, d kl_term / d lv.
template <class C> FK_FN void kl_term_grad(C mu, C lv, C pm, C plv, bool std_prior, C& d_mu, C& d_lv) {
  if (std_prior) {
    d_mu = mu;
    d_lv = C(0.5) * (exp(lv) - C(1));
    return;
  }
  const C ip = exp(-plv);
  d_mu = (mu - pm) * ip;
  d_lv = C(0.5) * (exp(lv) * ip - C(1));
}

// log N(z; mu, e^lv) at z = mu + e^(lv/2) eps.
template <class C> FK_FN C log_q_term(C eps, C lv) { return C(-0.5) * (eps * eps + lv + C(kLog2Pi)); }

// log N(z; pm, e^plv) (std_prior: N(0, 1)) and its derivative in z.
template <class C> FK_FN C log_p_term(C z, C pm, C plv, bool std_prior) {
  if (std_prior) return C(-0.5) * (z * z + C(kLog2Pi));
  const C d = z - pm;
  return C(-0.5) * (d * d * exp(-plv) + plv + C(kLog2Pi));
}
template <class C> FK_FN C log_p_term_dz(C z, C pm, C plv, bool std_prior) {
  return std_prior ? -z : -(z - pm) * exp(-plv);
}

// Derivatives in the prior's parameters (a learned prior): d kl_term / d(pm, plv) and
// d log_p_term / d(pm, plv).
template <class C> FK_FN void kl_term_grad_prior(C mu, C lv, C pm, C plv, C& d_pm, C& d_plv) {
  const C ip = exp(-plv), d = mu - pm;
  d_pm = -d * ip;
  d_plv = C(0.5) * (C(1) - (exp(lv) + d * d) * ip);
}
template <class C> FK_FN void log_p_term_grad_prior(C z, C pm, C plv, C& d_pm, C& d_plv) {
  const C ip = exp(-plv), d = z - pm;
  d_pm = d * ip;
  d_plv = C(0.5) * (d * d * ip - C(1));
}

}  // namespace fused_kingma::math
