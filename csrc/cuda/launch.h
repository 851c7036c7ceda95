// The CUDA kernels' host interface: plain structs of device pointers and sizes, and launchers that
// take a cudaStream_t. No torch here: csrc/cuda/*.cu include this and compile with nvcc alone, and
// the torch glue (csrc/cuda_glue/*.cpp) fills these structs from tensors.
// Launchers return the cudaError_t of their launch (cudaSuccess when there was nothing to do).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fused_kingma::cuda {

enum class Dtype : int32_t { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

// =====================================================================================
// Multi-tensor table: one row per parameter tensor. A launch covers all rows; each block
// handles one chunk of kChunk elements of one tensor, found by binary search over chunk_begin.
// =====================================================================================
constexpr int kMaxSlots = 7;           // arrays per tensor (param, grad, state, ...)
constexpr int64_t kChunk = 1 << 16;    // elements per block (a multiple of the vector width)

struct TensorRow {
  void* ptr[kMaxSlots];   // device pointers, nullptr for an absent slot; all of one row have `numel` elements
  const float* step;      // this tensor's step counter on the device (capturable), or nullptr
  int64_t numel;
  int64_t chunk_begin;    // first chunk of this row in the launch; set by number_chunks()
};

// Numbers the chunks of rows[0..n) (chunk_begin) and returns how many there are in all.
inline int64_t number_chunks(TensorRow* rows, int64_t n) {
  int64_t chunks = 0;
  for (int64_t i = 0; i < n; ++i) {
    rows[i].chunk_begin = chunks;
    chunks += (rows[i].numel + kChunk - 1) / kChunk;
  }
  return chunks;
}

// How many rows one launch takes when the table travels as a kernel parameter (4 KiB limit).
constexpr int kRowsPerParamLaunch = 36;

// =====================================================================================
// Adam family
// =====================================================================================
enum AdamSlot : int { kParam = 0, kGrad, kExpAvg, kExpAvgSq, kMaxExpAvgSq, kMaster, kEma };
enum class AdamVariant : int32_t { adam = 0, adamax = 1 };

struct AdamArgs {
  Dtype param_dtype;        // param (and grad) storage; fp32 master weights in kMaster when present
  Dtype state_dtype;        // exp_avg, exp_avg_sq, max_exp_avg_sq, ema
  AdamVariant variant;
  bool amsgrad, maximize, decoupled_weight_decay, stochastic_rounding;
  double lr, beta1, beta2, eps, weight_decay, ema_decay;
  double step;              // used when a row's step pointer is null (step already incremented)
  const float* lr_ptr;      // device lr (capturable / tensor lr), or nullptr -> lr
  const float* grad_scale;  // GradScaler: grads are divided by *grad_scale (written back unscaled), or nullptr
  const float* found_inf;   // GradScaler: the whole step is skipped when *found_inf != 0, or nullptr
  const int64_t* sr_seed_offset;  // stochastic rounding noise (seed, offset) on the device, or nullptr
};

// One step over every row. With `device_rows` (a copy of `host_rows` in device memory, after
// number_chunks) it is one launch; with device_rows == nullptr (e.g. while a CUDA graph is being
// captured, when a host buffer could be reused before a replay) the rows travel as kernel
// parameters, kRowsPerParamLaunch per launch.
cudaError_t adam_step(const AdamArgs& args, const TensorRow* host_rows, const TensorRow* device_rows, int64_t n_rows,
                      int64_t n_chunks, cudaStream_t stream);

// =====================================================================================
// Reparameterization + Gaussian KL. Tensors are contiguous; mu and logvar are (rows, dim);
// z is (num_samples, rows, dim); the prior, when present, is expanded to (rows, dim) by the glue.
// Noise of z's flat element i per README "How the noise is defined", (seed, offset) read on the
// device from seed_offset[0], seed_offset[1] (so a captured graph draws fresh noise on replay).
// Per-row sums run in fp32 (fp64 for fp64) in a fixed order: deterministic, no atomics.
// =====================================================================================
struct ReparamForwardArgs {
  Dtype dtype;
  const void* mu;
  const void* logvar;
  const void* prior_mu;      // nullptr: N(0, I)
  const void* prior_logvar;  // nullptr with prior_mu
  const int64_t* seed_offset;
  void* z;                   // (num_samples, rows, dim)
  void* kl;                  // (rows,) or nullptr
  void* kl_elem;             // (rows, dim) per-element KL (free bits needs it), or nullptr
  void* log_q;               // (num_samples, rows) or nullptr
  void* log_p;               // (num_samples, rows) or nullptr
  int64_t rows, dim, num_samples;
};

struct ReparamBackwardArgs {
  Dtype dtype;
  const void* mu;
  const void* logvar;
  const void* prior_mu;
  const void* prior_logvar;
  const int64_t* seed_offset;
  const void* grad_z;        // (num_samples, rows, dim) or nullptr (zero)
  const void* grad_kl;       // (rows,) or nullptr
  const void* grad_kl_elem;  // (rows, dim) or nullptr
  const void* grad_log_q;    // (num_samples, rows) or nullptr
  const void* grad_log_p;    // (num_samples, rows) or nullptr
  void* grad_mu;             // (rows, dim)
  void* grad_logvar;         // (rows, dim)
  int64_t rows, dim, num_samples;
};

cudaError_t reparam_forward(const ReparamForwardArgs& args, cudaStream_t stream);
cudaError_t reparam_backward(const ReparamBackwardArgs& args, cudaStream_t stream);

// The noise alone, for tests and users who want it: out[i] = uniform (or standard normal) number i
// of (seed, offset), i in [0, n), fp32.
cudaError_t philox_uniform(float* out, int64_t n, const int64_t* seed_offset, cudaStream_t stream);
cudaError_t philox_normal(float* out, int64_t n, const int64_t* seed_offset, cudaStream_t stream);

}  // namespace fused_kingma::cuda
