// isa.cpp — run-time choice between the AVX2 and portable kernels (see isa.hpp).
#include "isa.hpp"

#include <cstdlib>
#include <cstring>

namespace fa::cpu {

bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

const IsaKernels& select_isa() {
  static const IsaKernels& chosen = [] () -> const IsaKernels& {
    const char* forced = std::getenv("FLASHATTN_CPU_ISA");
    if (forced != nullptr && std::strcmp(forced, "portable") == 0) return isa_portable();
    return cpu_has_avx2() ? isa_avx2() : isa_portable();
  }();
  return chosen;
}

}  // namespace fa::cpu
