// The Adam-family CPU loops: one template over (param storage, state storage, rule, options),
// a plain loop over raw pointers calling csrc/math/adam.h, auto-vectorized per ISA (isa.h).
// Everything here is always_inline so it is compiled inside the ISA-targeted entry points.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "math/adam.h"
#include "math/float16.h"
#include "isa.h"
#include "math/philox.h"
#include "packet_io.h"
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
  using packet = Half16;
  FK_INLINE static float load(uint16_t x) { return math::half_to_float(x); }
  FK_INLINE static uint16_t store(float x) { return math::float_to_half_rne(x); }
};
struct BF16 {
  using raw = uint16_t;
  using compute = float;
  using packet = Bfloat16;
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
};

// Whether V's 16-bit params (fp16, bf16) are updated a register at a time (adam_packets) on V's ISA.
template <class V, class P = typename V::Param>
constexpr bool kPackets = false;
template <class V>
constexpr bool kPackets<V, F16> = PacketIO<typename V::Isa, Half16>::kAvailable;
template <class V>
constexpr bool kPackets<V, BF16> = PacketIO<typename V::Isa, Bfloat16>::kAvailable;

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

// Elements [begin, end) of one tensor, with `c` = its constants in the compute type (cast_consts). `noise(i)`
// gives 32 random bits for element i (SR only).
template <class V, class Noise>
FK_INLINE void adam_range(const TensorJob& job, const AdamConsts<typename V::Param::compute>& c, int64_t begin,
                          int64_t end, Noise noise) {
  using P = typename V::Param;
  using S = typename V::State;
  using C = typename P::compute;
  using PRaw = typename P::raw;
  using SRaw = typename S::raw;
  PRaw* __restrict param = static_cast<PRaw*>(job.param);
  PRaw* __restrict grad = static_cast<PRaw*>(job.grad);
  SRaw* __restrict first = static_cast<SRaw*>(job.first);
  SRaw* __restrict second = static_cast<SRaw*>(job.second);
  SRaw* __restrict max_second = static_cast<SRaw*>(job.max_second);
  float* __restrict master = job.master;
  // The EMA is kept in the compute type: fp32 for fp16/bf16 params (the op checks this), else the param's dtype.
  C* __restrict ema = static_cast<C*>(job.ema);
  // Not unrolled before vectorizing: a packet's loop (adam_packet) has a constant trip count of 8 or 16, which
  // GCC would otherwise unroll early in some instantiations and then vectorize only partly (scalar math
  // between vector conversions: fp16 Adam ran 5x slower on AVX2).
#pragma GCC unroll 1
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

// One packet (PacketIO's kLanes elements from `lo`) of a 16-bit param: its 16-bit arrays are widened into
// local float arrays, updated by the fp32 loop and narrowed back, the same numbers as adam_range<V> with the
// portable conversions. The local arrays stay in registers (packet_io.h), where buffers of 256 elements
// converted by separate loops cost 7 vector stores per register of elements more (1.6 against torch's 0.9 ns
// per fp16 element on one Zen 3 thread). `noise`: 16 random bits per element of the packet for a
// stochastically rounded param, else unused (the others round to nearest even).
template <class V>
FK_INLINE void adam_packet(const TensorJob& job, const AdamConsts<float>& c, int64_t lo, const uint16_t* noise) {
  using IO = PacketIO<typename V::Isa, typename V::Param::packet>;
  constexpr int64_t kLanes = IO::kLanes;
  constexpr bool kHalfState = !std::is_same_v<typename V::State, F32>;  // else fp32 moments (master weights)
  constexpr bool kMax = V::rule == Rule::AdamAmsgrad;
  // The EMA averages the master copy or, with stochastic rounding, the unrounded param (adam_range does both);
  // otherwise the param as rounded: done below.
  constexpr bool kEmaOfRounded = V::ema && !V::master && !V::stochastic;
  using Wide = Variant<F32, F32, V::rule, V::master, V::ema && !kEmaOfRounded, V::unscale_out, false, typename V::Isa>;
  alignas(64) float param[kLanes], grad[kLanes], first[kLanes], second[kLanes], max_second[kLanes];
  uint16_t* const param_h = static_cast<uint16_t*>(job.param) + lo;
  uint16_t* const grad_h = static_cast<uint16_t*>(job.grad) + lo;
  TensorJob w = job;
  w.param = param;
  w.grad = grad;
  if constexpr (!V::master) IO::widen(param_h, param);
  IO::widen(grad_h, grad);
  if constexpr (kHalfState) {
    w.first = first;
    w.second = second;
    w.max_second = max_second;
    IO::widen(static_cast<const uint16_t*>(job.first) + lo, first);
    IO::widen(static_cast<const uint16_t*>(job.second) + lo, second);
    if constexpr (kMax) IO::widen(static_cast<const uint16_t*>(job.max_second) + lo, max_second);
  } else {
    w.first = static_cast<float*>(job.first) + lo;
    w.second = static_cast<float*>(job.second) + lo;
    w.max_second = kMax ? static_cast<float*>(job.max_second) + lo : nullptr;
  }
  w.master = V::master ? job.master + lo : nullptr;
  w.ema = V::ema ? static_cast<float*>(job.ema) + lo : nullptr;
  adam_range<Wide>(w, c, 0, kLanes, NoNoise{});
  if constexpr (V::stochastic) {
    IO::narrow_stochastic(param, noise, param_h);
  } else {
    IO::narrow(param, param_h);
  }
  if constexpr (V::unscale_out) IO::narrow(grad, grad_h);
  if constexpr (kHalfState) {
    IO::narrow(first, static_cast<uint16_t*>(job.first) + lo);
    IO::narrow(second, static_cast<uint16_t*>(job.second) + lo);
    if constexpr (kMax) IO::narrow(max_second, static_cast<uint16_t*>(job.max_second) + lo);
  }
  if constexpr (kEmaOfRounded) {
    float* const ema = static_cast<float*>(job.ema) + lo;
    IO::widen(param_h, param);  // the param as stored
    for (int64_t i = 0; i < kLanes; ++i) ema[i] = math::ema_update<V::fma>(ema[i], param[i], c);
  }
}

// Elements [begin, end) of a 16-bit param (kPackets<V>): whole packets, then the rest with the portable
// conversions. `noise[i - begin]`: the rounding bits of element i (stochastic rounding only).
template <class V>
FK_INLINE void adam_packets(const TensorJob& job, const AdamConsts<float>& c, int64_t begin, int64_t end,
                            const uint16_t* noise) {
  constexpr int64_t kLanes = PacketIO<typename V::Isa, typename V::Param::packet>::kLanes;
  int64_t lo = begin;
  for (; lo + kLanes <= end; lo += kLanes) adam_packet<V>(job, c, lo, V::stochastic ? noise + (lo - begin) : nullptr);
  if constexpr (V::stochastic) {
    adam_range<V>(job, c, lo, end, BitsNoise{noise, begin});
  } else {
    adam_range<V>(job, c, lo, end, NoNoise{});
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

// Elements [begin, end) of one tensor, any variant, with constants `c`. Stochastic rounding gives element i the
// 16 bits (i % 2 == 0: low, else high half) of word (i % 8) / 2 of Philox block i / 8 (per-element counters:
// the noise does not depend on how the work is split).
template <class V>
FK_INLINE void adam_tensor_range_with(const TensorJob& job, const AdamConsts<typename V::Param::compute>& c,
                                      int64_t begin, int64_t end, uint64_t seed) {
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
      if constexpr (kPackets<V>) {
        adam_packets<V>(job, c, lo, hi, bits + (lo - first_block * 8));
      } else {
        adam_range<V>(job, c, lo, hi, BitsNoise{bits, first_block * 8});
      }
    }
  } else if constexpr (kPackets<V>) {
    adam_packets<V>(job, c, begin, end, nullptr);
  } else {
    adam_range<V>(job, c, begin, end, NoNoise{});
  }
}

// Elements [begin, end) of one tensor, any variant. The usual options (no L2 term, beta1 > 0.5, minimizing) run
// with those values as constants of a copy of the constants: GCC then folds away the two selects and the sign
// multiply they cost per vector (7 of about 70 instructions per register of bf16 elements on AVX2). That makes
// products reach adds the selects kept them from, which is why adam_cpu.cpp turns off fp contraction.
template <class V>
FK_INLINE void adam_tensor_range(const TensorJob& job, int64_t begin, int64_t end, uint64_t seed) {
  using C = typename V::Param::compute;
  const AdamConsts<C> c = cast_consts<C>(job.consts);
  if (c.l2 == C(0) && c.first_weight.from_start == C(1) && c.grad_sign == C(1)) {
    AdamConsts<C> usual = c;
    usual.l2 = C(0);
    usual.first_weight.from_start = C(1);
    usual.grad_sign = C(1);
    adam_tensor_range_with<V>(job, usual, begin, end, seed);
  } else {
    adam_tensor_range_with<V>(job, c, begin, end, seed);
  }
}

}  // namespace fused_kingma::cpu::adam
