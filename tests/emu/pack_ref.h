// Plain C++ references for the pack kernel tests (test_pack.cpp, test_pack_cl.cpp): element
// values decoded to double and rounded back with double arithmetic (std::ldexp, nearbyint),
// independent of csrc/include/activation_hash/float16.h and csrc/cuda/dtype.cuh.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "harness.h"

namespace pack_ref {

// Element kinds: 0 float, 1 double, 2 float16, 3 bfloat16.
template <int K>
struct Kind;
template <>
struct Kind<0> {
  using raw_t = uint32_t;
  static constexpr const char* kName = "float";
};
template <>
struct Kind<1> {
  using raw_t = uint64_t;
  static constexpr const char* kName = "double";
};
template <>
struct Kind<2> {
  using raw_t = uint16_t;
  static constexpr const char* kName = "half";
  static constexpr int kMant = 10, kEmax = 15, kEmin = -14;
};
template <>
struct Kind<3> {
  using raw_t = uint16_t;
  static constexpr const char* kName = "bf16";
  static constexpr int kMant = 7, kEmax = 127, kEmin = -126;
};

inline double half_value(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  const double s = (h & 0x8000) ? -1.0 : 1.0;
  if (e == 31) return m ? std::numeric_limits<double>::quiet_NaN() : s * HUGE_VAL;
  if (e == 0) return s * std::ldexp(double(m), -24);
  return s * std::ldexp(double(1024 + m), e - 25);
}
inline double bf16_value(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <int K>
double value(typename Kind<K>::raw_t r) {
  if constexpr (K == 0) {
    float f;
    std::memcpy(&f, &r, 4);
    return f;
  } else if constexpr (K == 1) {
    double d;
    std::memcpy(&d, &r, 8);
    return d;
  } else if constexpr (K == 2) {
    return half_value(r);
  } else {
    return bf16_value(r);
  }
}

// A finite or infinite, non-NaN double rounded to the 16-bit format of kind K: nearest,
// ties to even (nearbyint in the default rounding mode), overflow to inf.
template <int K>
uint16_t round16(double d) {
  using Kd = Kind<K>;
  const uint16_t sign = std::signbit(d) ? 0x8000 : 0;
  const uint16_t inf = uint16_t(((2 * Kd::kEmax + 1) << Kd::kMant));
  double a = std::fabs(d);
  if (std::isinf(a)) return sign | inf;
  if (a == 0) return sign;
  int e;
  std::frexp(a, &e);
  const int E = e - 1 < Kd::kEmin ? Kd::kEmin : e - 1;
  const double q = std::ldexp(1.0, E - Kd::kMant);
  a = std::nearbyint(a / q) * q;
  if (a >= std::ldexp(1.0, Kd::kEmax + 1)) return sign | inf;
  if (a == 0) return sign;
  std::frexp(a, &e);
  if (e - 1 < Kd::kEmin)  // subnormal: a multiple of the smallest step
    return uint16_t(sign | uint16_t(a / std::ldexp(1.0, Kd::kEmin - Kd::kMant)));
  const int mant = int(a / std::ldexp(1.0, e - 1 - Kd::kMant)) - (1 << Kd::kMant);
  return uint16_t(sign | ((e - 1 + Kd::kEmax) << Kd::kMant) | mant);
}

// x * slope in the op's arithmetic type (float for the 16-bit kinds), rounded to kind K.
template <int K>
typename Kind<K>::raw_t scaled(typename Kind<K>::raw_t r, double slope) {
  if constexpr (K == 0) {
    const float p = float(value<0>(r)) * float(slope);
    uint32_t u;
    std::memcpy(&u, &p, 4);
    return u;
  } else if constexpr (K == 1) {
    const double p = value<1>(r) * slope;
    uint64_t u;
    std::memcpy(&u, &p, 8);
    return u;
  } else {
    return round16<K>(double(float(value<K>(r)) * float(slope)));
  }
}

// The contract of relu_pack on one element (docs/design.md): on = x > 0; ReLU y = x < 0 ? +0 :
// x (keeps -0.0 and NaN bits); LeakyReLU y = x if on or NaN, else x * slope rounded.
template <int K>
bool on(typename Kind<K>::raw_t r) { return value<K>(r) > 0; }

template <int K>
typename Kind<K>::raw_t activation(typename Kind<K>::raw_t r, bool leaky, double slope) {
  const double v = value<K>(r);
  if (!leaky) return v < 0 ? 0 : r;
  return (v > 0 || std::isnan(v)) ? r : scaled<K>(r, slope);
}

template <int K>
typename Kind<K>::raw_t masked_grad(typename Kind<K>::raw_t g, bool bit, bool leaky,
                                    double slope) {
  if (bit) return g;
  if (!leaky) return 0;
  return std::isnan(value<K>(g)) ? g : scaled<K>(g, slope);
}

// Raw values with the edge cases: +-0, NaNs, +-inf, denormals, tiny and ordinary values, and
// (16-bit kinds) arbitrary bit patterns, which include huge values that overflow when scaled.
template <int K>
typename Kind<K>::raw_t edgy(emu_test::Rng& rng) {
  using raw_t = typename Kind<K>::raw_t;
  if constexpr (K == 0 || K == 1) {
    using T = std::conditional_t<K == 0, float, double>;
    const T v = emu_test::edgy_value<T>(rng);
    raw_t r;
    std::memcpy(&r, &v, sizeof(r));
    return r;
  } else {
    const uint16_t inf = K == 2 ? 0x7C00 : 0x7F80, sign = rng.below(2) ? 0x8000 : 0;
    switch (rng.below(10)) {
      case 0: return sign;
      case 1: return uint16_t(sign | inf);
      case 2: return uint16_t(sign | inf | (1 + rng.below(K == 2 ? 1023 : 127)));  // NaN
      case 3: return uint16_t(sign | (1 + rng.below(K == 2 ? 1023 : 127)));        // denormal
      default: return uint16_t(rng.next());
    }
  }
}

}  // namespace pack_ref
