// The fused_kingma operator library: every schema is declared here, once (except two that exist only in a
// CUDA build and are declared next to their kernels with TORCH_LIBRARY_FRAGMENT: adam_step_lr_tensor_, the
// capturable step reading lr from a device tensor, and the test helper philox_debug_cuda). Each backend
// registers its kernels in its own file with TORCH_LIBRARY_IMPL (csrc/cpu/*.cpp for CPU,
// csrc/cuda_glue/*.cpp for CUDA, built only in a CUDA build). The Python module _C carries
// only small helpers (ISA selection, build info); the ops are reached via torch.ops.fused_kingma.
// pybind11 and the op library only: with torch/extension.h (all of libtorch's C++ API) this file took 36.8 s to
// compile at -O3 on a Zen 4 core, 15.8 s without.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include <string>

#include "adam_plan.h"
#include "cpu/isa.h"
#include "cpu/output_cache.h"

TORCH_LIBRARY(fused_kingma, m) {
  // ---- Adam family (csrc/cpu/adam_cpu.cpp) ----
  // [adam schemas]
  // One Adam / AdamW / Adamax step over all tensors of a param group (lists of equal length;
  // max_second_moments only with amsgrad, master_params / emas empty when unused;
  // master_params entries of non-fp16/bf16 params are ignored). Increments
  // `steps`; with found_inf != 0 it changes nothing; with grad_scale the grads are unscaled in
  // place (like torch's fused Adam). check_only=True validates everything and returns.
  m.def(
      "adam_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, Tensor(d!)[] second_moments, "
      "Tensor(e!)[] max_second_moments, Tensor(f!)[] steps, Tensor(g!)[] master_params, Tensor(h!)[] emas, *, "
      "str rule, float lr, float beta1, float beta2, float eps, float weight_decay, bool decoupled_weight_decay, "
      "bool amsgrad, bool maximize, float ema_decay, bool stochastic_rounding, int seed, bool lr_is_fp32_tensor, Tensor? grad_scale, "
      "Tensor? found_inf, bool check_only) -> ()");

  // ---- Reparameterization and Gaussian KL (csrc/cpu/reparam_cpu.cpp) ----
  // [reparam schemas]
  // z (num_samples > 1: (K, *mu.shape); 1: mu.shape; 0: empty, KL only), kl (mu.shape[:-1]),
  // log_q, log_p (with_log_prob: (K, *mu.shape[:-1]) or mu.shape[:-1]; else empty). seed_offset: int64[2].
  // kl_per_dim: kl is instead the KL summed over the rows (every batch dim), per latent dim: shape (D,), in
  // the compute dtype (float32 for fp32/fp16/bf16, float64 for fp64), summed in an order that does not
  // depend on the thread count (free_bits builds on it).
  m.def("reparam_fwd(Tensor mu, Tensor logvar, Tensor? prior_mu, Tensor? prior_logvar, Tensor seed_offset, "
        "int num_samples, bool with_log_prob, bool kl_per_dim=False) -> (Tensor, Tensor, Tensor, Tensor)");
  // Gradients w.r.t. mu, logvar, and the prior (expanded to mu's shape; empty without a prior).
  // kl_per_dim: grad_kl is the gradient of the per-dim kl (shape (D,)) instead of the per-row one.
  m.def("reparam_bwd(Tensor? grad_z, Tensor grad_kl, Tensor? grad_log_q, Tensor? grad_log_p, Tensor mu, "
        "Tensor logvar, Tensor? prior_mu, Tensor? prior_logvar, Tensor seed_offset, int num_samples, "
        "bool kl_per_dim=False) -> (Tensor, Tensor, Tensor, Tensor)");
  // The free-bits objective sum_j max(free_bits, kl_per_dim[j] / batch) in out_dtype (csrc/free_bits.cpp).
  m.def("free_bits_kl(Tensor kl_per_dim, int batch, float free_bits, ScalarType out_dtype) -> Tensor");
  m.def("free_bits_kl_backward(Tensor grad, Tensor kl_per_dim, int batch, float free_bits) -> Tensor");
  // Test helpers: Philox words / uniforms / normals of blocks (kind 0/1/2); fastmath functions.
  m.def("philox_debug(int seed, int offset, int first_block, int nblocks, int kind) -> Tensor");
  m.def("fastmath_debug(Tensor x, int fn) -> Tensor");
}

// An optimizer step is not differentiable and runs under no_grad: the Autograd key passes it straight to the backend.
// Without this, torch's autograd fallback for custom ops visits every tensor of the lists for requires_grad on each
// call: 30-50 us of a 0.44 ms step over 2000 small params (Zen 4, one thread).
TORCH_LIBRARY_IMPL(fused_kingma, Autograd, m) { m.impl("adam_step_", torch::CppFunction::makeFallthrough()); }

#ifndef FK_TORCH_VERSION
#define FK_TORCH_VERSION "unknown"
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace fused_kingma::cpu;
  m.doc() = "fused_kingma native kernels (ops are registered under torch.ops.fused_kingma)";
  fused_kingma::register_adam_plan(m);
  m.attr("built_with_torch") = FK_TORCH_VERSION;
#ifdef FK_WITH_CUDA
  m.attr("built_with_cuda") = true;
#else
  m.attr("built_with_cuda") = false;
#endif
  m.def("best_isa", []() { return std::string(isa_name(best_supported_isa())); },
        "The best CPU instruction set this machine supports for fused_kingma's kernels.");
  m.def("active_isa", []() { return std::string(isa_name(active_isa())); },
        "The CPU instruction set fused_kingma's kernels use now.");
  m.def("set_isa", [](const std::string& name) { return std::string(isa_name(set_active_isa(isa_from_name(name)))); },
        "Force 'avx512', 'avx2' or 'baseline' (clamped to what the CPU supports); returns the one now active.");
  m.def("empty_cpu_cache", &empty_output_cache, "Free the cached CPU output blocks (see csrc/cpu/output_cache.h).");
  m.def("set_cpu_cache_limit", &set_output_cache_limit, "Set the CPU output cache's byte limit; returns the old one.");
  m.def("cpu_cache_info", []() {
        const OutputCacheStats s = output_cache_stats();
        pybind11::dict d;
        d["cached_bytes"] = s.cached_bytes;
        d["cached_blocks"] = s.cached_blocks;
        d["hits"] = s.hits;
        d["misses"] = s.misses;
        d["limit_bytes"] = s.limit_bytes;
        return d;
      },
        "Bytes and blocks the CPU output cache holds, its hits and misses so far, and its limit.");
}
