// AVX-512 Philox4x32-10 over groups of 16 or 32 blocks (see philox_simd.h for why intrinsics).
#include "philox_simd.h"

#if defined(FK_HAVE_PHILOX_SIMD)
// GCC 12 warns inside its own intrinsic headers (_mm512_undefined_epi32 feeds the masked builtins).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "isa.h"
#include "math/philox.h"

namespace fused_kingma::cpu {
namespace {

// Words v[m] of blocks b0 .. b0 + 8 * kLanes8 - 1 into w[m][...] (SoA), for key (k0, k1) and offset (o0, o1).
// Each register holds 8 blocks; kLanes8 registers per word run interleaved. Why: one register's 10 rounds are
// a chain of ~50 cycles (multiply, shift, xor per round) with little work beside it, and the out-of-order
// window cannot overlap two calls of that length. Four chains in program order keep the multipliers busy:
// 32 blocks per call measured 16% faster per block than 16 on this project's Zen 5 host, 64 spilled registers.
template <int kLanes8>
FK_TARGET_AVX512 inline __attribute__((always_inline)) void philox_blocks_avx512(uint64_t b0, uint32_t o0, uint32_t o1,
                                                                                  uint32_t k0, uint32_t k1,
                                                                                  uint32_t* __restrict w0,
                                                                                  uint32_t* __restrict w1,
                                                                                  uint32_t* __restrict w2,
                                                                                  uint32_t* __restrict w3) {
  static_assert(kLanes8 % 2 == 0, "blocks are packed to words 16 at a time");
  const __m512i m0 = _mm512_set1_epi64(math::kPhiloxM0), m1 = _mm512_set1_epi64(math::kPhiloxM1);
  const __m512i first8 = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(b0)),
                                          _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
  // Counter words (c0, c1, c2, c3) of blocks b0 + 8g .. b0 + 8g + 7 in register g: c0 = lo(block), c1 = hi(block).
  __m512i c0[kLanes8], c1[kLanes8], c2[kLanes8], c3[kLanes8];
#pragma GCC unroll 8
  for (int g = 0; g < kLanes8; ++g) {
    const __m512i blk = _mm512_add_epi64(first8, _mm512_set1_epi64(8 * g));
    c0[g] = blk;
    c1[g] = _mm512_srli_epi64(blk, 32);
    c2[g] = _mm512_set1_epi64(o0);
    c3[g] = _mm512_set1_epi64(o1);
  }
  uint32_t ka = k0, kb = k1;
#pragma GCC unroll 10
  for (int round = 0; round < 10; ++round) {
    const __m512i key0 = _mm512_set1_epi32(static_cast<int>(ka)), key1 = _mm512_set1_epi32(static_cast<int>(kb));
#pragma GCC unroll 8
    for (int g = 0; g < kLanes8; ++g) {
      const __m512i p0 = _mm512_mul_epu32(c0[g], m0), p1 = _mm512_mul_epu32(c2[g], m1);
      // (c0, c1, c2, c3) <- (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0)); 0x96 = a ^ b ^ c.
      c0[g] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p1, 32), c1[g], key0, 0x96);
      c2[g] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p0, 32), c3[g], key1, 0x96);
      c1[g] = p1;
      c3[g] = p0;
    }
    ka += math::kPhiloxW0;
    kb += math::kPhiloxW1;
  }
  // The low halves of two registers packed into 16 words in block order.
  const __m512i low_halves = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
#pragma GCC unroll 8
  for (int g = 0; g < kLanes8; g += 2) {
    _mm512_storeu_si512(w0 + 8 * g, _mm512_permutex2var_epi32(c0[g], low_halves, c0[g + 1]));
    _mm512_storeu_si512(w1 + 8 * g, _mm512_permutex2var_epi32(c1[g], low_halves, c1[g + 1]));
    _mm512_storeu_si512(w2 + 8 * g, _mm512_permutex2var_epi32(c2[g], low_halves, c2[g + 1]));
    _mm512_storeu_si512(w3 + 8 * g, _mm512_permutex2var_epi32(c3[g], low_halves, c3[g + 1]));
  }
}

}  // namespace

FK_TARGET_AVX512 void philox_words_avx512(uint64_t seed, uint64_t offset, uint64_t b0, int64_t n,
                                          uint32_t* __restrict w0, uint32_t* __restrict w1, uint32_t* __restrict w2,
                                          uint32_t* __restrict w3) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t o0 = static_cast<uint32_t>(offset), o1 = static_cast<uint32_t>(offset >> 32);
  int64_t b = 0;
  for (; b + 32 <= n; b += 32)
    philox_blocks_avx512<4>(b0 + static_cast<uint64_t>(b), o0, o1, k0, k1, w0 + b, w1 + b, w2 + b, w3 + b);
  for (; b < n; b += 16)
    philox_blocks_avx512<2>(b0 + static_cast<uint64_t>(b), o0, o1, k0, k1, w0 + b, w1 + b, w2 + b, w3 + b);
}

}  // namespace fused_kingma::cpu

#endif  // FK_HAVE_PHILOX_SIMD
