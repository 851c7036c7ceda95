// fp16 / bf16 <-> fp32 conversions as plain bit manipulation (uint16_t storage), branch-free so the
// CPU loops auto-vectorize and the same code compiles with nvcc. Rounding: to nearest even, like
// torch's .to(); bf16 also has a stochastic variant driven by caller-supplied random bits.
#pragma once

#include <cstdint>
#include <cstring>

#include "common.h"

namespace fused_kingma::math {

FK_FN uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

FK_FN float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// `pick_a ? a : b` as mask arithmetic: keeps the conversions branch-free so loops vectorize on AVX2.
FK_FN uint32_t select_u32(bool pick_a, uint32_t a, uint32_t b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(pick_a);
  return (a & mask) | (b & ~mask);
}

FK_FN float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

// Round to nearest even; NaN stays a (quiet) NaN.
FK_FN uint16_t float_to_bf16_rne(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool is_nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return static_cast<uint16_t>(select_u32(is_nan, (u >> 16) | 0x40u, rounded));
}

// Stochastic rounding: rounds |f| up to the next bf16 with probability (dropped bits) / 2^16, so
// E[round(f)] = f. `noise` supplies 16 random low bits. Inf and NaN round as to-nearest-even
// (adding noise to them would change their bit pattern).
FK_FN uint16_t float_to_bf16_stochastic(float f, uint32_t noise) {
  const uint32_t u = float_bits(f);
  const bool finite = (u & 0x7F800000u) != 0x7F800000u;
  const uint32_t noisy = (u + (noise & 0xFFFFu)) >> 16;
  return static_cast<uint16_t>(select_u32(finite, noisy, float_to_bf16_rne(f)));
}

// IEEE binary16 -> binary32 (exact), after Maratos' FP16 library (MIT): scale the shifted bits
// by 2^-112 to re-bias normals, and build subnormals from a magic float.
FK_FN float half_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const uint32_t exp_offset = 0xE0u << 23;
  const float exp_scale = 0x1.0p-112f;
  const float normalized = bits_float((two_w >> 4) + exp_offset) * exp_scale;
  const uint32_t magic_mask = 126u << 23;
  const float magic_bias = 0.5f;
  const float denormalized = bits_float((two_w >> 17) | magic_mask) - magic_bias;
  const uint32_t denormalized_cutoff = 1u << 27;
  const uint32_t result =
      sign | select_u32(two_w < denormalized_cutoff, float_bits(denormalized), float_bits(normalized));
  return bits_float(result);
}

// binary32 -> binary16, round to nearest even, overflow to inf, NaN stays NaN (same source).
FK_FN uint16_t float_to_half_rne(float f) {
  const float scale_to_inf = 0x1.0p+112f;
  const float scale_to_zero = 0x1.0p-110f;
  const uint32_t w = float_bits(f);
  const float abs_f = bits_float(w & 0x7FFFFFFFu);
  float base = (abs_f * scale_to_inf) * scale_to_zero;
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = select_u32(bias < 0x71000000u, 0x71000000u, bias);
  base = bits_float((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = float_bits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | select_u32(shl1_w > 0xFF000000u, 0x7E00u, nonsign));
}

}  // namespace fused_kingma::math
