// The uniform -> normal step of fused_kingma's noise definition (README "How the noise is defined"):
// Box-Muller on the pairs (u0, u1) and (u2, u3) of one Philox block:
//   r = sqrt(-2 ln u_a),  n_a = r cos(2 pi u_b),  n_b = r sin(2 pi u_b)
// with the float32 fastmath.h functions, so CPU and CUDA give the same normals to float rounding.
#pragma once

#include <cmath>

#include "common.h"
#include "fastmath.h"
#include "philox.h"

namespace fused_kingma::math {

FK_FN void box_muller(float ua, float ub, float* na, float* nb) {
  const float r = sqrtf(-2.0f * fast_logf(ua));
  float s, c;
  fast_sincos2pi(ub, &s, &c);
  *na = r * c;
  *nb = r * s;
}

// The 4 normals of one Philox block, in element order (element 4*block + m takes out[m]).
FK_FN void normal4_from_bits(const Philox4x32& bits, float out[4]) {
  box_muller(uniform_from_bits(bits.v[0]), uniform_from_bits(bits.v[1]), &out[0], &out[1]);
  box_muller(uniform_from_bits(bits.v[2]), uniform_from_bits(bits.v[3]), &out[2], &out[3]);
}

}  // namespace fused_kingma::math
