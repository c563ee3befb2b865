// AVX2 kernels of hamming_distance / hamming_topk (included by hamming.cpp only; x86-64).
// They run on CPUs of the kAvx2 level (cpu/isa.h) and on AVX-512 CPUs without VPOPCNTDQ.
//
// Two families:
//
// 1. Nibble lookup on the transposed tile (hamming_distance; top-k of few queries). The tile
//    is the AVX-512 path's [group][word][8 rows] layout; one ymm holds word w of 4 rows, so a
//    broadcast query word, one xor and a vpshufb nibble lookup give the byte counts of 4 rows
//    at once, accumulated in bytes for up to 31 words and reduced by one vpsadbw: no horizontal
//    sums. Designed against: 8 vector ops per ymm (xor, and, shift, and, 2 vpshufb, 2 adds),
//    i.e. 2 ops per word and row (4 vector ALU ops / cycle: 0.5 cycle per word and row), and
//    2 loads per ymm (the broadcast and the tile); the tile is kTileBytes (L1).
//
// 2. Bit-sliced top-k (hamming_topk of >= kSlicedMinQueries queries, W <= kSlicedMaxWords).
//    A tile of 256 base rows is transposed to bit slices: slice p is a 256-bit vector whose
//    bit r is bit p of row r. For a query q with O = {p : q_p = 1} and Z its complement,
//        dist(q, r) = |O| + PB_r - 2 C_r,   C_r = sum_{p in O} slice_p[r],   PB_r = popcount(r)
//    (or |O| - PB_r + 2 C_r with C summed over Z, whichever set is smaller), so a query sums
//    at most n / 2 slices, and the counts of all 256 rows are added at once, in bit-sliced
//    binary form, by carry-save adders (Harley-Seal): every full adder (5 ops: 2 xor, 2 and,
//    1 or) takes one slice in and no popcount is ever needed. The comparison with the
//    query's threshold is done on the bit-sliced counters too (a borrow chain, 4 ops per
//    level); only rows below the threshold come out of the vector registers, and their exact
//    distance is recomputed from the row-major codes before they enter the heap.
//    Designed against: about 5 vector ops per selected slice, i.e. 5 * min(|O|, |Z|) / 256
//    <= 5 n / 512 ops per distance (0.63 ops per 64-bit word and row at n / 2 slices, against
//    2 for the nibble lookup and 3 for scalar POPCNT: xor, popcnt, add), plus per (query, tile)
//    about 4 ops per level of the counters (log2 n + 1 levels) for the threshold test; one
//    32-byte load and one 2-byte index load per slice. The tile is 32 n bytes (8 KB at 256
//    bits, 128 KB at 4096: L1 / L2) and is transposed once per thread for all queries (about
//    1 op per byte: vpunpck byte transposes, then 8 vpmovmskb and 8 4-byte stores per 32
//    bytes; bound by the 2 vpmovmskb a cycle), which costs about as much as 8 queries.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#define AH_AVX2 __attribute__((target("avx2,popcnt")))
#define AH_AVX2_INLINE __attribute__((target("avx2,popcnt"), always_inline)) inline
#define AH_AVX2_LAMBDA __attribute__((target("avx2,popcnt"), always_inline))

