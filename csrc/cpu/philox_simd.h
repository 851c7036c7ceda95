// math::philox4x32_10 for many consecutive blocks at once, written with AVX-512 or AVX2 intrinsics.
//
// Why intrinsics: auto-vectorizing the scalar rounds, GCC widens the 32-bit words to 64-bit lanes and
// multiplies with vpmullq (64x64), several times the work of the 32x32->64 vpmuludq Philox needs.
// Here each word lives in the low half of a 64-bit lane (8 blocks per register, two registers per
// 16 blocks): vpmuludq reads only those low halves, so one instruction gives 8 full products, the
// high word is a shift, and the upper halves may hold garbage that nothing reads. The words are the
// same as math::philox4x32_10 bit for bit (tests/test_philox.py checks the Random123 answers on
// every ISA path through the philox_debug op).
#pragma once

#include <cstdint>

#include "isa.h"

namespace fused_kingma::cpu {

#if defined(__x86_64__) || defined(_M_X64)
#define FK_HAVE_PHILOX_SIMD 1
// Words v[m] of blocks b0 .. b0 + n - 1 into w[m][0 .. n) (SoA) for (seed, offset). Fills whole groups of
// 16 blocks (AVX-512) or 8 (AVX2), so each w[m] must have room for n rounded up to a multiple of 16. Each
// needs its ISA (AVX-512: F, DQ, BW, VL); functions of their own (not inlined) so they can carry that target
// while their callers are ISA templates.
void philox_words_avx512(uint64_t seed, uint64_t offset, uint64_t b0, int64_t n, uint32_t* __restrict w0,
                         uint32_t* __restrict w1, uint32_t* __restrict w2, uint32_t* __restrict w3);
void philox_words_avx2(uint64_t seed, uint64_t offset, uint64_t b0, int64_t n, uint32_t* __restrict w0,
                       uint32_t* __restrict w1, uint32_t* __restrict w2, uint32_t* __restrict w3);
#endif

// The words above with the intrinsics of `isa` (true), or nothing for an ISA without them (false: the
// caller computes math::philox4x32_10 per block). The one place that maps an ISA to its Philox.
inline bool philox_words_simd(Isa isa, uint64_t seed, uint64_t offset, uint64_t b0, int64_t n,
                              uint32_t* __restrict w0, uint32_t* __restrict w1, uint32_t* __restrict w2,
                              uint32_t* __restrict w3) {
#if defined(FK_HAVE_PHILOX_SIMD)
  switch (isa) {
    case Isa::Avx512:
      philox_words_avx512(seed, offset, b0, n, w0, w1, w2, w3);
      return true;
    case Isa::Avx2:
      philox_words_avx2(seed, offset, b0, n, w0, w1, w2, w3);
      return true;
    default:
      return false;
  }
#else
  (void)isa, (void)seed, (void)offset, (void)b0, (void)n, (void)w0, (void)w1, (void)w2, (void)w3;
  return false;
#endif
}

}  // namespace fused_kingma::cpu
