// Branch-free float32 log / exp / sincos(2 pi u) for the noise transform and the reparam kernels.
// Written with plain arithmetic, bit casts and selects (ternaries) only, so GCC auto-vectorizes
// them inside the CPU loops and nvcc compiles the very same code for CUDA: CPU and GPU normals
// then agree to float rounding. Accuracy (tests/test_philox.py, against float64 torch): a few ulp.
// Polynomials: Cephes (S. Moshier) single-precision minimax coefficients.
#pragma once

#include <cstdint>
#include <cstring>

#include "common.h"

namespace fused_kingma::math {

FK_FN uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

FK_FN float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// Round to nearest integer (ties to even) for |x| < 2^22, without a libm call.
FK_FN float round_nearest(float x) {
  const float magic = 12582912.0f;  // 1.5 * 2^23
  return (x + magic) - magic;
}

// Natural log for finite x > 0 in the normal range (the uniforms are in [2^-33, 1]).
FK_FN float fast_logf(float x) {
  // x = 2^e * (1 + m) with 1 + m in [sqrt(1/2), sqrt(2)): subtracting the bits of sqrt(1/2) moves the exponent's
  // boundary there, so e is one arithmetic shift and the mantissa one subtraction, with no compare or select.
  // (m, e) are exactly those of splitting at [0.5, 1) and doubling below sqrt(1/2), bit for bit on all uniforms.
  const uint32_t ix = float_bits(x);
  const uint32_t shifted = ix - 0x3f3504f3u;  // bits of sqrt(1/2)
  const int e = static_cast<int32_t>(shifted) >> 23;
  const float m = bits_float(ix - (shifted & 0xff800000u)) - 1.0f;
  const float z = m * m;
  // The polynomial in Estrin form (pairs, then powers of z): a 4-deep chain of multiply-adds instead of
  // Horner's 9. The loops that call this are bound by that chain's latency, not by arithmetic throughput.
  const float z2 = z * z;
  const float q01 = -2.4999993993e-1f * m + 3.3333331174e-1f;
  const float q23 = -1.6668057665e-1f * m + 2.0000714765e-1f;
  const float q45 = -1.2420140846e-1f * m + 1.4249322787e-1f;
  const float q67 = -1.1514610310e-1f * m + 1.1676998740e-1f;
  const float q48 = (7.0376836292e-2f * z2 + q67 * z) + q45;
  float y = (q48 * z2 + (q23 * z + q01)) * m * z;
  const float fe = static_cast<float>(e);
  y += -2.12194440e-4f * fe;  // ln 2 split in a short high part and a correction
  y += -0.5f * z;
  return (m + y) + 0.693359375f * fe;
}

// exp(x) = p * 2^k for finite |x| <= 104: k = round(x / ln 2) and p = exp(x - k ln 2) in [0.7, 1.5].
struct ExpParts {
  float p;
  int k;
};
FK_FN ExpParts exp_parts(float x) {
  // k = round(x / ln 2), also read as an integer from the low mantissa bits of x / ln 2 + 1.5 * 2^23.
  const float magic = 12582912.0f;
  const float kb = x * 1.44269504088896341f + magic;
  const float k = kb - magic;
  const int ki = static_cast<int>(float_bits(kb) - float_bits(magic));
  float r = x - k * 0.693359375f;  // Cody-Waite: ln 2 = 0.693359375 - 2.12194440e-4
  r = r + k * 2.12194440e-4f;
  // The polynomial in Estrin form, as in fast_logf: a short multiply-add chain.
  const float r2 = r * r;
  const float q01 = 1.6666665459e-1f * r + 5.0000001201e-1f;
  const float q23 = 8.3334519073e-3f * r + 4.1665795894e-2f;
  const float q45 = 1.9875691500e-4f * r + 1.3981999507e-3f;
  return {((q45 * r2 + q23) * r2 + q01) * r2 + r + 1.0f, ki};
}

// exp(x) for all float x: overflow -> inf, far underflow -> 0, NaN -> NaN.
FK_FN float fast_expf(float x) {
  // Clamp to [-104, 89] on the bit pattern: as unsigned, negative floats order by magnitude above every
  // positive one, so an unsigned min caps x >= -104; then a signed min caps x <= 89. Integer min/max
  // vectorize to one instruction each; float selects here make GCC specialize both arms (2x slower).
  const uint32_t ux = float_bits(x);
  const uint32_t lo_capped = ux < 0xC2D00000u ? ux : 0xC2D00000u;  // bits of -104.0f
  const int32_t both_capped = static_cast<int32_t>(lo_capped) < 0x42B20000 ? static_cast<int32_t>(lo_capped)
                                                                           : 0x42B20000;  // bits of 89.0f
  const ExpParts e = exp_parts(bits_float(static_cast<uint32_t>(both_capped)));
  // 2^k as two normal-range factors so k in [-150, 129] needs no special case.
  const int k1 = e.k >> 1, k2 = e.k - k1;
  const float s1 = bits_float(static_cast<uint32_t>(k1 + 127) << 23);
  const float s2 = bits_float(static_cast<uint32_t>(k2 + 127) << 23);
  const float res = e.p * s1 * s2;
  const uint32_t nan = 0u - static_cast<uint32_t>(x != x);  // the clamp turned NaN into a bound: restore it
  return bits_float((float_bits(res) & ~nan) | (ux & nan));
}

// Arguments fast_expf_moderate takes: |x| <= 87, i.e. the bit pattern of |x| at most this (NaN and inf above).
constexpr uint32_t kExpModerateMaxBits = 0x42AE0000u;  // bits of 87.0f

// fast_expf for |x| <= 87 only, with the same bits: the result is a normal float there, so 2^k goes straight
// into the exponent field. About 40% fewer instructions (no clamp, no two-factor scaling, no NaN restore);
// the CPU kernels use it for rows they have checked (see exp_args_moderate).
FK_FN float fast_expf_moderate(float x) {
  const ExpParts e = exp_parts(x);
  return bits_float(float_bits(e.p) + (static_cast<uint32_t>(e.k) << 23));
}

// sin(2 pi u) and cos(2 pi u) for finite u with |u| < 2^20 (the uniforms are in (0, 1]).
// u = q/4 + r exactly with |r| <= 1/8, then the quadrant q picks sin/cos and the signs. The quadrant is
// read from the low mantissa bits of 4u + 1.5 * 2^23, and the choices are bit masks and sign-bit flips:
// selects of floats here cost GCC several masked instructions each.
FK_FN void fast_sincos2pi(float u, float* s_out, float* c_out) {
  const float magic = 12582912.0f;  // 1.5 * 2^23
  const float qb = 4.0f * u + magic;
  const float q = qb - magic;
  const uint32_t quadrant = float_bits(qb);  // round(4u) mod 4 in the two low bits
  const float r = u - 0.25f * q;  // exact
  const float x = r * 6.28318530717958648f;
  const float x2 = x * x;
  const float x3 = x2 * x, x4 = x2 * x2;  // beside the polynomials, so the last step waits on one multiply-add
  float s = -1.9515295891e-4f;
  s = s * x2 + 8.3321608736e-3f;
  s = s * x2 - 1.6666654611e-1f;
  s = s * x3 + x;
  float c = 2.443315711809948e-5f;
  c = c * x2 - 1.388731625493765e-3f;
  c = c * x2 + 4.166664568298827e-2f;
  c = c * x4 + (1.0f - 0.5f * x2);
  const uint32_t swap = 0u - (quadrant & 1u);  // odd quadrants exchange sin and cos
  const uint32_t s_bits = float_bits(s), c_bits = float_bits(c);
  const uint32_t sin_base = (s_bits & ~swap) | (c_bits & swap);
  const uint32_t cos_base = (c_bits & ~swap) | (s_bits & swap);
  *s_out = bits_float(sin_base ^ ((quadrant & 2u) << 30));         // negative in quadrants 2, 3
  *c_out = bits_float(cos_base ^ (((quadrant + 1u) & 2u) << 30));  // negative in quadrants 1, 2
}

}  // namespace fused_kingma::math
