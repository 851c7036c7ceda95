// AVX2 Philox4x32-10 over groups of 8 blocks: philox_avx512.cpp's layout (each word in the low half of a
// 64-bit lane, one vpmuludq per 4 full products) on 256-bit registers. Without it the AVX2 copy of the
// scalar rounds emulates 64x64 multiplies and runs at scalar speed (1.7 ns per word on the Zen 5 host).
#include "philox_simd.h"

#if defined(FK_HAVE_PHILOX_SIMD)
#include <immintrin.h>

#include "isa.h"
#include "math/philox.h"

namespace fused_kingma::cpu {
namespace {

// The low halves of (a, b) as 8 words in block order: shuffle_ps picks them per 128-bit half
// (a0 a1 b0 b1 | a2 a3 b2 b3), then the 64-bit permute puts the halves in order.
FK_TARGET_AVX2 inline __attribute__((always_inline)) __m256i low_halves_in_order(__m256i a, __m256i b) {
  const __m256 lows = _mm256_shuffle_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), _MM_SHUFFLE(2, 0, 2, 0));
  return _mm256_permute4x64_epi64(_mm256_castps_si256(lows), _MM_SHUFFLE(3, 1, 2, 0));
}

// Words v[m] of blocks b0 .. b0 + 7 into w[m][0 .. 7]: two registers of 4 blocks per word, interleaved
// (the 16 AVX2 registers hold 8 of state, the two multipliers, the keys and the products).
FK_TARGET_AVX2 inline __attribute__((always_inline)) void philox8_avx2(uint64_t b0, uint32_t o0, uint32_t o1,
                                                                        uint32_t k0, uint32_t k1,
                                                                        uint32_t* __restrict w0, uint32_t* __restrict w1,
                                                                        uint32_t* __restrict w2, uint32_t* __restrict w3) {
  const __m256i m0 = _mm256_set1_epi64x(math::kPhiloxM0), m1 = _mm256_set1_epi64x(math::kPhiloxM1);
  const __m256i blk_a = _mm256_add_epi64(_mm256_set1_epi64x(static_cast<long long>(b0)), _mm256_setr_epi64x(0, 1, 2, 3));
  const __m256i blk_b = _mm256_add_epi64(blk_a, _mm256_set1_epi64x(4));
  // Counter words (c0, c1, c2, c3) of blocks b0..b0+3 (a) and b0+4..b0+7 (b): c0 = lo(block), c1 = hi(block).
  __m256i a0 = blk_a, a1 = _mm256_srli_epi64(blk_a, 32), a2 = _mm256_set1_epi64x(o0), a3 = _mm256_set1_epi64x(o1);
  __m256i b0v = blk_b, b1 = _mm256_srli_epi64(blk_b, 32), b2 = a2, b3 = a3;
  uint32_t ka = k0, kb = k1;
#pragma GCC unroll 10
  for (int round = 0; round < 10; ++round) {
    const __m256i key0 = _mm256_set1_epi32(static_cast<int>(ka)), key1 = _mm256_set1_epi32(static_cast<int>(kb));
    const __m256i pa0 = _mm256_mul_epu32(a0, m0), pa1 = _mm256_mul_epu32(a2, m1);
    const __m256i pb0 = _mm256_mul_epu32(b0v, m0), pb1 = _mm256_mul_epu32(b2, m1);
    // (c0, c1, c2, c3) <- (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0)).
    a0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pa1, 32), a1), key0);
    a2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pa0, 32), a3), key1);
    a1 = pa1;
    a3 = pa0;
    b0v = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pb1, 32), b1), key0);
    b2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pb0, 32), b3), key1);
    b1 = pb1;
    b3 = pb0;
    ka += math::kPhiloxW0;
    kb += math::kPhiloxW1;
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(w0), low_halves_in_order(a0, b0v));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(w1), low_halves_in_order(a1, b1));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(w2), low_halves_in_order(a2, b2));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(w3), low_halves_in_order(a3, b3));
}

}  // namespace

FK_TARGET_AVX2 void philox_words_avx2(uint64_t seed, uint64_t offset, uint64_t b0, int64_t n, uint32_t* __restrict w0,
                                      uint32_t* __restrict w1, uint32_t* __restrict w2, uint32_t* __restrict w3) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t o0 = static_cast<uint32_t>(offset), o1 = static_cast<uint32_t>(offset >> 32);
  for (int64_t b = 0; b < n; b += 8)
    philox8_avx2(b0 + static_cast<uint64_t>(b), o0, o1, k0, k1, w0 + b, w1 + b, w2 + b, w3 + b);
}

}  // namespace fused_kingma::cpu

#endif  // FK_HAVE_PHILOX_SIMD
