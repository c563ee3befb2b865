// Bit-layout helpers shared by the CPU and CUDA kernels (header-only, __host__ __device__).
//
// A sample's code is a row of 64-bit words. Bit j of a block lives in word j / 64 at bit
// j % 64; bits past the block's size are 0 (docs/design.md, section 1).
#pragma once
#include <cstdint>

#if defined(__CUDACC__) || defined(AH_CUDA_EMULATION)
#define AH_HD __host__ __device__
#else
#define AH_HD
#endif

// Dynamic shared memory in a kernel: AH_DYNAMIC_SHARED(T, name) declares `T* name` (size set at
// launch). tests/emu/cuda_emu.h defines it for the CPU emulation of the kernels.
#if defined(__CUDACC__) && !defined(AH_CUDA_EMULATION)
#define AH_DYNAMIC_SHARED(T, name)                                   \
  extern __shared__ __align__(16) unsigned char ah_dynamic_shared_[]; \
  T* name = reinterpret_cast<T*>(ah_dynamic_shared_)
#endif

// Unrolling hints of the CUDA kernels: nvcc's #pragma unroll, nothing for other compilers (the
// emulation tests compile the kernels with g++, which would warn about an unknown pragma).
#if defined(__CUDACC__) && !defined(AH_CUDA_EMULATION)
#define AH_UNROLL _Pragma("unroll")
#define AH_UNROLL_4 _Pragma("unroll 4")
#else
#define AH_UNROLL
#define AH_UNROLL_4
#endif

namespace activation_hash {

constexpr int64_t kWordBits = 64;

// Number of 64-bit words that hold n bits.
AH_HD inline int64_t words_for_bits(int64_t n) { return (n + kWordBits - 1) / kWordBits; }

// Mask of the low m bits of a word (m in [0, 64]).
AH_HD inline uint64_t low_bits_mask(int64_t m) {
  return m >= kWordBits ? ~uint64_t(0) : ((uint64_t(1) << m) - 1);
}

// The activation rule of the package, on float or double: a unit is "on" iff its
// pre-activation is strictly positive. -0.0, +0.0 and NaN are off.
template <typename T>
AH_HD inline bool unit_on(T v) { return v > T(0); }

// ReLU exactly as torch computes it: x < 0 ? 0 : x (keeps -0.0 and NaN), or LeakyReLU:
// x > 0 ? x : x * slope (slope != 0).
template <typename T>
AH_HD inline T relu_value(T v, T slope, bool leaky) {
  if (leaky) return v > T(0) ? v : v * slope;
  return v < T(0) ? T(0) : v;
}

// Gradient through the mask: the bit says the unit was on.
template <typename T>
AH_HD inline T masked_grad(T g, bool on, T slope, bool leaky) {
  if (on) return g;
  return leaky ? g * slope : T(0);
}

}  // namespace activation_hash