namespace activation_hash::cpu::avx2 {

// ---- 1. nibble lookup ------------------------------------------------------------------

AH_AVX2_INLINE __m256i popcount_bytes(__m256i x, __m256i lut, __m256i low) {
  const __m256i lo = _mm256_and_si256(x, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

AH_AVX2_INLINE __m256i nibble_lut() {
  return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                          0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
}

// The 8 distances of query q to one group ([W][8] words) of a transposed tile, as int32
// lanes in row order. qv: the W = 4 query words broadcast (kW == 4 only).
template <int kW>
AH_AVX2_INLINE __m256i group_distances(const uint64_t* q, const __m256i* qv, const uint64_t* grp,
                                       int64_t W) {
  const __m256i lut = nibble_lut(), low = _mm256_set1_epi8(0x0F), zero = _mm256_setzero_si256();
  __m256i s0, s1;  // int64 sums of rows 0-3 and 4-7
  if constexpr (kW == 4) {
    __m256i a = zero, b = zero;
    for (int w = 0; w < 4; ++w) {
      const __m256i* g = reinterpret_cast<const __m256i*>(grp + w * 8);
      a = _mm256_add_epi8(a, popcount_bytes(_mm256_xor_si256(_mm256_loadu_si256(g), qv[w]), lut, low));
      b = _mm256_add_epi8(b, popcount_bytes(_mm256_xor_si256(_mm256_loadu_si256(g + 1), qv[w]), lut, low));
    }
    s0 = _mm256_sad_epu8(a, zero);
    s1 = _mm256_sad_epu8(b, zero);
  } else {
    s0 = s1 = zero;
    for (int64_t w0 = 0; w0 < W; w0 += 31) {  // a byte holds at most 31 * 8 = 248
      const int64_t w1 = std::min<int64_t>(W, w0 + 31);
      __m256i a = zero, b = zero;
      for (int64_t w = w0; w < w1; ++w) {
        const __m256i qb = _mm256_set1_epi64x(static_cast<long long>(q[w]));
        const __m256i* g = reinterpret_cast<const __m256i*>(grp + w * 8);
        a = _mm256_add_epi8(a, popcount_bytes(_mm256_xor_si256(_mm256_loadu_si256(g), qb), lut, low));
        b = _mm256_add_epi8(b, popcount_bytes(_mm256_xor_si256(_mm256_loadu_si256(g + 1), qb), lut, low));
      }
      s0 = _mm256_add_epi64(s0, _mm256_sad_epu8(a, zero));
      s1 = _mm256_add_epi64(s1, _mm256_sad_epu8(b, zero));
    }
  }
  // [d0 d1 d2 d3] and [d4 .. d7] (int64, < 2^31) -> 8 int32 in order
  const __m256i m = _mm256_blend_epi32(s0, _mm256_slli_epi64(s1, 32), 0xAA);
  return _mm256_permutevar8x32_epi32(m, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
}

// out[0, 8 * groups) = distances of q to every row of the transposed tile (padding included).
template <int kW>
AH_AVX2 void tile_distances(const uint64_t* q, const uint64_t* tt, int64_t groups, int64_t W,
                            int32_t* out) {
  __m256i qv[4];
  if constexpr (kW == 4)
    for (int w = 0; w < 4; ++w) qv[w] = _mm256_set1_epi64x(static_cast<long long>(q[w]));
  for (int64_t g = 0; g < groups; ++g)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + g * 8),
                        group_distances<kW>(q, qv, tt + g * W * 8, W));
}

// Top-k over a transposed tile of n rows (indices j0 + r): 8 distances at a time are compared
// with the threshold in registers; only groups holding a candidate leave them.
template <int kW, class Heap>
AH_AVX2 void offer_tile(const uint64_t* q, const uint64_t* tt, int64_t n, int64_t W, int64_t j0,
                        Heap& h, int32_t& thr) {
  __m256i qv[4];
  if constexpr (kW == 4)
    for (int w = 0; w < 4; ++w) qv[w] = _mm256_set1_epi64x(static_cast<long long>(q[w]));
  __m256i tv = _mm256_set1_epi32(thr);
  const int64_t groups = (n + 7) / 8;
  alignas(32) int32_t spill[8];
  for (int64_t g = 0; g < groups; ++g) {
    const __m256i d = group_distances<kW>(q, qv, tt + g * W * 8, W);
    unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(tv, d))));
    if (n - g * 8 < 8) m &= (1u << (n - g * 8)) - 1;
    if (m == 0) continue;
    _mm256_store_si256(reinterpret_cast<__m256i*>(spill), d);
    while (m) {
      const int b = __builtin_ctz(m);
      m &= m - 1;
      if (spill[b] < thr) {
        h.push(spill[b], j0 + g * 8 + b);
        thr = h.threshold();
      }
    }
    tv = _mm256_set1_epi32(thr);
  }
}

// ---- 2. bit-sliced top-k -----------------------------------------------------------------

constexpr int64_t kSliceRows = 256;        // rows per bit slice (one ymm)
constexpr int64_t kSlicedMaxWords = 128;   // slices per tile <= 8192: 256 KB, 16-bit indices
// Fewer queries: the transposition does not pay, the nibble kernels run (measured, 1 thread:
// the bit-sliced top-k is faster from about 8 queries on at 256, 1024 and 4096 bits).
constexpr int64_t kSlicedMinQueries = 12;
constexpr int kMaxLevels = 16;             // counter levels: bit_length(64 * kSlicedMaxWords)

inline int bit_length(uint64_t x) { return x ? 64 - __builtin_clzll(x) : 0; }

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};
template <class T>
std::unique_ptr<T[], AlignedFree> aligned_array(size_t count) {
  const size_t bytes = (count * sizeof(T) + 63) / 64 * 64;
  T* p = static_cast<T*>(std::aligned_alloc(64, bytes));
  if (p == nullptr) throw std::bad_alloc();
  return std::unique_ptr<T[], AlignedFree>(p);
}

