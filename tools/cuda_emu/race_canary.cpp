// Proves that ThreadSanitizer over the CUDA emulation (.ci/racecheck_emu.sh) sees a missing __syncthreads: the
// shared-memory block sum of csrc/cuda/device_common.cuh called back to back (clean), and a planted copy of it
// without the barrier that guards the scratch's reuse (a race: a warp's lane 0 overwrites its slot while another
// warp still reads the previous sum's).
//   race_canary clean | racy    prints the sums; under TSan, `racy` must be reported
#include "emu.h"

#include <cstdio>
#include <cstring>

#include "cuda/device_common.cuh"

namespace {

// Two warps, and 8-byte values: each scratch slot has its own 8-byte shadow cell with few accesses, so TSan keeps
// the history the race needs (with 4 warps of float it missed the race now and then).
constexpr int kThreads = 64;
constexpr int kLaunches = 8;
double sums[kThreads * 2];

template <int kThreads_, class T> T block_sum_without_reuse_barrier(T x, T* scratch) {
  constexpr int kWarps = kThreads_ / 32;
  x = fused_kingma::cuda::warp_sum(x);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = x;  // planted bug: no __syncthreads() before this write
  __syncthreads();
  T total = lane < kWarps ? scratch[lane] : T(0);
  return fused_kingma::cuda::warp_sum(total);
}

template <bool kRacy> void two_sums_kernel() {
  __shared__ double scratch[kThreads / 32];
  const double x = threadIdx.x;
  for (int k = 0; k < 2; ++k) {
    const double s = kRacy ? block_sum_without_reuse_barrier<kThreads>(x + k, scratch)
                           : fused_kingma::cuda::block_sum<kThreads>(x + k, scratch);
    sums[k * kThreads + threadIdx.x] = s;
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool racy = argc > 1 && std::strcmp(argv[1], "racy") == 0;
  for (int launch = 0; launch < kLaunches; ++launch)
    emu::launch(1, kThreads, racy ? two_sums_kernel<true> : two_sums_kernel<false>);
  std::printf("%s: sums %g %g (want %d %d)\n", racy ? "racy" : "clean", sums[0], sums[kThreads],
              kThreads * (kThreads - 1) / 2, kThreads * (kThreads - 1) / 2 + kThreads);
  return 0;
}
