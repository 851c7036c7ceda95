// One-element terms of the reparameterization trick and the diagonal Gaussian KL, with their
// derivatives. T is float (fp32/fp16/bf16 inputs) or double. Exponentials use fast_expf in
// float and std::exp in double. Notation: q = N(mu, exp(lv)), p = N(mp, exp(lvp)).
#pragma once

#include <cmath>

#include "common.h"
#include "fastmath.h"

namespace fused_kingma::math {

FK_FN float gexp(float x) { return fast_expf(x); }
FK_FN double gexp(double x) { return exp(x); }

constexpr double kHalfLog2Pi = 0.91893853320467274178;  // 0.5 * ln(2 pi)

// z = mu + exp(lv / 2) * eps
template <class T>
FK_FN T reparam_sample(T mu, T lv, T eps) {
  return mu + gexp(T(0.5) * lv) * eps;
}

// The exp of the KL terms below: gexp, unless the caller passes another with the same values (the CPU
// kernels pass fast_expf_moderate for rows whose arguments they checked).
struct GExp {
  template <class T>
  FK_FN T operator()(T x) const {
    return gexp(x);
  }
};

// KL(N(mu, e^lv) || N(0, 1)) for one coordinate.
template <class T, class Exp = GExp>
FK_FN T kl_std_normal(T mu, T lv, Exp exp_of = Exp{}) {
  return T(0.5) * (exp_of(lv) + mu * mu - T(1) - lv);
}

// KL(N(mu, e^lv) || N(mp, e^lvp)) for one coordinate.
template <class T, class Exp = GExp>
FK_FN T kl_normal(T mu, T lv, T mp, T lvp, Exp exp_of = Exp{}) {
  const T d = mu - mp;
  return T(0.5) * ((exp_of(lv) + d * d) * exp_of(-lvp) - T(1) + lvp - lv);
}

// log N(z; mu, e^lv) written through eps = (z - mu) / e^(lv/2), without the -0.5 ln(2 pi) constant.
template <class T>
FK_FN T log_q_term(T eps, T lv) {
  return T(-0.5) * (eps * eps + lv);
}

// log N(z; mp, e^lvp) without the -0.5 ln(2 pi) constant.
template <class T>
FK_FN T log_p_term(T z, T mp, T lvp) {
  const T d = z - mp;
  return T(-0.5) * (d * d * gexp(-lvp) + lvp);
}

// log N(z; 0, 1) without the -0.5 ln(2 pi) constant (log_p_term with mp = 0, lvp = 0, without the exp).
template <class T>
FK_FN T log_std_normal_term(T z) {
  return T(-0.5) * z * z;
}

// Derivatives of log_p_term in z, mp and lvp (the standard normal prior: z = -z, the others unused), given
// inv_vp = exp(-lvp): callers differentiating several samples of one coordinate compute it once.
template <class T>
struct LogPGrad {
  T z, mp, lvp;
};

template <class T>
FK_FN LogPGrad<T> log_p_term_grad(T z, T mp, T inv_vp) {
  const T d = z - mp;
  const T d_over_vp = d * inv_vp;
  LogPGrad<T> g;
  g.z = -d_over_vp;
  g.mp = d_over_vp;
  g.lvp = T(0.5) * d * d_over_vp - T(0.5);
  return g;
}

// Derivatives of kl_normal (with mp = 0, lvp = 0 for the standard normal prior).
template <class T>
struct KlGrad {
  T mu, lv, mp, lvp;
};

template <class T>
FK_FN KlGrad<T> kl_normal_grad(T mu, T lv, T mp, T lvp) {
  const T d = mu - mp;
  const T inv_vp = gexp(-lvp);
  const T var_ratio = gexp(lv) * inv_vp;
  KlGrad<T> g;
  g.mu = d * inv_vp;
  g.lv = T(0.5) * (var_ratio - T(1));
  g.mp = -g.mu;
  g.lvp = T(0.5) * (T(1) - var_ratio - d * d * inv_vp);
  return g;
}

}  // namespace fused_kingma::math
