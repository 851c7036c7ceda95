// C entry point over the emulated CUDA Adam kernels (see emu.h), called through ctypes by
// tests/test_cuda_emulated.py. It fills the launch table as csrc/cuda_glue/adam_cuda.cpp does (one storage
// format per call) and calls csrc/cuda/adam.cu's adam_step, whose launches run through emu::launch.
#include <vector>

#include "emu.h"
#include "adam_emu.cu"

using namespace fused_kingma::cuda;

// ptrs: n_rows x kMaxSlots pointers (nullptr for absent slots); steps[i]: the row's step counter (float or
// double by step_f64) or nullptr, then step_values[i] is used; use_table: rows read from a "device" table
// (else passed as kernel parameters, 32 per launch).
extern "C" int emu_adam_step(int param_dtype, int master, int stochastic_rounding, int rule, int maximize, int l2,
                             int decoupled, int ema, int step_f64, int lr_is_fp32_tensor, double lr,
                             const double* lr_device, double beta1, double beta2, double eps, double weight_decay,
                             double ema_decay, uint64_t sr_seed, const float* grad_scale, const float* found_inf,
                             void* const* ptrs, void* const* steps, const double* step_values, const int64_t* numels,
                             int64_t n_rows, int use_table) {
  AdamArgs a{};
  a.format.param = static_cast<Dtype>(param_dtype);
  a.format.master = master != 0;
  const bool low = a.format.param == Dtype::f16 || a.format.param == Dtype::bf16;
  a.format.state = a.format.master ? Dtype::f32 : a.format.param;
  a.format.ema = low ? Dtype::f32 : a.format.param;
  a.format.stochastic_rounding = stochastic_rounding != 0;
  a.rule = static_cast<AdamRule>(rule);
  a.maximize = maximize != 0;
  a.l2 = l2 != 0;
  a.decoupled = decoupled != 0;
  a.ema = ema != 0;
  a.step_f64 = step_f64 != 0;
  a.lr_is_fp32_tensor = lr_is_fp32_tensor != 0;
  a.lr = lr;
  a.lr_device = lr_device;
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.eps = eps;
  a.weight_decay = weight_decay;
  a.ema_decay = ema_decay;
  a.sr_seed = sr_seed;
  a.grad_scale = grad_scale;
  a.found_inf = found_inf;
  std::vector<TensorRow> rows(static_cast<size_t>(n_rows));
  StepOwners step_owners;
  for (int64_t i = 0; i < n_rows; ++i) {
    for (int s = 0; s < kMaxSlots; ++s) rows[i].ptr[s] = ptrs[i * kMaxSlots + s];
    rows[i].step = steps[i];
    rows[i].increments_step = step_owners.first(steps[i]);
    rows[i].step_value = step_values[i];
    rows[i].list_index = i;
    rows[i].numel = numels[i];
  }
  const int64_t chunks = number_chunks(rows.data(), n_rows);
  return static_cast<int>(adam_step(a, rows.data(), use_table ? rows.data() : nullptr, n_rows, chunks, nullptr));
}
