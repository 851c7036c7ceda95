// The CUDA kernels' host interface: plain structs of device pointers and sizes, and launchers that
// take a cudaStream_t. No torch here: csrc/cuda/*.cu include this and compile with nvcc alone, and
// the torch glue (csrc/cuda_glue/*.cpp) fills these structs from tensors.
// Launchers return the cudaError_t of their launch (cudaSuccess when there was nothing to do).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <unordered_set>

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
  void* step;             // this tensor's step counter on the device (float or double), or nullptr
  bool increments_step;   // this row's thread increments `step` (the first row of each counter: StepOwners)
  double step_value;      // the (already incremented) step when `step` is nullptr
  int64_t list_index;     // position in the op's tensor lists (stochastic rounding counter)
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

// Which row increments each device step counter: the first one to be launched with it. A counter passed for
// several tensors (torch never does) is then incremented once, by one thread, before any of their updates, which
// all read the same new value, as with the CPU op's host counters (host_steps.h); two threads incrementing it
// would race.
class StepOwners {
 public:
  bool first(const void* step) { return step != nullptr && seen_.insert(step).second; }

 private:
  std::unordered_set<const void*> seen_;
};

// How many rows one launch takes when the table travels as a kernel parameter (4 KiB limit).
constexpr int kRowsPerParamLaunch = 32;

// =====================================================================================
// Adam family: the rule of csrc/math/adam.h, element for element as csrc/cpu/adam_kernel.h
// (adam_range) applies it, so CUDA and CPU agree to rounding.
// =====================================================================================
enum AdamSlot : int { kParam = 0, kGrad, kExpAvg, kSecond, kMaxSecond, kMaster, kEma };
enum class AdamRule : int32_t { adam = 0, adam_amsgrad = 1, adamax = 2 };

// Storage of one launch's rows: param (= grad) dtype, state dtype (exp_avg, second moments),
// ema dtype; master rows have an fp32 master copy (and fp32 state).
struct AdamFormat {
  Dtype param, state, ema;
  bool master;
  bool stochastic_rounding;  // bf16 params rounded stochastically (no master)
};

struct AdamArgs {
  AdamFormat format;
  AdamRule rule;
  bool maximize;
  bool l2;                   // weight decay added to the grad (Adam without decoupled decay; Adamax)
  bool decoupled;            // param *= 1 - lr * weight_decay first (AdamW)
  bool ema;
  bool step_f64;             // device step counters are float64 (else float32)
  bool lr_is_fp32_tensor;    // lr came from a float32 tensor (torch then computes the step size in float32)
  double lr, beta1, beta2, eps, weight_decay, ema_decay;
  const double* lr_device;   // capturable lr: read on the device instead of `lr` (a replay sees its value), or nullptr
  uint64_t sr_seed;          // stochastic rounding Philox key
  const float* grad_scale;   // GradScaler: grads divided by it and written back unscaled, or nullptr
  const float* found_inf;    // GradScaler: nothing changes when *found_inf != 0, or nullptr
};

// One step over every row: first the rows' device step counters += 1 (unless found_inf), then
// the update. With `device_rows` (a copy of `host_rows` in device memory, after number_chunks)
// that is two launches; with device_rows == nullptr (while a CUDA graph is being captured, when a
// host buffer could be reused before a replay, or for short lists) the rows travel as kernel
// parameters, kRowsPerParamLaunch per launch.
cudaError_t adam_step(const AdamArgs& args, const TensorRow* host_rows, const TensorRow* device_rows, int64_t n_rows,
                      int64_t n_chunks, cudaStream_t stream);

