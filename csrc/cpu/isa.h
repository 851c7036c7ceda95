// Run-time instruction-set dispatch for the CPU kernels.
//
// The extension is built without -march=native, so the binary assumes only x86-64 baseline
// (SSE2). Hot loops are written once as templates over an `Isa` tag and instantiated three
// times inside functions carrying GCC target attributes (AVX-512, AVX2+FMA, baseline); the
// compiler auto-vectorizes each copy for its ISA. `active_isa()` picks the best one the CPU
// supports once, at first use; FUSED_KINGMA_ISA=avx512|avx2|baseline (or set_isa) forces one,
// which the tests use to check that every copy computes the same numbers.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

namespace fused_kingma::cpu {

enum class Isa : int { Baseline = 0, Avx2 = 1, Avx512 = 2 };

struct IsaBaseline {};
struct IsaAvx2 {};
struct IsaAvx512 {};

// The Isa of a tag (for code templated on the tag that calls something taking the enum).
template <class Tag>
constexpr Isa isa_of() {
  if constexpr (std::is_same_v<Tag, IsaAvx512>) return Isa::Avx512;
  if constexpr (std::is_same_v<Tag, IsaAvx2>) return Isa::Avx2;
  return Isa::Baseline;
}

Isa best_supported_isa();
Isa active_isa();
// Forces an ISA (clamped to what the CPU supports); returns the one now active.
Isa set_active_isa(Isa isa);
const char* isa_name(Isa isa);
Isa isa_from_name(const std::string& name);  // throws on an unknown name

// The active ISA's copy of a function compiled once per ISA (e.g. &fn<IsaAvx512>, &fn<IsaAvx2>, &fn<IsaBaseline>).
template <class Fn>
Fn for_active_isa(Fn avx512, Fn avx2, Fn baseline) {
  switch (active_isa()) {
    case Isa::Avx512: return avx512;
    case Isa::Avx2: return avx2;
    default: return baseline;
  }
}

}  // namespace fused_kingma::cpu

#if defined(__x86_64__) || defined(_M_X64)
#define FK_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,prefer-vector-width=512")))
#define FK_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define FK_TARGET_AVX512
#define FK_TARGET_AVX2
#endif
