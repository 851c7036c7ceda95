// Adam / AdamW / Adamax on CUDA: one multi-tensor launch per parameter group (see multi_tensor.cuh),
// each element updated by the same csrc/math rule the CPU kernel runs. Capturable: lr, step,
// grad_scale and found_inf are read on the device, so nothing here syncs with the host.
#include <cstring>

#include "cuda/device_common.cuh"
#include "cuda/launch.h"
#include "cuda/math_bridge.cuh"
#include "cuda/multi_tensor.cuh"

namespace fused_kingma::cuda {
namespace {

constexpr int kThreads = kMultiTensorThreads;

template <class P, class S>
struct AdamKernel {
  using C = typename OpMath<P>::type;

  // Bias corrections and lr for one row, from the device step / lr when given.
  static __device__ __forceinline__ math::AdamHyper<C> hyper(const AdamArgs& a, const TensorRow& row) {
    const double step = row.step != nullptr ? static_cast<double>(*row.step) : a.step;
    const double lr = a.lr_ptr != nullptr ? static_cast<double>(*a.lr_ptr) : a.lr;
    math::AdamHyper<C> h;
    h.lr = static_cast<C>(lr);
    h.beta1 = static_cast<C>(a.beta1);
    h.beta2 = static_cast<C>(a.beta2);
    h.eps = static_cast<C>(a.eps);
    h.weight_decay = static_cast<C>(a.weight_decay);
    h.bias_correction1 = static_cast<C>(1.0 - pow(a.beta1, step));
    h.bias_correction2_sqrt = static_cast<C>(sqrt(1.0 - pow(a.beta2, step)));
    h.amsgrad = a.amsgrad;
    h.maximize = a.maximize;
    h.decoupled_weight_decay = a.decoupled_weight_decay;
    h.adamax = a.variant == AdamVariant::adamax;
    return h;
  }

  // Elements [i, i + count) of one row, count <= kVec; kFull: count == kVec and 16-byte aligned.
  template <bool kFull>
  static __device__ __forceinline__ void update(const AdamArgs& a, const math::AdamHyper<C>& h, const TensorRow& row,
                                                int64_t i, int count) {
    P* param = static_cast<P*>(row.ptr[kParam]);
    P* grad = static_cast<P*>(row.ptr[kGrad]);
    S* exp_avg = static_cast<S*>(row.ptr[kExpAvg]);
    S* exp_avg_sq = static_cast<S*>(row.ptr[kExpAvgSq]);
    S* max_sq = static_cast<S*>(row.ptr[kMaxExpAvgSq]);
    float* master = static_cast<float*>(row.ptr[kMaster]);
    S* ema = static_cast<S*>(row.ptr[kEma]);

    P p[kVec], g[kVec];
    S m[kVec], v[kVec], vm[kVec], e[kVec];
    float w32[kVec];
    if constexpr (kFull) {
      load_vec(p, param + i);
      load_vec(g, grad + i);
      load_vec(m, exp_avg + i);
      load_vec(v, exp_avg_sq + i);
      if (max_sq) load_vec(vm, max_sq + i);
      if (master) load_vec(w32, master + i);
      if (ema) load_vec(e, ema + i);
    } else {
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        if (k < count) {
          p[k] = param[i + k];
          g[k] = grad[i + k];
          m[k] = exp_avg[i + k];
          v[k] = exp_avg_sq[i + k];
          if (max_sq) vm[k] = max_sq[i + k];
          if (master) w32[k] = master[i + k];
          if (ema) e[k] = ema[i + k];
        }
      }
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      if (!kFull && k >= count) continue;
      C w = master ? static_cast<C>(w32[k]) : static_cast<C>(to_float(p[k]));
      C gk = static_cast<C>(to_float(g[k]));
      if (a.grad_scale != nullptr) {  // GradScaler: unscale, and leave the unscaled grad behind as torch does
        gk = gk / static_cast<C>(*a.grad_scale);
        g[k] = store_cast<P>(gk);
      }
      C mk = static_cast<C>(to_float(m[k])), vk = static_cast<C>(to_float(v[k]));
      C vmk = max_sq ? static_cast<C>(to_float(vm[k])) : C(0);
      math::adam_element<C>(h, w, gk, mk, vk, vmk);
      m[k] = store_cast<S>(mk);
      v[k] = store_cast<S>(vk);
      if (max_sq) vm[k] = store_cast<S>(vmk);
      if (master) w32[k] = static_cast<float>(w);
      p[k] = store_cast<P>(w);
      if (ema) {
        const C ek = static_cast<C>(to_float(e[k]));
        e[k] = store_cast<S>(ek + (C(1) - static_cast<C>(a.ema_decay)) * (w - ek));
      }
    }
    if constexpr (kFull) {
      store_vec(param + i, p);
      if (a.grad_scale != nullptr) store_vec(grad + i, g);
      store_vec(exp_avg + i, m);
      store_vec(exp_avg_sq + i, v);
      if (max_sq) store_vec(max_sq + i, vm);
      if (master) store_vec(master + i, w32);
      if (ema) store_vec(ema + i, e);
    } else {
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        if (k < count) {
          param[i + k] = p[k];
          if (a.grad_scale != nullptr) grad[i + k] = g[k];
          exp_avg[i + k] = m[k];
          exp_avg_sq[i + k] = v[k];
          if (max_sq) max_sq[i + k] = vm[k];
          if (master) master[i + k] = w32[k];
          if (ema) ema[i + k] = e[k];
        }
      }
    }
  }