// Which row of the 32-row chunk the transposition network puts in each input slot, so that
// bit t of every 32-bit mask it produces is row t (the network below sends slot s to bit t
// where s = 16 (t / 16) + (t % 16 < 8 ? 2 (t % 16) : 2 (t % 16 - 8) + 1)).
struct SlotRows {
  int row[32];
  constexpr SlotRows() : row() {
    for (int t = 0; t < 32; ++t) {
      const int u = t & 15;
      row[(t & 16) + (u < 8 ? 2 * u : 2 * (u - 8) + 1)] = t;
    }
  }
};
constexpr SlotRows kSlotRows;

// slices[p] (32 bytes; p < 64 W) <- bit p of the 256 rows (row-major, W words each): bit r of
// the slice is row r. Per 32 rows and word: 8 ymm of 4 rows, 3 rounds of in-lane unpacks and
// one of 64-bit unpacks give 8 ymm holding one byte position of the 32 rows each, then 8
// vpmovmskb / vpaddb pairs per ymm peel off its 8 bit positions (32-bit stores).
AH_AVX2 void transpose_bits(const uint64_t* rows, int64_t W, uint8_t* slices) {
  int64_t off[32];
  for (int s = 0; s < 32; ++s) off[s] = kSlotRows.row[s] * W;
  for (int c = 0; c < 8; ++c) {
    const uint64_t* r0 = rows + 32 * c * W;
    uint32_t* dst0 = reinterpret_cast<uint32_t*>(slices) + c;
    for (int64_t w = 0; w < W; ++w) {
      const uint64_t* p = r0 + w;
      __m256i V[8], A[8], B[8];
      for (int i = 0; i < 8; ++i) {
        const __m128i lo = _mm_insert_epi64(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + off[2 * i])),
            static_cast<long long>(p[off[2 * i + 1]]), 1);
        const __m128i hi = _mm_insert_epi64(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + off[16 + 2 * i])),
            static_cast<long long>(p[off[16 + 2 * i + 1]]), 1);
        V[i] = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
      }
      for (int i = 0; i < 4; ++i) {
        A[2 * i] = _mm256_unpacklo_epi8(V[2 * i], V[2 * i + 1]);
        A[2 * i + 1] = _mm256_unpackhi_epi8(V[2 * i], V[2 * i + 1]);
      }
      for (int i = 0; i < 2; ++i)
        for (int h = 0; h < 2; ++h) {
          B[4 * i + 2 * h] = _mm256_unpacklo_epi16(A[4 * i + h], A[4 * i + 2 + h]);
          B[4 * i + 2 * h + 1] = _mm256_unpackhi_epi16(A[4 * i + h], A[4 * i + 2 + h]);
        }
      for (int h = 0; h < 4; ++h) {
        A[2 * h] = _mm256_unpacklo_epi32(B[h], B[4 + h]);
        A[2 * h + 1] = _mm256_unpackhi_epi32(B[h], B[4 + h]);
      }
      // A[k], k < 4: byte positions 2k (low half of each lane) and 2k + 1 of the even slots;
      // A[k + 4]: the same of the odd slots.
      uint32_t* dst = dst0 + w * 64 * 8;
      for (int k = 0; k < 4; ++k)
        for (int hh = 0; hh < 2; ++hh) {
          __m256i y = hh ? _mm256_unpackhi_epi64(A[k], A[k + 4]) : _mm256_unpacklo_epi64(A[k], A[k + 4]);
          const int j = 2 * k + hh;
          for (int s = 0; s < 8; ++s) {  // bit 7 - s of byte j
            dst[(8 * j + 7 - s) * 8] = static_cast<uint32_t>(_mm256_movemask_epi8(y));
            y = _mm256_add_epi8(y, y);
          }
        }
    }
  }
}

// Carry-save adder: (h, l) = a + b + c in two bit planes (h of weight 2); c is the running
// accumulator, on the 1-op dependency path.
AH_AVX2_INLINE void csa(__m256i& h, __m256i& l, __m256i a, __m256i b, __m256i c) {
  const __m256i u = _mm256_xor_si256(a, b);
  h = _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(u, c));
  l = _mm256_xor_si256(u, c);
}

