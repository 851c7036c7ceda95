// How the Adam kernels (CPU and CUDA) see each tensor of a parameter: as flat memory that every tensor of that
// parameter (grad, moments, master copy, EMA) shares the layout of, so element k of one is element k of all.
// Tensors already in that layout go in as they are; any other is copied into a temporary in it, kept alive until
// finish() and, when the kernel writes it, copied back by finish().
#pragma once

#include <ATen/ATen.h>
#include <c10/core/MemoryFormat.h>
#include <c10/util/MaybeOwned.h>

#include <utility>
#include <vector>

namespace fused_kingma {

// Complex tensors as their real view (..., 2); others borrowed as they are (no reference count touched: the
// per-tensor cost matters with thousands of small parameters).
inline c10::MaybeOwned<at::Tensor> real_view(const at::Tensor& t) {
  return t.defined() && t.is_complex() ? c10::MaybeOwned<at::Tensor>::owned(at::view_as_real(t))
                                       : c10::MaybeOwned<at::Tensor>::borrowed(t);
}

// The layout of one parameter: its own when it is dense (contiguous, channels_last, any permutation), else
// contiguous (the parameter itself is then staged too).
class FlatLayout {
 public:
  explicit FlatLayout(const at::Tensor& param)
      : contiguous_(param.is_contiguous() || !param.is_non_overlapping_and_dense()) {
    if (!contiguous_) strides_ = at::DimVector(param.strides());
  }
  // Contiguous tensors of equal sizes index alike even where a size-1 dim's stride differs.
  bool holds(const at::Tensor& t) const {
    return contiguous_ ? t.is_contiguous() : t.is_non_overlapping_and_dense() && t.strides() == strides_;
  }
  at::Tensor empty_like(const at::Tensor& t) const {
    return contiguous_ ? at::empty(t.sizes(), t.options()) : at::empty_strided(t.sizes(), strides_, t.options());
  }

 private:
  bool contiguous_;
  at::DimVector strides_;
};

class FlatStaging {
 public:
  // `t` (real view taken here) in `layout`, written by the kernel or only read.
  void* flat(const at::Tensor& t, const FlatLayout& layout, bool written) {
    const auto real = real_view(t);
    if (layout.holds(*real)) return real->data_ptr();
    at::Tensor tmp = layout.empty_like(*real);
    tmp.copy_(*real);
    void* ptr = tmp.data_ptr();
    // A read-only temporary is kept too: on CUDA, freeing it before the launch would let the caching allocator
    // hand its memory to the next temporary, whose copy runs first on the stream.
    staged_.emplace_back(written ? *real : at::Tensor(), std::move(tmp));
    return ptr;
  }
  // After the kernel ran (CPU) or was enqueued (CUDA, same stream): copies written temporaries back.
  void finish() {
    for (auto& [original, tmp] : staged_)
      if (original.defined()) original.copy_(tmp);
  }

 private:
  std::vector<std::pair<at::Tensor, at::Tensor>> staged_;  // (original if written, temporary)
};

}  // namespace fused_kingma
