// CPU kernels of pack_signs, relu_pack, relu_mask_backward and unpack_bits.
//
// Work is split into "word tasks": task i = b * W + w covers units [64 w, 64 w + 64) of sample
// b, and writes words[i]. Tasks run under at::parallel_for; float32 has AVX2 and AVX-512
// versions picked at run time (isa.h), every dtype has a portable scalar version. The AVX-512
// kernels need F, BW, DQ and VL (the kAvx512 level, no VPOPCNTDQ: Skylake-SP runs them), the
// AVX2 ones AVX2 and FMA, the float16 conversions F16C (all in the kAvx2 level).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "activation_hash/bits.h"
#include "activation_hash/checks.h"
#include "cpu/isa.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define AH_X86 1
#define AH_AVX2 __attribute__((target("avx2,fma,popcnt")))
#define AH_F16C __attribute__((target("avx2,fma,f16c")))
#define AH_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,popcnt")))
#define AH_AVX512_LAMBDA __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,popcnt"), always_inline))
#endif

namespace activation_hash::cpu {
namespace {

constexpr int64_t kGrainWords = 512;  // 32k units per parallel chunk at least

struct Geometry {
  int64_t n;  // units per sample
  int64_t W;  // words per sample
  // Units covered by task i and their offset in the flat [B * n] buffer.
  int64_t units(int64_t i) const { return std::min<int64_t>(kWordBits, n - (i % W) * kWordBits); }
  int64_t offset(int64_t i) const { return (i / W) * n + (i % W) * kWordBits; }
};

// ---- portable kernels (every dtype) ----------------------------------------------------

// Sign tests on the raw bits of a value, branch-free so that the loops vectorize for every
// dtype: on = x > 0, neg = x < 0 (both false for -0.0, +0.0 and NaN). kInf is the bit
// pattern of +inf; larger magnitudes are NaN.
template <typename Bits, typename Signed, Bits kInf>
struct RawSigns {
  using raw_t = Bits;
  static constexpr Bits kSign = Bits(Bits(1) << (8 * sizeof(Bits) - 1));
  static bool on(Bits v) { return Signed(v) > 0 && v <= kInf; }
  static bool neg(Bits v) { return v > kSign && v <= Bits(kSign | kInf); }
  // v where keep, else +0.0
  static Bits keep_if(Bits v, bool keep) { return v & Bits(Bits(0) - Bits(keep)); }
};
template <typename T>
struct Signs;
template <>
struct Signs<float> : RawSigns<uint32_t, int32_t, 0x7F800000u> {};
template <>
struct Signs<double> : RawSigns<uint64_t, int64_t, 0x7FF0000000000000ull> {};
template <>
struct Signs<c10::Half> : RawSigns<uint16_t, int16_t, 0x7C00> {};
template <>
struct Signs<c10::BFloat16> : RawSigns<uint16_t, int16_t, 0x7F80> {};

// y[k] = half(float(x[k]) * factor[k]) for k < m (factor 32-byte aligned): float16 LeakyReLU
// values and gradients, 8 at a time with the F16C conversions where the CPU has them.
#ifdef AH_X86
AH_F16C void scale_half_f16c(const c10::Half* x, const float* factor, c10::Half* y, int64_t m) {
  int64_t k = 0;
  for (; k + 8 <= m; k += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + k));
    const __m256 v = _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_load_ps(factor + k));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + k),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; k < m; ++k) y[k] = c10::Half(static_cast<float>(x[k]) * factor[k]);
}

// F16C is part of the kAvx2 level (cpu/isa.h), as are AVX2 and FMA.
inline bool use_f16c() { return isa() != Isa::kScalar; }
#endif

template <typename scalar_t, typename opmath_t>
inline void scale(const scalar_t* x, const opmath_t* factor, scalar_t* y, int64_t m) {
#ifdef AH_X86
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    if (use_f16c()) return scale_half_f16c(x, factor, y, m);
  }
#endif
  for (int64_t k = 0; k < m; ++k) y[k] = scalar_t(static_cast<opmath_t>(x[k]) * factor[k]);
}