// lv[0, L) <- init + sum of the m (a multiple of 8) slices at slices + 8 * offs[i] bytes, in
// bit-sliced binary, modulo 2^L (9 <= L <= kMaxLevels). Harley-Seal in two stages: blocks of
// 32 slices (31 full adders into the accumulators of weight 1..16) give carries of weight 32;
// 16 of those (buffered) go through a second Harley-Seal block (15 full adders into the
// accumulators of weight 32..256) whose carry of weight 512 is rippled into the levels above.
// So the ripple (2 ops per level) is paid once per 512 slices, not per 32 (about 15% of the
// ops at 4096 bits). A tail of blocks of 8 slices (7 full adders) ripples its carry from
// weight 8.
AH_AVX2 void count_slices(const uint8_t* slices, const uint16_t* offs, int64_t m, int L,
                          uint64_t init, __m256i* lv) {
  auto bit = [init](int l) AH_AVX2_LAMBDA {
    return _mm256_set1_epi64x(-static_cast<long long>((init >> l) & 1));
  };
  __m256i ones = bit(0), twos = bit(1), fours = bit(2), eights = bit(3), sixteens = bit(4);
  for (int l = 5; l < L; ++l) lv[l] = bit(l);
  auto X = [slices, offs](int64_t i) AH_AVX2_LAMBDA {
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(slices + size_t(offs[i]) * 8));
  };
  auto ripple = [&](__m256i c, int from) AH_AVX2_LAMBDA {
    for (int l = from; l < L; ++l) {
      const __m256i t = _mm256_and_si256(lv[l], c);
      lv[l] = _mm256_xor_si256(lv[l], c);
      c = t;
    }
  };
  alignas(32) __m256i carries[16];  // of weight 32, waiting for the second stage
  int nc = 0;
  auto second_stage = [&]() AH_AVX2_LAMBDA {
    __m256i o = lv[5], tw = lv[6], fo = lv[7], ei = lv[8], a8, b8, c16;
    auto Y = [&carries](int j) AH_AVX2_LAMBDA { return _mm256_load_si256(carries + j); };
    // carries j .. j + 7 into the ones/twos/fours accumulators; returns their eights carry
    auto eight = [&](int j) AH_AVX2_LAMBDA {
      __m256i a2, b2, a4, b4, e;
      csa(a2, o, Y(j), Y(j + 1), o);
      csa(b2, o, Y(j + 2), Y(j + 3), o);
      csa(a4, tw, a2, b2, tw);
      csa(a2, o, Y(j + 4), Y(j + 5), o);
      csa(b2, o, Y(j + 6), Y(j + 7), o);
      csa(b4, tw, a2, b2, tw);
      csa(e, fo, a4, b4, fo);
      return e;
    };
    a8 = eight(0);
    b8 = eight(8);
    csa(c16, ei, a8, b8, ei);
    lv[5] = o;
    lv[6] = tw;
    lv[7] = fo;
    lv[8] = ei;
    ripple(c16, 9);
  };
  __m256i t2a, t2b, t4a, t4b, t8a, t8b, t16a, t16b, t32;
#define AH_Q4(o, out)                                  \
  csa(t2a, ones, X(i + (o)), X(i + (o) + 1), ones);    \
  csa(t2b, ones, X(i + (o) + 2), X(i + (o) + 3), ones); \
  csa(out, twos, t2a, t2b, twos);
#define AH_Q8(o, out) \
  AH_Q4(o, t4a)       \
  AH_Q4((o) + 4, t4b) \
  csa(out, fours, t4a, t4b, fours);
  int64_t i = 0;
  for (; i + 32 <= m; i += 32) {
    AH_Q8(0, t8a)
    AH_Q8(8, t8b)
    csa(t16a, eights, t8a, t8b, eights);
    AH_Q8(16, t8a)
    AH_Q8(24, t8b)
    csa(t16b, eights, t8a, t8b, eights);
    csa(t32, sixteens, t16a, t16b, sixteens);
    _mm256_store_si256(carries + nc, t32);
    if (++nc == 16) {
      second_stage();
      nc = 0;
    }
  }
  for (; i < m; i += 8) {
    AH_Q8(0, t8a)
    __m256i c = t8a;  // weight 8
    __m256i t = _mm256_and_si256(eights, c);
    eights = _mm256_xor_si256(eights, c);
    c = t;
    t = _mm256_and_si256(sixteens, c);
    sixteens = _mm256_xor_si256(sixteens, c);
    ripple(t, 5);
  }
