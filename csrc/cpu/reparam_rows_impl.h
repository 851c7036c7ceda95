// The CPU reparameterize / gaussian_kl row loops, as templates over the ISA (isa.h) and the configuration
// (dtype, prior, log-probs). One pass over each (sample, row) computes z, the per-row KL and log-densities; the
// backward regenerates the noise from (seed, offset). Per-row sums use a fixed 16-lane order, so results never
// depend on thread count or ISA. Included only by the per-ISA files reparam_rows_<isa>.cpp, as their first line:
// each instantiates reparam_rows.h's entry points for its ISA (FK_INSTANTIATE_REPARAM_ROWS), and the three
// compile in parallel.
#pragma once

// Instruction scheduling before register allocation (GCC leaves it off on x86, -fschedule-insns): Box-Muller is a
// ~70-cycle dependency chain per vector (uniform, log, sqrt, multiply), and in source order the next vector's
// independent work waits behind it for room in the FP scheduler. Interleaved, Box-Muller alone ran ~20% faster on
// Zen 3 (AVX2), reparam forward and backward 4-21% (with philox_avx2.cpp scheduled too). sched-pressure keeps
// the reordering from spilling. Only the order of instructions changes, never an operation or its rounding (the
// outputs are bit for bit the same). Before any include (this header comes first in the files that include it),
// so inlined headers get it too.
#pragma GCC optimize("schedule-insns", "sched-pressure")

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "half_convert.h"
#include "isa.h"
#include "math/gaussian.h"
#include "reparam_noise.h"
#include "reparam_rows.h"