// 8 bytes holding 0 or 1 (little-endian) -> 8 bits, byte k to bit k.
inline uint64_t gather_byte_bits(const uint8_t* b) {
  uint64_t u;
  std::memcpy(&u, b, 8);
  return (u * 0x0102040810204080ull) >> 56;
}

// bit k of a byte -> byte k (0 or 1) of a little-endian uint64.
struct ByteSpread {
  uint64_t table[256];
  constexpr ByteSpread() : table() {
    for (int b = 0; b < 256; ++b)
      for (int k = 0; k < 8; ++k) table[b] |= uint64_t((b >> k) & 1) << (8 * k);
  }
};
constexpr ByteSpread kByteSpread;

template <typename scalar_t, bool kWriteY, bool kLeaky>
void pack_tasks_scalar(const scalar_t* x, scalar_t* y, int64_t* words, Geometry g,
                       at::opmath_type<scalar_t> slope, int64_t begin, int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  using S = Signs<scalar_t>;
  using raw_t = typename S::raw_t;
  alignas(64) uint8_t on[kWordBits];
  for (int64_t i = begin; i < end; ++i) {
    const int64_t m = g.units(i), off = g.offset(i);
    const raw_t* xr = reinterpret_cast<const raw_t*>(x + off);
    for (int64_t k = 0; k < m; ++k) on[k] = S::on(xr[k]);
    for (int64_t k = m; k < kWordBits; ++k) on[k] = 0;
    uint64_t word = 0;
    for (int j = 0; j < 8; ++j) word |= gather_byte_bits(on + 8 * j) << (8 * j);
    words[i] = static_cast<int64_t>(word);
    if constexpr (kWriteY) {
      if constexpr (kLeaky) {
        // v * 1 == v exactly for the units that are on; branch-free so that it vectorizes.
        alignas(64) opmath_t factor[kWordBits];
        for (int64_t k = 0; k < kWordBits; ++k) factor[k] = on[k] ? opmath_t(1) : slope;
        scale(x + off, factor, y + off, m);
      } else {
        raw_t* yr = reinterpret_cast<raw_t*>(y + off);
        for (int64_t k = 0; k < m; ++k) yr[k] = S::keep_if(xr[k], !S::neg(xr[k]));
      }
    }
  }
}

template <typename scalar_t, bool kLeaky>
void backward_tasks_scalar(const scalar_t* gy, const int64_t* words, scalar_t* gx, Geometry g,
                           at::opmath_type<scalar_t> slope, int64_t begin, int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  using S = Signs<scalar_t>;
  using raw_t = typename S::raw_t;
  alignas(64) uint8_t on[kWordBits];
  for (int64_t i = begin; i < end; ++i) {
    const int64_t m = g.units(i), off = g.offset(i);
    const uint64_t word = static_cast<uint64_t>(words[i]);
    for (int j = 0; j < 8; ++j)
      std::memcpy(on + 8 * j, &kByteSpread.table[(word >> (8 * j)) & 0xFF], 8);
    if constexpr (kLeaky) {
      alignas(64) opmath_t factor[kWordBits];
      for (int64_t k = 0; k < kWordBits; ++k) factor[k] = on[k] ? opmath_t(1) : slope;
      scale(gy + off, factor, gx + off, m);
    } else {
      const raw_t* gr = reinterpret_cast<const raw_t*>(gy + off);
      raw_t* xr = reinterpret_cast<raw_t*>(gx + off);
      for (int64_t k = 0; k < m; ++k) xr[k] = S::keep_if(gr[k], on[k]);
    }
  }
}

#ifdef AH_X86
// ---- AVX-512 (float32) -----------------------------------------------------------------

