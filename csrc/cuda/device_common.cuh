// Device helpers shared by the CUDA kernels: storage <-> compute type conversion, 16-byte vector
// loads/stores, deterministic warp/block sums. CUDA headers only (no torch), so nvcc -c compiles
// every .cu without a torch install (.ci/nvcc_check.sh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/launch.h"

namespace fused_kingma::cuda {

// ---- storage type for each Dtype, and the type the math runs in (fp32, fp64 for fp64) ----
template <Dtype D> struct StorageOf;
template <> struct StorageOf<Dtype::f32> { using type = float; };
template <> struct StorageOf<Dtype::f64> { using type = double; };
template <> struct StorageOf<Dtype::f16> { using type = __half; };
template <> struct StorageOf<Dtype::bf16> { using type = __nv_bfloat16; };

template <class T> struct OpMath { using type = float; };
template <> struct OpMath<double> { using type = double; };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ double to_float(double x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Round to nearest even, as torch's .to(dtype) and the CPU kernels (c10::Half / c10::BFloat16) do.
template <class T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ double from_float<double>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <class T> __device__ __forceinline__ T from_double(double x) { return from_float<T>(static_cast<float>(x)); }
template <> __device__ __forceinline__ double from_double<double>(double x) { return x; }

template <class T, class C> __device__ __forceinline__ T store_cast(C x) {
  if constexpr (sizeof(C) == 8) return from_double<T>(x); else return from_float<T>(x);
}

// ---- global memory ----
// A pointer read from device memory (the multi-tensor table) is generic to the compiler, which then emits
// generic LD/ST for every access through it; the assumption places the array in global memory (LDG/STG).
// .ci/kernel_resources.py fails on generic loads and stores in the PTX. Only for a pointer into an allocation
// (never nullptr: the assumption would be false), at the place it is dereferenced.
template <class T> __device__ __forceinline__ T* global_ptr(const void* p) {
  __builtin_assume(__isGlobal(p));
  return static_cast<T*>(const_cast<void*>(p));
}

// ---- kVec consecutive elements: one (or, for fp64, two) 16-byte transactions when aligned ----
constexpr int kVec = 4;

template <class T> struct alignas(sizeof(T) * kVec) VecOf { T v[kVec]; };

template <class T> __device__ __forceinline__ bool vec_aligned(const void* p) {
  return p == nullptr || (reinterpret_cast<uintptr_t>(p) % (sizeof(T) * kVec)) == 0;
}

template <class T> __device__ __forceinline__ void load_vec(T (&dst)[kVec], const T* src) {
  const VecOf<T> v = *reinterpret_cast<const VecOf<T>*>(src);
#pragma unroll
  for (int k = 0; k < kVec; ++k) dst[k] = v.v[k];
}

template <class T> __device__ __forceinline__ void store_vec(T* dst, const T (&src)[kVec]) {
  VecOf<T> v;
#pragma unroll
  for (int k = 0; k < kVec; ++k) v.v[k] = src[k];
  *reinterpret_cast<VecOf<T>*>(dst) = v;
}

// ---- deterministic sums: fixed shuffle tree, fixed shared-memory order, no atomics ----
// Sum over aligned groups of kWidth lanes (a power of 2 up to 32); every lane of the warp must call it.
template <int kWidth = 32, class T> __device__ __forceinline__ T warp_sum(T x) {
  static_assert(kWidth >= 1 && kWidth <= 32 && (kWidth & (kWidth - 1)) == 0, "a power of 2 up to 32");
#pragma unroll
  for (int d = kWidth / 2; d > 0; d >>= 1) x += __shfl_xor_sync(0xffffffffu, x, d);
  return x;
}

// Sum over all threads of a block of kThreads (a multiple of 32); every thread gets the result.
// `scratch` holds kThreads / 32 values. Safe to call repeatedly (it syncs before reusing scratch).
template <int kThreads, class T> __device__ __forceinline__ T block_sum(T x, T* scratch) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block of whole warps");
  constexpr int kWarps = kThreads / 32;
  x = warp_sum(x);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // a previous call's readers are done with scratch
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  T total = lane < kWarps ? scratch[lane] : T(0);
  return warp_sum(total);
}

}  // namespace fused_kingma::cuda
