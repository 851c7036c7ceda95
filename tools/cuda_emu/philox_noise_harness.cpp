// C entry point over the emulated CUDA noise kernel (csrc/cuda/philox_noise.cu, see emu.h), for
// tests/test_cuda_emulated.py.
#include "emu.h"
#include "philox_noise_emu.cu"

extern "C" int emu_philox_noise(float* out, int64_t n, int kind, const int64_t* seed_offset) {
  return static_cast<int>(fused_kingma::cuda::philox_noise(out, n, kind, seed_offset, nullptr));
}
