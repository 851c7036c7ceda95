// Reparameterization + Gaussian KL on CUDA, forward and backward, noise regenerated from
// (seed, offset) read on the device. Same csrc/math as the CPU kernel.
//
// Forward: a group of kTPR threads (a warp, or the whole block for long rows) owns a row; it walks
// the row in Philox blocks of 4 elements of z's flat index (one Philox call per 4 elements), and
// sums KL / log q / log p over the row with a fixed shuffle tree: deterministic, no atomics.
// Backward: elementwise over mu, looping over the samples, eps regenerated.
#include "cuda/device_common.cuh"
#include "cuda/launch.h"
#include "cuda/math_bridge.cuh"
#include "math/philox.h"

namespace fused_kingma::cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxGrid = 1u << 20;  // grid-stride beyond that

template <class T> __device__ __forceinline__ T* at(void* p, int64_t i) { return static_cast<T*>(p) + i; }
template <class T> __device__ __forceinline__ const T* at(const void* p, int64_t i) {
  return static_cast<const T*>(p) + i;
}

// Normal number q (0..3) of a Philox block: a compile-time index into the array (no local memory).
__device__ __forceinline__ float pick4(const float (&n)[4], int q) {
  float r = n[0];
#pragma unroll
  for (int t = 1; t < 4; ++t) r = q == t ? n[t] : r;
  return r;
}

template <class C, int kTPR> __device__ __forceinline__ C group_sum(C x, C* scratch) {
  if constexpr (kTPR == 32) return warp_sum(x);
  else return block_sum<kTPR>(x, scratch);
}