namespace fused_kingma::cpu {
namespace reparam_detail {

#define FK_ALWAYS_INLINE inline __attribute__((always_inline))

template <class T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

// Sum in a fixed order: 16 strided partial sums folded pairwise, then the tail.
template <class T>
FK_ALWAYS_INLINE T row_sum(const T* __restrict x, int64_t n) {
  constexpr int W = 16;
  static_assert(W == 16, "the fold below is written for 16 lanes");
  T acc[W] = {};
  int64_t j = 0;
  for (; j + W <= n; j += W)
    for (int l = 0; l < W; ++l) acc[l] += x[j + l];
  // The fold written out level by level: as a nested loop GCC kept it scalar, through the stack, at a cost
  // comparable to summing a 256-wide row.
  for (int l = 0; l < 8; ++l) acc[l] += acc[l + 8];
  for (int l = 0; l < 4; ++l) acc[l] += acc[l + 4];
  for (int l = 0; l < 2; ++l) acc[l] += acc[l + 2];
  acc[0] += acc[1];
  T tail = 0;
  for (; j < n; ++j) tail += x[j];
  return acc[0] + tail;
}

// Rows whose noise is generated together: short rows would otherwise leave most of each 16-block
// AVX-512 Philox group unused. About 2048 normals (8 KB) per tile, at least one row.
inline int64_t rows_per_noise_tile(int64_t D) { return D >= 2048 ? 1 : 2048 / (D > 0 ? D : 1); }

template <class S, bool kPrior, bool kLogProb>
struct FwdCfg {
  using scalar_t = S;
  using acc_t = typename AccOf<S>::type;
  static constexpr bool prior = kPrior, log_prob = kLogProb;
};

// Whether every |x| <= 87 (NaN and inf fail), so exp of x, -x and x / 2 may use math::fast_expf_moderate.
// Checking a row costs a max over its bit patterns (~1.5 cycles per 16 floats); the moderate exp saves ~4.
// The running max of |x| as a bit pattern (NaN and inf order above every finite value).
FK_ALWAYS_INLINE uint32_t max_abs_bits(uint32_t max_so_far, float x) {
  const uint32_t u = math::float_bits(x) & 0x7fffffffu;
  return max_so_far > u ? max_so_far : u;
}

template <class T>
FK_ALWAYS_INLINE bool exp_args_moderate(const T* __restrict x, int64_t n) {
  if constexpr (std::is_same_v<T, double>) {
    return false;  // double uses std::exp
  } else {
    uint32_t max_abs = 0;
    for (int64_t j = 0; j < n; ++j) max_abs = max_abs_bits(max_abs, static_cast<float>(x[j]));
    return max_abs <= math::kExpModerateMaxBits;
  }
}

// Whether a row's logvar and, with a prior, its prior logvar are all moderate: every exp of the row's loops
// takes one of those (or its half or negative).
template <class Cfg, class T>
FK_ALWAYS_INLINE bool row_exp_args_moderate(const T* __restrict lv, const T* __restrict lvp, int64_t n) {
  return exp_args_moderate(lv, n) && (!Cfg::prior || exp_args_moderate(lvp, n));
}

// exp in a row loop: the moderate-range form when the caller checked the row's arguments (float only).
template <bool kModerate, class A>
FK_ALWAYS_INLINE A row_exp(A x) {
  if constexpr (kModerate && std::is_same_v<A, float>) {
    return math::fast_expf_moderate(x);
  } else {
    return math::gexp(x);
  }
}

// KL terms of one row (no sampling).
template <class Cfg, bool kModerateExp, class S = typename Cfg::scalar_t, class A = typename Cfg::acc_t>
FK_ALWAYS_INLINE void kl_row(const S* __restrict mu, const S* __restrict lv, const S* __restrict mp,
                             const S* __restrict lvp, A* __restrict klb, int64_t D) {
  const auto exp_of = [](A x) { return row_exp<kModerateExp>(x); };
  for (int64_t j = 0; j < D; ++j) {
    const A m = static_cast<A>(mu[j]), l = static_cast<A>(lv[j]);
    if constexpr (Cfg::prior) {
      klb[j] = math::kl_normal(m, l, static_cast<A>(mp[j]), static_cast<A>(lvp[j]), exp_of);
    } else {
      klb[j] = math::kl_std_normal(m, l, exp_of);
    }
  }
}

// z of one row and, for the first sample, the KL terms from the same exp(lv / 2).
template <class Cfg, bool kWithKl, bool kModerateExp, class S = typename Cfg::scalar_t,
          class A = typename Cfg::acc_t>
FK_ALWAYS_INLINE void sample_row(const S* __restrict mu, const S* __restrict lv, const S* __restrict mp,
                                 const S* __restrict lvp, const float* __restrict eps, S* __restrict z,
                                 A* __restrict klb, A* __restrict lqb, A* __restrict lpb, int64_t D) {
  for (int64_t j = 0; j < D; ++j) {
    const A m = static_cast<A>(mu[j]), l = static_cast<A>(lv[j]), e = static_cast<A>(eps[j]);
    const A sd = row_exp<kModerateExp>(A(0.5) * l);
    const A zj = m + sd * e;
    z[j] = static_cast<S>(zj);
    if constexpr (kWithKl) {
      if constexpr (Cfg::prior) {
        const A d = m - static_cast<A>(mp[j]);
        const A plv = static_cast<A>(lvp[j]);
        klb[j] = A(0.5) * ((sd * sd + d * d) * row_exp<kModerateExp>(-plv) - A(1) + plv - l);
      } else {
        klb[j] = A(0.5) * (sd * sd + m * m - A(1) - l);
      }
    }
    if constexpr (Cfg::log_prob) {
      lqb[j] = math::log_q_term(e, l);
      if constexpr (Cfg::prior) {
        lpb[j] = math::log_p_term(zj, static_cast<A>(mp[j]), static_cast<A>(lvp[j]));
      } else {
        lpb[j] = math::log_std_normal_term(zj);
      }
    }
  }
}

// Whether rows of S pass through float copies around the sample loop. For a 2-byte S, GCC vectorizes
// sample_row 32 elements at a time (one register of S): two registers of floats per temporary, and the exp
// temporaries spill. Widening the inputs and narrowing z in loops of their own lets the sample loop run
// on floats, 16 at a time: 45 instead of 55 instructions per 16 elements on AVX-512, which pays for the
// conversion loops. (The backward, tried the same way, lost to its five conversions for bf16: only fp16 on
// F16C ISAs, whose conversions are single instructions, is widened there.)
template <class S>
constexpr bool kWidenRows = sizeof(S) < sizeof(float);

// fp16 rows convert with the F16C instructions where the ISA has them (half_convert.h: the same values, one
// instruction per 8 or 16 elements instead of GCC's ~15 per vector for c10::Half's bit tricks).
template <class Isa, class S>
constexpr bool kF16cRows = std::is_same_v<S, c10::Half> && !std::is_same_v<Isa, IsaBaseline>;

template <class Isa, class Src, class Dst>
FK_ALWAYS_INLINE void convert_row(const Src* __restrict in, Dst* __restrict out, int64_t n) {
  if constexpr (kF16cRows<Isa, Src>) {
    halves_to_floats(isa_of<Isa>(), reinterpret_cast<const uint16_t*>(in), out, n);
  } else if constexpr (kF16cRows<Isa, Dst>) {
    floats_to_halves(isa_of<Isa>(), in, reinterpret_cast<uint16_t*>(out), n);
  } else {
    for (int64_t j = 0; j < n; ++j) out[j] = static_cast<Dst>(in[j]);
  }
}

// convert_row to float and exp_args_moderate of the result (in one pass where the conversion is a loop here).
template <class Isa, class S>
FK_ALWAYS_INLINE bool widen_row_exp_args_moderate(const S* __restrict in, float* __restrict out, int64_t n) {
  if constexpr (kF16cRows<Isa, S>) {
    convert_row<Isa>(in, out, n);
    return exp_args_moderate(out, n);
  } else {
    uint32_t max_abs = 0;
    for (int64_t j = 0; j < n; ++j) {
      out[j] = static_cast<float>(in[j]);
      max_abs = max_abs_bits(max_abs, out[j]);
    }
    return max_abs <= math::kExpModerateMaxBits;
  }
}

// Rows processed by one call of the row loops. Short rows that lie back to back in every array (mu, lv, z,
// the noise, and the prior unless it is shared) go through the loops as one flat run of about kRunElems
// elements: a loop per 8 or 32 elements cost as much in setup (the exp-range check, the loop's vector prologue
// and tail) as in work. The per-row sums are then taken from the run's buffers row by row, in the same order
// as for a lone row, so the results do not depend on the run length.
constexpr int64_t kRunElems = 512;
inline int64_t rows_per_run(int64_t D, bool rows_back_to_back) {
  return rows_back_to_back && D < kRunElems ? kRunElems / (D > 0 ? D : 1) : 1;
}

// Whether prior rows lie back to back like mu's (a prior expanded to mu's shape, or none).
template <class Cfg, class Args>
FK_ALWAYS_INLINE bool prior_rows_back_to_back(const Args& a) {
  return !Cfg::prior || (a.mp_row_stride == a.D && a.lvp_row_stride == a.D);
}

template <class Isa, class Cfg>
FK_ALWAYS_INLINE void fwd_rows_impl(const ReparamFwdArgs& a, int64_t lo, int64_t hi) {
  using S = typename Cfg::scalar_t;
  using A = typename Cfg::acc_t;
  const int64_t R = a.R, D = a.D;
  const S* __restrict mu_all = static_cast<const S*>(a.mu);
  const S* __restrict lv_all = static_cast<const S*>(a.lv);
  const S* __restrict mp_all = static_cast<const S*>(a.mp);
  const S* __restrict lvp_all = static_cast<const S*>(a.lvp);
  const int64_t tile_rows = rows_per_noise_tile(D);
  const int64_t run_rows = rows_per_run(D, prior_rows_back_to_back<Cfg>(a));
  const int64_t run_len = run_rows * D;
  std::vector<float> noise(noise_buffer_len(tile_rows * D));
  const float* tile_eps = nullptr;  // noise of rows [tile_begin, tile_end)
  int64_t tile_begin = 0, tile_end = 0;
  std::vector<A> kl_buf(run_len), lq_buf(Cfg::log_prob ? run_len : 0), lp_buf(Cfg::log_prob ? run_len : 0);
  A* __restrict klb = kl_buf.data();
  A* __restrict lqb = lq_buf.data();
  A* __restrict lpb = lp_buf.data();
  std::vector<float> wide(kWidenRows<S> ? (Cfg::prior ? 5 : 3) * run_len : 0);  // mu, lv, z (, mp, lvp) as floats
  const A log_norm = -static_cast<A>(math::kHalfLog2Pi) * static_cast<A>(D);
  // Runs [t, t + n): t = k * R + r when sampling, r otherwise; a run stays within one sample and one noise tile.
  for (int64_t t = lo, n = 0; t < hi; t += n) {
    const int64_t r = a.K > 0 ? t % R : t;
    const bool first_sample = t < R;  // the KL of row r is computed once, with its first sample
    if (a.K > 0 && t >= tile_end) {
      tile_begin = t;
      tile_end = std::min(hi, t + tile_rows);
      // The rows of the next tile (input rows of a prior shared by all rows stay cached anyway).
      const int64_t next_rows = std::min(hi, tile_end + tile_rows) - tile_end;
      PrefetchPlan next;
      if (next_rows > 0) {
        const int64_t next_r = tile_end % R;
        const int64_t bytes = std::min(next_rows, R - next_r) * D * static_cast<int64_t>(sizeof(S));
        next.add(mu_all + next_r * D, bytes, false);
        next.add(lv_all + next_r * D, bytes, false);
        next.add(static_cast<S*>(a.z) + tile_end * D, next_rows * D * static_cast<int64_t>(sizeof(S)), true);
      }
      tile_eps = normals_of_range<Isa>(a.seed, a.offset, static_cast<uint64_t>(t) * static_cast<uint64_t>(D),
                                       (tile_end - t) * D, noise.data(), next);
    }
    n = std::min({run_rows, R - r, (a.K > 0 ? tile_end : hi) - t});
    const int64_t len = n * D;  // the run's elements, back to back in every array
    const S* __restrict mu = mu_all + r * D;
    const S* __restrict lv = lv_all + r * D;
    const S* __restrict mp = Cfg::prior ? mp_all + r * a.mp_row_stride : nullptr;
    const S* __restrict lvp = Cfg::prior ? lvp_all + r * a.lvp_row_stride : nullptr;
    if (a.K > 0) {
      const float* __restrict eps = tile_eps + (t - tile_begin) * D;
      S* __restrict z = static_cast<S*>(a.z) + t * D;
      // z of the run, and its KL terms with the first sample, from rows of T (S, or float copies of S).
      const auto sample = [&](const auto* mu_t, const auto* lv_t, const auto* mp_t, const auto* lvp_t, auto* z_t,
                              bool moderate) {
        if (first_sample) {
          if (moderate) sample_row<Cfg, true, true>(mu_t, lv_t, mp_t, lvp_t, eps, z_t, klb, lqb, lpb, len);
          else sample_row<Cfg, true, false>(mu_t, lv_t, mp_t, lvp_t, eps, z_t, klb, lqb, lpb, len);
        } else {
          if (moderate) sample_row<Cfg, false, true>(mu_t, lv_t, mp_t, lvp_t, eps, z_t, klb, lqb, lpb, len);
          else sample_row<Cfg, false, false>(mu_t, lv_t, mp_t, lvp_t, eps, z_t, klb, lqb, lpb, len);
        }
      };
      if constexpr (kWidenRows<S>) {
        float* __restrict mu_f = wide.data();
        float* __restrict lv_f = mu_f + len;
        float* __restrict z_f = lv_f + len;
        float* __restrict mp_f = Cfg::prior ? z_f + len : nullptr;
        float* __restrict lvp_f = Cfg::prior ? z_f + 2 * len : nullptr;
        convert_row<Isa>(mu, mu_f, len);
        bool moderate = widen_row_exp_args_moderate<Isa>(lv, lv_f, len);
        if constexpr (Cfg::prior) {
          convert_row<Isa>(mp, mp_f, len);
          moderate = widen_row_exp_args_moderate<Isa>(lvp, lvp_f, len) && moderate;
        }
        sample(mu_f, lv_f, mp_f, lvp_f, z_f, moderate);
        convert_row<Isa>(z_f, z, len);
      } else {
        sample(mu, lv, mp, lvp, z, row_exp_args_moderate<Cfg>(lv, lvp, len));
      }
      if constexpr (Cfg::log_prob) {
        for (int64_t i = 0; i < n; ++i) {
          static_cast<S*>(a.lq)[t + i] = static_cast<S>(row_sum(lqb + i * D, D) + log_norm);
          static_cast<S*>(a.lp)[t + i] = static_cast<S>(row_sum(lpb + i * D, D) + log_norm);
        }
      }
    } else {
      if (row_exp_args_moderate<Cfg>(lv, lvp, len)) {
        kl_row<Cfg, true>(mu, lv, mp, lvp, klb, len);
      } else {
        kl_row<Cfg, false>(mu, lv, mp, lvp, klb, len);
      }
    }
    if (first_sample) {
      for (int64_t i = 0; i < n; ++i) {
        const A* __restrict terms = klb + i * D;
        if (a.kl_per_dim) {  // this row's terms into its group's per-dim sums (rows of a group run in order)
          double* __restrict group_sums = a.kl_partial + ((r + i) / a.kl_group_rows) * D;
          for (int64_t j = 0; j < D; ++j) group_sums[j] += static_cast<double>(terms[j]);
        } else {
          static_cast<S*>(a.kl)[r + i] = static_cast<S>(row_sum(terms, D));
        }
      }
    }
  }
}

template <class S, bool kPrior, bool kLogP>
struct BwdCfg {
  using scalar_t = S;
  using acc_t = typename AccOf<S>::type;
  static constexpr bool prior = kPrior, log_p = kLogP;
};

template <class S>
struct GradRows {  // the four gradient rows of one (row, pass): accumulators or outputs
  S *mu, *lv, *mp, *lvp;
};

// Backward of one row for one pass (sample k, or the KL alone): the KL gradient when kInit (the first pass,
// which also starts the sums) plus the gradient through sample k's z and log_p, from one exp(lv / 2) per
// element. kLast: the pass writes the outputs in S; otherwise the running sums in acc_t go to `acc`.
template <class Cfg, bool kInit, bool kLast, bool kSample, bool kModerateExp, class S = typename Cfg::scalar_t,
          class A = typename Cfg::acc_t>
FK_ALWAYS_INLINE void bwd_row(const S* __restrict mu, const S* __restrict lv, const S* __restrict mp,
                              const S* __restrict lvp, const float* __restrict eps, const S* __restrict gz,
                              const A* __restrict gk, A glp, A lv_const, GradRows<A> acc, GradRows<S> out,
                              int64_t D) {
  A* __restrict gmu = acc.mu;
  A* __restrict glv = acc.lv;
  A* __restrict gmp = acc.mp;
  A* __restrict glvp = acc.lvp;
  S* __restrict out_mu = out.mu;
  S* __restrict out_lv = out.lv;
  S* __restrict out_mp = out.mp;
  S* __restrict out_lvp = out.lvp;
  for (int64_t j = 0; j < D; ++j) {
    const A m = static_cast<A>(mu[j]), l = static_cast<A>(lv[j]);
    const A pm = Cfg::prior ? static_cast<A>(mp[j]) : A(0);
    const A inv_vp = Cfg::prior ? row_exp<kModerateExp>(-static_cast<A>(lvp[j])) : A(1);
    const A sd = row_exp<kModerateExp>(A(0.5) * l);
    A g_mu = 0, g_lv = 0, g_mp = 0, g_lvp = 0;
    if constexpr (kInit) {  // d KL / d(mu, lv, mp, lvp), see math::kl_normal_grad
      const A d = m - pm;
      const A var_ratio = sd * sd * inv_vp;
      g_mu = gk[j] * d * inv_vp;
      g_lv = gk[j] * A(0.5) * (var_ratio - A(1)) + lv_const;
      if constexpr (Cfg::prior) {
        g_mp = -g_mu;
        g_lvp = gk[j] * A(0.5) * (A(1) - var_ratio - d * d * inv_vp);
      }
    }
    if constexpr (kSample) {
      const A e = static_cast<A>(eps[j]);
      A g = static_cast<A>(gz[j]);
      if constexpr (Cfg::log_p) {
        const A d = m + sd * e - pm;
        g -= glp * d * inv_vp;  // d log_p / dz = -(z - mp) / vp
        if constexpr (Cfg::prior) {
          g_mp += glp * d * inv_vp;
          g_lvp += glp * (A(0.5) * d * d * inv_vp - A(0.5));
        }
      }
      g_mu += g;
      g_lv += g * A(0.5) * sd * e;
    }
    if constexpr (!kInit) {
      g_mu += gmu[j];
      g_lv += glv[j];
      if constexpr (Cfg::prior) {
        g_mp += gmp[j];
        g_lvp += glvp[j];
      }
    }
    if constexpr (kLast) {
      out_mu[j] = static_cast<S>(g_mu);
      out_lv[j] = static_cast<S>(g_lv);
      if constexpr (Cfg::prior) {
        out_mp[j] = static_cast<S>(g_mp);
        out_lvp[j] = static_cast<S>(g_lvp);
      }
    } else {
      gmu[j] = g_mu;
      glv[j] = g_lv;
      if constexpr (Cfg::prior) {
        gmp[j] = g_mp;
        glvp[j] = g_lvp;
      }
    }
  }
}

// One row's pass k of K (K == 0: the KL alone, gz unused): the bwd_row for its place among the passes. Rows of
// S, or float copies of them (S = float; fp16 on F16C ISAs, see bwd_rows_impl).
template <class Cfg, bool kModerateExp, class S = typename Cfg::scalar_t, class A = typename Cfg::acc_t>
FK_ALWAYS_INLINE void bwd_row_pass(int64_t K, int64_t k, const S* mu, const S* lv, const S* mp, const S* lvp,
                                   const float* eps, const S* gz, A glp, const A* gk, A lv_const, const GradRows<A>& acc,
                                   const GradRows<S>& out, int64_t D) {
  if (K == 0) {
    bwd_row<Cfg, true, true, false, kModerateExp>(mu, lv, mp, lvp, static_cast<const float*>(nullptr),
                                                  static_cast<const S*>(nullptr), gk, A(0), lv_const, acc, out, D);
    return;
  }
  const bool first = k == 0, last = k == K - 1;
  if (first && last) bwd_row<Cfg, true, true, true, kModerateExp>(mu, lv, mp, lvp, eps, gz, gk, glp, lv_const, acc, out, D);
  else if (first) bwd_row<Cfg, true, false, true, kModerateExp>(mu, lv, mp, lvp, eps, gz, gk, glp, lv_const, acc, out, D);
  else if (last) bwd_row<Cfg, false, true, true, kModerateExp>(mu, lv, mp, lvp, eps, gz, gk, glp, lv_const, acc, out, D);
  else bwd_row<Cfg, false, false, true, kModerateExp>(mu, lv, mp, lvp, eps, gz, gk, glp, lv_const, acc, out, D);
}

// Rows [lo, hi) in tiles: for each sample k, the noise of a whole tile (rows k*R + r, consecutive in the
// flat index) comes from one generation; each row's gradient sums over k run in acc_t buffers (one plane per
// gradient, rows back to back). Within a tile, runs of short rows go through bwd_row as one (rows_per_run)
// when nothing per row but d loss / d kl enters the loop: no grad_log_q and no log_p gradient.
template <class Isa, class Cfg>
FK_ALWAYS_INLINE void bwd_rows_impl(const ReparamBwdArgs& a, int64_t lo, int64_t hi) {
  using S = typename Cfg::scalar_t;
  using A = typename Cfg::acc_t;
  const int64_t R = a.R, D = a.D, K = a.K;
  const int64_t tile_rows = rows_per_noise_tile(D);
  const int64_t run_rows =
      std::min(tile_rows, rows_per_run(D, prior_rows_back_to_back<Cfg>(a) && a.glq == nullptr && !Cfg::log_p));
  const int64_t run_cap = run_rows * D, plane = tile_rows * D;
  std::vector<float> noise(K > 0 ? noise_buffer_len(tile_rows * D) : 0);
  std::vector<A> sums(K > 1 ? 4 * plane : 0), row_consts(2 * tile_rows);
  // d loss / d kl of each coordinate of a run: each row's gk repeated, or with kl_per_dim gkl once per row.
  std::vector<A> gk_run(a.kl_per_dim && run_rows == 1 ? 0 : run_cap);
  // fp16 with F16C: the input rows (mu, lv, mp, lvp, gz) and the output rows widened / narrowed around bwd_row.
  std::vector<float> wide(kF16cRows<Isa, S> ? 9 * run_cap : 0);
  A* __restrict gk = row_consts.data();  // d loss / d kl of each row of the tile
  A* __restrict lv_const = gk + tile_rows;  // d loss / d lv through log_q, per row
  for (int64_t r0 = lo; r0 < hi; r0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, hi - r0);
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t r = r0 + i;
      gk[i] = a.kl_per_dim ? A(0) : static_cast<A>(static_cast<const S*>(a.gkl)[r]);
      A glq_sum = 0;  // d log_q / d lv = -1/2 per coordinate and sample (mu cancels through z)
      if (a.glq != nullptr)
        for (int64_t k = 0; k < K; ++k) glq_sum += static_cast<A>(static_cast<const S*>(a.glq)[k * R + r]);
      lv_const[i] = A(-0.5) * glq_sum;
    }
    for (int64_t k = 0; k < (K > 0 ? K : 1); ++k) {
      const float* eps_tile = nullptr;
      if (K > 0) {
        // What the next (sample, tile) pass reads and writes: the next sample's grad_z rows of this tile, or
        // for the last sample the next tile's inputs and outputs.
        PrefetchPlan next;
        const int64_t es = static_cast<int64_t>(sizeof(S));
        if (k + 1 < K) {
          next.add(static_cast<const S*>(a.gz) + ((k + 1) * R + r0) * D, rows * D * es, false);
        } else if (r0 + rows < hi) {
          const int64_t r1 = r0 + rows, n1 = std::min(tile_rows, hi - r1) * D * es;
          next.add(static_cast<const S*>(a.mu) + r1 * D, n1, false);
          next.add(static_cast<const S*>(a.lv) + r1 * D, n1, false);
          next.add(static_cast<const S*>(a.gz) + r1 * D, n1, false);
          next.add(static_cast<S*>(a.gmu) + r1 * D, n1, true);
          next.add(static_cast<S*>(a.glv) + r1 * D, n1, true);
        }
        eps_tile = normals_of_range<Isa>(a.seed, a.offset, static_cast<uint64_t>(k * R + r0) * static_cast<uint64_t>(D),
                                         rows * D, noise.data(), next);
      }
      for (int64_t i = 0, n = 0; i < rows; i += n) {  // runs of rows i .. i + n - 1 of the tile
        n = std::min(run_rows, rows - i);
        const int64_t r = r0 + i, t = k * R + r, len = n * D;
        const S* mu = static_cast<const S*>(a.mu) + r * D;
        const S* lv = static_cast<const S*>(a.lv) + r * D;
        const S* mp = Cfg::prior ? static_cast<const S*>(a.mp) + r * a.mp_row_stride : nullptr;
        const S* lvp = Cfg::prior ? static_cast<const S*>(a.lvp) + r * a.lvp_row_stride : nullptr;
        A* acc_row = sums.empty() ? nullptr : sums.data() + i * D;
        const GradRows<A> acc{acc_row, acc_row + plane, acc_row + 2 * plane, acc_row + 3 * plane};
        const GradRows<S> out{static_cast<S*>(a.gmu) + r * D, static_cast<S*>(a.glv) + r * D,
                              Cfg::prior ? static_cast<S*>(a.gmp) + r * D : nullptr,
                              Cfg::prior ? static_cast<S*>(a.glvp) + r * D : nullptr};
        const float* eps = K > 0 ? eps_tile + i * D : nullptr;
        const S* gz = K > 0 ? static_cast<const S*>(a.gz) + t * D : nullptr;
        // Per-row scalars of the run's first row: a run of several rows has none but gk (see above).
        const A glp = Cfg::log_p && K > 0 ? static_cast<A>(static_cast<const S*>(a.glp)[t]) : A(0);
        const A* gk_row = static_cast<const A*>(a.gkl);
        if (!gk_run.empty()) {
          if (k == 0)  // only the first pass reads it
            for (int64_t q = 0; q < n; ++q) {
              A* __restrict dst = gk_run.data() + q * D;
              if (a.kl_per_dim) std::copy(gk_row, gk_row + D, dst);
              else std::fill(dst, dst + D, gk[i + q]);
            }
          gk_row = gk_run.data();
        }
        const auto pass = [&](const auto* mu_t, const auto* lv_t, const auto* mp_t, const auto* lvp_t,
                              const auto* gz_t, const auto& out_t, bool moderate) {
          if (moderate) bwd_row_pass<Cfg, true>(K, k, mu_t, lv_t, mp_t, lvp_t, eps, gz_t, glp, gk_row, lv_const[i], acc, out_t, len);
          else bwd_row_pass<Cfg, false>(K, k, mu_t, lv_t, mp_t, lvp_t, eps, gz_t, glp, gk_row, lv_const[i], acc, out_t, len);
        };
        if constexpr (kF16cRows<Isa, S>) {
          float* const f = wide.data();
          const GradRows<float> out_f{f + 5 * len, f + 6 * len, f + 7 * len, f + 8 * len};
          convert_row<Isa>(mu, f, len);
          bool moderate = widen_row_exp_args_moderate<Isa>(lv, f + len, len);
          if constexpr (Cfg::prior) {
            convert_row<Isa>(mp, f + 2 * len, len);
            moderate = widen_row_exp_args_moderate<Isa>(lvp, f + 3 * len, len) && moderate;
          }
          if (K > 0) convert_row<Isa>(gz, f + 4 * len, len);
          pass(f, f + len, f + 2 * len, f + 3 * len, K > 0 ? f + 4 * len : nullptr, out_f, moderate);
          if (K == 0 || k == K - 1) {  // the last pass wrote the gradients
            convert_row<Isa>(out_f.mu, out.mu, len);
            convert_row<Isa>(out_f.lv, out.lv, len);
            if constexpr (Cfg::prior) {
              convert_row<Isa>(out_f.mp, out.mp, len);
              convert_row<Isa>(out_f.lvp, out.lvp, len);
            }
          }
        } else {
          pass(mu, lv, mp, lvp, gz, out, row_exp_args_moderate<Cfg>(lv, lvp, len));
        }
      }
    }
  }
}