// =====================================================================================
// Reparameterization + Gaussian KL, the CUDA twin of csrc/cpu/reparam_kernels.h (same layout, same
// results to float rounding). mu and logvar are contiguous (rows, dim); prior row r starts at
// prior + r * row_stride (row_stride dim, or 0 for a prior shared by every row); z is
// (num_samples, rows, dim). Noise of z's flat element i per README "How the noise is defined", with
// (seed, offset) read on the device from seed_offset[0], seed_offset[1], so a captured graph reads
// the values of its replay. Per-row sums run in fp32 (fp64 for fp64) in a fixed order: deterministic,
// no atomics. Pointers not needed are nullptr.
// =====================================================================================
// What the forward and the backward both read: the Gaussian, the prior rows and the noise's (seed, offset).
struct ReparamInputs {
  Dtype dtype;
  const void* mu;
  const void* logvar;
  const void* prior_mu;      // nullptr: N(0, I)
  const void* prior_logvar;  // nullptr with prior_mu
  int64_t prior_mu_row_stride, prior_logvar_row_stride;
  const int64_t* seed_offset;  // device memory
  int64_t rows, dim, num_samples;
  // kl is per latent dim, summed over the rows: (dim,) in the compute type (float, double for f64), not per row.
  // free_bits clamps the batch mean of each dim's KL, so the rows' sum is what it needs, not rows x dim terms.
  bool kl_per_dim;
};

// Per-dim KL: the rows are cut into reparam_kl_groups(rows) groups of reparam_kl_group_rows(rows) consecutive
// rows (the last one shorter); each group's rows are summed in row order, then the groups in order. Both counts
// depend on `rows` alone, so the sum is the same bits for any grid size, with no atomics. At least 64 rows a
// group, so a thread's loop is long enough to pay for its partial's store and reload; at most 1024 groups, so
// the partials stay small (1024 x dim) and the final pass over them is short.
constexpr int64_t kKlGroupMinRows = 64;
constexpr int64_t kKlMaxGroups = 1024;

constexpr int64_t reparam_kl_group_rows(int64_t rows) {
  const int64_t spread = (rows + kKlMaxGroups - 1) / kKlMaxGroups;
  return spread > kKlGroupMinRows ? spread : kKlGroupMinRows;
}

constexpr int64_t reparam_kl_groups(int64_t rows) {
  return rows > 0 ? (rows + reparam_kl_group_rows(rows) - 1) / reparam_kl_group_rows(rows) : 0;
}

struct ReparamForwardArgs : ReparamInputs {
  void* z;                   // (num_samples, rows, dim); nullptr when num_samples == 0 (KL only)
  void* kl;                  // (rows,); with kl_per_dim (dim,) in the compute type
  void* log_q;               // (num_samples, rows) or nullptr
  void* log_p;               // (num_samples, rows), with log_q
  // kl_per_dim: scratch of (reparam_kl_groups(rows), dim) doubles for the groups' partial sums
  // (the caller allocates it: the kernels take no allocator). nullptr when there is one group (its sum is kl).
  void* kl_partials;
};

struct ReparamBackwardArgs : ReparamInputs {
  const void* grad_z;        // (num_samples, rows, dim); nullptr when num_samples == 0
  const void* grad_kl;       // (rows,); with kl_per_dim (dim,) in the compute type
  const void* grad_log_q;    // (num_samples, rows) or nullptr (zero)
  const void* grad_log_p;    // (num_samples, rows) or nullptr (zero)
  void* grad_mu;             // (rows, dim)
  void* grad_logvar;         // (rows, dim)
  void* grad_prior_mu;       // (rows, dim) when there is a prior (expanded to mu's shape), else nullptr
  void* grad_prior_logvar;   // (rows, dim), with grad_prior_mu
};

cudaError_t reparam_forward(const ReparamForwardArgs& args, cudaStream_t stream);
cudaError_t reparam_backward(const ReparamBackwardArgs& args, cudaStream_t stream);

// The noise alone (the CUDA twin of the philox_debug op, for tests): out[i] = uniform (kind 1) or
// standard normal (kind 2) number i of (seed, offset) read from seed_offset on the device, i in [0, n).
cudaError_t philox_noise(float* out, int64_t n, int kind, const int64_t* seed_offset, cudaStream_t stream);

}  // namespace fused_kingma::cuda