#undef AH_Q8
#undef AH_Q4
  // The waiting carries: a zero-padded second stage (75 ops) unless rippling them is cheaper.
  if (nc * (L - 5) > 20) {
    for (int j = nc; j < 16; ++j) carries[j] = _mm256_setzero_si256();
    second_stage();
  } else {
    for (int j = 0; j < nc; ++j) ripple(carries[j], 5);
  }
  lv[0] = ones;
  lv[1] = twos;
  lv[2] = fours;
  lv[3] = eights;
  lv[4] = sixteens;
}

// The rows where A - B - 1 + cin < 0, in L + 1 bit two's complement, with A(l), B(l) the
// bit planes (a borrow chain: 4 ops per level; only the sign is formed).
template <class FA, class FB>
AH_AVX2_INLINE __m256i negative_rows(FA A, FB B, int L, bool cin) {
  __m256i c = _mm256_set1_epi64x(cin ? -1 : 0);
  for (int l = 0; l < L; ++l) {  // carry of A + ~B + c: A where A != B, else c
    const __m256i a = A(l), t = _mm256_xor_si256(a, B(l));
    c = _mm256_xor_si256(c, _mm256_and_si256(t, _mm256_xor_si256(a, c)));
  }
  const __m256i top = _mm256_xor_si256(_mm256_xor_si256(A(L), B(L)), c);
  return _mm256_xor_si256(top, _mm256_set1_epi64x(-1));
}

AH_AVX2_INLINE int32_t row_distance(const uint64_t* a, const uint64_t* b, int64_t W) {
  int64_t s = 0;
  for (int64_t w = 0; w < W; ++w) s += _mm_popcnt_u64(a[w] ^ b[w]);
  return static_cast<int32_t>(s);
}

// What a query sums: the indices (slice * 4, 8-byte units) of its 1 bits, or of its 0 bits
// when it has more ones than zeros, padded to a multiple of 8 with the zero slice. Built once
// per hamming_topk call for all queries.
struct SlicedQueries {
  int64_t n = 0;  // bits per row, 64 W
  std::vector<uint16_t> offs;
  std::vector<int64_t> begin;  // [Q + 1] into offs
  std::vector<int32_t> ones;   // popcount of each query
  std::vector<uint8_t> zeros;  // 1: the list holds the 0 bits
  std::vector<uint16_t> all;   // every slice, for the rows' own popcounts
};

AH_AVX2 void plan_queries(const uint64_t* qp, int64_t q0, int64_t q1, int64_t W,
                          SlicedQueries& s) {
  for (int64_t q = q0; q < q1; ++q) {
    const uint64_t* x = qp + q * W;
    const bool zeros = s.zeros[q];
    uint16_t* o = s.offs.data() + s.begin[q];
    for (int64_t w = 0; w < W; ++w) {
      uint64_t bits = zeros ? ~x[w] : x[w];
      while (bits) {
        *o++ = static_cast<uint16_t>((64 * w + __builtin_ctzll(bits)) * 4);
        bits &= bits - 1;
      }
    }
    while (o < s.offs.data() + s.begin[q + 1]) *o++ = static_cast<uint16_t>(s.n * 4);
  }
}

inline int64_t round8(int64_t m) { return (m + 7) / 8 * 8; }

// The lists' sizes (serial: a prefix sum); plan_queries fills them (in parallel).
AH_AVX2 void size_queries(const uint64_t* qp, int64_t Q, int64_t W, SlicedQueries& s) {
  s.n = 64 * W;
  s.begin.assign(static_cast<size_t>(Q + 1), 0);
  s.ones.resize(static_cast<size_t>(Q));
  s.zeros.resize(static_cast<size_t>(Q));
  for (int64_t q = 0; q < Q; ++q) {
    int64_t ones = 0;
    for (int64_t w = 0; w < W; ++w) ones += _mm_popcnt_u64(qp[q * W + w]);
    s.ones[q] = static_cast<int32_t>(ones);
    s.zeros[q] = ones > s.n - ones;
    s.begin[q + 1] = s.begin[q] + round8(std::min(ones, s.n - ones));
  }
  s.offs.resize(static_cast<size_t>(s.begin[Q]));
  s.all.resize(static_cast<size_t>(round8(s.n)));
  for (int64_t p = 0; p < static_cast<int64_t>(s.all.size()); ++p)
    s.all[p] = static_cast<uint16_t>(std::min(p, s.n) * 4);
}

