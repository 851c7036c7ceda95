// Multi-tensor launches: all tensors of a parameter group in one launch (or a few, when the table
// travels as kernel parameters). Block b handles chunk b of the launch: the row whose
// [chunk_begin, next chunk_begin) holds b, elements [c * kChunk, min(numel, (c + 1) * kChunk)).
#pragma once

#include <cstdint>

#include "cuda/device_common.cuh"
#include "cuda/launch.h"

namespace fused_kingma::cuda {

constexpr int kMultiTensorThreads = 256;  // ~80 registers (fp32): 3 blocks per SM

// Rows passed by value, for launches made while a CUDA graph is captured (the graph keeps the
// parameters; a host buffer might be reused before a replay).
struct RowBatch {
  TensorRow rows[kRowsPerParamLaunch];
  int32_t n;
};
static_assert(sizeof(RowBatch) + 256 <= 4096, "kernel parameters must stay under 4 KiB with the op's arguments");

// The row holding chunk `chunk`: the last row whose chunk_begin <= chunk (empty rows never win,
// as the row after an empty one has the same chunk_begin). Thread 0 searches, the block shares it.
__device__ __forceinline__ int64_t find_row(const TensorRow* rows, int64_t n_rows, int64_t chunk) {
  __shared__ int64_t found;
  if (threadIdx.x == 0) {
    int64_t lo = 0, hi = n_rows - 1;  // invariant: rows[lo].chunk_begin <= chunk
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      if (rows[mid].chunk_begin <= chunk) lo = mid; else hi = mid - 1;
    }
    found = lo;
  }
  __syncthreads();
  return found;
}

// Element range of this block's chunk in its row.
struct ChunkRange {
  int64_t begin, end;
};

__device__ __forceinline__ ChunkRange chunk_range(const TensorRow& row, int64_t chunk) {
  const int64_t begin = (chunk - row.chunk_begin) * kChunk;
  const int64_t end = begin + kChunk < row.numel ? begin + kChunk : row.numel;
  return {begin, end};
}

}  // namespace fused_kingma::cuda
