// Reparameterization + Gaussian KL on CUDA, forward and backward: the CUDA twin of
// csrc/cpu/reparam_kernels.cpp, running the same csrc/math code (philox.h, normal.h, gaussian.h).
// The noise is regenerated from (seed, offset) read on the device, so a captured graph draws the noise
// of the values its replay finds there.
//
// Forward: a group of kTPR threads (4, 8 or 16 lanes for short rows, so a warp holds several items; a warp;
// the whole block for rows of 1024 or more) owns one (sample, row) item, t = k * rows + r as on the CPU; it
// walks the row in Philox blocks of 4 elements of z's flat index (one Philox call per 4 elements) and sums
// KL / log q / log p over the row with a fixed shuffle tree: deterministic, no atomics. The KL of row r is
// computed with its first sample (or alone when num_samples == 0).
// Per-dim KL (kl_per_dim, for free_bits): the forward kernel leaves the KL out; a thread per (group of rows,
// column) sums its column over the group's rows in row order into a double partial (consecutive threads take
// consecutive columns: coalesced loads), then a thread per column sums the groups' partials in order. The
// groups depend on the row count alone (launch.h), so the sums are the same bits for any grid, no atomics.
// Backward: a thread per 4 consecutive elements of mu, looping over the samples with the noise
// regenerated; no reductions (the per-row sums over samples of grad_log_q are per element loops). With
// kl_per_dim the KL's output grad of element (r, j) is grad_kl[j] (the per-dim kl's) instead of grad_kl[r].
// Rows of a multiple of 4 elements with aligned arrays use 16-byte loads and stores (fp64: two).
#include "cuda/device_common.cuh"
#include "cuda/launch.h"
#include "math/gaussian.h"
#include "math/normal.h"
#include "math/philox.h"

namespace fused_kingma::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGrid = int64_t{1} << 20;  // grid-stride beyond that

template <class T>
__device__ __forceinline__ typename OpMath<T>::type load(const void* p, int64_t i) {
  return static_cast<typename OpMath<T>::type>(to_float(static_cast<const T*>(p)[i]));
}

template <class T, class C>
__device__ __forceinline__ void store(void* p, int64_t i, C x) {
  static_cast<T*>(p)[i] = store_cast<T>(x);
}

template <class C, int kTPR>
__device__ __forceinline__ C group_sum(C x, C* scratch) {
  if constexpr (kTPR <= 32) {
    return warp_sum<kTPR>(x);
  } else {
    return block_sum<kTPR>(x, scratch);
  }
}

// The (seed, offset) pair of the noise definition, read from device memory.
struct NoiseKey {
  uint64_t seed, offset;
};

__device__ __forceinline__ NoiseKey noise_key(const int64_t* seed_offset) {
  return {static_cast<uint64_t>(seed_offset[0]), static_cast<uint64_t>(seed_offset[1])};
}

// KL(q || p) of one coordinate (p = N(0, 1) without a prior).
template <bool kPrior, class C>
__device__ __forceinline__ C kl_term(C m, C l, C pm, C plv) {
  if constexpr (kPrior) {
    return math::kl_normal(m, l, pm, plv);
  } else {
    return math::kl_std_normal(m, l);
  }
}

// log p(z) of one coordinate without the -0.5 ln(2 pi) constant.
template <bool kPrior, class C>
__device__ __forceinline__ C log_p_term(C z, C pm, C plv) {
  if constexpr (kPrior) {
    return math::log_p_term(z, pm, plv);
  } else {
    return math::log_std_normal_term(z);
  }
}

// Elements [i, i + 4) of an array of T, in compute type C: one vector load (16 bytes, fp64 two) when `vec`,
// else element by element for q < count (the others repeat element i and are never stored).
template <class T, class C>
__device__ __forceinline__ void load4(const void* base, int64_t i, int count, bool vec, C (&out)[4]) {
  const T* p = static_cast<const T*>(base) + i;
  T v[4];
  if (vec) {
    load_vec(v, p);
  } else {
#pragma unroll
    for (int q = 0; q < 4; ++q) v[q] = p[q < count ? q : 0];
  }
#pragma unroll
  for (int q = 0; q < 4; ++q) out[q] = static_cast<C>(to_float(v[q]));
}

// Stores elements [i, i + count) from x: one vector store when `vec` (count == 4 then).
template <class T, class C>
__device__ __forceinline__ void store4(void* base, int64_t i, int count, bool vec, const C (&x)[4]) {
  T* p = static_cast<T*>(base) + i;
  T v[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) v[q] = store_cast<T>(x[q]);
  if (vec) {
    store_vec(p, v);
  } else {
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (q < count) p[q] = v[q];
  }
}