template <bool kWriteY, bool kLeaky>
AH_AVX512 void pack_tasks_f32_avx512(const float* x, float* y, int64_t* words, Geometry g,
                                     float slope, int64_t begin, int64_t end) {
  const __m512 zero = _mm512_setzero_ps(), s = _mm512_set1_ps(slope);
  for (int64_t i = begin; i < end; ++i) {
    const int64_t m = g.units(i), off = g.offset(i);
    uint64_t word = 0;
    auto step = [&](int64_t lo, __mmask16 lane, auto full) AH_AVX512_LAMBDA {
      constexpr bool kFull = decltype(full)::value;
      const __m512 v = kFull ? _mm512_loadu_ps(x + off + lo) : _mm512_maskz_loadu_ps(lane, x + off + lo);
      const __mmask16 on = _mm512_mask_cmp_ps_mask(lane, v, zero, _CMP_GT_OQ);
      word |= uint64_t(on) << lo;
      if constexpr (kWriteY) {
        __m512 out;
        if constexpr (kLeaky) out = _mm512_mask_mov_ps(_mm512_mul_ps(v, s), on, v);
        else out = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), zero);
        if constexpr (kFull) _mm512_storeu_ps(y + off + lo, out);
        else _mm512_mask_storeu_ps(y + off + lo, lane, out);
      }
    };
    if (m == kWordBits) {
      for (int64_t lo = 0; lo < kWordBits; lo += 16) step(lo, __mmask16(0xFFFF), std::true_type{});
    } else {
      for (int64_t lo = 0; lo < m; lo += 16)
        step(lo, m - lo >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (m - lo)) - 1),
             std::false_type{});
    }
    words[i] = static_cast<int64_t>(word);
  }
}

template <bool kLeaky>
AH_AVX512 void backward_tasks_f32_avx512(const float* gy, const int64_t* words, float* gx,
                                         Geometry g, float slope, int64_t begin, int64_t end) {
  const __m512 s = _mm512_set1_ps(slope);
  for (int64_t i = begin; i < end; ++i) {
    const int64_t m = g.units(i), off = g.offset(i);
    const uint64_t word = static_cast<uint64_t>(words[i]);
    auto out = [&](__m512 v, __mmask16 on) AH_AVX512_LAMBDA {
      return kLeaky ? _mm512_mask_mov_ps(_mm512_mul_ps(v, s), on, v) : _mm512_maskz_mov_ps(on, v);
    };
    // Masked stores are slow on fresh pages here: full words use plain loads and stores.
    if (m == kWordBits) {
      for (int64_t lo = 0; lo < kWordBits; lo += 16)
        _mm512_storeu_ps(gx + off + lo, out(_mm512_loadu_ps(gy + off + lo), __mmask16(word >> lo)));
    } else {
      for (int64_t lo = 0; lo < m; lo += 16) {
        const __mmask16 lane = m - lo >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (m - lo)) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(lane, gy + off + lo);
        _mm512_mask_storeu_ps(gx + off + lo, lane, out(v, __mmask16(word >> lo) & lane));
      }
    }
  }
}

// ---- AVX2 (float32) --------------------------------------------------------------------

// Per 32 units: 4 compares whose int32 masks are narrowed to bytes by 2 vpackssdw and 1
// vpacksswb (in-lane), put back in order by one vpermd and read by one vpmovmskb, so a word
// costs 2 mask extractions instead of 8 movmskps with their shifts and ors.
template <bool kWriteY, bool kLeaky>
AH_AVX2 void pack_tasks_f32_avx2(const float* x, float* y, int64_t* words, Geometry g,
                                 float slope, int64_t begin, int64_t end) {
  const __m256 zero = _mm256_setzero_ps(), s = _mm256_set1_ps(slope);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t i = begin; i < end; ++i) {
    const int64_t m = g.units(i), off = g.offset(i);
    if (m < kWordBits) {  // the last, partial word of a sample
      pack_tasks_scalar<float, kWriteY, kLeaky>(x, y, words, g, slope, i, i + 1);
      continue;
    }
    uint64_t word = 0;
    for (int64_t lo = 0; lo < kWordBits; lo += 32) {
      __m256i on[4];
      for (int k = 0; k < 4; ++k) {
        const __m256 v = _mm256_loadu_ps(x + off + lo + 8 * k);
        const __m256 gt = _mm256_cmp_ps(v, zero, _CMP_GT_OQ);
        on[k] = _mm256_castps_si256(gt);
        if constexpr (kWriteY) {
          // max(0, v) returns its second operand when they compare equal or either is NaN:
          // v itself for -0.0 and NaN, as the scalar kernel (1 op, not a compare and a blend)
          const __m256 out = kLeaky ? _mm256_blendv_ps(_mm256_mul_ps(v, s), v, gt)
                                    : _mm256_max_ps(zero, v);
          _mm256_storeu_ps(y + off + lo + 8 * k, out);
        }
      }
      const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(on[0], on[1]),
                                               _mm256_packs_epi32(on[2], on[3]));
      const uint32_t bits = static_cast<uint32_t>(
          _mm256_movemask_epi8(_mm256_permutevar8x32_epi32(bytes, order)));
      word |= uint64_t(bits) << lo;
    }
    words[i] = static_cast<int64_t>(word);
  }
}

