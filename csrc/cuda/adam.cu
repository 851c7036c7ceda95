// Adam / AdamW / Adamax on CUDA: one multi-tensor launch per parameter group and storage format
// (see multi_tensor.cuh), each element updated by csrc/math/adam.h in the order
// csrc/cpu/adam_kernel.h (adam_range) uses, so CUDA and CPU agree to rounding.
// Capturable: steps, grad_scale, found_inf and (lr_device) lr are read on the device; nothing here syncs the host.
#include <cstring>
#include <type_traits>

#include "cuda/device_common.cuh"
#include "cuda/launch.h"
#include "cuda/multi_tensor.cuh"
#include "math/adam.h"
#include "math/float16.h"
#include "math/philox.h"

namespace fused_kingma::cuda {
namespace {

constexpr int kThreads = kMultiTensorThreads;

// Storage of state / ema for a param storage type P (DESIGN: fp32 for fp16/bf16 params).
template <class P, bool kHasMaster> struct Formats {
  static constexpr bool kLow = sizeof(P) == 2;
  using State = std::conditional_t<kHasMaster, float, P>;
  using Ema = std::conditional_t<kLow, float, P>;
  using C = typename OpMath<P>::type;
};

// Step counter of a row as the update sees it (after this step's increment).
__device__ __forceinline__ double row_step(const TensorRow& row, bool step_f64) {
  if (row.step == nullptr) return row.step_value;
  return step_f64 ? *global_ptr<const double>(row.step) : static_cast<double>(*global_ptr<const float>(row.step));
}

// The per-tensor constants, computed in double as the CPU op's host code computes them.
template <class C>
__device__ __forceinline__ math::AdamConsts<C> row_consts(const AdamArgs& a, double t) {
  const double bias_correction1 = 1.0 - pow(a.beta1, t);
  const double bias_correction2 = 1.0 - pow(a.beta2, t);
  math::AdamConsts<C> c;
  c.grad_scale = static_cast<C>(a.grad_scale != nullptr ? static_cast<double>(*a.grad_scale) : 1.0);
  c.grad_sign = static_cast<C>(a.maximize ? -1.0 : 1.0);
  c.weight_decay = static_cast<C>(a.weight_decay);
  c.l2 = static_cast<C>(a.l2 ? 1.0 : 0.0);
  const double lr = a.lr_device != nullptr ? *a.lr_device : a.lr;
  double decay_factor = a.decoupled && a.weight_decay != 0.0 ? 1.0 - lr * a.weight_decay : 1.0;
  double neg_step_size = -(lr / bias_correction1);
  if (a.lr_is_fp32_tensor) {  // as the CPU op: a float32 tensor lr makes these float32 arithmetic
    const auto f32 = [](double x) { return static_cast<double>(static_cast<float>(x)); };
    neg_step_size = -f32(f32(lr) / f32(bias_correction1));
    if (decay_factor != 1.0) decay_factor = f32(1.0 - f32(f32(lr) * f32(a.weight_decay)));
  }
  c.decay_factor = static_cast<C>(decay_factor);
  c.first_weight = math::lerp_weight<C>(1.0 - a.beta1);
  c.beta2 = static_cast<C>(a.beta2);
  c.one_minus_beta2 = static_cast<C>(1.0 - a.beta2);
  c.eps = static_cast<C>(a.eps);
  c.bias_correction2_sqrt = static_cast<C>(pow(bias_correction2, 0.5));
  c.neg_step_size = static_cast<C>(neg_step_size);
  c.ema_weight = math::lerp_weight<C>(1.0 - a.ema_decay);
  return c;
}

template <class P, bool kHasMaster>
struct AdamKernel {
  using F = Formats<P, kHasMaster>;
  using S = typename F::State;
  using E = typename F::Ema;
  using C = typename F::C;

