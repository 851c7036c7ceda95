// Philox4x32-10 over many blocks at once, written once for any register width (philox_avx512.cpp and
// philox_avx2.cpp instantiate it; see philox_simd.h for why intrinsics).
//
// Each word of a block lives in the low half of a 64-bit lane, so one 32x32->64 multiply instruction
// (vpmuludq) gives a full product per lane: its high word is a shift, the upper halves may hold garbage that
// nothing reads. kRegs registers per word run interleaved: one register's 10 rounds are a ~50-cycle chain
// (multiply, shift, xor per round) that the out-of-order window cannot overlap with the next call's.
//
// L (the lanes) provides, for its register type L::V of L::kBlocks 64-bit lanes: set1_64, lane_index
// (0, 1, ...), add_64, shr32_64 (per 64-bit lane), mul_lo32 (vpmuludq), set1_32, xor3, and
// store_low_halves(dst, a, b) writing the low 32 bits of a's then b's lanes (2 * kBlocks words) in order.
// Include it inside the anonymous namespace of a file compiled for L's instruction set
// (`#pragma GCC target`), after defining L there: the intrinsics need that target at the point of use.
#pragma once

namespace philox_lanes {

// Words v[m] of blocks b0 .. b0 + kRegs * L::kBlocks - 1 into w[m][...], for key (k0, k1) and offset (o0, o1).
template <class L, int kRegs>
inline __attribute__((always_inline)) void blocks(uint64_t b0, uint32_t o0, uint32_t o1, uint32_t k0, uint32_t k1,
                                                  uint32_t* __restrict w0, uint32_t* __restrict w1,
                                                  uint32_t* __restrict w2, uint32_t* __restrict w3) {
  static_assert(kRegs % 2 == 0, "words are stored two registers at a time");
  using V = typename L::V;
  const V m0 = L::set1_64(fused_kingma::math::kPhiloxM0), m1 = L::set1_64(fused_kingma::math::kPhiloxM1);
  const V first = L::add_64(L::set1_64(b0), L::lane_index());
  // Counter words (c0, c1, c2, c3) of blocks b0 + g * kBlocks ... in register g: c0 = lo(block), c1 = hi(block).
  V c0[kRegs], c1[kRegs], c2[kRegs], c3[kRegs];
#pragma GCC unroll 8
  for (int g = 0; g < kRegs; ++g) {
    const V blk = L::add_64(first, L::set1_64(static_cast<uint64_t>(g) * L::kBlocks));
    c0[g] = blk;
    c1[g] = L::shr32_64(blk);
    c2[g] = L::set1_64(o0);
    c3[g] = L::set1_64(o1);
  }
  uint32_t ka = k0, kb = k1;
#pragma GCC unroll 10
  for (int round = 0; round < 10; ++round) {
    const V key0 = L::set1_32(ka), key1 = L::set1_32(kb);
#pragma GCC unroll 8
    for (int g = 0; g < kRegs; ++g) {
      const V p0 = L::mul_lo32(c0[g], m0), p1 = L::mul_lo32(c2[g], m1);
      // (c0, c1, c2, c3) <- (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0)).
      c0[g] = L::xor3(L::shr32_64(p1), c1[g], key0);
      c2[g] = L::xor3(L::shr32_64(p0), c3[g], key1);
      c1[g] = p1;
      c3[g] = p0;
    }
    ka += fused_kingma::math::kPhiloxW0;
    kb += fused_kingma::math::kPhiloxW1;
  }
#pragma GCC unroll 8
  for (int g = 0; g < kRegs; g += 2) {
    L::store_low_halves(w0 + g * L::kBlocks, c0[g], c0[g + 1]);
    L::store_low_halves(w1 + g * L::kBlocks, c1[g], c1[g + 1]);
    L::store_low_halves(w2 + g * L::kBlocks, c2[g], c2[g + 1]);
    L::store_low_halves(w3 + g * L::kBlocks, c3[g], c3[g + 1]);
  }
}

// Words of blocks b0 .. b0 + n - 1 (filling whole pairs of registers): kRegs registers per call, then pairs.
template <class L, int kRegs>
inline __attribute__((always_inline)) void words(uint64_t seed, uint64_t offset, uint64_t b0, int64_t n,
                                                 uint32_t* __restrict w0, uint32_t* __restrict w1,
                                                 uint32_t* __restrict w2, uint32_t* __restrict w3) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t o0 = static_cast<uint32_t>(offset), o1 = static_cast<uint32_t>(offset >> 32);
  constexpr int64_t kWide = kRegs * L::kBlocks, kPair = 2 * L::kBlocks;
  int64_t b = 0;
  for (; b + kWide <= n; b += kWide)
    blocks<L, kRegs>(b0 + static_cast<uint64_t>(b), o0, o1, k0, k1, w0 + b, w1 + b, w2 + b, w3 + b);
  for (; b < n; b += kPair)
    blocks<L, 2>(b0 + static_cast<uint64_t>(b), o0, o1, k0, k1, w0 + b, w1 + b, w2 + b, w3 + b);
}

}  // namespace philox_lanes
