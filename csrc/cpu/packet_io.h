// One vector register of 16-bit floats (fp16 or bf16) widened to float, and floats narrowed back, with
// intrinsics: PacketIO<IsaTag, Storage>::widen(in, out) / narrow(in, out) convert kLanes elements (fp16: 8 on
// AVX2, 16 on AVX-512; bf16: 16, two registers on AVX2 so that one pack instruction narrows both). Same values
// as math/float16.h: fp16 with F16C's vcvtph2ps / vcvtps2ph (round to nearest even); bf16 with the integer form
// of math::float_to_bf16_rne (NaN -> (bits >> 16) | 0x40), and narrow_stochastic for float_to_bf16_stochastic.
//
// Why intrinsics: GCC 12 converts `_Float16` one element at a time, and vectorizes the bit tricks of
// float16.h at 16 elements per iteration on AVX2 (one register of 16-bit values, two of floats), where the
// Adam loop runs out of registers and spills.
//
// The functions carry their ISA's target attribute and are `static inline`, not always_inline: GCC refuses
// to force a target function into a function without that target, which the always_inline templates
// between an ISA entry point (isa.h) and its loops are; once those are inlined into the entry point, the
// ordinary inliner inlines these. A caller that writes a packet to a local float array and reads it back
// keeps the values in registers: GCC forwards the stores and drops the array.
#pragma once

#include <cstdint>

#include "isa.h"
#include "math/common.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define FK_HAVE_PACKET_IO 1
// GCC 12's AVX-512 conversion intrinsics start from `_mm256_undefined_si256()` / `_mm512_undefined_ps()`
// (deliberately uninitialized) and then warn about it.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fused_kingma::cpu {

// Storage tags (the Adam kernel's F16 / BF16 formats map to these).
struct Half16 {};
struct Bfloat16 {};

// Primary template: no packet path (baseline ISA, or a storage without one).
template <class IsaTag, class Storage>
struct PacketIO {
  static constexpr bool kAvailable = false;
  static constexpr int64_t kLanes = 1;
};

#if defined(FK_HAVE_PACKET_IO)
constexpr int kRoundNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

template <>
struct PacketIO<IsaAvx2, Half16> {
  static constexpr bool kAvailable = true;
  static constexpr int64_t kLanes = 8;
  FK_TARGET_AVX2 static inline void widen(const uint16_t* in, float* out) {
    _mm256_storeu_ps(out, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in))));
  }
  FK_TARGET_AVX2 static inline void narrow(const float* in, uint16_t* out) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_cvtps_ph(_mm256_loadu_ps(in), kRoundNearest));
  }
};

template <>
struct PacketIO<IsaAvx512, Half16> {
  static constexpr bool kAvailable = true;
  static constexpr int64_t kLanes = 16;
  FK_TARGET_AVX512 static inline void widen(const uint16_t* in, float* out) {
    _mm512_storeu_ps(out, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in))));
  }
  FK_TARGET_AVX512 static inline void narrow(const float* in, uint16_t* out) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtps_ph(_mm512_loadu_ps(in), kRoundNearest));
  }
};