// Top-k of queries [0, Q) over base rows [jb, je) (sorted lists of kk entries at d / i +
// q * stride), the base walked in tiles of 256 rows, each transposed once and offered to
// every query.
template <class Heap>
AH_AVX2 void topk_sliced(const uint64_t* qp, const uint64_t* bp, int64_t W,
                         const SlicedQueries& s, int64_t Q, int64_t jb, int64_t je, int64_t kk,
                         int32_t* d, int64_t* ix, int64_t stride) {
  const int64_t n = s.n;
  // counter levels: n < 2^L (and the two stages of count_slices need 9)
  const int L = std::max(bit_length(static_cast<uint64_t>(n)), 9);
  auto slices = aligned_array<uint8_t>(static_cast<size_t>(32 * (n + 1)));
  std::memset(slices.get() + 32 * n, 0, 32);  // the zero slice pads the lists
  std::vector<uint64_t> pad;                  // a last tile of fewer than 256 rows, zero-filled
  std::vector<Heap> heaps;
  heaps.reserve(static_cast<size_t>(Q));
  for (int64_t q = 0; q < Q; ++q) heaps.push_back(Heap{d + q * stride, ix + q * stride, kk, 0});
  std::vector<int32_t> thr(static_cast<size_t>(Q), INT32_MAX);
  alignas(32) __m256i pb[kMaxLevels + 1], cnt[kMaxLevels];
  alignas(32) uint64_t mask[4], valid[4];
  for (int64_t j0 = jb; j0 < je; j0 += kSliceRows) {
    const int64_t rows = std::min(kSliceRows, je - j0);
    const uint64_t* tile = bp + j0 * W;
    if (rows < kSliceRows) {
      pad.assign(static_cast<size_t>(kSliceRows * W), 0);
      std::memcpy(pad.data(), tile, sizeof(uint64_t) * rows * W);
      tile = pad.data();
    }
    transpose_bits(tile, W, slices.get());
    count_slices(slices.get(), s.all.data(), static_cast<int64_t>(s.all.size()), L, 0, pb);
    pb[L] = _mm256_setzero_si256();
    for (int t = 0; t < 4; ++t) {
      const int64_t lo = 64 * t;
      valid[t] = rows >= lo + 64 ? ~uint64_t(0) : rows <= lo ? 0 : (uint64_t(1) << (rows - lo)) - 1;
    }
    for (int64_t q = 0; q < Q; ++q) {
      Heap& h = heaps[q];
      int32_t& th = thr[q];
      const uint64_t* qv = qp + q * W;
      if (th == INT32_MAX) {
        std::memcpy(mask, valid, sizeof(mask));  // the heap is not full: every row
      } else {
        // dist - th = A - B - e (cpu comment at the top), the count started at h:
        //   ones of q listed: A = PB, B = 2 (C + h), th - |q| = 2 h + e (h = floor)
        //   zeros listed:     A = 2 (C + h), B = PB, |q| - th = 2 h - e (h = ceil)
        const bool zeros = s.zeros[q];
        const int64_t K = zeros ? int64_t(s.ones[q]) - th : int64_t(th) - s.ones[q];
        const int64_t hh = zeros ? (K + 1) >> 1 : K >> 1;
        const bool e = zeros ? (2 * hh - K) != 0 : (K - 2 * hh) != 0;
        count_slices(slices.get(), s.offs.data() + s.begin[q], s.begin[q + 1] - s.begin[q], L,
                     static_cast<uint64_t>(hh), cnt);
        auto two_c = [&cnt](int l) AH_AVX2_LAMBDA { return l == 0 ? _mm256_setzero_si256() : cnt[l - 1]; };
        auto popc = [&pb](int l) AH_AVX2_LAMBDA { return pb[l]; };
        __m256i neg = zeros ? negative_rows(two_c, popc, L, !e) : negative_rows(popc, two_c, L, !e);
        neg = _mm256_and_si256(neg, _mm256_load_si256(reinterpret_cast<const __m256i*>(valid)));
        if (_mm256_testz_si256(neg, neg)) continue;
        _mm256_store_si256(reinterpret_cast<__m256i*>(mask), neg);
      }
      for (int t = 0; t < 4; ++t)
        for (uint64_t m = mask[t]; m; m &= m - 1) {
          const int64_t j = j0 + 64 * t + __builtin_ctzll(m);
          const int32_t dist = row_distance(qv, bp + j * W, W);
          if (dist < th) {
            h.push(dist, j);
            th = h.threshold();
          }
        }
    }
  }
  for (Heap& h : heaps) h.sort();
}

}  // namespace activation_hash::cpu::avx2

#endif  // x86-64
