// adam_step_ (and, in a CUDA build, adam_step_lr_tensor_) as boxed kernels: the arguments are read where the
// dispatcher left them on its stack. The unboxed adapter (m.impl with a plain function) copies every Tensor[] into a
// std::vector<at::Tensor> and drops the stack with the GIL released, and a tensor that came from Python takes the
// GIL to give itself back to its PyObject: ~100 ns per tensor, 1 ms of a 1.6 ms step over 2000 small params x 5
// lists (Zen 5). Here the lists are borrowed (no reference counts touched) and the stack is dropped under one GIL
// acquisition. Argument positions follow the schemas (csrc/ops.cpp; tests/test_adam.py checks them).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/util/MaybeOwned.h>

#include <optional>
#include <vector>

namespace fused_kingma {

// Drops the last n values of the stack, holding the GIL once for all of them when this thread is a Python thread
// that does not hold it (python_gil.cpp).
void drop_holding_gil(torch::jit::Stack& stack, size_t n);

// The tensors of a Tensor[] argument as an at::TensorList, borrowed from the stack (which outlives this).
class BorrowedTensors {
 public:
  explicit BorrowedTensors(const c10::IValue& list) {
    const auto values = list.toListRef();
    tensors_.reserve(values.size());
    try {
      for (const c10::IValue& v : values) tensors_.push_back(Traits::createBorrow(v.toTensor()));
    } catch (...) {
      release();
      throw;
    }
  }
  ~BorrowedTensors() { release(); }
  BorrowedTensors(const BorrowedTensors&) = delete;
  BorrowedTensors& operator=(const BorrowedTensors&) = delete;
  operator at::TensorList() const { return tensors_; }

 private:
  using Traits = c10::MaybeOwnedTraits<at::Tensor>;
  void release() {
    for (at::Tensor& t : tensors_) Traits::destroyBorrow(t);
    tensors_.clear();
  }
  std::vector<at::Tensor> tensors_;
};

// The eight Tensor[] arguments that open both Adam schemas.
struct AdamLists {
  explicit AdamLists(const c10::IValue* a)
      : params(a[0]), grads(a[1]), exp_avgs(a[2]), second_moments(a[3]), max_second_moments(a[4]), steps(a[5]),
        master_params(a[6]), emas(a[7]) {}
  BorrowedTensors params, grads, exp_avgs, second_moments, max_second_moments, steps, master_params, emas;
};

// Calls `call(args)` with args = the op's arguments on the stack, then drops them (the ops return nothing).
template <class Call>
void call_boxed(const c10::OperatorHandle& op, torch::jit::Stack* stack, Call&& call) {
  const size_t n = op.schema().arguments().size();
  call(stack->data() + (stack->size() - n));
  drop_holding_gil(*stack, n);
}

// The signature of adam_step_'s unboxed kernels (schema in csrc/ops.cpp).
using AdamStepFn = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                        at::TensorList, at::TensorList, at::TensorList, c10::string_view, double, double, double,
                        double, double, bool, bool, bool, double, bool, int64_t, bool,
                        const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool);

// Register with m.impl("adam_step_", torch::CppFunction::makeFromBoxedFunction<&adam_step_boxed<kernel>>()).
template <AdamStepFn* Kernel>
void adam_step_boxed(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  call_boxed(op, stack, [](const c10::IValue* a) {
    const AdamLists l(a);
    Kernel(l.params, l.grads, l.exp_avgs, l.second_moments, l.max_second_moments, l.steps, l.master_params, l.emas,
           a[8].toStringView(), a[9].toDouble(), a[10].toDouble(), a[11].toDouble(), a[12].toDouble(),
           a[13].toDouble(), a[14].toBool(), a[15].toBool(), a[16].toBool(), a[17].toDouble(), a[18].toBool(),
           a[19].toInt(), a[20].toBool(), a[21].toOptional<at::Tensor>(), a[22].toOptional<at::Tensor>(),
           a[23].toBool());
  });
}

}  // namespace fused_kingma