template <class T, int kTPR>
__global__ void __launch_bounds__(kThreads) reparam_forward_kernel(const __grid_constant__ ReparamForwardArgs a) {
  static_assert(kTPR == 32 || kTPR == kThreads, "a warp or the whole block per row");
  using C = typename OpMath<T>::type;
  constexpr int kRowsPerBlock = kThreads / kTPR;
  __shared__ C scratch[kThreads / 32];

  const uint64_t seed = static_cast<uint64_t>(a.seed_offset[0]);
  const uint64_t offset = static_cast<uint64_t>(a.seed_offset[1]);
  const int64_t D = a.dim, N = a.rows * a.dim;
  const bool std_prior = a.prior_mu == nullptr;
  const int lane = static_cast<int>(threadIdx.x) % kTPR;
  // 16-byte (kVec-element) accesses when every row starts on a Philox block and pointers allow it.
  const bool vec_ptrs = D % kVec == 0 && vec_aligned<T>(a.mu) && vec_aligned<T>(a.logvar) && vec_aligned<T>(a.z) &&
                        vec_aligned<T>(a.prior_mu) && vec_aligned<T>(a.prior_logvar) && vec_aligned<T>(a.kl_elem);

  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kTPR; r < a.rows;
       r += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const T* mu = at<T>(a.mu, r * D);
    const T* lv = at<T>(a.logvar, r * D);
    const T* pmu = std_prior ? nullptr : at<T>(a.prior_mu, r * D);
    const T* plv = std_prior ? nullptr : at<T>(a.prior_logvar, r * D);
    C kl_acc = 0;
    for (int64_t k = 0; k < a.num_samples; ++k) {
      const bool first = k == 0;
      C lq_acc = 0, lp_acc = 0;
      const int64_t s = k * N + r * D;  // z's flat index of this row's first element
      T* z = at<T>(a.z, s);
      const int64_t g_first = s / 4, g_last = (s + D - 1) / 4;
      for (int64_t g = g_first + lane; g <= g_last; g += kTPR) {
        float n[4];
        math::normals_from_bits(math::philox_block(seed, offset, static_cast<uint64_t>(g)), n);
        const int64_t j0 = 4 * g - s;  // row position of the block's first number (may be < 0)
        T m[kVec], l[kVec], pm[kVec], pl[kVec], zo[kVec], ke[kVec];
        const bool vec = vec_ptrs && j0 >= 0 && j0 + kVec <= D;
        if (vec) {
          load_vec(m, mu + j0);
          load_vec(l, lv + j0);
          if (!std_prior) {
            load_vec(pm, pmu + j0);
            load_vec(pl, plv + j0);
          }
        } else {
#pragma unroll
          for (int q = 0; q < kVec; ++q) {
            const int64_t j = j0 + q;
            if (j < 0 || j >= D) continue;
            m[q] = mu[j];
            l[q] = lv[j];
            if (!std_prior) {
              pm[q] = pmu[j];
              pl[q] = plv[j];
            }
          }
        }
#pragma unroll
        for (int q = 0; q < kVec; ++q) {
          const int64_t j = j0 + q;
          if (j < 0 || j >= D) continue;
          const C mq = static_cast<C>(to_float(m[q])), lq = static_cast<C>(to_float(l[q]));
          const C pmq = std_prior ? C(0) : static_cast<C>(to_float(pm[q]));
          const C plq = std_prior ? C(0) : static_cast<C>(to_float(pl[q]));
          const C eps = static_cast<C>(n[q]);
          const C zq = mq + exp(C(0.5) * lq) * eps;
          zo[q] = store_cast<T>(zq);
          if (first && (a.kl != nullptr || a.kl_elem != nullptr)) {
            const C kq = math::kl_term<C>(mq, lq, pmq, plq, std_prior);
            kl_acc += kq;
            ke[q] = store_cast<T>(kq);
          }
          if (a.log_q != nullptr) lq_acc += math::log_q_term<C>(eps, lq);
          if (a.log_p != nullptr) lp_acc += math::log_p_term<C>(zq, pmq, plq, std_prior);
        }
        const bool kl_elem = first && a.kl_elem != nullptr;
        if (vec) {
          store_vec(z + j0, zo);
          if (kl_elem) store_vec(at<T>(a.kl_elem, r * D + j0), ke);
        } else {
#pragma unroll
          for (int q = 0; q < kVec; ++q) {
            const int64_t j = j0 + q;
            if (j < 0 || j >= D) continue;
            z[j] = zo[q];
            if (kl_elem) *at<T>(a.kl_elem, r * D + j) = ke[q];
          }
        }
      }
      if (a.log_q != nullptr) {
        const C total = group_sum<C, kTPR>(lq_acc, scratch);
        if (lane == 0) *at<T>(a.log_q, k * a.rows + r) = store_cast<T>(total);
      }
      if (a.log_p != nullptr) {
        const C total = group_sum<C, kTPR>(lp_acc, scratch);
        if (lane == 0) *at<T>(a.log_p, k * a.rows + r) = store_cast<T>(total);
      }
    }
    if (a.kl != nullptr) {
      const C total = group_sum<C, kTPR>(kl_acc, scratch);
      if (lane == 0) *at<T>(a.kl, r) = store_cast<T>(total);
    }
  }
}