// Blocks per SM the forward kernel is built for: 4 (64 registers, what ptxas used anyway) for 32- and 16-bit
// inputs; 2 (128 registers) for float64, where without a hint ptxas aimed at 80 registers and spilled around the
// float64 exp (.ci/kernel_resources.py). A bare __launch_bounds__(kThreads, 1) made it use 70-78 registers.
template <class T> constexpr int kForwardMinBlocks = sizeof(T) == 8 ? 2 : 4;

template <class T, int kTPR, bool kPrior>
__global__ void __launch_bounds__(kThreads, kForwardMinBlocks<T>)
    reparam_forward_kernel(const __grid_constant__ ReparamForwardArgs a) {
  static_assert(kTPR == 4 || kTPR == 8 || kTPR == 16 || kTPR == 32 || kTPR == kThreads,
                "4, 8 or 16 lanes, a warp or the whole block per item");
  using C = typename OpMath<T>::type;
  constexpr int kItemsPerBlock = kThreads / kTPR;
  __shared__ C scratch[kThreads / 32];

  const NoiseKey key = noise_key(a.seed_offset);
  const int64_t D = a.dim, R = a.rows, K = a.num_samples;
  const bool sampling = K > 0, log_prob = a.log_q != nullptr;
  const int64_t items = sampling ? K * R : R;
  const int lane = static_cast<int>(threadIdx.x) % kTPR;
  const C log_norm = -static_cast<C>(math::kHalfLog2Pi) * static_cast<C>(D);
  // Rows of a multiple of 4 elements start on a Philox block, so each block's 4 elements are 4 aligned
  // elements of one row: vector loads and stores when the arrays are aligned too.
  const bool vec = D % 4 == 0 && vec_aligned<T>(a.mu) && vec_aligned<T>(a.logvar) && vec_aligned<T>(a.z) &&
                   vec_aligned<T>(a.prior_mu) && vec_aligned<T>(a.prior_logvar);

  // Every thread of the block runs the same iterations (t0 is the block's), so the sums below are reached by
  // every lane of a warp, as the shuffles need, also when a warp holds several items (kTPR < 32) and some of
  // them are past the end (not `active`).
  for (int64_t t0 = static_cast<int64_t>(blockIdx.x) * kItemsPerBlock; t0 < items;
       t0 += static_cast<int64_t>(gridDim.x) * kItemsPerBlock) {
    const int64_t t = t0 + threadIdx.x / kTPR;
    const bool active = t < items;
    const int64_t r = sampling ? t % R : t;  // past the end (not active): never read or written
    const bool first = active && !a.kl_per_dim && t < R;  // the KL of row r goes with its first sample
    const int64_t row = r * D, prow_mu = r * a.prior_mu_row_stride, prow_lv = r * a.prior_logvar_row_stride;
    C kl_acc = 0, lq_acc = 0, lp_acc = 0;
    if (sampling && active) {
      const int64_t s = t * D;  // z's flat index of this item's first element
      for (int64_t g = s / 4 + lane; 4 * g < s + D; g += kTPR) {
        float eps4[4];
        math::normal4_from_bits(math::philox_block(key.seed, key.offset, static_cast<uint64_t>(g)), eps4);
        const int64_t j0 = 4 * g - s;  // row position of the block's number q (may be < 0 or >= D: not this row's)
        C m[4], l[4], pm[4] = {}, plv[4] = {}, z[4];
        if (vec) {  // j0 .. j0 + 3 all in the row
          load4<T>(a.mu, row + j0, 4, true, m);
          load4<T>(a.logvar, row + j0, 4, true, l);
          if constexpr (kPrior) {
            load4<T>(a.prior_mu, prow_mu + j0, 4, true, pm);
            load4<T>(a.prior_logvar, prow_lv + j0, 4, true, plv);
          }
        } else {
#pragma unroll
          for (int q = 0; q < 4; ++q) {  // compile-time q: the arrays stay in registers
            const int64_t j = j0 + q;
            if (j < 0 || j >= D) continue;
            m[q] = load<T>(a.mu, row + j);
            l[q] = load<T>(a.logvar, row + j);
            if constexpr (kPrior) {
              pm[q] = load<T>(a.prior_mu, prow_mu + j);
              plv[q] = load<T>(a.prior_logvar, prow_lv + j);
            }
          }
        }
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const int64_t j = j0 + q;
          if (j < 0 || j >= D) continue;
          const C e = static_cast<C>(eps4[q]);
          z[q] = math::reparam_sample(m[q], l[q], e);
          if (first) kl_acc += kl_term<kPrior>(m[q], l[q], pm[q], plv[q]);
          if (log_prob) {
            lq_acc += math::log_q_term(e, l[q]);
            lp_acc += log_p_term<kPrior>(z[q], pm[q], plv[q]);
          }
        }
        if (vec) {
          store4<T>(a.z, s + j0, 4, true, z);
        } else {
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            const int64_t j = j0 + q;
            if (j >= 0 && j < D) store<T>(a.z, s + j, z[q]);
          }
        }
      }
    } else if (active) {
      for (int64_t j = lane; j < D; j += kTPR) {
        const C m = load<T>(a.mu, row + j), l = load<T>(a.logvar, row + j);
        const C pm = kPrior ? load<T>(a.prior_mu, prow_mu + j) : C(0);
        const C plv = kPrior ? load<T>(a.prior_logvar, prow_lv + j) : C(0);
        kl_acc += kl_term<kPrior>(m, l, pm, plv);
      }
    }
    // A warp or block per item: `first` is the same for all its lanes. Several items a warp: all reduce.
    if (kTPR >= 32 ? first : !a.kl_per_dim) {
      const C total = group_sum<C, kTPR>(kl_acc, scratch);  // kl_acc is 0 where the item is not `first`
      if (first && lane == 0) store<T>(a.kl, r, total);
    }
    if (sampling && log_prob) {
      const C lq = group_sum<C, kTPR>(lq_acc, scratch);
      const C lp = group_sum<C, kTPR>(lp_acc, scratch);
      if (active && lane == 0) {
        store<T>(a.log_q, t, lq + log_norm);
        store<T>(a.log_p, t, lp + log_norm);
      }
    }
  }
}