  // Elements [i, i + count) of one row, count <= kVec; kFull: count == kVec and 16-byte aligned.
  template <bool kFull>
  static __device__ __forceinline__ void update(const AdamArgs& a, const math::AdamConsts<C>& c, const TensorRow& row,
                                                uint64_t sr_offset, int64_t i, int count) {
    // global_ptr on the arrays every row has; the optional ones (nullptr when absent) get it where they are used.
    P* param = global_ptr<P>(row.ptr[kParam]);
    P* grad = global_ptr<P>(row.ptr[kGrad]);
    S* first = global_ptr<S>(row.ptr[kExpAvg]);
    S* second = global_ptr<S>(row.ptr[kSecond]);
    const void* max_second = row.ptr[kMaxSecond];
    float* master = kHasMaster ? global_ptr<float>(row.ptr[kMaster]) : nullptr;
    const void* ema = row.ptr[kEma];
    const bool amsgrad = a.rule == AdamRule::adam_amsgrad;
    const bool unscale = a.grad_scale != nullptr;
    const bool stochastic = a.format.stochastic_rounding;

    P p[kVec], g[kVec];
    S m[kVec], v[kVec], vm[kVec];
    float w[kVec];
    E e[kVec];
    if constexpr (kFull) {
      load_vec(p, param + i);
      load_vec(g, grad + i);
      load_vec(m, first + i);
      load_vec(v, second + i);
      if (amsgrad) load_vec(vm, global_ptr<S>(max_second) + i);
      if constexpr (kHasMaster) load_vec(w, master + i);
      if (a.ema) load_vec(e, global_ptr<E>(ema) + i);
    } else {
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        if (k >= count) continue;
        p[k] = param[i + k];
        g[k] = grad[i + k];
        m[k] = first[i + k];
        v[k] = second[i + k];
        if (amsgrad) vm[k] = global_ptr<S>(max_second)[i + k];
        if constexpr (kHasMaster) w[k] = master[i + k];
        if (a.ema) e[k] = global_ptr<E>(ema)[i + k];
      }
    }
    // Stochastic rounding, as the CPU op: element e takes the 16-bit half e % 2 of word (e % 8) / 2
    // of Philox block e / 8.
    uint32_t noise[kVec];
    if (stochastic) {
      int64_t block = -1;
      math::Philox4x32 r{};
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int64_t e = i + k;
        if ((e >> 3) != block) {
          block = e >> 3;
          r = math::philox_block(a.sr_seed, sr_offset, static_cast<uint64_t>(block));
        }
        // Selected, not indexed: r.v[(e & 7) >> 1] with a runtime index put r in local memory.
        const int64_t w = (e & 7) >> 1;
        const uint32_t word = w == 0 ? r.v[0] : w == 1 ? r.v[1] : w == 2 ? r.v[2] : r.v[3];
        noise[k] = (e & 1) ? (word >> 16) : (word & 0xFFFFu);
      }
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      if (!kFull && k >= count) continue;
      C theta = kHasMaster ? static_cast<C>(w[k]) : static_cast<C>(to_float(p[k]));
      const C raw_grad = static_cast<C>(to_float(g[k]));
      if (unscale) g[k] = store_cast<P>(raw_grad / c.grad_scale);
      theta = theta * c.decay_factor;
      const C eg = math::effective_grad(raw_grad, theta, c);
      C mk = static_cast<C>(to_float(m[k]));
      C vk = static_cast<C>(to_float(v[k]));
      if (a.rule == AdamRule::adamax) {
        math::adamax_element(theta, mk, vk, eg, c);
      } else if (amsgrad) {
        C vmk = static_cast<C>(to_float(vm[k]));
        math::adam_element<true>(theta, mk, vk, vmk, eg, c);
        vm[k] = store_cast<S>(vmk);
      } else {
        C unused = C(0);
        math::adam_element<false>(theta, mk, vk, unused, eg, c);
      }
      m[k] = store_cast<S>(mk);
      v[k] = store_cast<S>(vk);
      if constexpr (kHasMaster) w[k] = static_cast<float>(theta);
      if constexpr (std::is_same_v<P, __nv_bfloat16>) {
        if (stochastic) {
          p[k] = __ushort_as_bfloat16(math::float_to_bf16_stochastic(static_cast<float>(theta), noise[k]));
        } else {
          p[k] = store_cast<P>(theta);
        }
      } else {
        p[k] = store_cast<P>(theta);
      }
      if (a.ema) {  // the EMA averages the parameter as stored (the master copy when there is one)
        const C stored = (kHasMaster || stochastic) ? theta : static_cast<C>(to_float(p[k]));
        e[k] = store_cast<E>(math::ema_update(static_cast<C>(to_float(e[k])), stored, c));
      }
    }
    if constexpr (kFull) {
      store_vec(param + i, p);
      if (unscale) store_vec(grad + i, g);
      store_vec(first + i, m);
      store_vec(second + i, v);
      if (amsgrad) store_vec(global_ptr<S>(max_second) + i, vm);
      if constexpr (kHasMaster) store_vec(master + i, w);
      if (a.ema) store_vec(global_ptr<E>(ema) + i, e);
    } else {
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        if (k >= count) continue;
        param[i + k] = p[k];
        if (unscale) grad[i + k] = g[k];
        first[i + k] = m[k];
        second[i + k] = v[k];
        if (amsgrad) global_ptr<S>(max_second)[i + k] = vm[k];
        if constexpr (kHasMaster) master[i + k] = w[k];
        if (a.ema) global_ptr<E>(ema)[i + k] = e[k];
      }
    }
  }

  static __device__ __forceinline__ void run(const AdamArgs& a, const TensorRow* rows, int64_t n_rows) {
    if (a.found_inf != nullptr && *a.found_inf != 0.0f) return;  // GradScaler found inf/NaN: skip the step
    __shared__ math::AdamConsts<C> consts;
    __shared__ uint64_t sr_offset;
    const int64_t chunk = blockIdx.x;
    const TensorRow& row = rows[find_row(rows, n_rows, chunk)];
    if (threadIdx.x == 0) {
      const double t = row_step(row, a.step_f64);
      consts = row_consts<C>(a, t);
      // As the CPU op: Philox counter offset = step * 2^24 + position in the list.
      sr_offset = (static_cast<uint64_t>(t) << 24) + static_cast<uint64_t>(row.list_index);
    }
    __syncthreads();
    const math::AdamConsts<C> c = consts;
    const ChunkRange r = chunk_range(row, chunk);
    bool aligned = true;
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s) {
      const size_t bytes = s == kMaster ? sizeof(float) : s == kEma ? sizeof(E) : s <= kGrad ? sizeof(P) : sizeof(S);
      if (row.ptr[s] != nullptr && reinterpret_cast<uintptr_t>(row.ptr[s]) % (bytes * kVec) != 0) aligned = false;
    }
    for (int64_t i = r.begin + static_cast<int64_t>(threadIdx.x) * kVec; i < r.end; i += int64_t{kThreads} * kVec) {
      const int64_t count = r.end - i;
      if (aligned && count >= kVec) update<true>(a, c, row, sr_offset, i, kVec);
      else update<false>(a, c, row, sr_offset, i, count < kVec ? static_cast<int>(count) : kVec);
    }
  }
};