// grad_mu, grad_logvar for mu elements [i, i + 4): thread per 4 elements, samples in a loop.
template <class T>
__global__ void __launch_bounds__(kThreads) reparam_backward_kernel(const __grid_constant__ ReparamBackwardArgs a) {
  using C = typename OpMath<T>::type;
  const uint64_t seed = static_cast<uint64_t>(a.seed_offset[0]);
  const uint64_t offset = static_cast<uint64_t>(a.seed_offset[1]);
  const int64_t D = a.dim, N = a.rows * a.dim;
  const bool std_prior = a.prior_mu == nullptr;
  const bool need_row = a.grad_kl != nullptr || a.grad_log_q != nullptr || a.grad_log_p != nullptr;
  const int64_t groups = (N + kVec - 1) / kVec;
  const bool vec_ptrs = vec_aligned<T>(a.mu) && vec_aligned<T>(a.logvar) && vec_aligned<T>(a.prior_mu) &&
                        vec_aligned<T>(a.prior_logvar) && vec_aligned<T>(a.grad_mu) && vec_aligned<T>(a.grad_logvar);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < groups;
       t += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i0 = t * kVec;
    const int count = N - i0 < kVec ? static_cast<int>(N - i0) : kVec;
    C m[kVec], l[kVec], sig[kVec], pm[kVec], pl[kVec], gm[kVec], gl[kVec], gpm[kVec], gpl[kVec];
    const bool prior_grads = a.grad_prior_mu != nullptr;
    int64_t row[kVec];
    {
      int64_t r = need_row ? i0 / D : 0, j = need_row ? i0 - r * D : 0;
#pragma unroll
      for (int q = 0; q < kVec; ++q) {
        row[q] = r;
        if (++j == D) {
          j = 0;
          ++r;
        }
      }
    }
    const bool vec = count == kVec && vec_ptrs;
    T mv[kVec], lv[kVec], pmv[kVec], plv[kVec];
    if (vec) {
      load_vec(mv, at<T>(a.mu, i0));
      load_vec(lv, at<T>(a.logvar, i0));
      if (!std_prior) {
        load_vec(pmv, at<T>(a.prior_mu, i0));
        load_vec(plv, at<T>(a.prior_logvar, i0));
      }
    } else {
#pragma unroll
      for (int q = 0; q < kVec; ++q) {
        const int64_t i = q < count ? i0 + q : i0;  // past the end: recompute element i0, never stored
        mv[q] = *at<T>(a.mu, i);
        lv[q] = *at<T>(a.logvar, i);
        if (!std_prior) {
          pmv[q] = *at<T>(a.prior_mu, i);
          plv[q] = *at<T>(a.prior_logvar, i);
        }
      }
    }
#pragma unroll
    for (int q = 0; q < kVec; ++q) {
      const int64_t i = q < count ? i0 + q : i0;
      m[q] = static_cast<C>(to_float(mv[q]));
      l[q] = static_cast<C>(to_float(lv[q]));
      pm[q] = std_prior ? C(0) : static_cast<C>(to_float(pmv[q]));
      pl[q] = std_prior ? C(0) : static_cast<C>(to_float(plv[q]));
      sig[q] = exp(C(0.5) * l[q]);
      gm[q] = 0;
      gl[q] = 0;
      gpm[q] = 0;
      gpl[q] = 0;
      C g_kl = 0;
      if (a.grad_kl != nullptr) g_kl += static_cast<C>(to_float(*at<T>(a.grad_kl, row[q < count ? q : 0])));
      if (a.grad_kl_elem != nullptr) g_kl += static_cast<C>(to_float(*at<T>(a.grad_kl_elem, i)));
      if (a.grad_kl != nullptr || a.grad_kl_elem != nullptr) {
        C d_mu, d_lv;
        math::kl_term_grad<C>(m[q], l[q], pm[q], pl[q], std_prior, d_mu, d_lv);
        gm[q] += g_kl * d_mu;
        gl[q] += g_kl * d_lv;
        if (prior_grads) {
          C d_pm, d_plv;
          math::kl_term_grad_prior<C>(m[q], l[q], pm[q], pl[q], d_pm, d_plv);
          gpm[q] += g_kl * d_pm;
          gpl[q] += g_kl * d_plv;
        }
      }
    }
    for (int64_t k = 0; k < a.num_samples; ++k) {
      const int64_t e0 = k * N + i0;  // z's flat index of element i0 in sample k
      const int shift = static_cast<int>(e0 % 4);
      float n_lo[4], n_hi[4];
      math::normals_from_bits(math::philox_block(seed, offset, static_cast<uint64_t>(e0 / 4)), n_lo);
      if (shift != 0) math::normals_from_bits(math::philox_block(seed, offset, static_cast<uint64_t>(e0 / 4 + 1)), n_hi);
#pragma unroll
      for (int q = 0; q < kVec; ++q) {
        if (q >= count) continue;
        const int pos = shift + q;
        const C eps = static_cast<C>(pos < 4 ? pick4(n_lo, pos) : pick4(n_hi, pos - 4));
        C gz = a.grad_z != nullptr ? static_cast<C>(to_float(*at<T>(a.grad_z, e0 + q))) : C(0);
        if (a.grad_log_p != nullptr) {
          const C zq = m[q] + sig[q] * eps;
          const C h = static_cast<C>(to_float(*at<T>(a.grad_log_p, k * a.rows + row[q])));
          gz += h * math::log_p_term_dz<C>(zq, pm[q], pl[q], std_prior);
          if (prior_grads) {
            C d_pm, d_plv;
            math::log_p_term_grad_prior<C>(zq, pm[q], pl[q], d_pm, d_plv);
            gpm[q] += h * d_pm;
            gpl[q] += h * d_plv;
          }
        }
        gm[q] += gz;
        gl[q] += gz * C(0.5) * sig[q] * eps;
        if (a.grad_log_q != nullptr) gl[q] += C(-0.5) * static_cast<C>(to_float(*at<T>(a.grad_log_q, k * a.rows + row[q])));
      }
    }
    T out_mu[kVec], out_lv[kVec];
#pragma unroll
    for (int q = 0; q < kVec; ++q) {
      out_mu[q] = store_cast<T>(gm[q]);
      out_lv[q] = store_cast<T>(gl[q]);
    }
    if (vec) {
      store_vec(at<T>(a.grad_mu, i0), out_mu);
      store_vec(at<T>(a.grad_logvar, i0), out_lv);
    } else {
#pragma unroll
      for (int q = 0; q < kVec; ++q) {
        if (q >= count) continue;
        *at<T>(a.grad_mu, i0 + q) = out_mu[q];
        *at<T>(a.grad_logvar, i0 + q) = out_lv[q];
      }
    }
    if (prior_grads) {
#pragma unroll
      for (int q = 0; q < kVec; ++q) {
        if (q >= count) continue;
        *at<T>(a.grad_prior_mu, i0 + q) = store_cast<T>(gpm[q]);
        *at<T>(a.grad_prior_logvar, i0 + q) = store_cast<T>(gpl[q]);
      }
    }
  }
}

