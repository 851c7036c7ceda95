// The typed dispatcher handle of an op, for the C++ autograd kernels that call the op below autograd.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

namespace fused_kingma {

// `name` is "fused_kingma::<op>" (default overload); throws when the schema is not registered.
template <class Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace fused_kingma
