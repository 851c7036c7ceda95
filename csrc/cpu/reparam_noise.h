// The noise of a flat index range [start, start + n), generated block-wise into a buffer so the
// Philox rounds and the Box-Muller transcendentals vectorize (one block = 4 lanes' worth of work).
#pragma once

#include <cstdint>

#include "math/normal.h"
#include "math/philox.h"

namespace fused_kingma::cpu {

// math::philox4x32_10 written with one 32x32->64 widening multiply per product (lo and hi from the same
// product): the same words (checked against the Random123 answers via the normals tests), but GCC then emits
// vpmuludq instead of a 64x64 vpmullq on AVX-512.
static inline __attribute__((always_inline)) math::Philox4x32 philox_rounds_widening(uint32_t c0, uint32_t c1,
                                                                                      uint32_t c2, uint32_t c3,
                                                                                      uint32_t k0, uint32_t k1) {
#pragma GCC unroll 10
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(math::kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(math::kPhiloxM1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c0 = n0;
    c1 = static_cast<uint32_t>(p1);
    c2 = n2;
    c3 = static_cast<uint32_t>(p0);
    k0 += math::kPhiloxW0;
    k1 += math::kPhiloxW1;
  }
  return math::Philox4x32{{c0, c1, c2, c3}};
}

// Normals of blocks b0 .. b0 + nblocks - 1 into out[0 .. 4*nblocks): vectorized over blocks.
static inline __attribute__((always_inline)) void normals_of_blocks(uint64_t seed, uint64_t offset, uint64_t b0,
                                                                    int64_t nblocks, float* __restrict out) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t o0 = static_cast<uint32_t>(offset), o1 = static_cast<uint32_t>(offset >> 32);
  for (int64_t b = 0; b < nblocks; ++b) {
    const uint64_t blk = b0 + static_cast<uint64_t>(b);
    float n[4];
    math::normal4_from_bits(philox_rounds_widening(static_cast<uint32_t>(blk), static_cast<uint32_t>(blk >> 32), o0,
                                                   o1, k0, k1),
                            n);
    out[4 * b + 0] = n[0];
    out[4 * b + 1] = n[1];
    out[4 * b + 2] = n[2];
    out[4 * b + 3] = n[3];
  }
}

// Buffer length needed for n normals starting at any flat index.
inline int64_t noise_buffer_len(int64_t n) { return n + 8; }

// Fills buf and returns the pointer to the normal of flat index `start` inside it.
static inline __attribute__((always_inline)) const float* normals_of_range(uint64_t seed, uint64_t offset,
                                                                           uint64_t start, int64_t n, float* buf) {
  const uint64_t b0 = start / 4;
  const int64_t nblocks = static_cast<int64_t>((start + static_cast<uint64_t>(n) + 3) / 4 - b0);
  normals_of_blocks(seed, offset, b0, nblocks, buf);
  return buf + (start - 4 * b0);
}

}  // namespace fused_kingma::cpu