unsigned grid_for(int64_t work_items, int64_t per_block) {
  const int64_t g = (work_items + per_block - 1) / per_block;
  return static_cast<unsigned>(g < kMaxGrid ? g : kMaxGrid);
}

template <class T>
cudaError_t forward(const ReparamForwardArgs& a, cudaStream_t stream) {
  if (a.dim >= 1024) {
    reparam_forward_kernel<T, kThreads><<<grid_for(a.rows, 1), kThreads, 0, stream>>>(a);
  } else {
    reparam_forward_kernel<T, 32><<<grid_for(a.rows, kThreads / 32), kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

template <class T>
cudaError_t backward(const ReparamBackwardArgs& a, cudaStream_t stream) {
  reparam_backward_kernel<T><<<grid_for((a.rows * a.dim + kVec - 1) / kVec, kThreads), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t reparam_forward(const ReparamForwardArgs& a, cudaStream_t stream) {
  if (a.rows <= 0 || a.dim <= 0 || a.num_samples <= 0) return cudaSuccess;
  switch (a.dtype) {
    case Dtype::f32: return forward<float>(a, stream);
    case Dtype::f64: return forward<double>(a, stream);
    case Dtype::f16: return forward<__half>(a, stream);
    case Dtype::bf16: return forward<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t reparam_backward(const ReparamBackwardArgs& a, cudaStream_t stream) {
  if (a.rows <= 0 || a.dim <= 0) return cudaSuccess;
  switch (a.dtype) {
    case Dtype::f32: return backward<float>(a, stream);
    case Dtype::f64: return backward<double>(a, stream);
    case Dtype::f16: return backward<__half>(a, stream);
    case Dtype::bf16: return backward<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fused_kingma::cuda
