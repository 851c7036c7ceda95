// Tensor checks and messages shared by the CPU op and the CUDA glue of the Adam family, so both
// backends reject bad input with the same words. Messages start with "tensor <i>: " so the Python
// side can name the param group and parameter.
#pragma once

#include <ATen/ATen.h>

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
    default: return std::string("torch.") + c10::toString(t);
  }
}

inline void check_like(const at::Tensor& t, const at::Tensor& param, at::ScalarType want, int64_t i, const char* what) {
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

inline void check_list_size(at::TensorList list, size_t want, const char* what) {
  TORCH_CHECK_VALUE(list.size() == want, what, " has ", list.size(), " tensors but ", want, " were expected");
}

inline at::Tensor real_view(const at::Tensor& t) { return t.defined() && t.is_complex() ? at::view_as_real(t) : t; }

}  // namespace fused_kingma
