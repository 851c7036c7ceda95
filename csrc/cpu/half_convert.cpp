// F16C conversions of half_convert.h: one function per ISA carrying its target, a portable tail.
#include "half_convert.h"

#include "math/float16.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define FK_HAVE_F16C 1
// GCC 12's AVX-512 conversion intrinsics start from `_mm256_undefined_si256()` / `_mm512_undefined_ps()`
// (deliberately uninitialized) and then warn about it.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fused_kingma::cpu {
namespace {

void halves_to_floats_portable(const uint16_t* __restrict in, float* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = math::half_to_float(in[i]);
}

void floats_to_halves_portable(const float* __restrict in, uint16_t* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = math::float_to_half_rne(in[i]);
}

#if defined(FK_HAVE_F16C)
constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

FK_TARGET_AVX512 void halves_to_floats_avx512(const uint16_t* __restrict in, float* __restrict out, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i))));
  halves_to_floats_portable(in + i, out + i, n - i);
}

FK_TARGET_AVX512 void floats_to_halves_avx512(const float* __restrict in, uint16_t* __restrict out, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm512_cvtps_ph(_mm512_loadu_ps(in + i), kNearest));
  floats_to_halves_portable(in + i, out + i, n - i);
}

FK_TARGET_AVX2 void halves_to_floats_avx2(const uint16_t* __restrict in, float* __restrict out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
  halves_to_floats_portable(in + i, out + i, n - i);
}

FK_TARGET_AVX2 void floats_to_halves_avx2(const float* __restrict in, uint16_t* __restrict out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(in + i), kNearest));
  floats_to_halves_portable(in + i, out + i, n - i);
}
#endif

}  // namespace

void halves_to_floats(Isa isa, const uint16_t* __restrict in, float* __restrict out, int64_t n) {
#if defined(FK_HAVE_F16C)
  if (isa == Isa::Avx512) return halves_to_floats_avx512(in, out, n);
  if (isa == Isa::Avx2) return halves_to_floats_avx2(in, out, n);
#endif
  (void)isa;
  halves_to_floats_portable(in, out, n);
}

void floats_to_halves(Isa isa, const float* __restrict in, uint16_t* __restrict out, int64_t n) {
#if defined(FK_HAVE_F16C)
  if (isa == Isa::Avx512) return floats_to_halves_avx512(in, out, n);
  if (isa == Isa::Avx2) return floats_to_halves_avx2(in, out, n);
#endif
  (void)isa;
  floats_to_halves_portable(in, out, n);
}

}  // namespace fused_kingma::cpu
