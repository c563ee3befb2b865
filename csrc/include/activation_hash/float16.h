// float16 / bfloat16 <-> float conversions on raw bits, shared by the CUDA kernels and their
// CPU emulation (header-only, __host__ __device__, no CUDA or ATen types).
//
// The host definitions are exact integer code: half_to_float is exact (every half is a float),
// float_to_half_rn and float_to_bf16_rn round to nearest, ties to even, overflowing to inf,
// denormals included. In device code the same functions are the hardware conversions
// (cvt.f32.f16, cvt.rn.f16.f32, cvt.rn.bf16.f32 on sm_80+), which are specified to give the
// same bits for every non-NaN input; for NaN only the payload may differ, and the kernels never
// convert a NaN (they pass NaN inputs through as raw bits). bf16 -> float is a 16-bit shift.
// tests/emu/test_pack.cpp checks the host definitions against F16C and an independent
// double-precision rounding.
#pragma once
#include <cstdint>
#include <cstring>

#include "activation_hash/bits.h"

namespace activation_hash {

// The bits of a value as another type of the same size (memcpy: defined behaviour, one move).
template <typename To, typename From>
AH_HD inline To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between types of one size");
  To t;
  memcpy(&t, &v, sizeof(To));
  return t;
}

// Host (integer) definitions.
inline float half_to_float_host(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  if (e == 0x1F) return bit_cast<float>(sign | 0x7F800000u | (m << 13));  // inf, NaN
  if (e == 0) {
    if (m == 0) return bit_cast<float>(sign);
    e = 113;  // subnormal: normalise (value m * 2^-24)
    while ((m & 0x400u) == 0) {
      m <<= 1;
      --e;
    }
    return bit_cast<float>(sign | (e << 23) | ((m & 0x3FFu) << 13));
  }
  return bit_cast<float>(sign | ((e + 112) << 23) | (m << 13));
}

// Round-to-nearest-even right shift of m by s (1 <= s <= 31).
inline uint32_t shift_rne(uint32_t m, int s) {
  const uint32_t r = m >> s, rem = m & ((1u << s) - 1), half = 1u << (s - 1);
  return r + ((rem > half || (rem == half && (r & 1u))) ? 1u : 0u);
}

inline uint16_t float_to_half_rn_host(float f) {
  const uint32_t x = bit_cast<uint32_t>(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return uint16_t(sign | 0x7E00u | ((a >> 13) & 0x3FFu));  // quiet NaN
  if (a >= 0x477FF000u) return uint16_t(sign | 0x7C00u);  // >= 65520 rounds to inf
  if (a < 0x38800000u) {                                   // below 2^-14: subnormal or zero
    if (a <= 0x33000000u) return sign;                     // <= 2^-25 rounds to 0
    const int e = int(a >> 23);                            // 102..112
    return uint16_t(sign | shift_rne((a & 0x7FFFFFu) | 0x800000u, 126 - e));
  }
  return uint16_t(sign | shift_rne(a - 0x38000000u, 13));  // rebias; a carry bumps the exponent
}

inline uint16_t float_to_bf16_rn_host(float f) {
  const uint32_t x = bit_cast<uint32_t>(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((x >> 16) | 0x40u);  // quiet NaN
  return uint16_t((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

// The functions the kernels call.
AH_HD inline float half_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#else
  return half_to_float_host(h);
#endif
}

AH_HD inline uint16_t float_to_half_rn(float f) {
#if defined(__CUDA_ARCH__)
  uint16_t h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
#else
  return float_to_half_rn_host(f);
#endif
}

AH_HD inline float bf16_to_float(uint16_t b) { return bit_cast<float>(uint32_t(b) << 16); }

AH_HD inline uint16_t float_to_bf16_rn(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint16_t b;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(f));
  return b;
#elif defined(__CUDA_ARCH__)
  const uint32_t x = bit_cast<uint32_t>(f);  // pre-sm_80: the same integer rounding as the host
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((x >> 16) | 0x40u);
  return uint16_t((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
#else
  return float_to_bf16_rn_host(f);
#endif
}

}  // namespace activation_hash
