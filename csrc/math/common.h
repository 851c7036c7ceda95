// Portability macros shared by every csrc/math header. No torch includes here:
// these headers are compiled by g++ for the CPU kernels and by nvcc for the CUDA ones.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FK_HOST_DEVICE __host__ __device__
#define FK_INLINE __forceinline__
#else
#define FK_HOST_DEVICE
#define FK_INLINE inline __attribute__((always_inline))
#endif

#define FK_FN FK_HOST_DEVICE FK_INLINE
