// The Adam-family CPU loops: one template over (param storage, state storage, rule, options),
// a plain loop over raw pointers calling csrc/math/adam.h, auto-vectorized per ISA (isa.h).
// Everything here is always_inline so it is compiled inside the ISA-targeted entry points.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "half_convert.h"
#include "math/adam.h"
#include "math/float16.h"
#include "isa.h"
#include "math/philox.h"
#include "philox_simd.h"

namespace fused_kingma::cpu::adam {

using math::AdamConsts;

// Storage formats: how an element is held in memory and the type the math runs in.
struct F32 {
  using raw = float;
  using compute = float;
  FK_INLINE static float load(float x) { return x; }
  FK_INLINE static float store(float x) { return x; }
};
struct F64 {
  using raw = double;
  using compute = double;
  FK_INLINE static double load(double x) { return x; }
  FK_INLINE static double store(double x) { return x; }
};
struct F16 {
  using raw = uint16_t;
  using compute = float;
  FK_INLINE static float load(uint16_t x) { return math::half_to_float(x); }
  FK_INLINE static uint16_t store(float x) { return math::float_to_half_rne(x); }
};
struct BF16 {
  using raw = uint16_t;
  using compute = float;
  FK_INLINE static float load(uint16_t x) { return math::bf16_to_float(x); }
  FK_INLINE static uint16_t store(float x) { return math::float_to_bf16_rne(x); }
};

enum class Rule : int { Adam = 0, AdamAmsgrad = 1, Adamax = 2 };

// One tensor's raw pointers (dense, identical strides) and its constants.
struct TensorJob {
  void* param = nullptr;
  void* grad = nullptr;        // read; written back unscaled when a grad_scale is given (like torch)
  void* first = nullptr;       // exp_avg
  void* second = nullptr;      // exp_avg_sq (Adam) or exp_inf (Adamax)
  void* max_second = nullptr;  // max_exp_avg_sq (amsgrad)
  float* master = nullptr;     // fp32 master copy of the param (master_weights)
  void* ema = nullptr;         // raw EMA of the param (ema_decay)
  int64_t numel = 0;
  AdamConsts<double> consts{};
  uint64_t sr_offset = 0;  // Philox offset for stochastic rounding of this tensor at this step
};

// Compile-time options of one loop, for the ISA copy `IsaTag` (isa.h).
template <class P, class S, Rule kRule, bool kMaster, bool kEma, bool kUnscaleOut, bool kStochastic, class IsaTag>
struct Variant {
  using Param = P;
  using State = S;
  static constexpr Rule rule = kRule;
  static constexpr bool master = kMaster;
  static constexpr bool ema = kEma;
  static constexpr bool unscale_out = kUnscaleOut;
  static constexpr bool stochastic = kStochastic;
  using Isa = IsaTag;
  // FMA and F16C: the AVX2 and AVX-512 copies have both, the baseline copy neither.
  static constexpr bool fma = !std::is_same_v<IsaTag, IsaBaseline>;
  // fp16 params go through float buffers converted by F16C (adam_half_blocks) where the ISA has it.
  static constexpr bool half_blocks = std::is_same_v<P, F16> && fma;
};

template <class C>
FK_INLINE math::LerpWeight<C> cast_weight(const math::LerpWeight<double>& w) {
  return math::LerpWeight<C>{C(w.coef), C(w.from_start)};
}

template <class C>
FK_INLINE AdamConsts<C> cast_consts(const AdamConsts<double>& d) {
  return AdamConsts<C>{C(d.grad_scale), C(d.grad_sign), C(d.l2), C(d.weight_decay), C(d.decay_factor),
                       cast_weight<C>(d.first_weight), C(d.beta2), C(d.one_minus_beta2), C(d.eps),
                       C(d.bias_correction2_sqrt), C(d.neg_step_size), cast_weight<C>(d.ema_weight)};
}

// Elements [begin, end) of one tensor. `noise(i)` gives 32 random bits for element i (SR only).
template <class V, class Noise>
FK_INLINE void adam_range(const TensorJob& job, int64_t begin, int64_t end, Noise noise) {
  using P = typename V::Param;
  using S = typename V::State;
  using C = typename P::compute;
  using PRaw = typename P::raw;
  using SRaw = typename S::raw;
  const AdamConsts<C> c = cast_consts<C>(job.consts);
  PRaw* __restrict param = static_cast<PRaw*>(job.param);
  PRaw* __restrict grad = static_cast<PRaw*>(job.grad);
  SRaw* __restrict first = static_cast<SRaw*>(job.first);
  SRaw* __restrict second = static_cast<SRaw*>(job.second);
  SRaw* __restrict max_second = static_cast<SRaw*>(job.max_second);
  float* __restrict master = job.master;
  // The EMA is kept in the compute type: fp32 for fp16/bf16 params (the op checks this), else the param's dtype.
  C* __restrict ema = static_cast<C*>(job.ema);
  for (int64_t i = begin; i < end; ++i) {
    C theta = V::master ? C(master[i]) : P::load(param[i]);
    const C raw_grad = P::load(grad[i]);
    if (V::unscale_out) grad[i] = P::store(raw_grad / c.grad_scale);
    theta = theta * c.decay_factor;
    const C g = math::effective_grad<V::fma, V::unscale_out>(raw_grad, theta, c);
    C m = S::load(first[i]);
    C v = S::load(second[i]);
    if constexpr (V::rule == Rule::Adamax) {
      math::adamax_element<V::fma>(theta, m, v, g, c);
    } else {
      C vmax = V::rule == Rule::AdamAmsgrad ? S::load(max_second[i]) : C(0);
      math::adam_element<V::rule == Rule::AdamAmsgrad, V::fma>(theta, m, v, vmax, g, c);
      if (V::rule == Rule::AdamAmsgrad) max_second[i] = S::store(vmax);
    }
    first[i] = S::store(m);
    second[i] = S::store(v);
    if constexpr (V::master) master[i] = theta;
    if constexpr (V::stochastic) {
      param[i] = math::float_to_bf16_stochastic(theta, noise(i));
    } else {
      param[i] = P::store(theta);
    }
    if constexpr (V::ema) {
      // The EMA averages the parameter as stored (master copy when there is one).
      const C stored = (V::master || V::stochastic) ? theta : P::load(param[i]);
      ema[i] = math::ema_update<V::fma>(ema[i], stored, c);
    }
  }
}

// Noise sources for adam_range (small structs rather than lambdas: they must inline into the
// ISA-targeted callers).
struct NoNoise {
  FK_INLINE uint32_t operator()(int64_t) const { return 0u; }
};
struct BitsNoise {
  const uint16_t* bits;
  int64_t base;
  FK_INLINE uint32_t operator()(int64_t i) const { return bits[i - base]; }
};

// Elements [begin, end) of an fp16 param on an ISA with F16C: blocks are widened to float buffers
// (half_convert.h: one instruction per 8 or 16 elements), updated by the fp32 loop and rounded back to nearest
// even, the same numbers as adam_range<V> with F16's portable conversions, whose ~15 vector operations per
// array and direction made fp16 Adam about twice as slow as torch's fused one.
template <class V>
FK_INLINE void adam_half_blocks(const TensorJob& job, int64_t begin, int64_t end) {
  constexpr bool kHalfState = std::is_same_v<typename V::State, F16>;  // else fp32 moments (master weights)
  constexpr bool kMax = V::rule == Rule::AdamAmsgrad;
  // With a master copy the EMA averages it (adam_range does that); without, the rounded param: done below.
  using Wide = Variant<F32, F32, V::rule, V::master, V::master && V::ema, V::unscale_out, false, typename V::Isa>;
  constexpr int64_t kBlock = 256;
  constexpr Isa kIsa = isa_of<typename V::Isa>();
  // Rows padded by 64 B, so that no two share an address modulo 4 KiB (loads from one would otherwise be held
  // up by stores to another: 4K aliasing). A precaution, not measured to matter here; it did not fix the 2x
  // slowdown of 512- and 1024-element rows, which is why the rows are 256.
  alignas(64) float rows[5][kBlock + 16];
  float *param = rows[0], *grad = rows[1], *first = rows[2], *second = rows[3], *max_second = rows[4];
  uint16_t* const param_h = static_cast<uint16_t*>(job.param);
  uint16_t* const grad_h = static_cast<uint16_t*>(job.grad);
  const AdamConsts<float> c = cast_consts<float>(job.consts);
  for (int64_t lo = begin; lo < end; lo += kBlock) {
    const int64_t n = std::min(kBlock, end - lo);
    TensorJob w = job;
    w.param = param;
    w.grad = grad;
    if constexpr (!V::master) halves_to_floats(kIsa, param_h + lo, param, n);
    halves_to_floats(kIsa, grad_h + lo, grad, n);
    if constexpr (kHalfState) {
      w.first = first;
      w.second = second;
      w.max_second = max_second;
      halves_to_floats(kIsa, static_cast<const uint16_t*>(job.first) + lo, first, n);
      halves_to_floats(kIsa, static_cast<const uint16_t*>(job.second) + lo, second, n);
      if constexpr (kMax) halves_to_floats(kIsa, static_cast<const uint16_t*>(job.max_second) + lo, max_second, n);
    } else {
      w.first = static_cast<float*>(job.first) + lo;
      w.second = static_cast<float*>(job.second) + lo;
      w.max_second = kMax ? static_cast<float*>(job.max_second) + lo : nullptr;
    }
    w.master = V::master ? job.master + lo : nullptr;
    w.ema = V::ema ? static_cast<float*>(job.ema) + lo : nullptr;
    adam_range<Wide>(w, 0, n, NoNoise{});
    floats_to_halves(kIsa, param, param_h + lo, n);
    if constexpr (V::unscale_out) floats_to_halves(kIsa, grad, grad_h + lo, n);
    if constexpr (kHalfState) {
      floats_to_halves(kIsa, first, static_cast<uint16_t*>(job.first) + lo, n);
      floats_to_halves(kIsa, second, static_cast<uint16_t*>(job.second) + lo, n);
      if constexpr (kMax) floats_to_halves(kIsa, max_second, static_cast<uint16_t*>(job.max_second) + lo, n);
    }
    if constexpr (V::ema && !V::master) {
      float* const ema = static_cast<float*>(job.ema) + lo;
      halves_to_floats(kIsa, param_h + lo, param, n);  // the param as stored
      for (int64_t i = 0; i < n; ++i) ema[i] = math::ema_update<V::fma>(ema[i], param[i], c);
    }
  }
}

// Philox words of blocks b0 .. b0 + n - 1 into w[m][0 .. n) (n + 15 words of room): AVX-512 or AVX2 intrinsics
// when that ISA is active (the Variant does not carry the ISA; one check per piece of 2048 elements).
template <int64_t kRoom>
FK_INLINE void philox_words_of(uint64_t seed, uint64_t offset, uint64_t b0, int64_t n, uint32_t (*w)[kRoom]) {
  if (philox_words_simd(active_isa(), seed, offset, b0, n, w[0], w[1], w[2], w[3])) return;
  for (int64_t b = 0; b < n; ++b) {
    const math::Philox4x32 r = math::philox_block(seed, offset, b0 + static_cast<uint64_t>(b));
    for (int j = 0; j < 4; ++j) w[j][b] = r.v[j];
  }
}

// Elements [begin, end) of one tensor, any variant. Stochastic rounding gives element i the 16 bits
// (i % 2 == 0: low, else high half) of word (i % 8) / 2 of Philox block i / 8 (per-element
// counters: the noise does not depend on how the work is split).
template <class V>
FK_INLINE void adam_tensor_range(const TensorJob& job, int64_t begin, int64_t end, uint64_t seed) {
  if constexpr (V::stochastic) {
    // Random bits for a piece of the range first (a loop over Philox blocks), then the update.
    // Rounding needs 16 bits per element: one block of 4 x 32 bits serves 8 elements.
    constexpr int64_t kPiece = 2048, kPieceBlocks = kPiece / 8 + 16;  // + room for AVX-512's whole groups
    uint16_t bits[kPieceBlocks * 8];
    alignas(64) uint32_t words[4][kPieceBlocks];
    for (int64_t lo = begin; lo < end; lo += kPiece) {
      const int64_t hi = lo + kPiece < end ? lo + kPiece : end;
      const int64_t first_block = lo >> 3, last_block = (hi + 7) >> 3;
      const int64_t nblocks = last_block - first_block;
      philox_words_of(seed, job.sr_offset, static_cast<uint64_t>(first_block), nblocks, words);
      for (int64_t b = 0; b < nblocks; ++b)
        for (int j = 0; j < 4; ++j) {
          bits[b * 8 + 2 * j] = static_cast<uint16_t>(words[j][b]);
          bits[b * 8 + 2 * j + 1] = static_cast<uint16_t>(words[j][b] >> 16);
        }
      adam_range<V>(job, lo, hi, BitsNoise{bits, first_block * 8});
    }
  } else if constexpr (V::half_blocks) {
    adam_half_blocks<V>(job, begin, end);
  } else {
    adam_range<V>(job, begin, end, NoNoise{});
  }
}

}  // namespace fused_kingma::cpu::adam
