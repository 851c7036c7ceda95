// When an Autograd kernel may skip its autograd::Function and call the backend op directly.
#pragma once

#include <ATen/core/grad_mode.h>
#include <ATen/core/Tensor.h>

#include <initializer_list>

namespace fused_kingma {

// Whether outputs need a graph node: grad mode is on and an input requires grad. Otherwise the Autograd kernels
// call the backend op under AutoDispatchBelowADInplaceOrView: autograd::Function::apply costs ~3 us per call
// even when it records nothing (saved-data map inserts, output wrapping), as much as a small kernel.
// Null pointers and undefined tensors (absent optional inputs) are skipped.
inline bool needs_graph(std::initializer_list<const at::Tensor*> inputs) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : inputs)
    if (t != nullptr && t->defined() && t->requires_grad()) return true;
  return false;
}

}  // namespace fused_kingma