template <class Isa>
FK_ALWAYS_INLINE void philox_debug_impl(uint64_t seed, uint64_t offset, uint64_t b0, int64_t nblocks, int kind,
                                        void* out) {
  if (kind == 2) {
    normals_of_blocks<Isa>(seed, offset, b0, nblocks, static_cast<float*>(out));
    return;
  }
  // Words through the same path the kernels use (AVX-512 intrinsics on that ISA).
  alignas(64) uint32_t w[4][kNoiseChunkBlocks];
  for (int64_t s = 0; s < nblocks; s += kNoiseChunkBlocks) {
    const int64_t n = std::min(kNoiseChunkBlocks, nblocks - s);
    philox_words<Isa>(seed, offset, b0 + static_cast<uint64_t>(s), n, w);
    for (int64_t b = 0; b < n; ++b)
      for (int m = 0; m < 4; ++m) {
        const int64_t i = 4 * (s + b) + m;
        if (kind == 0) static_cast<int64_t*>(out)[i] = w[m][b];
        else static_cast<float*>(out)[i] = math::uniform_from_bits(w[m][b]);
      }
  }
}

template <class Isa>
FK_ALWAYS_INLINE void fastmath_debug_impl(const float* __restrict x, float* __restrict y, int64_t n, int fn) {
  switch (fn) {
    case 0:
      for (int64_t i = 0; i < n; ++i) y[i] = math::fast_logf(x[i]);
      break;
    case 1:
      for (int64_t i = 0; i < n; ++i) y[i] = math::fast_expf(x[i]);
      break;
    case 4:
      for (int64_t i = 0; i < n; ++i) y[i] = math::fast_expf_moderate(x[i]);
      break;
    default:
      for (int64_t i = 0; i < n; ++i) {
        float s, c;
        math::fast_sincos2pi(x[i], &s, &c);
        y[i] = fn == 2 ? s : c;
      }
  }
}

