// The noise of a flat index range [start, start + n), generated block-wise into a buffer so the
// Philox rounds and the Box-Muller transcendentals vectorize (one block = 4 lanes' worth of work).
#pragma once

#include <cstdint>

#include "math/normal.h"
#include "math/philox.h"

namespace fused_kingma::cpu {

// Normals of blocks b0 .. b0 + nblocks - 1 into out[0 .. 4*nblocks): vectorized over blocks.
static inline __attribute__((always_inline)) void normals_of_blocks(uint64_t seed, uint64_t offset, uint64_t b0,
                                                                    int64_t nblocks, float* __restrict out) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t o0 = static_cast<uint32_t>(offset), o1 = static_cast<uint32_t>(offset >> 32);
  for (int64_t b = 0; b < nblocks; ++b) {
    const uint64_t blk = b0 + static_cast<uint64_t>(b);
    const math::Philox4x32 ctr{{static_cast<uint32_t>(blk), static_cast<uint32_t>(blk >> 32), o0, o1}};
    float n[4];
    math::normal4_from_bits(math::philox4x32_10(ctr, k0, k1), n);
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
