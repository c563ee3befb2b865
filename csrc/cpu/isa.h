// Run-time CPU feature dispatch. The package is compiled for baseline x86-64 (or any other
// target); the AVX2 / AVX-512 kernels are compiled with function target attributes and chosen
// here once, from what the CPU and the operating system report.
//
// Levels (each includes the one below):
//   kAvx2:   AVX2, FMA, F16C, POPCNT (every function compiled for avx2 uses no more than these)
//            and the OS saving the YMM state (CPUID.1:ECX.OSXSAVE and XCR0 bits 1-2);
//   kAvx512: AVX-512 F, BW, DQ and VL, and the OS saving the opmask / ZMM state (XCR0 bits
//            5-7). VPOPCNTDQ is not part of the level: Skylake-SP and Cascade Lake have the
//            level without it, and only the Hamming kernel that is compiled for it checks it
//            (avx512_vpopcntdq()). Every other AVX-512 kernel (pack, fingerprint) needs the
//            level only.
// Checking the CPUID bits of every feature a kernel is compiled for, and XGETBV, matters in
// virtual machines, which may mask single CPUID bits (FMA, AVX512DQ) or the XSAVE state: a
// kernel compiled for a feature that is reported absent would die on SIGILL.
//
// ACTIVATION_HASH_ISA=scalar|avx2|avx512 caps the level (tests and benchmarks use it to run
// every path on one machine); it is read once per process, when the first kernel asks.
#pragma once
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

namespace activation_hash::cpu {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

struct CpuFeatures {
  bool popcnt = false, avx = false, avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool avx512vpopcntdq = false;
  bool os_ymm = false, os_zmm = false;  // XCR0: the OS saves the YMM / opmask + ZMM state
};

inline CpuFeatures detect_features() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(_M_X64)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  const unsigned max_leaf = a;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  f.fma = (c >> 12) & 1;
  f.popcnt = (c >> 23) & 1;
  const bool osxsave = (c >> 27) & 1;
  f.avx = (c >> 28) & 1;
  f.f16c = (c >> 29) & 1;
  if (osxsave) {
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    f.os_ymm = (lo & 0x6) == 0x6;             // SSE and AVX state
    f.os_zmm = f.os_ymm && (lo & 0xE0) == 0xE0;  // opmask, ZMM_Hi256, Hi16_ZMM
  }
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = (b >> 5) & 1;
    f.avx512f = (b >> 16) & 1;
    f.avx512dq = (b >> 17) & 1;
    f.avx512bw = (b >> 30) & 1;
    f.avx512vl = (b >> 31) & 1;
    f.avx512vpopcntdq = (c >> 14) & 1;
  }
#endif
  return f;
}

inline const CpuFeatures& features() {
  static const CpuFeatures f = detect_features();
  return f;
}

// The best level the CPU and OS support, before any cap.
inline Isa hardware_isa() {
  const CpuFeatures& f = features();
  Isa best = Isa::kScalar;
  if (f.avx && f.avx2 && f.fma && f.f16c && f.popcnt && f.os_ymm) best = Isa::kAvx2;
  if (best == Isa::kAvx2 && f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.os_zmm)
    best = Isa::kAvx512;
  return best;
}

// ACTIVATION_HASH_ISA as a level; `fallback` when unset or not one of scalar|avx2|avx512
// (activation_hash/ops.py warns about such a value).
inline Isa isa_cap(Isa fallback) {
  const char* cap = std::getenv("ACTIVATION_HASH_ISA");
  if (cap == nullptr) return fallback;
  if (std::strcmp(cap, "scalar") == 0) return Isa::kScalar;
  if (std::strcmp(cap, "avx2") == 0) return Isa::kAvx2;
  if (std::strcmp(cap, "avx512") == 0) return Isa::kAvx512;
  return fallback;
}

inline Isa detect_isa() {
  const Isa best = hardware_isa();
  const Isa cap = isa_cap(best);
  return static_cast<int>(cap) < static_cast<int>(best) ? cap : best;
}

// The choice is made once per process.
inline Isa isa() {
  static const Isa chosen = detect_isa();
  return chosen;
}

// The AVX-512 Hamming kernels (VPOPCNTQ): the kAvx512 level and VPOPCNTDQ.
inline bool avx512_vpopcntdq() {
  static const bool yes = isa() == Isa::kAvx512 && features().avx512vpopcntdq;
  return yes;
}

inline const char* isa_name() {
  switch (isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

// Which kernel family each op group runs, e.g. "hamming=avx2 pack=avx512 fingerprint=avx512"
// (tests check that ACTIVATION_HASH_ISA takes effect for every group).
inline std::string kernel_names() {
  const char* level = isa_name();
  const char* hamming = avx512_vpopcntdq() ? "avx512" : level;
  // The fingerprint kernels have an AVX-512 version only.
  const char* fingerprint = isa() == Isa::kAvx512 ? "avx512" : "scalar";
  return std::string("hamming=") + hamming + " pack=" + level + " fingerprint=" + fingerprint +
         " regions=" + level;
}

}  // namespace activation_hash::cpu