// Each (configuration, ISA) its own function, with the ISA's target attribute (noinline: one function holding
// every configuration's loops would take GCC far longer to compile, as adam_cpu.cpp found).
#define FK_REPARAM_ROWS_ON(Tag, target)                                                                     \
  template <class Cfg>                                                                                      \
  target __attribute__((noinline)) void fwd_rows_on(Tag, const ReparamFwdArgs& a, int64_t lo, int64_t hi) { \
    fwd_rows_impl<Tag, Cfg>(a, lo, hi);                                                                     \
  }                                                                                                         \
  template <class Cfg>                                                                                      \
  target __attribute__((noinline)) void bwd_rows_on(Tag, const ReparamBwdArgs& a, int64_t lo, int64_t hi) { \
    bwd_rows_impl<Tag, Cfg>(a, lo, hi);                                                                     \
  }                                                                                                         \
  template <class = void>                                                                                   \
  target __attribute__((noinline)) void debug_on(Tag, const ReparamDebugArgs& d) {                          \
    if (d.philox) philox_debug_impl<Tag>(d.seed, d.offset, d.first_block, d.nblocks, d.kind, d.out);       \
    else fastmath_debug_impl<Tag>(d.x, d.y, d.n, d.fn);                                                     \
  }
FK_REPARAM_ROWS_ON(IsaAvx512, FK_TARGET_AVX512)
FK_REPARAM_ROWS_ON(IsaAvx2, FK_TARGET_AVX2)
FK_REPARAM_ROWS_ON(IsaBaseline, )
#undef FK_REPARAM_ROWS_ON

