// Shared pieces of the torch <-> CUDA glue: dtype mapping, messages, launch error checks, and
// moving a small host table to the device. Compiled only in a CUDA build (FK_WITH_CUDA);
// .ci/glue_check.sh type-checks it without one.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/launch.h"
#include "tensor_checks.h"

namespace fused_kingma::cuda_glue {

inline cuda::Dtype kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::Dtype::f32;
    case at::kDouble: return cuda::Dtype::f64;
    case at::kHalf: return cuda::Dtype::f16;
    case at::kBFloat16: return cuda::Dtype::bf16;
    default: TORCH_CHECK_TYPE(false, "fused_kingma CUDA kernels take float32/float64/float16/bfloat16, got ", dtype_str(t));
  }
}

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "fused_kingma::", op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

// True while `stream` is being captured into a CUDA graph: host buffers must not feed the graph
// then (a replay would read them after they were reused).
inline bool is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaError_t err = cudaStreamIsCapturing(stream, &status);
  TORCH_CHECK(err == cudaSuccess, "cudaStreamIsCapturing failed: ", cudaGetErrorString(err));
  return status != cudaStreamCaptureStatusNone;
}

// A copy of `rows` in device memory, through a pinned host buffer. torch's non-blocking copy
// from pinned memory records an event, so the host buffer is not reused before the copy ran;
// the device buffer is stream-ordered by the caching allocator. Keep the returned tensor alive
// until the launch that reads it is enqueued.
template <class Row>
at::Tensor rows_on_device(const std::vector<Row>& rows, const at::Device& device) {
  const int64_t bytes = static_cast<int64_t>(rows.size() * sizeof(Row));
  at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), rows.data(), static_cast<size_t>(bytes));
  return host.to(device, /*non_blocking=*/true);
}

}  // namespace fused_kingma::cuda_glue