// Gradients of mu's elements [4 u, 4 u + 4): the KL's, then each sample's through z and log p.
template <class T, bool kPrior>
__global__ void __launch_bounds__(kThreads) reparam_backward_kernel(const __grid_constant__ ReparamBackwardArgs a) {
  using C = typename OpMath<T>::type;
  const NoiseKey key = noise_key(a.seed_offset);
  const int64_t D = a.dim, R = a.rows, K = a.num_samples, N = R * D;
  const int64_t units = (N + 3) / 4;
  // Rows of a multiple of 4 elements: a unit's 4 elements are 4 aligned elements of one row and of each
  // sample's z (N is a multiple of 4 too), so whole units load and store as vectors when aligned.
  const bool vec_ok = D % 4 == 0 && vec_aligned<T>(a.mu) && vec_aligned<T>(a.logvar) && vec_aligned<T>(a.grad_z) &&
                      vec_aligned<T>(a.prior_mu) && vec_aligned<T>(a.prior_logvar) &&
                      vec_aligned<T>(a.grad_mu) && vec_aligned<T>(a.grad_logvar) &&
                      vec_aligned<T>(a.grad_prior_mu) && vec_aligned<T>(a.grad_prior_logvar);
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; u < units;
       u += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i0 = 4 * u;
    const int count = N - i0 < 4 ? static_cast<int>(N - i0) : 4;
    const bool vec = vec_ok && count == 4;
    int64_t row[4], col[4];
    C m[4], l[4], pm[4] = {}, plv[4] = {}, sd[4], inv_vp[4], g_mu[4], g_lv[4], g_pm[4], g_plv[4];
    load4<T>(a.mu, i0, count, vec, m);
    load4<T>(a.logvar, i0, count, vec, l);
    if (vec) {
      const int64_t r = i0 / D, j = i0 - r * D;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        row[q] = r;
        col[q] = j + q;
      }
      if constexpr (kPrior) {
        load4<T>(a.prior_mu, r * a.prior_mu_row_stride + j, 4, true, pm);
        load4<T>(a.prior_logvar, r * a.prior_logvar_row_stride + j, 4, true, plv);
      }
    } else {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int64_t i = q < count ? i0 + q : i0;  // past the end: element i0 again, never stored
        const int64_t r = i / D, j = i - r * D;
        row[q] = r;
        col[q] = j;
        if constexpr (kPrior) {
          pm[q] = load<T>(a.prior_mu, r * a.prior_mu_row_stride + j);
          plv[q] = load<T>(a.prior_logvar, r * a.prior_logvar_row_stride + j);
        }
      }
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t r = row[q];
      sd[q] = math::gexp(C(0.5) * l[q]);
      // exp(-lvp) for the log_p gradient below: once per element, not once per sample.
      inv_vp[q] = a.grad_log_p != nullptr ? math::gexp(-plv[q]) : C(1);
      const C gk = a.kl_per_dim ? static_cast<const C*>(a.grad_kl)[col[q]] : load<T>(a.grad_kl, r);
      const math::KlGrad<C> kg = math::kl_normal_grad(m[q], l[q], pm[q], plv[q]);
      C lv_const = 0;  // d log_q / d lv = -1/2 per sample (log_q_term with eps fixed; mu cancels through z)
      if (a.grad_log_q != nullptr)
        for (int64_t k = 0; k < K; ++k) lv_const += C(-0.5) * load<T>(a.grad_log_q, k * R + r);
      g_mu[q] = gk * kg.mu;
      g_lv[q] = gk * kg.lv + lv_const;
      g_pm[q] = gk * kg.mp;
      g_plv[q] = gk * kg.lvp;
    }
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e0 = k * N + i0;  // z's flat index of element i0 in sample k
      const int shift = static_cast<int>(e0 % 4);
      float lo[4], hi[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      math::normal4_from_bits(math::philox_block(key.seed, key.offset, static_cast<uint64_t>(e0 / 4)), lo);
      if (shift + count > 4)
        math::normal4_from_bits(math::philox_block(key.seed, key.offset, static_cast<uint64_t>(e0 / 4 + 1)), hi);
      C gz[4];
      load4<T>(a.grad_z, e0, count, vec, gz);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        if (q >= count) continue;
        const int pos = shift + q;
        float eps_f = lo[0];  // select with compile-time indices: the arrays stay in registers
#pragma unroll
        for (int w = 0; w < 8; ++w)
          if (w == pos) eps_f = w < 4 ? lo[w & 3] : hi[w & 3];
        const C e = static_cast<C>(eps_f);
        C g = gz[q];
        if (a.grad_log_p != nullptr) {
          const C h = load<T>(a.grad_log_p, k * R + row[q]);
          const math::LogPGrad<C> lg = math::log_p_term_grad(m[q] + sd[q] * e, pm[q], inv_vp[q]);
          g += h * lg.z;
          g_pm[q] += h * lg.mp;
          g_plv[q] += h * lg.lvp;
        }
        g_mu[q] += g;  // z = mu + sd * eps: dz/dmu = 1, dz/dlv = sd * eps / 2
        g_lv[q] += g * C(0.5) * sd[q] * e;
      }
    }
    store4<T>(a.grad_mu, i0, count, vec, g_mu);
    store4<T>(a.grad_logvar, i0, count, vec, g_lv);
    if constexpr (kPrior) {
      store4<T>(a.grad_prior_mu, i0, count, vec, g_pm);
      store4<T>(a.grad_prior_logvar, i0, count, vec, g_plv);
    }
  }
}

