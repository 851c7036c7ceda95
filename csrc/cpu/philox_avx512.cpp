// AVX-512 Philox4x32-10 over groups of 16 blocks (see philox_avx512.h for why intrinsics).
#include "philox_avx512.h"

#if defined(FK_HAVE_PHILOX_AVX512)
// GCC 12 warns inside its own intrinsic headers (_mm512_undefined_epi32 feeds the masked builtins).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "isa.h"
#include "math/philox.h"

namespace fused_kingma::cpu {
namespace {

// Words v[m] of blocks b0 .. b0 + 15 into w[m][0 .. 15] (SoA), for key (k0, k1) and offset (o0, o1).
FK_TARGET_AVX512 inline __attribute__((always_inline)) void philox16_avx512(uint64_t b0, uint32_t o0, uint32_t o1,
                                                                             uint32_t k0, uint32_t k1,
                                                                             uint32_t* __restrict w0,
                                                                             uint32_t* __restrict w1,
                                                                             uint32_t* __restrict w2,
                                                                             uint32_t* __restrict w3) {
  const __m512i m0 = _mm512_set1_epi64(math::kPhiloxM0), m1 = _mm512_set1_epi64(math::kPhiloxM1);
  const __m512i base = _mm512_set1_epi64(static_cast<long long>(b0));
  const __m512i blk_a = _mm512_add_epi64(base, _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
  const __m512i blk_b = _mm512_add_epi64(base, _mm512_setr_epi64(8, 9, 10, 11, 12, 13, 14, 15));
  // Counter words (c0, c1, c2, c3) of blocks b0..b0+7 (a) and b0+8..b0+15 (b): c0 = lo(block), c1 = hi(block).
  __m512i a0 = blk_a, a1 = _mm512_srli_epi64(blk_a, 32), a2 = _mm512_set1_epi64(o0), a3 = _mm512_set1_epi64(o1);
  __m512i b0v = blk_b, b1 = _mm512_srli_epi64(blk_b, 32), b2 = a2, b3 = a3;
  uint32_t ka = k0, kb = k1;
#pragma GCC unroll 10
  for (int round = 0; round < 10; ++round) {
    const __m512i key0 = _mm512_set1_epi32(static_cast<int>(ka)), key1 = _mm512_set1_epi32(static_cast<int>(kb));
    const __m512i pa0 = _mm512_mul_epu32(a0, m0), pa1 = _mm512_mul_epu32(a2, m1);
    const __m512i pb0 = _mm512_mul_epu32(b0v, m0), pb1 = _mm512_mul_epu32(b2, m1);
    // (c0, c1, c2, c3) <- (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0)); 0x96 = a ^ b ^ c.
    a0 = _mm512_ternarylogic_epi32(_mm512_srli_epi64(pa1, 32), a1, key0, 0x96);
    a2 = _mm512_ternarylogic_epi32(_mm512_srli_epi64(pa0, 32), a3, key1, 0x96);
    a1 = pa1;
    a3 = pa0;
    b0v = _mm512_ternarylogic_epi32(_mm512_srli_epi64(pb1, 32), b1, key0, 0x96);
    b2 = _mm512_ternarylogic_epi32(_mm512_srli_epi64(pb0, 32), b3, key1, 0x96);
    b1 = pb1;
    b3 = pb0;
    ka += math::kPhiloxW0;
    kb += math::kPhiloxW1;
  }
  // The low halves of (a, b) packed into 16 words in block order.
  const __m512i low_halves = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  _mm512_storeu_si512(w0, _mm512_permutex2var_epi32(a0, low_halves, b0v));
  _mm512_storeu_si512(w1, _mm512_permutex2var_epi32(a1, low_halves, b1));
  _mm512_storeu_si512(w2, _mm512_permutex2var_epi32(a2, low_halves, b2));
  _mm512_storeu_si512(w3, _mm512_permutex2var_epi32(a3, low_halves, b3));
}

}  // namespace

FK_TARGET_AVX512 void philox_words_avx512(uint64_t seed, uint64_t offset, uint64_t b0, int64_t n,
                                          uint32_t* __restrict w0, uint32_t* __restrict w1, uint32_t* __restrict w2,
                                          uint32_t* __restrict w3) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t o0 = static_cast<uint32_t>(offset), o1 = static_cast<uint32_t>(offset >> 32);
  for (int64_t b = 0; b < n; b += 16)
    philox16_avx512(b0 + static_cast<uint64_t>(b), o0, o1, k0, k1, w0 + b, w1 + b, w2 + b, w3 + b);
}

}  // namespace fused_kingma::cpu

#endif  // FK_HAVE_PHILOX_AVX512
