// Element types of the pack kernels as raw bits (header-only; see pack.cuh). The kernels read
// and write activations as unsigned integers of the element's size and decide the sign rule
// on those bits; only LeakyReLU's product converts to the arithmetic type (float for the 16-bit
// types, as at::opmath_type), through activation_hash/float16.h. pack.cu maps float, double,
// at::Half and at::BFloat16 to F32, F64, F16 and BF16; the emulation tests use the same types.
#pragma once
#include <cstdint>
#include <cstring>

#include "activation_hash/bits.h"
#include "activation_hash/float16.h"

// Full unrolling of a loop with a constant trip count on nvcc (nothing in the emulation).
#if defined(__CUDACC__) && !defined(AH_CUDA_EMULATION)
#define AH_UNROLL _Pragma("unroll")
#else
#define AH_UNROLL
#endif

namespace activation_hash::cuda {

struct F32 {
  using raw_t = uint32_t;
  using op_t = float;
  static constexpr raw_t kSign = 0x80000000u, kInf = 0x7F800000u;
  AH_HD static op_t to_op(raw_t r) { return bit_cast<float>(r); }
  AH_HD static raw_t from_op(op_t v) { return bit_cast<uint32_t>(v); }
};
struct F64 {
  using raw_t = uint64_t;
  using op_t = double;
  static constexpr raw_t kSign = 0x8000000000000000ull, kInf = 0x7FF0000000000000ull;
  AH_HD static op_t to_op(raw_t r) { return bit_cast<double>(r); }
  AH_HD static raw_t from_op(op_t v) { return bit_cast<uint64_t>(v); }
};
struct F16 {
  using raw_t = uint16_t;
  using op_t = float;
  static constexpr raw_t kSign = 0x8000u, kInf = 0x7C00u;
  AH_HD static op_t to_op(raw_t r) { return half_to_float(r); }
  AH_HD static raw_t from_op(op_t v) { return float_to_half_rn(v); }
};
struct BF16 {
  using raw_t = uint16_t;
  using op_t = float;
  static constexpr raw_t kSign = 0x8000u, kInf = 0x7F80u;
  AH_HD static op_t to_op(raw_t r) { return bf16_to_float(r); }
  AH_HD static raw_t from_op(op_t v) { return float_to_bf16_rn(v); }
};

// The rules of bits.h on raw bits (unsigned compares, no conversion).
// on: x > 0 (not +-0, not NaN); neg: x < 0; nan: x is a NaN.
template <typename D>
AH_HD inline bool raw_on(typename D::raw_t r) {
  return typename D::raw_t(r - 1) < D::kInf;  // r in [1, kInf]
}
template <typename D>
AH_HD inline bool raw_neg(typename D::raw_t r) {
  return typename D::raw_t(r - D::kSign - 1) < D::kInf;  // r in [kSign + 1, kSign | kInf]
}
template <typename D>
AH_HD inline bool raw_nan(typename D::raw_t r) {
  return typename D::raw_t(r & ~D::kSign) > D::kInf;
}

// y of one unit: ReLU keeps x unless x < 0 (so -0.0 and NaN stay as they are); LeakyReLU keeps
// x where it is on or NaN (the NaN's own bits) and rounds x * slope otherwise.
template <typename D, bool kLeaky>
AH_HD inline typename D::raw_t raw_activation(typename D::raw_t r, typename D::op_t slope) {
  if (kLeaky) return (raw_on<D>(r) || raw_nan<D>(r)) ? r : D::from_op(D::to_op(r) * slope);
  return raw_neg<D>(r) ? typename D::raw_t(0) : r;
}

// grad_x of one unit from grad_y bits g and its bit: g where on; else +0 (ReLU) or g * slope
// (LeakyReLU; a NaN gradient stays the same NaN).
template <typename D, bool kLeaky>
AH_HD inline typename D::raw_t raw_masked_grad(typename D::raw_t g, bool on,
                                               typename D::op_t slope) {
  if (on) return g;
  if (!kLeaky) return typename D::raw_t(0);
  return raw_nan<D>(g) ? g : D::from_op(D::to_op(g) * slope);
}

// 16-byte vectors. The emulation checks the alignment that the GPU requires.
template <typename D>
struct alignas(16) Vec16 {
  static constexpr int kN = 16 / int(sizeof(typename D::raw_t));
  typename D::raw_t v[kN];
};

AH_HD inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <typename T>
__device__ __forceinline__ void load16(const T* p, void* out) {
#if defined(AH_CUDA_EMULATION)
  if (!aligned16(p)) __builtin_trap();
  memcpy(out, p, 16);
#else
  *reinterpret_cast<uint4*>(out) = *reinterpret_cast<const uint4*>(p);
#endif
}
template <typename T>
__device__ __forceinline__ void store16(T* p, const void* in) {
#if defined(AH_CUDA_EMULATION)
  if (!aligned16(p)) __builtin_trap();
  memcpy(p, in, 16);
#else
  // One st.global.v4 (a plain uint4 assignment may be split into narrower stores).
  __stwb(reinterpret_cast<uint4*>(p), *reinterpret_cast<const uint4*>(in));
#endif
}

// One 16-byte vector of x (16-byte aligned): its V = Vec16<D>::kN sign bits (bit k: x[k] > 0)
// and, if kWriteY, the ReLU / LeakyReLU of it stored to y (same alignment).
template <typename D, bool kWriteY, bool kLeaky>
__device__ __forceinline__ uint32_t pack_vec16(const typename D::raw_t* x,
                                               typename D::raw_t* y, typename D::op_t slope) {
  constexpr int V = Vec16<D>::kN;
  Vec16<D> v;
  load16(x, &v);
  uint32_t bits = 0;
AH_UNROLL
  for (int k = 0; k < V; ++k) bits |= uint32_t(raw_on<D>(v.v[k])) << k;
  if constexpr (kWriteY) {
AH_UNROLL
    for (int k = 0; k < V; ++k) v.v[k] = raw_activation<D, kLeaky>(v.v[k], slope);
    store16(y, &v);
  }
  return bits;
}

}  // namespace activation_hash::cuda
