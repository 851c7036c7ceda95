// AVX-512 Philox4x32-10: philox_lanes.h on 512-bit registers (8 blocks each), four registers per word
// interleaved (32 blocks per call measured 16% faster per block than 16 on this project's Zen 5 host; more
// registers spill). See philox_simd.h for why intrinsics.

// Instruction scheduling before register allocation, as in reparam_kernels.cpp and philox_avx2.cpp (why and the
// AVX2 figures: there). With AVX-512 on Zen 5 it gains less: reparam forward and backward 1-5% faster in paired
// runs (benchmarks/reparam_ab, fp32 and bf16, 1 and 2 threads; A/A spread up to 3%). Same words, bit for bit.
#pragma GCC optimize("schedule-insns", "sched-pressure")

#include "philox_simd.h"

#if defined(FK_HAVE_PHILOX_SIMD)
// GCC 12 warns inside its own intrinsic headers (_mm512_undefined_epi32 feeds the masked builtins).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "isa.h"
#include "math/philox.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

namespace fused_kingma::cpu {
namespace {

struct Avx512Lanes {
  using V = __m512i;
  static constexpr int64_t kBlocks = 8;
  static V set1_64(uint64_t x) { return _mm512_set1_epi64(static_cast<long long>(x)); }
  static V set1_32(uint32_t x) { return _mm512_set1_epi32(static_cast<int>(x)); }
  static V lane_index() { return _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7); }
  static V add_64(V a, V b) { return _mm512_add_epi64(a, b); }
  static V shr32_64(V a) { return _mm512_srli_epi64(a, 32); }
  static V mul_lo32(V a, V b) { return _mm512_mul_epu32(a, b); }
  static V xor3(V a, V b, V c) { return _mm512_ternarylogic_epi32(a, b, c, 0x96); }  // 0x96 = a ^ b ^ c
  static void store_low_halves(uint32_t* dst, V a, V b) {
    const V low_halves = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    _mm512_storeu_si512(dst, _mm512_permutex2var_epi32(a, low_halves, b));
  }
};

#include "philox_lanes.h"

}  // namespace

void philox_words_avx512(uint64_t seed, uint64_t offset, uint64_t b0, int64_t n, uint32_t* __restrict w0,
                         uint32_t* __restrict w1, uint32_t* __restrict w2, uint32_t* __restrict w3) {
  philox_lanes::words<Avx512Lanes, 4>(seed, offset, b0, n, w0, w1, w2, w3);
}

}  // namespace fused_kingma::cpu

#pragma GCC pop_options
#endif  // FK_HAVE_PHILOX_SIMD
