// AVX2 Philox4x32-10: philox_lanes.h on 256-bit registers (4 blocks each), four registers per word
// interleaved (16 blocks per call measured 19% faster per block than 8; more spill, the 16 AVX2 registers
// then hold only the state). Without it the AVX2 copy of the scalar rounds emulates 64x64 multiplies and
// runs at scalar speed (1.7 ns per word on the Zen 5 host).

// Instruction scheduling before register allocation, as in reparam_kernels.cpp (why: there). On Zen 3 (AVX2) the
// noise pipeline (these words, then Box-Muller) took 2.30 ms per 1M normals unscheduled, 2.05 with Box-Muller
// scheduled and 1.81 with these words scheduled too. The same words, bit for bit.
#pragma GCC optimize("schedule-insns", "sched-pressure")

#include "philox_simd.h"

#if defined(FK_HAVE_PHILOX_SIMD)
#include <immintrin.h>

#include <cstdint>

#include "isa.h"
#include "math/philox.h"

#pragma GCC push_options
#pragma GCC target("avx2")

namespace fused_kingma::cpu {
namespace {

struct Avx2Lanes {
  using V = __m256i;
  static constexpr int64_t kBlocks = 4;
  static V set1_64(uint64_t x) { return _mm256_set1_epi64x(static_cast<long long>(x)); }
  static V set1_32(uint32_t x) { return _mm256_set1_epi32(static_cast<int>(x)); }
  static V lane_index() { return _mm256_setr_epi64x(0, 1, 2, 3); }
  static V add_64(V a, V b) { return _mm256_add_epi64(a, b); }
  static V shr32_64(V a) { return _mm256_srli_epi64(a, 32); }
  static V mul_lo32(V a, V b) { return _mm256_mul_epu32(a, b); }
  static V xor3(V a, V b, V c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
  // shuffle_ps picks the low halves per 128-bit half (a0 a1 b0 b1 | a2 a3 b2 b3), then the 64-bit permute
  // puts the halves in order.
  static void store_low_halves(uint32_t* dst, V a, V b) {
    const __m256 lows = _mm256_shuffle_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), _MM_SHUFFLE(2, 0, 2, 0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst),
                        _mm256_permute4x64_epi64(_mm256_castps_si256(lows), _MM_SHUFFLE(3, 1, 2, 0)));
  }
};

#include "philox_lanes.h"

}  // namespace

void philox_words_avx2(uint64_t seed, uint64_t offset, uint64_t b0, int64_t n, uint32_t* __restrict w0,
                       uint32_t* __restrict w1, uint32_t* __restrict w2, uint32_t* __restrict w3) {
  philox_lanes::words<Avx2Lanes, 4>(seed, offset, b0, n, w0, w1, w2, w3);
}

}  // namespace fused_kingma::cpu

#pragma GCC pop_options
#endif  // FK_HAVE_PHILOX_SIMD
