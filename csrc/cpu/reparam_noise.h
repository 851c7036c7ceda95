// The noise of a flat index range [start, start + n): Philox words of a chunk of blocks first (SoA,
// AVX-512 or AVX2 intrinsics where available), then Box-Muller over them, auto-vectorized, into a buffer the
// kernels read in element order.
#pragma once

#include <algorithm>
#include <cstdint>

#include "isa.h"
#include "math/normal.h"
#include "math/philox.h"
#include "philox_simd.h"

namespace fused_kingma::cpu {

// math::philox4x32_10 written with one 32x32->64 widening multiply per product (lo and hi from the same
// product): the same words, and the form the baseline copy vectorizes best.
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

// Blocks per pass: the words of one pass (4 x 256 B) stay in L1. A multiple of 16 (the AVX-512 group).
constexpr int64_t kNoiseChunkBlocks = 64;

// Words of blocks b0 .. b0 + n - 1 (n <= kNoiseChunkBlocks) into w[m][0 .. n). The intrinsic paths fill
// whole groups of 16, so w[m] must hold kNoiseChunkBlocks words.
template <class Isa>
static inline __attribute__((always_inline)) void philox_words(uint64_t seed, uint64_t offset, uint64_t b0, int64_t n,
                                                               uint32_t (*__restrict w)[kNoiseChunkBlocks]) {
  if (philox_words_simd(isa_of<Isa>(), seed, offset, b0, n, w[0], w[1], w[2], w[3])) return;
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t o0 = static_cast<uint32_t>(offset), o1 = static_cast<uint32_t>(offset >> 32);
  for (int64_t b = 0; b < n; ++b) {
    const uint64_t blk = b0 + static_cast<uint64_t>(b);
    const math::Philox4x32 r =
        philox_rounds_widening(static_cast<uint32_t>(blk), static_cast<uint32_t>(blk >> 32), o0, o1, k0, k1);
    w[0][b] = r.v[0];
    w[1][b] = r.v[1];
    w[2][b] = r.v[2];
    w[3][b] = r.v[3];
  }
}

// Memory the caller reads or writes next (the following tile of rows), touched while the noise of this tile
// is computed: generating normals is pure arithmetic, so without this the loads and the write-allocate of the
// next tile would wait until the arithmetic is done instead of overlapping with it. Up to kMaxStreams ranges;
// each noise chunk prefetches its share of every range, one cache line at a time.
struct PrefetchPlan {
  static constexpr int kMaxStreams = 6;
  const char* begin[kMaxStreams] = {};
  int64_t bytes[kMaxStreams] = {};
  bool write[kMaxStreams] = {};
  int streams = 0;

  void add(const void* p, int64_t nbytes, bool for_write) {
    if (p == nullptr || nbytes <= 0 || streams == kMaxStreams) return;
    begin[streams] = static_cast<const char*>(p);
    bytes[streams] = nbytes;
    write[streams] = for_write;
    ++streams;
  }

  // Prefetches part `part` of `parts` of every range (into L2: the next tile is used after this one).
  inline __attribute__((always_inline)) void touch(int64_t part, int64_t parts) const {
    constexpr int64_t kLine = 64;
    for (int i = 0; i < streams; ++i) {
      const int64_t lo = bytes[i] * part / parts, hi = bytes[i] * (part + 1) / parts;
      for (int64_t b = lo - lo % kLine; b < hi; b += kLine) {
        if (write[i]) __builtin_prefetch(begin[i] + b, 1, 2);
        else __builtin_prefetch(begin[i] + b, 0, 2);
      }
    }
  }
};

// Normals of blocks b0 .. b0 + nblocks - 1 into out[0 .. 4*nblocks), in element order; prefetches `next`
// along the way.
template <class Isa>
static inline __attribute__((always_inline)) void normals_of_blocks(uint64_t seed, uint64_t offset, uint64_t b0,
                                                                    int64_t nblocks, float* __restrict out,
                                                                    const PrefetchPlan& next = PrefetchPlan{}) {
  alignas(64) uint32_t w[4][kNoiseChunkBlocks];
  const int64_t chunks = (nblocks + kNoiseChunkBlocks - 1) / kNoiseChunkBlocks;
  for (int64_t s = 0, chunk = 0; s < nblocks; s += kNoiseChunkBlocks, ++chunk) {
    const int64_t n = std::min(kNoiseChunkBlocks, nblocks - s);
    next.touch(chunk, chunks);
    philox_words<Isa>(seed, offset, b0 + static_cast<uint64_t>(s), n, w);
    float* __restrict o = out + 4 * s;
    for (int64_t b = 0; b < n; ++b) {
      float n0, n1, n2, n3;
      math::box_muller(math::uniform_from_bits(w[0][b]), math::uniform_from_bits(w[1][b]), &n0, &n1);
      math::box_muller(math::uniform_from_bits(w[2][b]), math::uniform_from_bits(w[3][b]), &n2, &n3);
      o[4 * b + 0] = n0;
      o[4 * b + 1] = n1;
      o[4 * b + 2] = n2;
      o[4 * b + 3] = n3;
    }
  }
}

// Buffer length needed for n normals starting at any flat index.
inline int64_t noise_buffer_len(int64_t n) { return n + 8; }

// Fills buf and returns the pointer to the normal of flat index `start` inside it.
template <class Isa>
static inline __attribute__((always_inline)) const float* normals_of_range(uint64_t seed, uint64_t offset,
                                                                           uint64_t start, int64_t n, float* buf,
                                                                           const PrefetchPlan& next = PrefetchPlan{}) {
  const uint64_t b0 = start / 4;
  const int64_t nblocks = static_cast<int64_t>((start + static_cast<uint64_t>(n) + 3) / 4 - b0);
  normals_of_blocks<Isa>(seed, offset, b0, nblocks, buf, next);
  return buf + (start - 4 * b0);
}

}  // namespace fused_kingma::cpu
