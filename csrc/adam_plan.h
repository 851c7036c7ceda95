// AdamPlan (adam_plan.cpp): a param group's adam_step_ call with its tensor lists held in C++ between steps.
#pragma once

#include <pybind11/pybind11.h>

namespace fused_kingma {

// Adds the class AdamPlan to the extension module.
void register_adam_plan(pybind11::module_& m);

}  // namespace fused_kingma