template <class P, bool kHasMaster>
__global__ void __launch_bounds__(kThreads)
    adam_table_kernel(const TensorRow* __restrict__ rows, int64_t n_rows, const __grid_constant__ AdamArgs args) {
  AdamKernel<P, kHasMaster>::run(args, rows, n_rows);
}

template <class P, bool kHasMaster>
__global__ void __launch_bounds__(kThreads)
    adam_param_kernel(const __grid_constant__ RowBatch batch, const __grid_constant__ AdamArgs args) {
  AdamKernel<P, kHasMaster>::run(args, batch.rows, batch.n);
}

// step += 1 in the counter's own dtype (like torch's `step_t += 1`), unless found_inf; once per counter (StepOwners).
__device__ __forceinline__ void increment_steps(const TensorRow* rows, int64_t n_rows, const AdamArgs& a) {
  if (a.found_inf != nullptr && *a.found_inf != 0.0f) return;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n_rows;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (!rows[k].increments_step) continue;
    void* s = rows[k].step;
    if (a.step_f64) *static_cast<double*>(s) += 1.0;
    else *static_cast<float*>(s) += 1.0f;
  }
}

__global__ void steps_table_kernel(const TensorRow* __restrict__ rows, int64_t n_rows,
                                   const __grid_constant__ AdamArgs args) {
  increment_steps(rows, n_rows, args);
}

__global__ void steps_param_kernel(const __grid_constant__ RowBatch batch, const __grid_constant__ AdamArgs args) {
  increment_steps(batch.rows, batch.n, args);
}

template <class P, bool kHasMaster>
cudaError_t launch(const AdamArgs& args, const TensorRow* host_rows, const TensorRow* device_rows, int64_t n_rows,
                   int64_t n_chunks, cudaStream_t stream) {
  bool any_device_step = false;
  for (int64_t k = 0; k < n_rows; ++k) any_device_step |= host_rows[k].step != nullptr;
  if (device_rows != nullptr) {
    if (any_device_step) {
      const int64_t blocks = (n_rows + 255) / 256;
      steps_table_kernel<<<static_cast<unsigned>(blocks < 1024 ? blocks : 1024), 256, 0, stream>>>(device_rows, n_rows,
                                                                                                    args);
    }
    if (n_chunks > 0) {
      adam_table_kernel<P, kHasMaster><<<static_cast<unsigned>(n_chunks), kThreads, 0, stream>>>(device_rows, n_rows, args);
    }
    return cudaGetLastError();
  }
  for (int64_t first = 0; first < n_rows; first += kRowsPerParamLaunch) {
    RowBatch batch;
    std::memset(&batch, 0, sizeof(batch));
    batch.n = static_cast<int32_t>(n_rows - first < kRowsPerParamLaunch ? n_rows - first : kRowsPerParamLaunch);
    std::memcpy(batch.rows, host_rows + first, sizeof(TensorRow) * batch.n);
    const int64_t chunks = number_chunks(batch.rows, batch.n);
    if (any_device_step) steps_param_kernel<<<1, kRowsPerParamLaunch, 0, stream>>>(batch, args);
    if (chunks > 0) adam_param_kernel<P, kHasMaster><<<static_cast<unsigned>(chunks), kThreads, 0, stream>>>(batch, args);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t adam_step(const AdamArgs& args, const TensorRow* host_rows, const TensorRow* device_rows, int64_t n_rows,
                      int64_t n_chunks, cudaStream_t stream) {
  const AdamFormat& f = args.format;
  const auto go = [&](auto p_tag, auto master_tag) {
    using P = decltype(p_tag);
    return launch<P, decltype(master_tag)::value>(args, host_rows, device_rows, n_rows, n_chunks, stream);
  };
  using Yes = std::true_type;
  using No = std::false_type;
  switch (f.param) {
    case Dtype::f32: return f.master ? cudaErrorInvalidValue : go(float{}, No{});
    case Dtype::f64: return f.master ? cudaErrorInvalidValue : go(double{}, No{});
    case Dtype::f16: return f.master ? go(__half{}, Yes{}) : go(__half{}, No{});
    case Dtype::bf16: return f.master ? go(__nv_bfloat16{}, Yes{}) : go(__nv_bfloat16{}, No{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace fused_kingma::cuda