// Per-dim KL, first pass: thread w = g * dim + j sums column j's KL over rows [g G, min(rows, (g + 1) G)) in
// row order, in double (the terms are >= 0, so a float sum of a long group would drift by up to G ulp), into
// partials[w], or into kl itself (rounded to C) when there is a single group (partials == nullptr). Mu, logvar
// and the prior are read as the forward kernel reads them (rows of dim, prior rows through their row strides).
template <class T, bool kPrior>
__global__ void __launch_bounds__(kThreads)
    kl_column_partials_kernel(const __grid_constant__ ReparamForwardArgs a, int64_t group_rows, int64_t groups,
                              double* __restrict__ partials) {
  using C = typename OpMath<T>::type;
  const int64_t D = a.dim, R = a.rows, work = groups * D;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; w < work;
       w += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t g = w / D, j = w - g * D;
    const int64_t begin = g * group_rows, end = R - begin < group_rows ? R : begin + group_rows;
    double acc = 0;
    for (int64_t r = begin; r < end; ++r) {
      const C m = load<T>(a.mu, r * D + j), l = load<T>(a.logvar, r * D + j);
      const C pm = kPrior ? load<T>(a.prior_mu, r * a.prior_mu_row_stride + j) : C(0);
      const C plv = kPrior ? load<T>(a.prior_logvar, r * a.prior_logvar_row_stride + j) : C(0);
      acc += static_cast<double>(kl_term<kPrior>(m, l, pm, plv));
    }
    if (partials != nullptr) {
      partials[w] = acc;
    } else {
      static_cast<C*>(a.kl)[w] = static_cast<C>(acc);
    }
  }
}

// Per-dim KL, second pass: kl[j] = the partials of column j summed over the groups in order (double), rounded to
// the compute type C once.
template <class C>
__global__ void __launch_bounds__(kThreads)
    kl_column_total_kernel(const double* __restrict__ partials, int64_t groups, int64_t dim, C* __restrict__ kl) {
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < dim;
       j += static_cast<int64_t>(gridDim.x) * kThreads) {
    double acc = 0;
    for (int64_t g = 0; g < groups; ++g) acc += partials[g * dim + j];
    kl[j] = static_cast<C>(acc);
  }
}

