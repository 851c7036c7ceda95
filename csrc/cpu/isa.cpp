#include "isa.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace fused_kingma::cpu {

Isa best_supported_isa() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  // F16C is part of both copies' targets (half_convert.cpp). Every AVX2 CPU has it, but a hypervisor may hide it.
  const bool fma_f16c = __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && fma_f16c) {
    return Isa::Avx512;
  }
  if (__builtin_cpu_supports("avx2") && fma_f16c) return Isa::Avx2;
#endif
  return Isa::Baseline;
}

static Isa clamp_to_supported(Isa wanted) {
  Isa best = best_supported_isa();
  return static_cast<int>(wanted) > static_cast<int>(best) ? best : wanted;
}

static Isa initial_isa() {
  const char* forced = std::getenv("FUSED_KINGMA_ISA");
  if (forced != nullptr && forced[0] != '\0') return clamp_to_supported(isa_from_name(forced));
  return best_supported_isa();
}

static std::atomic<int>& active_isa_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_isa())};
  return slot;
}

Isa active_isa() { return static_cast<Isa>(active_isa_slot().load(std::memory_order_relaxed)); }

Isa set_active_isa(Isa isa) {
  Isa chosen = clamp_to_supported(isa);
  active_isa_slot().store(static_cast<int>(chosen));
  return chosen;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "baseline";
  }
}

Isa isa_from_name(const std::string& name) {
  if (name == "avx512") return Isa::Avx512;
  if (name == "avx2") return Isa::Avx2;
  if (name == "baseline") return Isa::Baseline;
  throw std::invalid_argument("FUSED_KINGMA_ISA / isa must be one of 'avx512', 'avx2', 'baseline'; got '" +
                              name + "'");
}

}  // namespace fused_kingma::cpu
