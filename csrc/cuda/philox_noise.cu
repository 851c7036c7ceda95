// The noise stream alone on the GPU (fused_kingma::philox_uniform / philox_normal): number i of
// (seed, offset) for i in [0, n). The same csrc/math code as the CPU, so the uniforms match the
// CPU's bit for bit; tests compare the two.
#include "cuda/device_common.cuh"
#include "cuda/launch.h"
#include "cuda/math_bridge.cuh"
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
      math::normals_from_bits(bits, v);
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) v[k] = math::uniform_from_bits(bits.v[k]);
    }
    const int64_t i0 = 4 * b;
    if (i0 + 4 <= n && (reinterpret_cast<uintptr_t>(out) % 16) == 0) {
      *reinterpret_cast<float4*>(out + i0) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k)
        if (i0 + k < n) out[i0 + k] = v[k];
    }
  }
}

template <bool kNormal>
cudaError_t launch_noise(float* out, int64_t n, const int64_t* seed_offset, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const int64_t blocks4 = (n + 3) / 4;
  const int64_t grid = (blocks4 + kThreads - 1) / kThreads;
  const unsigned g = static_cast<unsigned>(grid < 65536 * 8 ? grid : 65536 * 8);  // grid-stride beyond that
  noise_kernel<kNormal><<<g, kThreads, 0, stream>>>(out, n, seed_offset);
  return cudaGetLastError();
}

}  // namespace

cudaError_t philox_uniform(float* out, int64_t n, const int64_t* seed_offset, cudaStream_t stream) {
  return launch_noise<false>(out, n, seed_offset, stream);
}

cudaError_t philox_normal(float* out, int64_t n, const int64_t* seed_offset, cudaStream_t stream) {
  return launch_noise<true>(out, n, seed_offset, stream);
}

}  // namespace fused_kingma::cuda
