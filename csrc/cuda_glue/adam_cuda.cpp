// CUDA kernel of fused_kingma::adam_step_ (schema in csrc/ops.cpp; CPU twin csrc/cpu/adam_cpu.cpp):
// checks everything first (a bad tensor leaves everything untouched), then one multi-tensor
// launch per storage format over all tensors of the group (csrc/cuda/adam.cu).
//
// Capturable use: with the step counters, grad_scale and found_inf on the GPU nothing here syncs
// with the host, and while a CUDA graph is being captured the tensor table travels as kernel
// parameters (no host buffer the graph could read after it was reused). Step counters on the
// CPU (torch's default for non-capturable Adam) are incremented here on the host; with a
// found_inf on the GPU that needs found_inf's value first (one sync, as torch's non-fused path).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "boxed_adam.h"
#include "cuda/launch.h"
#include "cuda_glue/glue.h"
#include "flat_staging.h"
#include "host_steps.h"
#include "tensor_prefetch.h"

namespace fused_kingma::cuda_glue {
namespace {

// grad_scale / found_inf as one float32 on the device (torch's CUDA fused Adam reads them as float too; the CPU op
// keeps a float64 grad_scale in double).
std::optional<at::Tensor> scalar_on_device(const std::optional<at::Tensor>& t, const at::Device& device) {
  if (!t.has_value()) return std::nullopt;
  if (t->device() == device && t->scalar_type() == at::kFloat) return *t;
  return t->to(device, at::kFloat, /*non_blocking=*/false, /*copy=*/false);
}

// The step; `lr_tensor`, when defined, is a 1-element tensor on the params' device whose value the
// kernel reads (capturable: lr changed in place between replays is seen); `lr` is then unused.
void adam_step_impl(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList second_moments, at::TensorList max_second_moments, at::TensorList steps,
                    at::TensorList master_params, at::TensorList emas, c10::string_view rule, double lr,
                    const at::Tensor& lr_tensor, double beta1, double beta2, double eps, double weight_decay,
                    bool decoupled_weight_decay, bool amsgrad, bool maximize, double ema_decay,
                    bool stochastic_rounding, int64_t seed, bool lr_is_fp32_tensor,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                    bool check_only) {
  const size_t n = params.size();
  const AdamCall call = check_adam_arguments(n, grads, exp_avgs, second_moments, max_second_moments, steps,
                                             master_params, emas, rule, lr, beta1, beta2, eps, weight_decay, amsgrad,
                                             ema_decay, grad_scale.has_value());
  if (n == 0) return;

  TORCH_CHECK(params[0].defined(), "tensor 0: the parameter is missing (None)");
  const at::Device device = params[0].device();
  TORCH_CHECK(device.is_cuda(), "tensor 0: the parameter is on ", device,
              " but this is the CUDA kernel (another tensor of the call is on a GPU); put all tensors of a "
              "param group and its state on one device");
  for (const auto* opt : {&grad_scale, &found_inf}) {
    if (opt->has_value()) {
      const at::Tensor& t = **opt;
      TORCH_CHECK_VALUE(t.numel() == 1 && (t.device().is_cpu() || t.device() == device) && t.is_floating_point(),
                        "grad_scale / found_inf must be 1-element floating-point tensors on ", device,
                        " or the CPU, got shape ", shape_str(t.sizes()), " ", dtype_str(t.scalar_type()), " on ",
                        t.device());
    }
  }
  bool any_host_step = false;
  // Every list of the call, for the prefetches of their metadata (tensor_prefetch.h).
  const auto lists = {params, grads, exp_avgs, second_moments, max_second_moments, steps, master_params, emas};
  for (size_t i = 0; i < n; ++i) {
    prefetch_for_checks(i, lists);
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.defined(), "tensor ", i, ": the parameter is missing (None)");
    TORCH_CHECK(p.device() == device, "tensor ", i, ": the parameter is on ", p.device(), " but tensor 0 is on ",
                device, "; a param group's tensors must share one device");
    check_adam_tensor(i, call, params, grads, exp_avgs, second_moments, max_second_moments, master_params, emas);
    const at::Tensor& s = steps[i];
    TORCH_CHECK_VALUE(s.defined() && s.numel() == 1 && (s.device().is_cpu() || s.device() == device) &&
                          (s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble),
                      "tensor ", i, ": state 'step' must be a 1-element float32/float64 tensor on the CPU or ", device,
                      ", got ",
                      s.defined() ? shape_str(s.sizes()) + " " + dtype_str(s.scalar_type()) + " on " +
                                        s.device().str()
                                  : std::string("None"));
    any_host_step |= s.device().is_cpu();
  }
  if (lr_tensor.defined()) {
    TORCH_CHECK_VALUE(lr_tensor.numel() == 1 && lr_tensor.device() == device && lr_tensor.is_floating_point() &&
                          !lr_tensor.is_complex(),
                      "lr must be a 1-element floating-point tensor on ", device, ", got shape ",
                      shape_str(lr_tensor.sizes()), " ", dtype_str(lr_tensor.scalar_type()), " on ",
                      lr_tensor.device());
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  // A step captured into a CUDA graph must not depend on the host: host step counters would be read once, at
  // capture, so every replay would repeat that step, and reading or copying a CPU grad_scale / found_inf cannot be
  // captured. torch's Adam refuses the same without capturable=True.
  const bool capturing = is_capturing(stream);
  TORCH_CHECK(!capturing || (!any_host_step && (!grad_scale.has_value() || grad_scale->device() == device) &&
                             (!found_inf.has_value() || found_inf->device() == device)),
              "CUDA graph capture of an Adam step needs its step counters, grad_scale and found_inf on ", device,
              " (capturable=True)");
  if (check_only) return;

  const c10::cuda::CUDAGuard guard(device);
  // found_inf's value is needed on the host when it lives there, or when host step counters must
  // not be incremented on a skipped step.
  if (found_inf.has_value() && (found_inf->device().is_cpu() || any_host_step)) {
    if (found_inf->item<double>() != 0.0) return;  // GradScaler found inf/NaN: skip the step
  }
  const std::optional<at::Tensor> scale_dev = scalar_on_device(grad_scale, device);
  // float64 copy made on the device (a captured kernel, so each replay reads lr's value then).
  const at::Tensor lr_dev = lr_tensor.defined() ? lr_tensor.reshape({}).to(at::kDouble) : at::Tensor();
  const std::optional<at::Tensor> inf_dev =
      found_inf.has_value() && found_inf->device() == device ? scalar_on_device(found_inf, device) : std::nullopt;

  cuda::AdamArgs base{};
  base.rule = call.adamax ? cuda::AdamRule::adamax : (amsgrad ? cuda::AdamRule::adam_amsgrad : cuda::AdamRule::adam);
  base.maximize = maximize;
  const bool decoupled = decoupled_weight_decay && !call.adamax;
  base.decoupled = decoupled;
  base.l2 = !decoupled && weight_decay != 0.0;
  base.ema = call.ema;
  base.lr = lr;
  base.lr_device = lr_dev.defined() ? lr_dev.data_ptr<double>() : nullptr;
  base.beta1 = beta1;
  base.beta2 = beta2;
  base.eps = eps;
  base.weight_decay = weight_decay;
  base.ema_decay = ema_decay;
  base.sr_seed = static_cast<uint64_t>(seed);
  base.lr_is_fp32_tensor = lr_is_fp32_tensor;
  base.grad_scale = scale_dev.has_value() ? scale_dev->data_ptr<float>() : nullptr;
  base.found_inf = inf_dev.has_value() ? inf_dev->data_ptr<float>() : nullptr;

  // Rows grouped by what the kernel is compiled for: (param dtype, master copy, device step dtype).
  using Key = std::tuple<int, bool, bool>;
  std::map<Key, std::vector<cuda::TensorRow>> groups;
  FlatStaging staging;
  HostSteps host_steps;
  for (size_t i = 0; i < n; ++i) {
    prefetch_for_pointers(i, lists);
    const at::Tensor& s = steps[i];
    cuda::TensorRow row{};
    bool step_f64 = false;
    if (s.device().is_cpu()) {  // incremented in its own dtype, like torch's `step_t += 1`; stored after the launches
      row.step_value = host_steps.next(s);
    } else {  // incremented on the device by the kernel's first launch (unless found_inf)
      row.step = s.data_ptr();
      step_f64 = s.scalar_type() == at::kDouble;
    }
    const auto p_real = real_view(params[i]);
    const at::Tensor& p = *p_real;
    const bool with_master = call.master && is_low_precision(p.scalar_type());
    if (p.numel() > 0) {
      const FlatLayout layout(p);
      row.ptr[cuda::kParam] = staging.flat(p, layout, true);
      row.ptr[cuda::kGrad] = staging.flat(grads[i], layout, grad_scale.has_value());
      row.ptr[cuda::kExpAvg] = staging.flat(exp_avgs[i], layout, true);
      row.ptr[cuda::kSecond] = staging.flat(second_moments[i], layout, true);
      if (amsgrad) row.ptr[cuda::kMaxSecond] = staging.flat(max_second_moments[i], layout, true);
      if (with_master) row.ptr[cuda::kMaster] = staging.flat(master_params[i], layout, true);
      if (call.ema) row.ptr[cuda::kEma] = staging.flat(emas[i], layout, true);
    }
    row.numel = p.numel();
    row.list_index = static_cast<int64_t>(i);
    if (row.step == nullptr && row.numel == 0) continue;  // nothing left to do on the device
    groups[Key{static_cast<int>(p.scalar_type()), with_master, step_f64}].push_back(row);
  }

  // A shared device counter is incremented by its first row in launch order (groups, then rows), so every row's
  // update, in this launch or a later one, comes after the increment.
  cuda::StepOwners step_owners;
  for (auto& [key, rows] : groups)
    for (cuda::TensorRow& row : rows) row.increments_step = step_owners.first(row.step);
  for (auto& [key, rows] : groups) {
    const auto dt = static_cast<at::ScalarType>(std::get<0>(key));
    cuda::AdamArgs args = base;
    args.format.param = kernel_dtype(dt);
    args.format.master = std::get<1>(key);
    args.format.state = args.format.master ? cuda::Dtype::f32 : args.format.param;
    args.format.ema = is_low_precision(dt) ? cuda::Dtype::f32 : args.format.param;
    args.format.stochastic_rounding = stochastic_rounding && dt == at::kBFloat16 && !args.format.master;
    args.step_f64 = std::get<2>(key);
    const int64_t n_rows = static_cast<int64_t>(rows.size());
    const int64_t n_chunks = cuda::number_chunks(rows.data(), n_rows);
    at::Tensor table;  // keeps the device copy alive until the launch is enqueued
    if (!capturing && n_rows > cuda::kRowsPerParamLaunch) table = rows_on_device(rows, device);
    const auto* device_rows = table.defined() ? static_cast<const cuda::TensorRow*>(table.data_ptr()) : nullptr;
    check_launch(cuda::adam_step(args, rows.data(), device_rows, n_rows, n_chunks, stream), "adam_step_");
  }
  host_steps.store();
  staging.finish();
}

void adam_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList second_moments, at::TensorList max_second_moments, at::TensorList steps,
                    at::TensorList master_params, at::TensorList emas, c10::string_view rule, double lr, double beta1,
                    double beta2, double eps, double weight_decay, bool decoupled_weight_decay, bool amsgrad,
                    bool maximize, double ema_decay, bool stochastic_rounding, int64_t seed, bool lr_is_fp32_tensor,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                    bool check_only) {
  adam_step_impl(params, grads, exp_avgs, second_moments, max_second_moments, steps, master_params, emas, rule, lr,
                 at::Tensor(), beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize, ema_decay,
                 stochastic_rounding, seed, lr_is_fp32_tensor, grad_scale, found_inf, check_only);
}

void adam_step_lr_tensor_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                              at::TensorList second_moments, at::TensorList max_second_moments, at::TensorList steps,
                              at::TensorList master_params, at::TensorList emas, c10::string_view rule,
                              const at::Tensor& lr, double beta1, double beta2, double eps, double weight_decay,
                              bool decoupled_weight_decay, bool amsgrad, bool maximize, double ema_decay,
                              bool stochastic_rounding, int64_t seed, const std::optional<at::Tensor>& grad_scale,
                              const std::optional<at::Tensor>& found_inf, bool check_only) {
  // The host checks see lr = 0 (its value is on the device: reading it would sync, which a capture forbids).
  adam_step_impl(params, grads, exp_avgs, second_moments, max_second_moments, steps, master_params, emas, rule, 0.0,
                 lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize, ema_decay,
                 stochastic_rounding, seed, lr.scalar_type() == at::kFloat, grad_scale, found_inf, check_only);
}

