// AdamPlan: a param group's adam_step_ call with its tensor lists converted once. The optimizer keeps a group's
// lists between steps (fused_kingma/optim.py); called from Python, torch.ops.fused_kingma.adam_step_ converts
// every tensor of every list to an IValue again on each step, and the optimizer collects the grads in Python
// first. A plan holds the lists as the op's list arguments and reads each param's grad in C++, then calls the
// same op through the dispatcher (callBoxed: the same kernels, profiler events, Python dispatch for tensors that
// have it), with the GIL released as torch.ops does. The optimizer uses a plan only for plain tensors on a device
// with a native kernel, outside torch.compile and torch function / dispatch modes (fused_kingma/optim.py, _plan_for).
// 2000 params of 64 fp32: 1.1 -> 0.46 ms per step (Zen 4, two threads; README, Decisions).
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/autograd/python_variable.h>

#include <array>
#include <string>
#include <utility>
#include <vector>

#include "adam_plan.h"
#include "tensor_prefetch.h"

namespace py = pybind11;

namespace fused_kingma {
namespace {

at::Tensor unpack_tensor(py::handle h, const char* what) {
  if (!THPVariable_Check(h.ptr()))
    throw py::type_error(std::string("AdamPlan: ") + what + " must hold tensors, got " +
                         std::string(py::str(py::type::handle_of(h).attr("__name__"))));
  return THPVariable_Unpack(h.ptr());
}

c10::List<at::Tensor> unpack_list(const py::sequence& seq, const char* what) {
  c10::List<at::Tensor> out;
  out.reserve(seq.size());
  for (py::handle h : seq) out.push_back(unpack_tensor(h, what));
  return out;
}

c10::IValue optional_tensor(const py::object& obj, const char* what) {
  return obj.is_none() ? c10::IValue() : c10::IValue(unpack_tensor(obj, what));
}

class AdamPlan {
 public:
  static constexpr size_t kArguments = 24;  // adam_step_'s schema, in the order step() pushes them

  // The lists of adam_step_'s schema (csrc/ops.cpp) but the grads, in its order.
  AdamPlan(const py::sequence& params, const py::sequence& exp_avgs,
           const py::sequence& second_moments, const py::sequence& max_second_moments, const py::sequence& steps,
           const py::sequence& master_params, const py::sequence& emas)
      : op_(c10::Dispatcher::singleton().findSchemaOrThrow("fused_kingma::adam_step_", "")),
        params_(unpack_list(params, "params")),
        param_tensors_(params_.vec()),
        others_{unpack_list(exp_avgs, "exp_avgs"), unpack_list(second_moments, "second_moments"),
                unpack_list(max_second_moments, "max_second_moments"), unpack_list(steps, "steps"),
                unpack_list(master_params, "master_params"), unpack_list(emas, "emas")} {
    TORCH_INTERNAL_ASSERT(op_.schema().arguments().size() == kArguments, "AdamPlan: adam_step_'s schema changed");
  }

  size_t size() const { return params_.size(); }

  // Whether every param has a grad (the optimizer takes its general path otherwise).
  bool has_all_grads() const {
    for (size_t i = 0; i < param_tensors_.size(); ++i) {
      prefetch_ahead(i);
      if (!param_tensors_[i].grad().defined()) return false;
    }
    return true;
  }

  // adam_step_'s other arguments, as there.
  void step(const std::string& rule, double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled_weight_decay,
            bool amsgrad, bool maximize, double ema_decay, bool stochastic_rounding, int64_t seed,
            bool lr_is_fp32_tensor, const py::object& grad_scale, const py::object& found_inf, bool check_only) {
    c10::List<at::Tensor> grads;
    grads.reserve(params_.size());
    for (size_t i = 0; i < param_tensors_.size(); ++i) {
      prefetch_ahead(i);
      const at::Tensor& g = param_tensors_[i].grad();
      if (!g.defined()) throw py::value_error("AdamPlan: tensor " + std::to_string(i) + ": the param has no grad");
      grads.push_back(g);
    }
    torch::jit::Stack stack;
    stack.reserve(kArguments);
    stack.emplace_back(params_);
    stack.emplace_back(std::move(grads));
    for (const c10::List<at::Tensor>& list : others_) stack.emplace_back(list);
    stack.emplace_back(rule);
    for (double v : {lr, beta1, beta2, eps, weight_decay}) stack.emplace_back(v);
    stack.emplace_back(decoupled_weight_decay);
    stack.emplace_back(amsgrad);
    stack.emplace_back(maximize);
    stack.emplace_back(ema_decay);
    stack.emplace_back(stochastic_rounding);
    stack.emplace_back(seed);
    stack.emplace_back(lr_is_fp32_tensor);
    stack.push_back(optional_tensor(grad_scale, "grad_scale"));
    stack.push_back(optional_tensor(found_inf, "found_inf"));
    stack.emplace_back(check_only);
    TORCH_INTERNAL_ASSERT(stack.size() == kArguments, "AdamPlan: step() pushed ", stack.size(), " arguments");
    try {
      py::gil_scoped_release no_gil;
      op_.callBoxed(&stack);
    } catch (const c10::ValueError& e) {  // as torch maps them (the GIL is held again here)
      throw py::value_error(e.what_without_backtrace());
    } catch (const c10::TypeError& e) {
      throw py::type_error(e.what_without_backtrace());
    } catch (const c10::Error& e) {
      throw std::runtime_error(e.what_without_backtrace());
    }
  }

 private:
  // While reading param i's grad: the TensorImpl of param i + 2 stages and the AutogradMeta (which holds the
  // grad) of param i + 1 stage (tensor_prefetch.h).
  void prefetch_ahead(size_t i) const {
    if (i + 2 * kPrefetchStage < param_tensors_.size()) prefetch_impl(param_tensors_[i + 2 * kPrefetchStage]);
    if (i + kPrefetchStage < param_tensors_.size())
      if (const void* meta = param_tensors_[i + kPrefetchStage].unsafeGetTensorImpl()->autograd_meta())
        prefetch_lines(meta, 128);
  }

  c10::OperatorHandle op_;
  c10::List<at::Tensor> params_;
  std::vector<at::Tensor> param_tensors_;  // params_ again, read without a reference count change per element
  std::array<c10::List<at::Tensor>, 6> others_;  // exp_avgs .. emas
};

}  // namespace

void register_adam_plan(py::module_& m) {
  py::class_<AdamPlan>(m, "AdamPlan", "A param group's adam_step_ call with its tensor lists held in C++.")
      .def(py::init<const py::sequence&, const py::sequence&, const py::sequence&,
                    const py::sequence&, const py::sequence&, const py::sequence&, const py::sequence&>(),
           py::arg("params"), py::arg("exp_avgs"), py::arg("second_moments"),
           py::arg("max_second_moments"), py::arg("steps"), py::arg("master_params"), py::arg("emas"))
      .def("__len__", &AdamPlan::size)
      .def("has_all_grads", &AdamPlan::has_all_grads)
      .def("step", &AdamPlan::step, py::kw_only(), py::arg("rule"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
           py::arg("weight_decay"), py::arg("decoupled_weight_decay"), py::arg("amsgrad"), py::arg("maximize"),
           py::arg("ema_decay"), py::arg("stochastic_rounding"), py::arg("seed"), py::arg("lr_is_fp32_tensor"),
           py::arg("grad_scale"), py::arg("found_inf"), py::arg("check_only"));
}

}  // namespace fused_kingma