  static __device__ __forceinline__ void run(const AdamArgs& a, const TensorRow* rows, int64_t n_rows) {
    if (a.found_inf != nullptr && *a.found_inf != 0.0f) return;  // GradScaler skipped this step
    const int64_t chunk = blockIdx.x;
    const TensorRow& row = rows[find_row(rows, n_rows, chunk)];
    const ChunkRange r = chunk_range(row, chunk);
    const math::AdamHyper<C> h = hyper(a, row);
    bool aligned = true;
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s) {
      const size_t bytes = s == kMaster ? sizeof(float) : (s <= kGrad ? sizeof(P) : sizeof(S));
      if (row.ptr[s] != nullptr && reinterpret_cast<uintptr_t>(row.ptr[s]) % (bytes * kVec) != 0) aligned = false;
    }
    for (int64_t i = r.begin + static_cast<int64_t>(threadIdx.x) * kVec; i < r.end; i += int64_t{kThreads} * kVec) {
      const int64_t count = r.end - i;
      if (aligned && count >= kVec) update<true>(a, h, row, i, kVec);
      else update<false>(a, h, row, i, count < kVec ? static_cast<int>(count) : kVec);
    }
  }
};

template <class P, class S>
__global__ void __launch_bounds__(kThreads)
    adam_table_kernel(const TensorRow* __restrict__ rows, int64_t n_rows, const __grid_constant__ AdamArgs args) {
  AdamKernel<P, S>::run(args, rows, n_rows);
}

template <class P, class S>
__global__ void __launch_bounds__(kThreads)
    adam_param_kernel(const __grid_constant__ RowBatch batch, const __grid_constant__ AdamArgs args) {
  AdamKernel<P, S>::run(args, batch.rows, batch.n);
}

template <class P, class S>
cudaError_t launch(const AdamArgs& args, const TensorRow* host_rows, const TensorRow* device_rows, int64_t n_rows,
                   int64_t n_chunks, cudaStream_t stream) {
  if (device_rows != nullptr) {
    if (n_chunks > 0) adam_table_kernel<P, S><<<static_cast<unsigned>(n_chunks), kThreads, 0, stream>>>(device_rows, n_rows, args);
    return cudaGetLastError();
  }
  for (int64_t first = 0; first < n_rows; first += kRowsPerParamLaunch) {
    RowBatch batch;
    std::memset(&batch, 0, sizeof(batch));
    batch.n = static_cast<int32_t>(n_rows - first < kRowsPerParamLaunch ? n_rows - first : kRowsPerParamLaunch);
    std::memcpy(batch.rows, host_rows + first, sizeof(TensorRow) * batch.n);
    const int64_t chunks = number_chunks(batch.rows, batch.n);
    if (chunks == 0) continue;
    adam_param_kernel<P, S><<<static_cast<unsigned>(chunks), kThreads, 0, stream>>>(batch, args);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t adam_step(const AdamArgs& args, const TensorRow* host_rows, const TensorRow* device_rows, int64_t n_rows,
                      int64_t n_chunks, cudaStream_t stream) {
  using D = Dtype;
  const D p = args.param_dtype, s = args.state_dtype;
  if (p == D::f32 && s == D::f32) return launch<float, float>(args, host_rows, device_rows, n_rows, n_chunks, stream);
  if (p == D::f64 && s == D::f64) return launch<double, double>(args, host_rows, device_rows, n_rows, n_chunks, stream);
  if (p == D::f16 && s == D::f32) return launch<__half, float>(args, host_rows, device_rows, n_rows, n_chunks, stream);
  if (p == D::bf16 && s == D::f32)
    return launch<__nv_bfloat16, float>(args, host_rows, device_rows, n_rows, n_chunks, stream);
  if (p == D::f16 && s == D::f16) return launch<__half, __half>(args, host_rows, device_rows, n_rows, n_chunks, stream);
  if (p == D::bf16 && s == D::bf16)
    return launch<__nv_bfloat16, __nv_bfloat16>(args, host_rows, device_rows, n_rows, n_chunks, stream);
  return cudaErrorInvalidValue;
}

}  // namespace fused_kingma::cuda