unsigned grid_for(int64_t work_items, int64_t per_block) {
  const int64_t g = (work_items + per_block - 1) / per_block;
  return static_cast<unsigned>(g < kMaxGrid ? g : kMaxGrid);
}

// The per-dim KL's two passes (one when there is a single group: its partial is the total, same bits).
template <class T, bool kPrior>
cudaError_t kl_columns(const ReparamForwardArgs& a, cudaStream_t stream) {
  using C = typename OpMath<T>::type;
  const int64_t group_rows = reparam_kl_group_rows(a.rows), groups = reparam_kl_groups(a.rows);
  if (a.dim <= 0) return cudaSuccess;  // nothing to sum, and a grid of 0 blocks is a launch error
  if (groups > 1 && a.kl_partials == nullptr) return cudaErrorInvalidValue;
  double* partials = groups > 1 ? static_cast<double*>(a.kl_partials) : nullptr;
  const unsigned grid = grid_for(groups * a.dim, kThreads);
  kl_column_partials_kernel<T, kPrior><<<grid, kThreads, 0, stream>>>(a, group_rows, groups, partials);
  if (groups == 1) return cudaGetLastError();
  if (const cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  kl_column_total_kernel<C><<<grid_for(a.dim, kThreads), kThreads, 0, stream>>>(partials, groups, a.dim,
                                                                               static_cast<C*>(a.kl));
  return cudaGetLastError();
}

template <class T, bool kPrior>
cudaError_t forward(const ReparamForwardArgs& a, cudaStream_t stream) {
  const int64_t items = a.num_samples > 0 ? a.num_samples * a.rows : a.rows;
  // Per-dim KL without samples: the main kernel would have nothing left to do.
  if (!a.kl_per_dim || a.num_samples > 0) {
    // Lanes per item: enough for the Philox blocks a row touches (one more than D / 4 when a row can start
    // inside a block), so that short rows (latent dims up to 64) do not leave most of a warp idle.
    const int64_t blocks_per_row = (a.dim + 3) / 4 + (a.dim % 4 != 0 ? 1 : 0);
    if (a.dim >= 1024) {
      reparam_forward_kernel<T, kThreads, kPrior><<<grid_for(items, 1), kThreads, 0, stream>>>(a);
    } else if (blocks_per_row > 16) {
      reparam_forward_kernel<T, 32, kPrior><<<grid_for(items, kThreads / 32), kThreads, 0, stream>>>(a);
    } else if (blocks_per_row > 8) {
      reparam_forward_kernel<T, 16, kPrior><<<grid_for(items, kThreads / 16), kThreads, 0, stream>>>(a);
    } else if (blocks_per_row > 4) {
      reparam_forward_kernel<T, 8, kPrior><<<grid_for(items, kThreads / 8), kThreads, 0, stream>>>(a);
    } else {
      reparam_forward_kernel<T, 4, kPrior><<<grid_for(items, kThreads / 4), kThreads, 0, stream>>>(a);
    }
    if (const cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  }
  return a.kl_per_dim ? kl_columns<T, kPrior>(a, stream) : cudaSuccess;
}

template <class T, bool kPrior>
cudaError_t backward(const ReparamBackwardArgs& a, cudaStream_t stream) {
  const int64_t units = (a.rows * a.dim + 3) / 4;
  reparam_backward_kernel<T, kPrior><<<grid_for(units, kThreads), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

template <class Args, class Fn>
cudaError_t with_dtype(const Args& a, Fn&& fn) {
  switch (a.dtype) {
    case Dtype::f32: return fn(float{});
    case Dtype::f64: return fn(double{});
    case Dtype::f16: return fn(__half{});
    case Dtype::bf16: return fn(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t reparam_forward(const ReparamForwardArgs& a, cudaStream_t stream) {
  if (a.rows <= 0) return cudaSuccess;
  return with_dtype(a, [&](auto tag) {
    using T = decltype(tag);
    return a.prior_mu != nullptr ? forward<T, true>(a, stream) : forward<T, false>(a, stream);
  });
}

cudaError_t reparam_backward(const ReparamBackwardArgs& a, cudaStream_t stream) {
  if (a.rows <= 0 || a.dim <= 0) return cudaSuccess;
  return with_dtype(a, [&](auto tag) {
    using T = decltype(tag);
    return a.prior_mu != nullptr ? backward<T, true>(a, stream) : backward<T, false>(a, stream);
  });
}

}  // namespace fused_kingma::cuda
