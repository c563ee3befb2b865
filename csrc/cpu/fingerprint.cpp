// CPU kernels of fingerprint128 / fingerprint_key: at::parallel_for over rows
// (activation_hash/fingerprint.h). Each row is a sequential hash chain (xor, rotate, * 5, add:
// about 4 cycles of latency per word), so both paths run several rows side by side: with
// AVX-512 (F + DQ for 64-bit multiplies) each step gathers word j of 8 rows and advances 8
// states in the lanes of a register; elsewhere (AVX2 and scalar levels, and the last rows) a
// scalar kernel interleaves 4 rows, bound by the multiplier instead of the chain's latency:
// 2 (fingerprint_key) or 4 (fingerprint128) 64-bit multiplies per word and row.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/isa.h"
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define AH_FP_X86 1
#define AH_FP_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl")))
#endif

#include "activation_hash/checks.h"
#include "activation_hash/fingerprint.h"

namespace activation_hash::cpu {
namespace {

constexpr int64_t kGrainWords = 1 << 14;

#ifdef AH_FP_X86
AH_FP_AVX512 inline __m512i fmix8(__m512i h) {
  h = _mm512_xor_si512(h, _mm512_srli_epi64(h, 32));
  h = _mm512_mullo_epi64(h, _mm512_set1_epi64(static_cast<int64_t>(fp::kF1)));
  h = _mm512_xor_si512(h, _mm512_srli_epi64(h, 29));
  h = _mm512_mullo_epi64(h, _mm512_set1_epi64(static_cast<int64_t>(fp::kF2)));
  return _mm512_xor_si512(h, _mm512_srli_epi64(h, 32));
}

// Rows [begin, begin + 8 * k) in groups of 8; returns the first row not done.
AH_FP_AVX512 int64_t fingerprint_rows_avx512(const int64_t* codes, int64_t W, const int64_t* ends,
                                             int64_t P, int64_t begin, int64_t end,
                                             int64_t* out) {
  const __m512i m0 = _mm512_set1_epi64(static_cast<int64_t>(fp::kM0));
  const __m512i m1 = _mm512_set1_epi64(static_cast<int64_t>(fp::kM1));
  const __m512i n0 = _mm512_set1_epi64(static_cast<int64_t>(fp::kN0));
  const __m512i n1 = _mm512_set1_epi64(static_cast<int64_t>(fp::kN1));
  const __m512i d0 = _mm512_set1_epi64(static_cast<int64_t>(fp::kD0));
  const __m512i d1 = _mm512_set1_epi64(static_cast<int64_t>(fp::kD1));
  const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i stride = _mm512_mullo_epi64(lane, _mm512_set1_epi64(W));
  alignas(64) int64_t t0[8], t1[8];
  int64_t r = begin;
  for (; r + 8 <= end; r += 8) {
    __m512i h0 = _mm512_set1_epi64(static_cast<int64_t>(fp::kSeed0));
    __m512i h1 = _mm512_set1_epi64(static_cast<int64_t>(fp::kSeed1));
    const int64_t* base = codes + r * W;
    int64_t p = 0;
    for (int64_t j = 0; p < P; ++j) {
      while (p < P && ends[p] == j) {
        const __m512i len = _mm512_set1_epi64(j);
        _mm512_store_si512(t0, fmix8(_mm512_xor_si512(h0, len)));
        _mm512_store_si512(t1, fmix8(_mm512_xor_si512(h1, len)));
        for (int l = 0; l < 8; ++l) {
          out[((r + l) * P + p) * 2] = t0[l];
          out[((r + l) * P + p) * 2 + 1] = t1[l];
        }
        ++p;
      }
      if (p == P || j == W) break;
      const __m512i w =
          _mm512_mask_i64gather_epi64(_mm512_setzero_si512(), 0xFF, stride, base + j, 8);
      const __m512i k0 = _mm512_mullo_epi64(_mm512_rol_epi64(_mm512_mullo_epi64(w, m0), 31), n0);
      const __m512i k1 = _mm512_mullo_epi64(_mm512_rol_epi64(_mm512_mullo_epi64(w, m1), 33), n1);
      h0 = _mm512_rol_epi64(_mm512_xor_si512(h0, k0), 27);
      h1 = _mm512_rol_epi64(_mm512_xor_si512(h1, k1), 29);
      h0 = _mm512_add_epi64(_mm512_add_epi64(_mm512_slli_epi64(h0, 2), h0), d0);
      h1 = _mm512_add_epi64(_mm512_add_epi64(_mm512_slli_epi64(h1, 2), h1), d1);
    }
  }
  return r;
}

// fingerprint_key for rows [begin, begin + 8 k); returns the first row not done.
AH_FP_AVX512 int64_t key_rows_avx512(const int64_t* codes, int64_t W, int index_bits,
                                     int64_t begin, int64_t end, int64_t* out) {
  const __m512i m0 = _mm512_set1_epi64(static_cast<int64_t>(fp::kM0));
  const __m512i n0 = _mm512_set1_epi64(static_cast<int64_t>(fp::kN0));
  const __m512i d0 = _mm512_set1_epi64(static_cast<int64_t>(fp::kD0));
  const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i stride = _mm512_mullo_epi64(lane, _mm512_set1_epi64(W));
  const int64_t low = index_bits >= 63 ? -1 : (int64_t(1) << index_bits) - 1;
  const __m512i low_v = _mm512_set1_epi64(low);
  int64_t r = begin;
  for (; r + 8 <= end; r += 8) {
    __m512i h = _mm512_set1_epi64(static_cast<int64_t>(fp::kSeed0));
    const int64_t* base = codes + r * W;
    for (int64_t j = 0; j < W; ++j) {
      const __m512i w =
          _mm512_mask_i64gather_epi64(_mm512_setzero_si512(), 0xFF, stride, base + j, 8);
      const __m512i k = _mm512_mullo_epi64(_mm512_rol_epi64(_mm512_mullo_epi64(w, m0), 31), n0);
      h = _mm512_rol_epi64(_mm512_xor_si512(h, k), 27);
      h = _mm512_add_epi64(_mm512_add_epi64(_mm512_slli_epi64(h, 2), h), d0);
    }
    const __m512i f = fmix8(_mm512_xor_si512(h, _mm512_set1_epi64(W)));
    const __m512i rows = _mm512_add_epi64(_mm512_set1_epi64(r), lane);
    _mm512_storeu_si512(out + r, _mm512_or_si512(_mm512_andnot_si512(low_v, f),
                                                 _mm512_and_si512(rows, low_v)));
  }
  return r;
}

// The fingerprint kernels need AVX-512 F + DQ (64-bit multiplies) and VL, not VPOPCNTDQ: the
// kAvx512 level (cpu/isa.h: F, BW, DQ, VL and the OS's ZMM state), so Skylake-SP / Cascade
// Lake take the vector path too. ACTIVATION_HASH_ISA=scalar|avx2 caps it (the scalar kernel).
inline bool use_avx512_dq() { return isa() == Isa::kAvx512; }
#endif

// ---- scalar, 4 rows interleaved -------------------------------------------------------

constexpr int64_t kLanes = 4;

// fingerprint128 of rows [begin, begin + 4 k); returns the first row not done.
int64_t fingerprint_rows_x4(const int64_t* codes, int64_t W, const int64_t* ends, int64_t P,
                            int64_t begin, int64_t end, int64_t* out) {
  int64_t r = begin;
  for (; r + kLanes <= end; r += kLanes) {
    const int64_t* x = codes + r * W;
    fp::State s[kLanes];
    int64_t p = 0;
    for (int64_t j = 0; p < P; ++j) {
      while (p < P && ends[p] == j) {
        for (int64_t l = 0; l < kLanes; ++l) s[l].emit(j, out + ((r + l) * P + p) * 2);
        ++p;
      }
      if (p == P || j == W) break;
      for (int64_t l = 0; l < kLanes; ++l) s[l].add(static_cast<uint64_t>(x[l * W + j]));
    }
  }
  return r;
}

// fingerprint_key of rows [begin, begin + 4 k); returns the first row not done.
int64_t key_rows_x4(const int64_t* codes, int64_t W, int index_bits, int64_t begin,
                    int64_t end, int64_t* out) {
  const uint64_t low = index_bits >= 64 ? ~uint64_t(0) : (uint64_t(1) << index_bits) - 1;
  int64_t r = begin;
  for (; r + kLanes <= end; r += kLanes) {
    const int64_t* x = codes + r * W;
    uint64_t h[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) h[l] = fp::kSeed0;
    for (int64_t j = 0; j < W; ++j)
      for (int64_t l = 0; l < kLanes; ++l) {
        const uint64_t k = fp::rotl(static_cast<uint64_t>(x[l * W + j]) * fp::kM0, 31) * fp::kN0;
        h[l] = fp::rotl(h[l] ^ k, 27) * 5 + fp::kD0;
      }
    for (int64_t l = 0; l < kLanes; ++l) {
      const uint64_t f = fp::fmix(h[l] ^ static_cast<uint64_t>(W));
      out[r + l] = static_cast<int64_t>((f & ~low) | (static_cast<uint64_t>(r + l) & low));
    }
  }
  return r;
}

at::Tensor fingerprint128_cpu(const at::Tensor& codes, at::OptionalIntArrayRef ends) {
  const std::vector<int64_t> e = checked_fingerprint_ends(codes, ends);
  const at::Tensor c = codes.contiguous();
  const int64_t N = c.size(0), W = c.size(1), P = static_cast<int64_t>(e.size());
  at::Tensor out = ends.has_value() ? at::empty({N, P, 2}, c.options())
                                    : at::empty({N, 2}, c.options());
  if (N == 0 || P == 0) return out;
  const int64_t* cp = c.const_data_ptr<int64_t>();
  int64_t* op = out.mutable_data_ptr<int64_t>();
  const int64_t* ep = e.data();
  const int64_t grain = std::max<int64_t>(1, kGrainWords / std::max<int64_t>(W, 1));
  at::parallel_for(0, N, std::max<int64_t>(grain, 8), [&](int64_t begin, int64_t end) {
    int64_t r = begin;
#ifdef AH_FP_X86
    if (use_avx512_dq()) r = fingerprint_rows_avx512(cp, W, ep, P, begin, end, op);
#endif
    r = fingerprint_rows_x4(cp, W, ep, P, r, end, op);
    for (; r < end; ++r) fp::fingerprint_row(cp, W, ep, P, r, op);
  });
  return out;
}

at::Tensor fingerprint_key_cpu(const at::Tensor& codes, int64_t index_bits) {
  check_fingerprint_key_args(codes, index_bits);
  const at::Tensor c = codes.contiguous();
  const int64_t N = c.size(0), W = c.size(1);
  at::Tensor out = at::empty({N}, c.options());
  if (N == 0) return out;
  const int64_t* cp = c.const_data_ptr<int64_t>();
  int64_t* op = out.mutable_data_ptr<int64_t>();
  const int bits = static_cast<int>(index_bits);
  const int64_t grain = std::max<int64_t>(8, kGrainWords / std::max<int64_t>(W, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    int64_t r = begin;
#ifdef AH_FP_X86
    if (use_avx512_dq()) r = key_rows_avx512(cp, W, bits, begin, end, op);
#endif
    r = key_rows_x4(cp, W, bits, r, end, op);
    for (; r < end; ++r) op[r] = fp::key_of_row(cp, W, r, bits);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(activation_hash, CPU, m) {
  m.impl("fingerprint128", &fingerprint128_cpu);
  m.impl("fingerprint_key", &fingerprint_key_cpu);
}

}  // namespace activation_hash::cpu
