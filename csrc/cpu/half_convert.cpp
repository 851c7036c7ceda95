// F16C conversions of half_convert.h: one function per ISA carrying its target, a portable tail.
#include "half_convert.h"

#include "math/float16.h"

#include "packet_io.h"

namespace fused_kingma::cpu {
namespace {

void halves_to_floats_portable(const uint16_t* __restrict in, float* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = math::half_to_float(in[i]);
}

void floats_to_halves_portable(const float* __restrict in, uint16_t* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = math::float_to_half_rne(in[i]);
}

#if defined(FK_HAVE_PACKET_IO)
// Whole vector registers with the ISA's F16C instructions (packet_io.h), the rest with the portable code.
template <class IO>
FK_INLINE void halves_to_floats_packets(const uint16_t* __restrict in, float* __restrict out, int64_t n) {
  int64_t i = 0;
  for (; i + IO::kLanes <= n; i += IO::kLanes) IO::widen(in + i, out + i);
  halves_to_floats_portable(in + i, out + i, n - i);
}

template <class IO>
FK_INLINE void floats_to_halves_packets(const float* __restrict in, uint16_t* __restrict out, int64_t n) {
  int64_t i = 0;
  for (; i + IO::kLanes <= n; i += IO::kLanes) IO::narrow(in + i, out + i);
  floats_to_halves_portable(in + i, out + i, n - i);
}

FK_TARGET_AVX512 void halves_to_floats_avx512(const uint16_t* __restrict in, float* __restrict out, int64_t n) {
  halves_to_floats_packets<PacketIO<IsaAvx512, Half16>>(in, out, n);
}
FK_TARGET_AVX512 void floats_to_halves_avx512(const float* __restrict in, uint16_t* __restrict out, int64_t n) {
  floats_to_halves_packets<PacketIO<IsaAvx512, Half16>>(in, out, n);
}
FK_TARGET_AVX2 void halves_to_floats_avx2(const uint16_t* __restrict in, float* __restrict out, int64_t n) {
  halves_to_floats_packets<PacketIO<IsaAvx2, Half16>>(in, out, n);
}
FK_TARGET_AVX2 void floats_to_halves_avx2(const float* __restrict in, uint16_t* __restrict out, int64_t n) {
  floats_to_halves_packets<PacketIO<IsaAvx2, Half16>>(in, out, n);
}
#endif

}  // namespace

void halves_to_floats(Isa isa, const uint16_t* __restrict in, float* __restrict out, int64_t n) {
#if defined(FK_HAVE_PACKET_IO)
  if (isa == Isa::Avx512) return halves_to_floats_avx512(in, out, n);
  if (isa == Isa::Avx2) return halves_to_floats_avx2(in, out, n);
#endif
  (void)isa;
  halves_to_floats_portable(in, out, n);
}

void floats_to_halves(Isa isa, const float* __restrict in, uint16_t* __restrict out, int64_t n) {
#if defined(FK_HAVE_PACKET_IO)
  if (isa == Isa::Avx512) return floats_to_halves_avx512(in, out, n);
  if (isa == Isa::Avx2) return floats_to_halves_avx2(in, out, n);
#endif
  (void)isa;
  floats_to_halves_portable(in, out, n);
}

}  // namespace fused_kingma::cpu
