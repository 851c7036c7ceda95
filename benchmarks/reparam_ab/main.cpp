// Paired A/B of two builds of the CPU reparameterize kernels in one process (see reparam_ab.py): calls of build A
// (reparam_forward_cpu / reparam_backward_cpu) and build B (the same names with the suffix _b) alternate, so a
// slow spell of a shared host hits both. Prints per build and pass the median and 10th percentile in ms, and
// whether B's outputs equal A's bit for bit. float32, or bfloat16 with "bf16" as the fifth argument.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/reparam_kernels.h"

namespace fused_kingma::cpu {
void reparam_forward_cpu_b(const ReparamFwdArgs& a);
void reparam_backward_cpu_b(const ReparamBwdArgs& a);
}  // namespace fused_kingma::cpu

using namespace fused_kingma::cpu;

template <class T, ReparamDtype kDtype>
int run(int64_t R, int64_t D, int rounds) {
  const int64_t n = R * D;
  std::vector<T> mu(n), lv(n), gz(n), gk(R);
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  for (int64_t i = 0; i < n; ++i) mu[i] = T(normal(gen)), lv[i] = T(0.5f * normal(gen)), gz[i] = T(normal(gen));
  for (T& x : gk) x = T(normal(gen));
  struct Outputs {
    std::vector<T> z, kl, gmu, glv;
  } out[2];
  for (Outputs& o : out) o = {std::vector<T>(n), std::vector<T>(R), std::vector<T>(n), std::vector<T>(n)};
  const auto fwd_args = [&](Outputs& o) {
    return ReparamFwdArgs{kDtype, mu.data(), lv.data(), nullptr, nullptr, o.z.data(), o.kl.data(),
                          nullptr, nullptr, R, D, 1, 1, 2, 0, 0};
  };
  const auto bwd_args = [&](Outputs& o) {
    return ReparamBwdArgs{kDtype, gz.data(), gk.data(), nullptr, nullptr, mu.data(), lv.data(),
                          nullptr, nullptr, o.gmu.data(), o.glv.data(), nullptr, nullptr, R, D, 1, 1, 2, 0, 0};
  };
  const ReparamFwdArgs fa = fwd_args(out[0]), fb = fwd_args(out[1]);
  const ReparamBwdArgs ba = bwd_args(out[0]), bb = bwd_args(out[1]);
  std::vector<double> ms[4];  // forward A, forward B, backward A, backward B
  const auto timed = [](std::vector<double>& into, auto&& call) {
    const auto t0 = std::chrono::steady_clock::now();
    call();
    into.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  };
  for (int r = 0; r < rounds; ++r) {
    timed(ms[0], [&] { reparam_forward_cpu(fa); });
    timed(ms[1], [&] { reparam_forward_cpu_b(fb); });
    timed(ms[2], [&] { reparam_backward_cpu(ba); });
    timed(ms[3], [&] { reparam_backward_cpu_b(bb); });
  }
  const char* names[] = {"forward A", "forward B", "backward A", "backward B"};
  for (int i = 0; i < 4; ++i) {
    std::sort(ms[i].begin(), ms[i].end());
    std::printf("%lldx%lld %-10s median %.3f ms  p10 %.3f ms\n", static_cast<long long>(R), static_cast<long long>(D),
                names[i], ms[i][ms[i].size() / 2], ms[i][ms[i].size() / 10]);
  }
  const auto same = [](const std::vector<T>& a, const std::vector<T>& b) {
    return std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
  };
  const bool identical = same(out[0].z, out[1].z) && same(out[0].kl, out[1].kl) && same(out[0].gmu, out[1].gmu) &&
                         same(out[0].glv, out[1].glv);
  std::printf("B's outputs bit for bit A's: %s\n", identical ? "yes" : "no");
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 5 && argc != 6) {
    std::fprintf(stderr, "usage: %s rows dim threads rounds [f32|bf16]\n", argv[0]);
    return 2;
  }
  const int64_t R = std::atoll(argv[1]), D = std::atoll(argv[2]);
  at::set_num_threads(std::atoi(argv[3]));
  const int rounds = std::atoi(argv[4]);
  if (argc == 6 && std::strcmp(argv[5], "bf16") == 0) return run<c10::BFloat16, ReparamDtype::BF16>(R, D, rounds);
  return run<float, ReparamDtype::F32>(R, D, rounds);
}
