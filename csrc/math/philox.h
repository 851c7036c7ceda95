// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) and the
// bits -> uniform mapping of fused_kingma's noise definition (README "How the noise is defined"):
//   block b of 4 numbers = philox4x32_10(counter = (lo(b), hi(b), lo(offset), hi(offset)),
//                                         key     = (lo(seed), hi(seed)))
//   u = float(bits) * 2^-32 + 2^-33   (float32 arithmetic; never 0, may round to 1)
// Element i of an output takes number i % 4 of block i / 4, so the stream does not depend on
// thread count, vector width or device.
#pragma once

#include <cstdint>

#include "common.h"

namespace fused_kingma::math {

struct Philox4x32 {
  uint32_t v[4];
};

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1

FK_FN uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

FK_FN Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const uint32_t lo0 = kPhiloxM0 * ctr.v[0], hi0 = mulhi32(kPhiloxM0, ctr.v[0]);
    const uint32_t lo1 = kPhiloxM1 * ctr.v[2], hi1 = mulhi32(kPhiloxM1, ctr.v[2]);
    ctr = Philox4x32{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
  }
  return ctr;
}

// The 4 random words of block `block` (elements 4*block .. 4*block+3) for (seed, offset).
FK_FN Philox4x32 philox_block(uint64_t seed, uint64_t offset, uint64_t block) {
  Philox4x32 ctr{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), static_cast<uint32_t>(offset),
                  static_cast<uint32_t>(offset >> 32)}};
  return philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Uniform in (0, 1]: float(bits) * 2^-32 + 2^-33, both steps in float32 (the product is exact).
FK_FN float uniform_from_bits(uint32_t bits) {
  return static_cast<float>(bits) * 2.3283064365386963e-10f + 1.1641532182693481e-10f;
}

}  // namespace fused_kingma::math