template <bool kLeaky>
AH_AVX2 void backward_tasks_f32_avx2(const float* gy, const int64_t* words, float* gx,
                                     Geometry g, float slope, int64_t begin, int64_t end) {
  const __m256 s = _mm256_set1_ps(slope);
  const __m256i select = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  for (int64_t i = begin; i < end; ++i) {
    const int64_t m = g.units(i), off = g.offset(i);
    if (m < kWordBits) {
      backward_tasks_scalar<float, kLeaky>(gy, words, gx, g, slope, i, i + 1);
      continue;
    }
    const uint64_t word = static_cast<uint64_t>(words[i]);
    for (int64_t lo = 0; lo < kWordBits; lo += 8) {
      const __m256i byte = _mm256_set1_epi32(int((word >> lo) & 0xFF));
      const __m256 on = _mm256_castsi256_ps(
          _mm256_cmpeq_epi32(_mm256_and_si256(byte, select), select));
      const __m256 v = _mm256_loadu_ps(gy + off + lo);
      const __m256 out = kLeaky ? _mm256_blendv_ps(_mm256_mul_ps(v, s), v, on)
                                : _mm256_and_ps(on, v);
      _mm256_storeu_ps(gx + off + lo, out);
    }
  }
}
#endif  // AH_X86

// ---- drivers ---------------------------------------------------------------------------

template <bool kWriteY, bool kLeaky>
void pack_dispatch(const at::Tensor& x, at::Tensor* y, at::Tensor& words, Geometry g,
                   double slope) {
  const int64_t tasks = words.numel();
  if (tasks == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pack", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = kWriteY ? y->mutable_data_ptr<scalar_t>() : nullptr;
    int64_t* wp = words.mutable_data_ptr<int64_t>();
    using opmath_t = at::opmath_type<scalar_t>;
    at::parallel_for(0, tasks, kGrainWords, [&](int64_t begin, int64_t end) {
#ifdef AH_X86
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (isa() == Isa::kAvx512)
          return pack_tasks_f32_avx512<kWriteY, kLeaky>(xp, yp, wp, g, float(slope), begin, end);
        if (isa() == Isa::kAvx2)
          return pack_tasks_f32_avx2<kWriteY, kLeaky>(xp, yp, wp, g, float(slope), begin, end);
      }
#endif
      pack_tasks_scalar<scalar_t, kWriteY, kLeaky>(xp, yp, wp, g, opmath_t(slope), begin, end);
    });
  });
}

template <bool kLeaky>
void backward_dispatch(const at::Tensor& gy, const at::Tensor& words, at::Tensor& gx, Geometry g,
                       double slope) {
  const int64_t tasks = words.numel();
  if (tasks == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "mask_bwd", [&] {
    const scalar_t* gp = gy.const_data_ptr<scalar_t>();
    const int64_t* wp = words.const_data_ptr<int64_t>();
    scalar_t* op = gx.mutable_data_ptr<scalar_t>();
    using opmath_t = at::opmath_type<scalar_t>;
    at::parallel_for(0, tasks, kGrainWords, [&](int64_t begin, int64_t end) {
#ifdef AH_X86
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (isa() == Isa::kAvx512)
          return backward_tasks_f32_avx512<kLeaky>(gp, wp, op, g, float(slope), begin, end);
        if (isa() == Isa::kAvx2)
          return backward_tasks_f32_avx2<kLeaky>(gp, wp, op, g, float(slope), begin, end);
      }
#endif
      backward_tasks_scalar<scalar_t, kLeaky>(gp, wp, op, g, opmath_t(slope), begin, end);
    });
  });
}

