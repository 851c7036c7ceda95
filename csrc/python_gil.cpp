// The one place the kernels touch the Python C API (boxed_adam.h says why).
#include <Python.h>

#include "boxed_adam.h"

namespace fused_kingma {

void drop_holding_gil(torch::jit::Stack& stack, size_t n) {
  // Only a Python thread that released the GIL (the dispatcher does, around a call from Python) takes it here. A
  // thread Python never ran on leaves it to torch, which takes the GIL only for tensors that have a PyObject: a
  // C++ caller on C++ tensors must not wait for (or deadlock on) a GIL held elsewhere.
  if (!Py_IsInitialized() || PyGILState_Check() || PyGILState_GetThisThreadState() == nullptr) {
    torch::jit::drop(stack, n);
    return;
  }
  const PyGILState_STATE state = PyGILState_Ensure();
  torch::jit::drop(stack, n);
  PyGILState_Release(state);
}

}  // namespace fused_kingma
