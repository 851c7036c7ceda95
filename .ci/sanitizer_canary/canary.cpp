// Deliberately buggy code for .ci/sanitizer_selfcheck.sh: built with the extension's sanitizer flags and
// called from Python, each bug must stop the process with a sanitizer report. The sizes and values come
// from the caller, so the compiler cannot see (and fold away) the bug at -O3.
#include <cstdint>

extern "C" {

// Correct code: must run clean, so the check also fails if the sanitizers report everything.
int64_t canary_ok(int64_t n) {
  int64_t* a = new int64_t[n];
  for (int64_t i = 0; i < n; ++i) a[i] = i;
  const int64_t last = a[n - 1];
  delete[] a;
  return last;
}

// Heap buffer overflow: writes one element past the end (AddressSanitizer).
int64_t canary_heap_overflow(int64_t n) {
  int64_t* a = new int64_t[n];
  for (int64_t i = 0; i <= n; ++i) a[i] = i;
  const int64_t last = a[n - 1];
  delete[] a;
  return last;
}

// Signed integer overflow, undefined behaviour (UBSan; only caught without -fwrapv).
int32_t canary_signed_overflow(int32_t x, int32_t y) { return x + y; }

}  // extern "C"
