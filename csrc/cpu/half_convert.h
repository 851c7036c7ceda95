// fp16 <-> fp32 for whole arrays with the F16C instructions (vcvtph2ps / vcvtps2ph: 8 elements per
// instruction on AVX2, 16 on AVX-512).
//
// Why: GCC vectorizes the portable bit-trick conversions of math/float16.h, but they cost about 15 vector
// operations per array per direction, and it does not turn `_Float16` casts into the F16C instructions
// (it converts one element at a time). Used for the fp16 rows of the reparameterization kernels; the Adam loop
// converts a register at a time inside its own loop instead (packet_io.h, whose instructions these loops run).
//
// Same results as math::half_to_float / math::float_to_half_rne (round to nearest even, overflow to inf,
// subnormals exact) for every non-NaN value; a NaN stays a NaN of the same sign (its payload may differ).
#pragma once

#include <cstdint>

#include "isa.h"

namespace fused_kingma::cpu {

// out[i] = float(in[i]) and out[i] = half_rne(in[i]) for i < n, with the instructions of `isa` (the portable
// conversions on the baseline ISA).
void halves_to_floats(Isa isa, const uint16_t* __restrict in, float* __restrict out, int64_t n);
void floats_to_halves(Isa isa, const float* __restrict in, uint16_t* __restrict out, int64_t n);

}  // namespace fused_kingma::cpu