Geometry geometry_of(const at::Tensor& x) {
  const int64_t n = units_per_sample(x);
  return Geometry{n, words_for_bits(n)};
}

at::Tensor new_words(const at::Tensor& x, Geometry g) {
  return at::empty({x.size(0), g.W}, x.options().dtype(at::kLong));
}

// ---- ops -------------------------------------------------------------------------------

at::Tensor pack_signs_cpu(const at::Tensor& x) {
  check_activation(x, "x");
  const at::Tensor xc = x.contiguous();
  const Geometry g = geometry_of(xc);
  at::Tensor words = new_words(xc, g);
  pack_dispatch<false, false>(xc, nullptr, words, g, 0.0);
  return words;
}

std::tuple<at::Tensor, at::Tensor> relu_pack_cpu(const at::Tensor& x, double negative_slope) {
  check_activation(x, "x");
  const at::Tensor xc = x.contiguous();
  const Geometry g = geometry_of(xc);
  at::Tensor y = at::empty_like(xc, at::MemoryFormat::Contiguous);
  at::Tensor words = new_words(xc, g);
  if (negative_slope != 0.0) pack_dispatch<true, true>(xc, &y, words, g, negative_slope);
  else pack_dispatch<true, false>(xc, &y, words, g, 0.0);
  if (!x.is_contiguous()) {  // same memory format as the input, as torch.relu gives
    at::Tensor y_like = at::empty_like(x);
    y_like.copy_(y);
    y = y_like;
  }
  return {y, words};
}

at::Tensor relu_mask_backward_cpu(const at::Tensor& grad_y, const at::Tensor& words,
                                  double negative_slope) {
  check_activation(grad_y, "grad_y");
  const at::Tensor gc = grad_y.contiguous();
  const Geometry g = geometry_of(gc);
  check_words(words, gc.size(0), g.n, "words");
  TORCH_CHECK_VALUE(words.device() == grad_y.device(), "words is on ", words.device(),
                    " but grad_y is on ", grad_y.device());
  const at::Tensor wc = words.contiguous();
  at::Tensor gx = at::empty_like(gc, at::MemoryFormat::Contiguous);
  const int64_t tasks = wc.numel();
  if (tasks == 0) return gx;
  if (negative_slope != 0.0) backward_dispatch<true>(gc, wc, gx, g, negative_slope);
  else backward_dispatch<false>(gc, wc, gx, g, 0.0);
  return gx;
}

at::Tensor unpack_bits_cpu(const at::Tensor& words, int64_t n) {
  TORCH_CHECK_VALUE(n >= 0, "n must be >= 0, got ", n);
  TORCH_CHECK_VALUE(words.dim() == 2, "words must be 2-D [B, W], got shape ", words.sizes());
  check_words(words, words.size(0), n, "words");
  const at::Tensor wc = words.contiguous();
  at::Tensor bits = at::empty({wc.size(0), n}, wc.options().dtype(at::kBool));
  const Geometry g{n, words_for_bits(n)};
  const int64_t tasks = wc.numel();
  if (tasks == 0) return bits;
  const int64_t* wp = wc.const_data_ptr<int64_t>();
  bool* bp = bits.mutable_data_ptr<bool>();
  at::parallel_for(0, tasks, kGrainWords, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t m = g.units(i), off = g.offset(i);
      const uint64_t word = static_cast<uint64_t>(wp[i]);
      for (int64_t k = 0; k < m; ++k) bp[off + k] = (word >> k) & 1;
    }
  });
  return bits;
}

}  // namespace

TORCH_LIBRARY_IMPL(activation_hash, CPU, m) {
  m.impl("pack_signs", &pack_signs_cpu);
  m.impl("relu_pack", &relu_pack_cpu);
  m.impl("relu_mask_backward", &relu_mask_backward_cpu);
  m.impl("unpack_bits", &unpack_bits_cpu);
}

}  // namespace activation_hash::cpu
