// A small cache of freed output blocks for the CPU reparam ops.
//
// A training step frees its z and gradients and allocates the same sizes again next step. glibc returns
// such multi-MB blocks to the kernel (munmap, or a heap trim once several are free at once), so every step
// the kernel must hand out zeroed pages again: ~260 page faults per forward+backward at 4096x256 fp32 and
// ~1600 (32 MB zeroed per tensor) at 65536x128, as much time as the arithmetic at that size. This allocator
// keeps blocks of at least kMinBytes that are freed, up to a byte limit, and gives one back when an output
// of exactly that size is asked for. Like torch's CUDA caching allocator it holds memory the process no
// longer uses; `fused_kingma.empty_cpu_cache()` frees it and FUSED_KINGMA_CPU_CACHE_MB (default 256,
// 0 turns the cache off) bounds it. Outputs made here are ordinary resizable CPU tensors.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>

#include <cstddef>
#include <cstdint>

namespace fused_kingma::cpu {

struct OutputCacheStats {
  int64_t cached_bytes = 0;  // held, free for reuse
  int64_t cached_blocks = 0;
  int64_t hits = 0;    // allocations served from the cache
  int64_t misses = 0;  // allocations of cacheable size that were not
  int64_t limit_bytes = 0;
};

// An uninitialized CPU tensor (contiguous) whose memory comes from the cache when the size is cacheable.
at::Tensor empty_cached_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// Frees every cached block (blocks still in use are freed when their tensors die, as usual).
void empty_output_cache();
OutputCacheStats output_cache_stats();
// Changes the byte limit (evicting the oldest blocks above it); returns the previous one.
int64_t set_output_cache_limit(int64_t bytes);

}  // namespace fused_kingma::cpu
