// A CPU emulation of the little of CUDA that csrc/cuda/reparam.cu uses, so its kernels' index math,
// noise indexing and reductions can be run and compared with the CPU op on a machine without a GPU
// (tests/test_cuda_emulated.py). Blocks run one after another; the threads of a block are std::threads;
// __syncthreads is a block barrier and __shfl_xor_sync exchanges through per-warp slots between two warp
// barriers. Host semantics for the math (no FMA contraction, the CPU's exp/log): parity with the CPU op
// proves the kernels' structure, not the GPU's rounding.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

namespace emu {
struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local Dim3 thread_idx, block_idx;
inline Dim3 grid_dim, block_dim;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
alignas(16) inline unsigned char warp_slots[32][32 * 16];  // per warp: 32 lanes x up to 16 bytes

// Runs kernel(args...) on grid x block threads: `block` std::threads run every block in turn, with a barrier
// between blocks (so the static "shared memory" of one block is not reused while it is read).
template <class Kernel, class... Args>
void launch(unsigned grid, unsigned block, Kernel kernel, const Args&... args) {
  grid_dim = {grid, 1, 1};
  block_dim = {block, 1, 1};
  std::barrier<> sync_threads(block), block_done(block);
  block_barrier = &sync_threads;
  warp_barriers.clear();
  for (unsigned w = 0; w < (block + 31) / 32; ++w) warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < block; ++t)
    threads.emplace_back([&, t] {
      thread_idx = {t, 0, 0};
      for (unsigned b = 0; b < grid; ++b) {
        block_idx = {b, 0, 0};
        kernel(args...);
        block_done.arrive_and_wait();
      }
    });
  for (auto& th : threads) th.join();
}
}  // namespace emu

#undef threadIdx
#define threadIdx emu::thread_idx
#undef blockIdx
#define blockIdx emu::block_idx
#undef gridDim
#define gridDim emu::grid_dim
#undef blockDim
#define blockDim emu::block_dim
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __host__
#define __host__
#undef __forceinline__
#define __forceinline__ inline
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __grid_constant__
#define __grid_constant__
#undef __shared__
#define __shared__ static  // blocks run one at a time, so one static copy is the block's shared memory
#undef __restrict__
#define __restrict__ __restrict
#undef cudaGetLastError
#define cudaGetLastError() cudaSuccess

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

template <class T>
T __shfl_xor_sync(unsigned, T x, int lane_mask) {
  static_assert(sizeof(T) <= 16, "slot size");
  const unsigned lane = emu::thread_idx.x % 32, warp = emu::thread_idx.x / 32;
  T* slots = reinterpret_cast<T*>(emu::warp_slots[warp]);
  slots[lane] = x;
  emu::warp_barriers[warp]->arrive_and_wait();
  const T v = slots[lane ^ static_cast<unsigned>(lane_mask)];
  emu::warp_barriers[warp]->arrive_and_wait();
  return v;
}

// Every emulated array is host memory standing in for global memory; nullptr is in none.
inline unsigned __isGlobal(const void* p) { return p != nullptr; }
// A false __builtin_assume is undefined behaviour on the GPU; here it stops the program.
namespace emu {
[[noreturn]] inline void assumption_failed(const char* cond, const char* file, int line) {
  std::fprintf(stderr, "%s:%d: __builtin_assume(%s) is false\n", file, line, cond);
  std::abort();
}
}  // namespace emu
#define __builtin_assume(cond) ((cond) ? (void)0 : emu::assumption_failed(#cond, __FILE__, __LINE__))