// adam_step_lr_tensor_'s boxed kernel (boxed_adam.h): its schema is adam_step_'s with `Tensor lr` at position 9 and
// no lr_is_fp32_tensor.
void adam_step_lr_tensor_boxed(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  call_boxed(op, stack, [](const c10::IValue* a) {
    const AdamLists l(a);
    adam_step_lr_tensor_cuda(l.params, l.grads, l.exp_avgs, l.second_moments, l.max_second_moments, l.steps,
                             l.master_params, l.emas, a[8].toStringView(), a[9].toTensor(), a[10].toDouble(),
                             a[11].toDouble(), a[12].toDouble(), a[13].toDouble(), a[14].toBool(), a[15].toBool(),
                             a[16].toBool(), a[17].toDouble(), a[18].toBool(), a[19].toInt(),
                             a[20].toOptional<at::Tensor>(), a[21].toOptional<at::Tensor>(), a[22].toBool());
  });
}

}  // namespace

// Capturable Adam with lr a tensor on the GPU (torch's capturable=True with a tensor lr). CUDA builds
// only, so declared here rather than in csrc/ops.cpp; adam_step_'s schema with `Tensor lr`.
TORCH_LIBRARY_FRAGMENT(fused_kingma, m) {
  m.def(
      "adam_step_lr_tensor_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "
      "Tensor(d!)[] second_moments, Tensor(e!)[] max_second_moments, Tensor(f!)[] steps, Tensor(g!)[] master_params, "
      "Tensor(h!)[] emas, *, str rule, Tensor lr, float beta1, float beta2, float eps, float weight_decay, "
      "bool decoupled_weight_decay, bool amsgrad, bool maximize, float ema_decay, bool stochastic_rounding, int seed, "
      "Tensor? grad_scale, Tensor? found_inf, bool check_only) -> ()");
}

TORCH_LIBRARY_IMPL(fused_kingma, CUDA, m) {
  m.impl("adam_step_", torch::CppFunction::makeFromBoxedFunction<&adam_step_boxed<&adam_step_cuda>>());
  m.impl("adam_step_lr_tensor_", torch::CppFunction::makeFromBoxedFunction<&adam_step_lr_tensor_boxed>());
}

}  // namespace fused_kingma::cuda_glue
