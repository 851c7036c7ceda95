// The one place the kernels touch the Python C API (boxed_adam.h says why).
#include <Python.h>

#include "boxed_adam.h"

namespace fused_kingma {

void drop_holding_gil(torch::jit::Stack& stack, size_t n) {
  if (!Py_IsInitialized() || PyGILState_Check()) {
    torch::jit::drop(stack, n);
    return;
  }
  const PyGILState_STATE state = PyGILState_Ensure();
  torch::jit::drop(stack, n);
  PyGILState_Release(state);
}

}  // namespace fused_kingma
