// Run-time CPU feature dispatch. The package is compiled for baseline x86-64 (or any other
// target); the AVX2 / AVX-512 kernels are compiled with function target attributes and chosen
// here once, from what the CPU reports. ACTIVATION_HASH_ISA=scalar|avx2|avx512 caps the choice
// (tests use it to run every path on one machine).
#pragma once
#include <cstdlib>
#include <cstring>

namespace activation_hash::cpu {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

inline Isa detect_isa() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  Isa best = Isa::kScalar;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) best = Isa::kAvx2;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq"))
    best = Isa::kAvx512;
  if (const char* cap = std::getenv("ACTIVATION_HASH_ISA")) {
    Isa want = best;
    if (std::strcmp(cap, "scalar") == 0) want = Isa::kScalar;
    else if (std::strcmp(cap, "avx2") == 0) want = Isa::kAvx2;
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
#else
  return Isa::kScalar;
#endif
}

// The choice is made once per process.
inline Isa isa() {
  static const Isa chosen = detect_isa();
  return chosen;
}

inline const char* isa_name() {
  switch (isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace activation_hash::cpu
