#include "output_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>

#include "huge_pages.h"

namespace fused_kingma::cpu {
namespace {

// Smaller blocks come from glibc's heap, which keeps them without page faults already.
constexpr size_t kMinBytes = size_t{1} << 20;
constexpr int64_t kDefaultLimitMb = 256;
// Each cached block starts with a header holding its size; the data follows, 64-byte aligned like
// c10::alloc_cpu's.
constexpr size_t kHeader = 64;

struct Header {
  size_t bytes;  // data bytes (the block's size class: reuse needs an exact match)
};

int64_t limit_from_env() {
  const char* env = std::getenv("FUSED_KINGMA_CPU_CACHE_MB");
  if (env == nullptr || *env == '\0') return kDefaultLimitMb << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(env, &end, 10);
  TORCH_CHECK(end != env && *end == '\0' && mb >= 0,
              "FUSED_KINGMA_CPU_CACHE_MB: expected a whole number of MiB >= 0 (0 turns the cache off), got '", env,
              "'");
  return static_cast<int64_t>(mb) << 20;
}

class OutputCache final : public c10::Allocator {
 public:
  // Never destroyed: tensors holding its blocks may die during interpreter shutdown, after static destructors.
  static OutputCache& instance() {
    static OutputCache* cache = new OutputCache();
    return *cache;
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes) return c10::GetCPUAllocator()->allocate(n);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (limit_ == 0) return c10::GetCPUAllocator()->allocate(n);  // the cache is off
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if ((*it)->bytes != n) continue;
        Header* h = *it;
        free_.erase(it);
        cached_bytes_ -= static_cast<int64_t>(n);
        ++hits_;
        return wrap(h);
      }
      ++misses_;
    }
    auto* h = static_cast<Header*>(c10::alloc_cpu(n + kHeader));
    h->bytes = n;
    advise_huge_pages(data_of(h), n);
    return wrap(h);
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void empty() {
    std::deque<Header*> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      drop.swap(free_);
      cached_bytes_ = 0;
    }
    for (Header* h : drop) c10::free_cpu(h);
  }

  OutputCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return OutputCacheStats{cached_bytes_, static_cast<int64_t>(free_.size()), hits_, misses_, limit_};
  }

  int64_t set_limit(int64_t bytes) {
    TORCH_CHECK(bytes >= 0, "set_cpu_cache_limit: expected bytes >= 0, got ", bytes);
    int64_t previous;
    std::deque<Header*> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      previous = limit_;
      limit_ = bytes;
      evict_locked(drop);
    }
    for (Header* h : drop) c10::free_cpu(h);
    return previous;
  }

 private:
  OutputCache() : limit_(limit_from_env()) {}

  static void* data_of(Header* h) { return reinterpret_cast<char*>(h) + kHeader; }

  static c10::DataPtr wrap(Header* h) { return {data_of(h), h, &OutputCache::release, c10::Device(c10::kCPU)}; }

  // The deleter of every cached-size block: keep it (newest last) unless that would pass the limit.
  static void release(void* ctx) {
    auto* h = static_cast<Header*>(ctx);
    OutputCache& cache = instance();
    std::deque<Header*> drop;
    {
      std::lock_guard<std::mutex> lock(cache.mutex_);
      cache.free_.push_back(h);
      cache.cached_bytes_ += static_cast<int64_t>(h->bytes);
      cache.evict_locked(drop);
    }
    for (Header* d : drop) c10::free_cpu(d);
  }

  // Oldest blocks out until the cache fits its limit; freed by the caller outside the lock.
  void evict_locked(std::deque<Header*>& drop) {
    while (cached_bytes_ > limit_ && !free_.empty()) {
      Header* h = free_.front();
      free_.pop_front();
      cached_bytes_ -= static_cast<int64_t>(h->bytes);
      drop.push_back(h);
    }
  }

  std::mutex mutex_;
  std::deque<Header*> free_;  // oldest first
  int64_t cached_bytes_ = 0;
  int64_t limit_;
  int64_t hits_ = 0, misses_ = 0;
};

}  // namespace

at::Tensor empty_cached_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu());
  return at::detail::empty_generic(sizes, &OutputCache::instance(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), c10::MemoryFormat::Contiguous);
}

void empty_output_cache() { OutputCache::instance().empty(); }

OutputCacheStats output_cache_stats() { return OutputCache::instance().stats(); }

int64_t set_output_cache_limit(int64_t bytes) { return OutputCache::instance().set_limit(bytes); }

}  // namespace fused_kingma::cpu