template <>
struct PacketIO<IsaAvx2, Bfloat16> {
  static constexpr bool kAvailable = true;
  static constexpr int64_t kLanes = 16;  // two registers: one pack instruction narrows both
  FK_TARGET_AVX2 static inline __m256i widen8(const uint16_t* in) {
    return _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in))), 16);
  }
  FK_TARGET_AVX2 static inline void widen(const uint16_t* in, float* out) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), widen8(in));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8), widen8(in + 8));
  }
  // `shifted` with its NaN lanes (those of f) replaced by float_to_bf16_rne's quiet NaN, (bits >> 16) | 0x40.
  FK_TARGET_AVX2 static inline __m256i quiet_nan_lanes(__m256 f, __m256i shifted) {
    const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q));
    const __m256i quiet_nan = _mm256_or_si256(_mm256_srli_epi32(_mm256_castps_si256(f), 16), _mm256_set1_epi32(0x40));
    return _mm256_blendv_epi8(shifted, quiet_nan, is_nan);
  }
  // math::float_to_bf16_rne of 8 floats, in the low 16 bits of each 32-bit lane.
  FK_TARGET_AVX2 static inline __m256i round8(const float* in) {
    const __m256 f = _mm256_loadu_ps(in);
    const __m256i u = _mm256_castps_si256(f);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb);
    return quiet_nan_lanes(f, _mm256_srli_epi32(rounded, 16));
  }
  // math::float_to_bf16_stochastic of 8 floats with 16 bits of noise each. Its inf and NaN take round-to-nearest-
  // even; for +-inf the noisy sum gives the same bits (0x7F800000 + less than 2^16, shifted), so only NaN lanes
  // are replaced.
  FK_TARGET_AVX2 static inline __m256i round8_stochastic(const float* in, const uint16_t* noise) {
    const __m256 f = _mm256_loadu_ps(in);
    const __m256i bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(noise)));
    return quiet_nan_lanes(f, _mm256_srli_epi32(_mm256_add_epi32(_mm256_castps_si256(f), bits), 16));
  }
  // Every lane < 2^16, so the saturating pack is exact; it interleaves 128-bit halves, vpermq restores order.
  FK_TARGET_AVX2 static inline void pack16(__m256i low, __m256i high, uint16_t* out) {
    const __m256i packed = _mm256_packus_epi32(low, high);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permute4x64_epi64(packed, 0xD8));
  }
  FK_TARGET_AVX2 static inline void narrow(const float* in, uint16_t* out) { pack16(round8(in), round8(in + 8), out); }
  FK_TARGET_AVX2 static inline void narrow_stochastic(const float* in, const uint16_t* noise, uint16_t* out) {
    pack16(round8_stochastic(in, noise), round8_stochastic(in + 8, noise + 8), out);
  }
};

template <>
struct PacketIO<IsaAvx512, Bfloat16> {
  static constexpr bool kAvailable = true;
  static constexpr int64_t kLanes = 16;
  FK_TARGET_AVX512 static inline void widen(const uint16_t* in, float* out) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in)));
    _mm512_storeu_si512(out, _mm512_slli_epi32(wide, 16));
  }
  // `shifted` with its NaN lanes (those of u's floats) replaced by float_to_bf16_rne's quiet NaN, (bits >> 16) | 0x40.
  FK_TARGET_AVX512 static inline __m512i quiet_nan_lanes(__m512i u, __m512i shifted) {
    const __m512 f = _mm512_castsi512_ps(u);
    const __mmask16 is_nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
    return _mm512_mask_or_epi32(shifted, is_nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  }
  // math::float_to_bf16_rne of 16 floats, in the low 16 bits of each 32-bit lane.
  FK_TARGET_AVX512 static inline __m512i round16(const float* in) {
    const __m512i u = _mm512_loadu_si512(in);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb);
    return quiet_nan_lanes(u, _mm512_srli_epi32(rounded, 16));
  }
  FK_TARGET_AVX512 static inline void narrow(const float* in, uint16_t* out) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi32_epi16(round16(in)));  // lanes < 2^16
  }
  // math::float_to_bf16_stochastic with 16 bits of noise per element; as on AVX2, only NaN lanes need replacing.
  FK_TARGET_AVX512 static inline void narrow_stochastic(const float* in, const uint16_t* noise, uint16_t* out) {
    const __m512i u = _mm512_loadu_si512(in);
    const __m512i bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(noise)));
    const __m512i rounded = quiet_nan_lanes(u, _mm512_srli_epi32(_mm512_add_epi32(u, bits), 16));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi32_epi16(rounded));
  }
};
#endif

}  // namespace fused_kingma::cpu

#if defined(FK_HAVE_PACKET_IO)
#pragma GCC diagnostic pop
#endif
