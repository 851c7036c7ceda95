// Software prefetch of a few cache lines, for memory the hardware prefetcher cannot guess (see tensor_prefetch.h).
// No torch header: the per-ISA Adam loops include it.
#pragma once

#include <cstddef>

namespace fused_kingma {

inline void prefetch_line(const char* p) {
#if defined(__x86_64__)
  // As an asm statement: GCC 12 dropped __builtin_prefetch from the Adam op's loops (none were left in the object).
  asm volatile("prefetcht0 %0" : : "m"(*p));
#else
  __builtin_prefetch(p);
#endif
}

inline void prefetch_lines(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (size_t offset = 0; offset < bytes; offset += 64) prefetch_line(c + offset);
}

}  // namespace fused_kingma
