// Transparent huge pages for large fresh outputs.
//
// torch's CPU allocator gets large blocks from mmap, so each call's output arrives as untouched 4 KB
// pages and the kernel's first writes pay one page fault per 4 KB: for a 32 MB output that is ~9 ms on a
// VM, several times the kernel itself. Where THP is in "madvise" mode (the common default), asking for
// huge pages on the block's 2 MB-aligned interior turns ~8000 faults into ~16. Advisory only: the
// memory, its contents and its owner are unchanged, and failures are ignored.
#pragma once

#include <cstddef>

namespace fused_kingma::cpu {

// Advises huge pages for [ptr, ptr + bytes) when it spans at least one aligned 2 MB page and is large
// enough to matter; a no-op elsewhere (small blocks, non-Linux).
void advise_huge_pages(void* ptr, size_t bytes);

}  // namespace fused_kingma::cpu
