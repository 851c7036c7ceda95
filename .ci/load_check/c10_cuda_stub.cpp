// Stand-ins for the c10::cuda functions a CUDA build of fused_kingma links (.ci/link_check.sh lists them),
// built as a libc10_cuda.so for .ci/load_check.sh: they let the CUDA build load into a CPU torch. None of them
// can be reached there (no tensor is ever on a CUDA device), so each raises if it ever is. Defining them
// against torch's own declarations also checks their signatures.
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

namespace {
[[noreturn]] void unreachable(const char* what) {
  TORCH_CHECK(false, "c10::cuda::", what, " called in fused_kingma's load check (a CPU torch with stand-ins)");
}
}  // namespace

namespace c10::cuda {
DeviceIndex device_count() noexcept { return 0; }
cudaError_t GetDevice(DeviceIndex*) { unreachable("GetDevice"); }
cudaError_t SetDevice(DeviceIndex, const bool) { unreachable("SetDevice"); }
cudaError_t MaybeSetDevice(DeviceIndex) { unreachable("MaybeSetDevice"); }
DeviceIndex ExchangeDevice(DeviceIndex) { unreachable("ExchangeDevice"); }
CUDAStream getStreamFromPool(const bool, DeviceIndex) { unreachable("getStreamFromPool"); }
CUDAStream getStreamFromPool(const int, DeviceIndex) { unreachable("getStreamFromPool"); }
CUDAStream getDefaultCUDAStream(DeviceIndex) { unreachable("getDefaultCUDAStream"); }
CUDAStream getCurrentCUDAStream(DeviceIndex) { unreachable("getCurrentCUDAStream"); }
void setCurrentCUDAStream(CUDAStream) { unreachable("setCurrentCUDAStream"); }
bool CUDAStream::query() const { unreachable("CUDAStream::query"); }
void CUDAStream::synchronize() const { unreachable("CUDAStream::synchronize"); }
cudaStream_t CUDAStream::stream() const { unreachable("CUDAStream::stream"); }
void c10_cuda_check_implementation(const int32_t, const char*, const char*, const uint32_t, const bool) {
  unreachable("c10_cuda_check_implementation");
}
namespace CUDACachingAllocator {
std::atomic<CUDAAllocator*> allocator{nullptr};
}  // namespace CUDACachingAllocator
}  // namespace c10::cuda
