// The per-ISA loops of the CPU Adam-family step (adam_chunks.h). Included only by the per-ISA files
// adam_chunks_<isa>.cpp, as their first line: each instantiates adam_chunks for its ISA
// (FK_INSTANTIATE_ADAM_CHUNKS).
#pragma once

// No contraction of a * b + c into an fma: torch rounds every product of the Adam step on its own except the ones
// math/adam.h writes as explicit fma. (Once adam_tensor_range folds the usual options to constants, GCC would
// otherwise fuse the decoupled decay `theta * decay_factor` into the final update's add.) Before any include
// (this header comes first in the files that include it), so that every function, the headers' included,
// carries the same option. adam_cpu.cpp, which computes the step's constants, has the same pragma.
#pragma GCC optimize("fp-contract=off")

#include "cpu/adam_chunks.h"
#include "cpu/adam_kernel.h"
#include "cpu/isa.h"
#include "prefetch.h"

namespace fused_kingma::cpu {
namespace adam_detail {

// One function per variant, carrying its ISA's target attribute (overloaded on the ISA tag), rather than every
// variant inlined into one function per ISA: that function held ~500 loop copies, and GCC's time on it grew
// faster than linearly (the ASan + UBSan build took over 25 minutes). One call per chunk.
template <class V>
FK_TARGET_AVX512 __attribute__((noinline)) void run_chunk_on(const AdamPlan& plan, const AdamChunk& ch, IsaAvx512) {
  adam::adam_tensor_range<V>(plan.jobs[ch.tensor], ch.begin, ch.end, plan.seed);
}
template <class V>
FK_TARGET_AVX2 __attribute__((noinline)) void run_chunk_on(const AdamPlan& plan, const AdamChunk& ch, IsaAvx2) {
  adam::adam_tensor_range<V>(plan.jobs[ch.tensor], ch.begin, ch.end, plan.seed);
}
template <class V>
__attribute__((noinline)) void run_chunk_on(const AdamPlan& plan, const AdamChunk& ch, IsaBaseline) {
  adam::adam_tensor_range<V>(plan.jobs[ch.tensor], ch.begin, ch.end, plan.seed);
}

// Runtime options -> compile-time variant (rule x ema x grad write-back).
template <class P, class S, bool kMaster, bool kStochastic, class IsaTag>
FK_INLINE void run_chunk_storage(const AdamPlan& plan, const AdamChunk& ch) {
  using adam::Rule;
  const int code = static_cast<int>(plan.rule) * 4 + (plan.ema ? 2 : 0) + (plan.unscale ? 1 : 0);
#define FK_ADAM_CASE(R, E, U) \
  case static_cast<int>(R) * 4 + (E ? 2 : 0) + (U ? 1 : 0): \
    return run_chunk_on<adam::Variant<P, S, R, kMaster, E, U, kStochastic, IsaTag>>(plan, ch, IsaTag{});
#define FK_ADAM_CASES(R) FK_ADAM_CASE(R, false, false) FK_ADAM_CASE(R, false, true) \
                         FK_ADAM_CASE(R, true, false) FK_ADAM_CASE(R, true, true)
  switch (code) {
    FK_ADAM_CASES(Rule::Adam)
    FK_ADAM_CASES(Rule::AdamAmsgrad)
    FK_ADAM_CASES(Rule::Adamax)
    default: return;
  }
#undef FK_ADAM_CASES
#undef FK_ADAM_CASE
}

// The first lines of each array of a chunk: all of a small tensor's, whose arrays lie apart on the heap where the
// hardware prefetcher cannot guess them (tensor_prefetch.h); a large chunk's are streamed, and followed by it.
inline void prefetch_chunk(const AdamPlan& plan, const AdamChunk& ch) {
  constexpr int64_t kBytes = 256;
  const adam::TensorJob& job = plan.jobs[ch.tensor];
  const AdamFormat f = plan.formats[ch.tensor];
  const int64_t param_size = f == AdamFormat::F32 ? 4 : f == AdamFormat::F64 ? 8 : 2;
  const int64_t state_size = f == AdamFormat::F16Master || f == AdamFormat::BF16Master ? 4 : param_size;
  const int64_t ema_size = param_size == 2 ? 4 : param_size;
  auto ahead = [&](const void* p, int64_t size) {
    if (p != nullptr) prefetch_lines(static_cast<const char*>(p) + ch.begin * size,
                                     static_cast<size_t>(std::min(kBytes, (ch.end - ch.begin) * size)));
  };
  ahead(job.param, param_size);
  ahead(job.grad, param_size);
  ahead(job.first, state_size);
  ahead(job.second, state_size);
  ahead(job.max_second, state_size);
  ahead(job.master, 4);
  ahead(job.ema, ema_size);
}

}  // namespace adam_detail

template <class Isa>
void adam_chunks(const AdamPlan& plan, int64_t chunk_begin, int64_t chunk_end) {
  using namespace adam_detail;
  constexpr int64_t kAhead = 4;  // chunks
  for (int64_t k = chunk_begin; k < chunk_end; ++k) {
    if (k + kAhead < chunk_end) prefetch_chunk(plan, plan.chunks[k + kAhead]);
    const AdamChunk& ch = plan.chunks[k];
    switch (plan.formats[ch.tensor]) {
      case AdamFormat::F32: run_chunk_storage<adam::F32, adam::F32, false, false, Isa>(plan, ch); break;
      case AdamFormat::F64: run_chunk_storage<adam::F64, adam::F64, false, false, Isa>(plan, ch); break;
      case AdamFormat::F16: run_chunk_storage<adam::F16, adam::F16, false, false, Isa>(plan, ch); break;
      case AdamFormat::BF16: run_chunk_storage<adam::BF16, adam::BF16, false, false, Isa>(plan, ch); break;
      case AdamFormat::F16Master: run_chunk_storage<adam::F16, adam::F32, true, false, Isa>(plan, ch); break;
      case AdamFormat::BF16Master: run_chunk_storage<adam::BF16, adam::F32, true, false, Isa>(plan, ch); break;
      case AdamFormat::BF16Stochastic: run_chunk_storage<adam::BF16, adam::BF16, false, true, Isa>(plan, ch); break;
    }
  }
}

}  // namespace fused_kingma::cpu

// The loops of one ISA, in its adam_chunks_<isa>.cpp.
#define FK_INSTANTIATE_ADAM_CHUNKS(Isa)                                                       \
  namespace fused_kingma::cpu {                                                              \
  template void adam_chunks<Isa>(const AdamPlan& plan, int64_t chunk_begin, int64_t chunk_end); \
  }
