// The noise stream alone on the GPU, the CUDA twin of the philox_debug op (tests compare the two):
// number i of (seed, offset) for i in [0, n), uniform or standard normal. The same csrc/math code as
// the CPU, so the uniforms match the CPU's bit for bit and the normals to float rounding.
#include "cuda/device_common.cuh"
#include "cuda/launch.h"
#include "math/normal.h"
#include "math/philox.h"

namespace fused_kingma::cuda {
namespace {

constexpr int kThreads = 256;

template <bool kNormal>
__global__ void __launch_bounds__(kThreads) noise_kernel(float* __restrict__ out, int64_t n,
                                                         const int64_t* __restrict__ seed_offset) {
  const uint64_t seed = static_cast<uint64_t>(seed_offset[0]);
  const uint64_t offset = static_cast<uint64_t>(seed_offset[1]);
  const int64_t blocks4 = (n + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; b < blocks4; b += stride) {
    const math::Philox4x32 bits = math::philox_block(seed, offset, static_cast<uint64_t>(b));
    float v[4];
    if constexpr (kNormal) {
      math::normal4_from_bits(bits, v);
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) v[k] = math::uniform_from_bits(bits.v[k]);
    }
    const int64_t i0 = 4 * b;
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (i0 + k < n) out[i0 + k] = v[k];
  }
}

}  // namespace

cudaError_t philox_noise(float* out, int64_t n, int kind, const int64_t* seed_offset, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (kind != 1 && kind != 2) return cudaErrorInvalidValue;
  const int64_t grid = ((n + 3) / 4 + kThreads - 1) / kThreads;
  const unsigned g = static_cast<unsigned>(grid < (int64_t{1} << 19) ? grid : (int64_t{1} << 19));  // grid-stride beyond
  if (kind == 2) {
    noise_kernel<true><<<g, kThreads, 0, stream>>>(out, n, seed_offset);
  } else {
    noise_kernel<false><<<g, kThreads, 0, stream>>>(out, n, seed_offset);
  }
  return cudaGetLastError();
}

}  // namespace fused_kingma::cuda
