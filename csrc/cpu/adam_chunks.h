// The work of one CPU Adam-family step, cut into chunks (adam_cpu.cpp plans it), and the loops that run a range
// of chunks: one copy per ISA (isa.h), defined in adam_chunks_impl.h and instantiated for one ISA by each
// adam_chunks_<isa>.cpp, so that the three copies compile in parallel. adam_cpu.cpp calls the active ISA's.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/adam_kernel.h"
#include "cpu/isa.h"

namespace fused_kingma::cpu {

// Storage combination of one tensor (param dtype, state dtype, rounding).
enum class AdamFormat : int { F32, F64, F16, BF16, F16Master, BF16Master, BF16Stochastic };

struct AdamChunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

struct AdamPlan {
  std::vector<adam::TensorJob> jobs;
  std::vector<AdamFormat> formats;
  std::vector<AdamChunk> chunks;
  std::vector<int64_t> chunk_start;  // elements before each chunk, over all tensors
  int64_t total = 0;
  adam::Rule rule = adam::Rule::Adam;
  bool ema = false;
  bool unscale = false;
  uint64_t seed = 0;
};

// Runs chunks [chunk_begin, chunk_end) of the plan.
template <class Isa>
void adam_chunks(const AdamPlan& plan, int64_t chunk_begin, int64_t chunk_end);

extern template void adam_chunks<IsaAvx512>(const AdamPlan&, int64_t, int64_t);
extern template void adam_chunks<IsaAvx2>(const AdamPlan&, int64_t, int64_t);
extern template void adam_chunks<IsaBaseline>(const AdamPlan&, int64_t, int64_t);

}  // namespace fused_kingma::cpu
