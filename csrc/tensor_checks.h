// Tensor checks and messages shared by the CPU op and the CUDA glue of the Adam family, so both
// backends reject bad input with the same words. Messages start with "tensor <i>: " so the Python
// side can name the param group and parameter.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <cmath>
#include <sstream>
#include <string>

namespace fused_kingma {

inline std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << (s.size() == 1 ? ",)" : ")");
  return o.str();
}

inline std::string dtype_str(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return "torch." + std::string(c10::getDtypeNames(t).first);  // torch's Python name (torch.int64)
  }
}

inline void check_like(const at::Tensor& t, const at::Tensor& param, at::ScalarType want, size_t i, const char* what) {
  TORCH_CHECK(t.defined(), "tensor ", i, ": ", what, " is missing (None)");
  TORCH_CHECK(t.layout() == at::kStrided, "tensor ", i, ": ", what, " is sparse (layout ", t.layout(),
              "); fused_kingma's Adam needs dense tensors (torch.optim.SparseAdam handles sparse gradients)");
  TORCH_CHECK(t.device() == param.device(), "tensor ", i, ": ", what, " is on ", t.device(),
              " but the parameter is on ", param.device());
  TORCH_CHECK_TYPE(t.scalar_type() == want, "tensor ", i, ": ", what, " has dtype ", dtype_str(t.scalar_type()),
                   " but ", dtype_str(want), " was expected (parameter dtype ", dtype_str(param.scalar_type()), ")");
  TORCH_CHECK_VALUE(t.sizes() == param.sizes(), "tensor ", i, ": ", what, " has shape ", shape_str(t.sizes()),
                    " but the parameter has shape ", shape_str(param.sizes()));
}

inline bool is_low_precision(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// A tensor the step writes in place must not have elements sharing memory (an expanded exp_avg, say): its staged
// copy could not be written back after the update (torch's in-place ops refuse such tensors too).
inline void check_writable(const at::Tensor& t, size_t i, const char* what) {
  if (t.is_non_overlapping_and_dense()) return;  // the usual case, inline
  TORCH_CHECK_VALUE(at::has_internal_overlap(t) != at::MemOverlap::Yes, "tensor ", i, ": ", what,
                    " has elements that share memory (an expanded or stride-0 view), but the step writes it in place");
}

// Tensor i of an adam_step_ call, once the backend checked that the parameter is defined and on its device: its
// layout and dtype, every state tensor against it (dtype, device, shape), and no shared memory in what the step
// writes. Master copies exist for fp16/bf16 params only; other entries of master_params are ignored (FusedAdam
// passes the param itself there for an fp32 param of a master-weights group).
struct AdamCall {
  bool master, amsgrad, ema, adamax, grad_written;
};

// The lists' lengths were checked by check_adam_arguments (master / ema: whether their lists are non-empty).
inline void check_adam_tensor(size_t i, const AdamCall& call, at::TensorList params, at::TensorList grads,
                              at::TensorList exp_avgs, at::TensorList second_moments,
                              at::TensorList max_second_moments, at::TensorList master_params, at::TensorList emas) {
  const at::Tensor& p = params[i];
  const at::Tensor& grad = grads[i];
  const at::Tensor& exp_avg = exp_avgs[i];
  const at::Tensor& second = second_moments[i];
  TORCH_CHECK(p.layout() == at::kStrided, "tensor ", i, ": the parameter is sparse");
  const auto dt = p.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16 ||
                       dt == at::kComplexFloat || dt == at::kComplexDouble,
                   "tensor ", i, ": parameters must be float32, float64, float16, bfloat16 or complex; got ",
                   dtype_str(dt));
  const bool with_master = call.master && is_low_precision(dt);
  const at::ScalarType state_dt = with_master ? at::kFloat : dt;
  const char* second_name = call.adamax ? "exp_inf" : "exp_avg_sq";
  check_like(grad, p, dt, i, "grad");
  check_like(exp_avg, p, state_dt, i, "exp_avg");
  check_like(second, p, state_dt, i, second_name);
  if (call.amsgrad) check_like(max_second_moments[i], p, state_dt, i, "max_exp_avg_sq");
  if (with_master) check_like(master_params[i], p, at::kFloat, i, "master param");
  if (call.ema) check_like(emas[i], p, is_low_precision(dt) ? at::kFloat : dt, i, "ema");
  check_writable(p, i, "the parameter");
  if (call.grad_written) check_writable(grad, i, "grad (unscaled in place with grad_scale)");
  check_writable(exp_avg, i, "exp_avg");
  check_writable(second, i, second_name);
  if (call.amsgrad) check_writable(max_second_moments[i], i, "max_exp_avg_sq");
  if (with_master) check_writable(master_params[i], i, "master param");
  if (call.ema) check_writable(emas[i], i, "ema");
}

inline void check_list_size(at::TensorList list, size_t want, const char* what) {
  TORCH_CHECK_VALUE(list.size() == want, what, " has ", list.size(), " tensors but ", want, " were expected");
}

// The list lengths and hyper-parameters of one adam_step_ call (the per-tensor checks follow in each backend), and
// what they make of the call: master copies and EMA when their lists are non-empty, grads written when scaled.
inline AdamCall check_adam_arguments(size_t n, at::TensorList grads, at::TensorList exp_avgs,
                                     at::TensorList second_moments, at::TensorList max_second_moments,
                                     at::TensorList steps, at::TensorList master_params, at::TensorList emas,
                                     c10::string_view rule, double lr, double beta1, double beta2, double eps,
                                     double weight_decay, bool amsgrad, double ema_decay, bool grad_scaled) {
  const bool adamax = rule == "adamax";
  TORCH_CHECK_VALUE(adamax || rule == "adam", "rule must be 'adam' or 'adamax', got '", std::string(rule), "'");
  TORCH_CHECK_VALUE(!(adamax && amsgrad), "amsgrad is not defined for Adamax");
  for (double v : {lr, beta1, beta2, eps, weight_decay, ema_decay}) {
    TORCH_CHECK_VALUE(std::isfinite(v), "hyper-parameters must be finite (lr=", lr, ", betas=(", beta1, ", ", beta2,
                      "), eps=", eps, ", weight_decay=", weight_decay, ", ema_decay=", ema_decay, ")");
  }
  check_list_size(grads, n, "grads");
  check_list_size(exp_avgs, n, "exp_avgs");
  check_list_size(second_moments, n, "second moments (exp_avg_sq / exp_inf)");
  check_list_size(max_second_moments, amsgrad ? n : 0, "max_exp_avg_sqs");
  check_list_size(steps, n, "steps");
  if (!master_params.empty()) check_list_size(master_params, n, "master_params");
  if (!emas.empty()) check_list_size(emas, n, "emas");
  return AdamCall{!master_params.empty(), amsgrad, !emas.empty(), adamax, grad_scaled};
}

}  // namespace fused_kingma