// The scalar type of a ReparamDtype, as a value of that type passed to fn.
template <class Fn>
void with_scalar(ReparamDtype dt, Fn&& fn) {
  switch (dt) {
    case ReparamDtype::F32: fn(float{}); return;
    case ReparamDtype::F64: fn(double{}); return;
    case ReparamDtype::F16: fn(c10::Half{}); return;
    case ReparamDtype::BF16: fn(c10::BFloat16{}); return;
  }
}

}  // namespace reparam_detail

template <class Isa>
void reparam_fwd_rows(const ReparamFwdArgs& a, int64_t lo, int64_t hi) {
  using namespace reparam_detail;
  const bool prior = a.mp != nullptr, lp = a.lq != nullptr;
  with_scalar(a.dtype, [&](auto tag) {
    using S = decltype(tag);
    if (prior && lp) fwd_rows_on<FwdCfg<S, true, true>>(Isa{}, a, lo, hi);
    else if (prior) fwd_rows_on<FwdCfg<S, true, false>>(Isa{}, a, lo, hi);
    else if (lp) fwd_rows_on<FwdCfg<S, false, true>>(Isa{}, a, lo, hi);
    else fwd_rows_on<FwdCfg<S, false, false>>(Isa{}, a, lo, hi);
  });
}

template <class Isa>
void reparam_bwd_rows(const ReparamBwdArgs& a, int64_t lo, int64_t hi) {
  using namespace reparam_detail;
  const bool prior = a.mp != nullptr, lp = a.glp != nullptr;
  with_scalar(a.dtype, [&](auto tag) {
    using S = decltype(tag);
    if (prior && lp) bwd_rows_on<BwdCfg<S, true, true>>(Isa{}, a, lo, hi);
    else if (prior) bwd_rows_on<BwdCfg<S, true, false>>(Isa{}, a, lo, hi);
    else if (lp) bwd_rows_on<BwdCfg<S, false, true>>(Isa{}, a, lo, hi);
    else bwd_rows_on<BwdCfg<S, false, false>>(Isa{}, a, lo, hi);
  });
}

template <class Isa>
void reparam_debug(const ReparamDebugArgs& d) {
  reparam_detail::debug_on(Isa{}, d);
}

}  // namespace fused_kingma::cpu

// The entry points of one ISA, in its reparam_rows_<isa>.cpp.
#define FK_INSTANTIATE_REPARAM_ROWS(Isa)                                                                   \
  namespace fused_kingma::cpu {                                                                           \
  template void reparam_fwd_rows<Isa>(const ReparamFwdArgs& a, int64_t lo, int64_t hi);                  \
  template void reparam_bwd_rows<Isa>(const ReparamBwdArgs& a, int64_t lo, int64_t hi);                  \
  template void reparam_debug<Isa>(const ReparamDebugArgs& d);                                           \
  }
