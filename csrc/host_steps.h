// The host step counters of one Adam call (CPU op and CUDA glue). Each is incremented in its own dtype, like
// torch's `step_t += 1`; the kernels use the new values at once, but they are stored only after the work that can
// fail (staging copies, launches), so an error leaves every counter as it was. A tensor passed for two params
// (torch never does) is incremented once, as the CUDA kernel's device counters are (StepOwners, cuda/launch.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace fused_kingma {

class HostSteps {
 public:
  // The incremented value of a 1-element float32 / float64 CPU tensor (not stored yet).
  double next(const at::Tensor& step) {
    if (step.scalar_type() == at::kFloat) {
      float* p = step.data_ptr<float>();
      const float v = *p + 1.0f;
      pending_.push_back({p, nullptr, v});
      return v;
    }
    double* p = step.data_ptr<double>();
    const double v = *p + 1.0;
    pending_.push_back({nullptr, p, v});
    return v;
  }
  void store() const {
    for (const Pending& s : pending_) {
      if (s.f32 != nullptr) *s.f32 = static_cast<float>(s.value);
      else *s.f64 = s.value;
    }
  }

 private:
  struct Pending {
    float* f32;
    double* f64;
    double value;
  };
  std::vector<Pending> pending_;
};

}  // namespace fused_kingma
