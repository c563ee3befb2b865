// CPU kernels of hamming_distance, hamming_topk and hamming_consecutive.
//
// Rows are packed codes: W int64 words each; the distance of two rows is the popcount of their
// xor. The base is walked in tiles of kTileBytes (L1-sized); every query of a thread's chunk
// is run against a tile before the next tile is read, so the tile stays in L1 and the queries
// in L2. Kernel families, chosen at run time (isa.h):
//   avx512 (with VPOPCNTDQ): the tile is first transposed into groups of 8 rows ([group][word]
//           [8 rows]), so one query word broadcast, xor and VPOPCNTQ give that word's count
//           for 8 rows at once, and W of them add up to 8 distances with no horizontal
//           reduction. Designed against 3 vector ops (xor, vpopcntq, add) per zmm, i.e.
//           0.375 ops per word and row, and 2 loads per zmm (broadcast, tile);
//   avx2 (also AVX-512 CPUs without VPOPCNTDQ; hamming_avx2.h): the same transposed groups
//           with a vpshufb nibble-lookup popcount for distances and for top-k of few queries,
//           and a bit-sliced carry-save top-k (Harley-Seal adders over bit slices of 256 rows)
//           for many queries;
//   scalar: popcount by bit tricks on row-major rows (baseline x86-64, or no AVX2).
// top-k keeps, per query, a max-heap of its k best (distance, index) pairs in the output
// itself, plus a threshold (the heap's worst distance once it holds k). The base is read in
// increasing index order, so a candidate whose distance equals the threshold is never better
// than the heap's worst (it has a larger index): only distances < threshold are inserted, and
// ties are broken by the lower index. The results are sorted by (distance, index).
//
// Why the former AVX2 path (scalar POPCNT per word on row-major rows) stayed far below the
// POPCNT limit for wide codes: every word cost two loads (the query's and the base row's) and
// an add into one serial accumulator; the distances of a tile went through a buffer that the
// heap loop read back (a store, a load and a compare per distance); and a 16 KB tile holds
// only 32 rows of 4096 bits, so the per (query, tile) setup was paid every 32 rows. In
// single-thread microbenchmarks on the bench machine (AMD EPYC, AVX2 instructions only) it
// took 0.37 ns per word and row at 4096 bits, the nibble-lookup kernel 0.14, and the
// bit-sliced top-k counts about 0.05 (it sums at most half the bit slices, 256 rows at once).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <vector>

#include "activation_hash/hamming_checks.h"
#include "cpu/hamming_avx2.h"
#include "cpu/isa.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define AH_X86 1
#define AH_POPCNT __attribute__((target("popcnt"), flatten))
#define AH_AVX512_POPCNT \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq,popcnt")))
#else
#define AH_POPCNT
#endif

namespace activation_hash::cpu {
namespace {

constexpr int64_t kTileBytes = 16 * 1024;  // base rows per tile: kTileBytes / (8 W), >= 8
constexpr int64_t kGroup = 8;              // rows per transposed group (one zmm of int64)

// Queries per block: their words plus `extra` bytes each (heap, output) in about kL2Bytes.
constexpr int64_t kL2Bytes = 256 * 1024;
int64_t query_block(int64_t W, int64_t extra) {
  return std::max<int64_t>(16, kL2Bytes / (8 * W + extra));
}

int64_t tile_rows(int64_t W) {
  const int64_t rows = kTileBytes / (8 * std::max<int64_t>(W, 1));
  return std::max<int64_t>(kGroup, rows / kGroup * kGroup);
}

// ---- distances of one query to n consecutive base rows (row-major) ----------------------

template <int kW>
__attribute__((always_inline)) inline int32_t row_distance(const uint64_t* a, const uint64_t* b,
                                                           int64_t W) {
  if constexpr (kW == 4) {
    return __builtin_popcountll(a[0] ^ b[0]) + __builtin_popcountll(a[1] ^ b[1]) +
           __builtin_popcountll(a[2] ^ b[2]) + __builtin_popcountll(a[3] ^ b[3]);
  } else if constexpr (kW == 1) {
    return __builtin_popcountll(a[0] ^ b[0]);
  } else {
    int64_t s = 0;
    for (int64_t w = 0; w < W; ++w) s += __builtin_popcountll(a[w] ^ b[w]);
    return static_cast<int32_t>(s);
  }
}

template <int kW>
void rows_portable(const uint64_t* q, const uint64_t* base, int64_t n, int64_t W, int32_t* out) {
  for (int64_t j = 0; j < n; ++j) out[j] = row_distance<kW>(q, base + j * W, W);
}

#ifdef AH_X86
// ---- AVX-512 VPOPCNTDQ on a transposed tile ----------------------------------------------

// tt [groups][W][8] <- base rows [0, n) (row-major [n, W]); rows past n are zero.
void transpose_tile(const uint64_t* base, int64_t n, int64_t W, uint64_t* tt) {
  const int64_t groups = (n + kGroup - 1) / kGroup;
  for (int64_t g = 0; g < groups; ++g) {
    uint64_t* dst = tt + g * W * kGroup;
    const int64_t rows = std::min<int64_t>(kGroup, n - g * kGroup);
    for (int64_t r = 0; r < rows; ++r) {
      const uint64_t* src = base + (g * kGroup + r) * W;
      for (int64_t w = 0; w < W; ++w) dst[w * kGroup + r] = src[w];
    }
    for (int64_t r = rows; r < kGroup; ++r)
      for (int64_t w = 0; w < W; ++w) dst[w * kGroup + r] = 0;
  }
}

// 8 distances (int64 lanes) of query q to group g of a transposed tile.
template <int kW>
AH_AVX512_POPCNT __attribute__((always_inline)) inline __m512i group_distances(
    const uint64_t* q, const __m512i* qv, const uint64_t* grp, int64_t W) {
  if constexpr (kW == 4) {
    __m512i a = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(grp), qv[0]));
    __m512i b = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(grp + 8), qv[1]));
    a = _mm512_add_epi64(a, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(grp + 16), qv[2])));
    b = _mm512_add_epi64(b, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(grp + 24), qv[3])));
    return _mm512_add_epi64(a, b);
  } else {
    __m512i a = _mm512_setzero_si512(), b = _mm512_setzero_si512();
    int64_t w = 0;
    for (; w + 2 <= W; w += 2) {
      a = _mm512_add_epi64(a, _mm512_popcnt_epi64(_mm512_xor_si512(
                                  _mm512_loadu_si512(grp + w * kGroup), _mm512_set1_epi64(q[w]))));
      b = _mm512_add_epi64(b, _mm512_popcnt_epi64(_mm512_xor_si512(
                                  _mm512_loadu_si512(grp + (w + 1) * kGroup),
                                  _mm512_set1_epi64(q[w + 1]))));
    }
    if (w < W)
      a = _mm512_add_epi64(a, _mm512_popcnt_epi64(_mm512_xor_si512(
                                  _mm512_loadu_si512(grp + w * kGroup), _mm512_set1_epi64(q[w]))));
    return _mm512_add_epi64(a, b);
  }
}

// out[0, 8 * groups) = distances of q to every row of the transposed tile (padding included).
template <int kW>
AH_AVX512_POPCNT void tile_avx512(const uint64_t* q, const uint64_t* tt, int64_t groups,
                                  int64_t W, int32_t* out) {
  __m512i qv[4];
  if constexpr (kW == 4)
    for (int w = 0; w < 4; ++w) qv[w] = _mm512_set1_epi64(q[w]);
  for (int64_t g = 0; g < groups; ++g) {
    const __m512i d = group_distances<kW>(q, qv, tt + g * W * kGroup, W);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + g * kGroup), _mm512_maskz_cvtepi64_epi32(__mmask8(0xFF), d));
  }
}
#endif  // AH_X86

// ---- top-k bookkeeping -----------------------------------------------------------------

// (d1, i1) better than (d2, i2): smaller distance, then smaller index.
inline bool better(int32_t d1, int64_t i1, int32_t d2, int64_t i2) {
  return d1 < d2 || (d1 == d2 && i1 < i2);
}

// A max-heap (worst on top) of at most k pairs, stored in the query's output rows.
struct Heap {
  int32_t* d;
  int64_t* i;
  int64_t k;
  int64_t size;

  // The distance a candidate must beat (strictly) to enter.
  int32_t threshold() const { return size < k ? INT32_MAX : d[0]; }

  void push(int32_t dist, int64_t idx) {
    if (size < k) {  // sift up
      int64_t c = size++;
      while (c > 0) {
        const int64_t p = (c - 1) / 2;
        if (!better(d[p], i[p], dist, idx)) break;
        d[c] = d[p];
        i[c] = i[p];
        c = p;
      }
      d[c] = dist;
      i[c] = idx;
      return;
    }
    int64_t c = 0;  // replace the worst, sift down
    while (true) {
      int64_t child = 2 * c + 1;
      if (child >= k) break;
      if (child + 1 < k && better(d[child], i[child], d[child + 1], i[child + 1])) ++child;
      if (!better(dist, idx, d[child], i[child])) break;
      d[c] = d[child];
      i[c] = i[child];
      c = child;
    }
    d[c] = dist;
    i[c] = idx;
  }

  // Ascending (distance, index).
  void sort() {
    std::vector<std::pair<int32_t, int64_t>> v(size);
    for (int64_t t = 0; t < size; ++t) v[t] = {d[t], i[t]};
    std::sort(v.begin(), v.end());
    for (int64_t t = 0; t < size; ++t) {
      d[t] = v[t].first;
      i[t] = v[t].second;
    }
  }
};

// Offer candidates dist[0, n) with indices j0 + j.
inline void offer(Heap& h, int32_t& thr, const int32_t* dist, int64_t n, int64_t j0) {
  for (int64_t j = 0; j < n; ++j) {
    if (dist[j] < thr) {
      h.push(dist[j], j0 + j);
      thr = h.threshold();
    }
  }
}

#ifdef AH_X86
// Top-k over a transposed tile without materializing its distances: 8 distances per group are
// compared with the query's threshold in registers; only groups with a candidate are spilled.
template <int kW>
AH_AVX512_POPCNT void offer_tile_avx512(const uint64_t* q, const uint64_t* tt, int64_t n,
                                        int64_t W, int64_t j0, Heap& h, int32_t& thr) {
  __m512i qv[4];
  if constexpr (kW == 4)
    for (int w = 0; w < 4; ++w) qv[w] = _mm512_set1_epi64(q[w]);
  __m512i tv = _mm512_set1_epi64(thr);
  const int64_t groups = (n + kGroup - 1) / kGroup;
  alignas(64) int64_t spill[kGroup];
  for (int64_t g = 0; g < groups; ++g) {
    const __m512i d = group_distances<kW>(q, qv, tt + g * W * kGroup, W);
    const __mmask8 valid = n - g * kGroup >= kGroup ? __mmask8(0xFF)
                                                    : __mmask8((1u << (n - g * kGroup)) - 1);
    __mmask8 m = _mm512_mask_cmplt_epi64_mask(valid, d, tv);
    if (m == 0) continue;
    _mm512_store_si512(spill, d);
    while (m) {
      const int b = __builtin_ctz(m);
      m &= m - 1;
      if (spill[b] < thr) {
        h.push(int32_t(spill[b]), j0 + g * kGroup + b);
        thr = h.threshold();
      }
    }
    tv = _mm512_set1_epi64(thr);
  }
}
#endif

// ---- one tile of base rows, as the chosen ISA reads it ----------------------------------

class TileScanner {
 public:
  enum class Mode { kRows, kAvx2, kAvx512 };

  TileScanner(const uint64_t* base, int64_t W)
      : base_(base), W_(W), rows_(tile_rows(W)), mode_(chosen_mode()) {
    // The grouped kernels write whole groups of 8 (rows_ is a multiple of 8); +16 spare.
    buf_.resize(static_cast<size_t>(rows_ + 16));
    if (mode_ != Mode::kRows) tt_.resize(static_cast<size_t>(rows_ * W_));
  }
  int64_t rows() const { return rows_; }

  static Mode chosen_mode() {
#ifdef AH_X86
    if (avx512_vpopcntdq()) return Mode::kAvx512;
    if (isa() != Isa::kScalar) return Mode::kAvx2;
#endif
    return Mode::kRows;
  }

  // Make rows [j0, j0 + n) the current tile.
  void load(int64_t j0, int64_t n) {
    j0_ = j0;
    n_ = n;
#ifdef AH_X86
    if (mode_ != Mode::kRows) transpose_tile(base_ + j0 * W_, n, W_, tt_.data());
#endif
  }

  // Distances of q to the current tile's rows -> buffer (n valid entries).
  const int32_t* distances(const uint64_t* q) {
    int32_t* out = buf_.data();
    const int64_t groups = (n_ + kGroup - 1) / kGroup;
#ifdef AH_X86
    if (mode_ == Mode::kAvx512) {
      if (W_ == 4) tile_avx512<4>(q, tt_.data(), groups, W_, out);
      else tile_avx512<0>(q, tt_.data(), groups, W_, out);
      return out;
    }
    if (mode_ == Mode::kAvx2) {
      if (W_ == 4) avx2::tile_distances<4>(q, tt_.data(), groups, W_, out);
      else avx2::tile_distances<0>(q, tt_.data(), groups, W_, out);
      return out;
    }
#endif
    const uint64_t* rows = base_ + j0_ * W_;
    if (W_ == 4) rows_portable<4>(q, rows, n_, W_, out);
    else if (W_ == 1) rows_portable<1>(q, rows, n_, W_, out);
    else rows_portable<0>(q, rows, n_, W_, out);
    (void)groups;
    return out;
  }

  // Offer the current tile's rows to query q's heap.
  void offer_query(const uint64_t* q, Heap& h, int32_t& thr) {
#ifdef AH_X86
    if (mode_ == Mode::kAvx512) {
      if (W_ == 4) return offer_tile_avx512<4>(q, tt_.data(), n_, W_, j0_, h, thr);
      return offer_tile_avx512<0>(q, tt_.data(), n_, W_, j0_, h, thr);
    }
    if (mode_ == Mode::kAvx2) {
      if (W_ == 4) return avx2::offer_tile<4>(q, tt_.data(), n_, W_, j0_, h, thr);
      return avx2::offer_tile<0>(q, tt_.data(), n_, W_, j0_, h, thr);
    }
#endif
    offer(h, thr, distances(q), n_, j0_);
  }

 private:
  const uint64_t* base_;
  int64_t W_, rows_;
  Mode mode_;
  int64_t j0_ = 0, n_ = 0;
  std::vector<int32_t> buf_;
  std::vector<uint64_t> tt_;
};

const uint64_t* words_of(const at::Tensor& t) {
  return reinterpret_cast<const uint64_t*>(t.const_data_ptr<int64_t>());
}

// Top-k of queries [q0, q1) over base rows [jb, je): query q's sorted (distance, index) list
// of kk <= je - jb entries goes to d + q * stride and i + q * stride.
void topk_rows(const uint64_t* qp, const uint64_t* bp, int64_t W, int64_t q0, int64_t q1,
               int64_t jb, int64_t je, int64_t kk, int32_t* d, int64_t* i, int64_t stride) {
  TileScanner scan(bp, W);
  const int64_t rows = scan.rows();
  std::vector<Heap> heaps;
  std::vector<int32_t> thr(static_cast<size_t>(q1 - q0), INT32_MAX);
  heaps.reserve(static_cast<size_t>(q1 - q0));
  for (int64_t q = q0; q < q1; ++q) heaps.push_back(Heap{d + q * stride, i + q * stride, kk, 0});
  // Blocks of queries whose rows and heaps fit in L2; each block walks the whole range.
  const int64_t block = query_block(W, 12 * std::min<int64_t>(kk, 64));
  for (int64_t b0 = q0; b0 < q1; b0 += block) {
    const int64_t b1 = std::min(q1, b0 + block);
    for (int64_t j0 = jb; j0 < je; j0 += rows) {
      scan.load(j0, std::min(rows, je - j0));
      for (int64_t q = b0; q < b1; ++q) scan.offer_query(qp + q * W, heaps[q - q0], thr[q - q0]);
    }
  }
  for (Heap& h : heaps) h.sort();
}

// Top-k of Q queries over M base rows with the base split between threads: range c (whole
// tiles of `unit` rows) keeps the local k best of every query (run(jb, je, kk, d, i, stride)
// writes sorted lists of kk entries at d / i + q * stride); the local lists are then merged:
// a row of the global top-k is in its range's top-k, so the merge is exact. One range (no
// merge) when there is one thread or one tile.
template <class Run>
void split_base(int64_t Q, int64_t M, int64_t k, int64_t unit, int64_t threads, int32_t* dp,
                int64_t* ip, Run&& run) {
  const int64_t tiles = (M + unit - 1) / unit;
  const int64_t chunks = std::max<int64_t>(1, std::min(threads, tiles));
  if (chunks == 1) {
    run(0, M, k, dp, ip, k);
    return;
  }
  const int64_t tiles_per = (tiles + chunks - 1) / chunks;
  std::vector<int64_t> begin(chunks + 1), kc(chunks), off(chunks + 1, 0);
  for (int64_t c = 0; c <= chunks; ++c) begin[c] = std::min(M, c * tiles_per * unit);
  for (int64_t c = 0; c < chunks; ++c) {
    kc[c] = std::min(k, begin[c + 1] - begin[c]);
    off[c + 1] = off[c] + Q * kc[c];
  }
  std::vector<int32_t> ld(static_cast<size_t>(off[chunks]));
  std::vector<int64_t> li(static_cast<size_t>(off[chunks]));
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      if (kc[c] > 0)
        run(begin[c], begin[c + 1], kc[c], ld.data() + off[c], li.data() + off[c], kc[c]);
  });
  at::parallel_for(0, Q, 1, [&](int64_t q0, int64_t q1) {
    std::vector<std::pair<int32_t, int64_t>> all;
    for (int64_t q = q0; q < q1; ++q) {
      all.clear();
      for (int64_t c = 0; c < chunks; ++c)
        for (int64_t t = 0; t < kc[c]; ++t)
          all.emplace_back(ld[off[c] + q * kc[c] + t], li[off[c] + q * kc[c] + t]);
      std::partial_sort(all.begin(), all.begin() + k, all.end());
      for (int64_t t = 0; t < k; ++t) {
        dp[q * k + t] = all[t].first;
        ip[q * k + t] = all[t].second;
      }
    }
  });
}

#ifdef AH_X86
// The bit-sliced top-k runs where the Hamming kernels are AVX2 ones (AVX2 CPUs, and AVX-512
// CPUs without VPOPCNTDQ), for rows of at most kSlicedMaxWords words and enough queries to
// pay for transposing each tile. ACTIVATION_HASH_SLICED=0|1 forces it off / on (tests).
inline bool use_sliced(int64_t W, int64_t Q) {
  if (avx512_vpopcntdq() || isa() == Isa::kScalar || W > avx2::kSlicedMaxWords) return false;
  static const int forced = [] {
    const char* v = std::getenv("ACTIVATION_HASH_SLICED");
    return v == nullptr ? -1 : std::atoi(v) != 0;
  }();
  if (forced >= 0) return forced == 1;
  return Q >= avx2::kSlicedMinQueries;
}
#endif

// ---- ops -------------------------------------------------------------------------------

at::Tensor hamming_distance_cpu(const at::Tensor& a, const at::Tensor& b) {
  check_code_pair(a, b, "a", "b");
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  const int64_t N = ac.size(0), M = bc.size(0), W = ac.size(1);
  at::Tensor out = at::empty({N, M}, ac.options().dtype(at::kInt));
  if (N == 0 || M == 0) return out;
  int32_t* op = out.mutable_data_ptr<int32_t>();
  if (W == 0) {
    std::fill(op, op + N * M, 0);
    return out;
  }
  const uint64_t* ap = words_of(ac);
  const uint64_t* bp = words_of(bc);
  const int64_t rows = tile_rows(W);
  const int64_t tiles = (M + rows - 1) / rows;
  // Rows of a per thread when a is tall; tiles of b per thread when a is short and b long.
  const bool by_rows = N >= 2 * at::get_num_threads() || tiles == 1;
  auto run = [&](int64_t i0, int64_t i1, int64_t t0, int64_t t1) {
    TileScanner scan(bp, W);
    const int64_t block = query_block(W, 4 * rows);  // rows of a and their output segments
    for (int64_t b0 = i0; b0 < i1; b0 += block) {
      const int64_t b1 = std::min(i1, b0 + block);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t j0 = t * rows, n = std::min(rows, M - j0);
        scan.load(j0, n);
        for (int64_t i = b0; i < b1; ++i)
          std::memcpy(op + i * M + j0, scan.distances(ap + i * W), sizeof(int32_t) * n);
      }
    }
  };
  if (by_rows)
    at::parallel_for(0, N, 1, [&](int64_t i0, int64_t i1) { run(i0, i1, 0, tiles); });
  else
    at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) { run(0, N, t0, t1); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> hamming_topk_cpu(const at::Tensor& queries,
                                                    const at::Tensor& base, int64_t k) {
  check_code_pair(queries, base, "queries", "base");
  const int64_t Q = queries.size(0), M = base.size(0), W = queries.size(1);
  check_k(k, M);
  const at::Tensor qc = queries.contiguous(), bc = base.contiguous();
  at::Tensor dist = at::empty({Q, k}, qc.options().dtype(at::kInt));
  at::Tensor idx = at::empty({Q, k}, qc.options().dtype(at::kLong));
  if (Q == 0 || k == 0) return {dist, idx};
  int32_t* dp = dist.mutable_data_ptr<int32_t>();
  int64_t* ip = idx.mutable_data_ptr<int64_t>();
  if (W == 0) {  // every distance is 0: the first k rows
    for (int64_t q = 0; q < Q; ++q)
      for (int64_t t = 0; t < k; ++t) {
        dp[q * k + t] = 0;
        ip[q * k + t] = t;
      }
    return {dist, idx};
  }
  const uint64_t* qp = words_of(qc);
  const uint64_t* bp = words_of(bc);
  const int64_t threads = at::get_num_threads();
#ifdef AH_X86
  if (use_sliced(W, Q)) {
    // Bit-sliced top-k (hamming_avx2.h): the queries' bit lists are built once; every
    // thread then takes a range of 256-row tiles (each tile is transposed once) with all
    // queries, and the local lists are merged.
    avx2::SlicedQueries plan;
    avx2::size_queries(qp, Q, W, plan);
    at::parallel_for(0, Q, 64, [&](int64_t q0, int64_t q1) {
      avx2::plan_queries(qp, q0, q1, W, plan);
    });
    split_base(Q, M, k, avx2::kSliceRows, threads, dp, ip,
               [&](int64_t jb, int64_t je, int64_t kk, int32_t* d, int64_t* i, int64_t stride) {
                 avx2::topk_sliced<Heap>(qp, bp, W, plan, Q, jb, je, kk, d, i, stride);
               });
    return {dist, idx};
  }
#endif
  const int64_t rows = tile_rows(W);
  const int64_t tiles = (M + rows - 1) / rows;
  if (Q >= 2 * threads || tiles < 2 * threads) {  // every thread: some queries, whole base
    at::parallel_for(0, Q, 1, [&](int64_t q0, int64_t q1) {
      topk_rows(qp, bp, W, q0, q1, 0, M, k, dp, ip, k);
    });
    return {dist, idx};
  }
  // Few queries, long base: every thread takes a range of base tiles.
  split_base(Q, M, k, rows, threads, dp, ip,
             [&](int64_t jb, int64_t je, int64_t kk, int32_t* d, int64_t* i, int64_t stride) {
               topk_rows(qp, bp, W, 0, Q, jb, je, kk, d, i, stride);
             });
  return {dist, idx};
}

AH_POPCNT void consecutive_popcnt(const uint64_t* c, int64_t W, int32_t* out, int64_t i0,
                                  int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) out[i] = row_distance<0>(c + i * W, c + (i + 1) * W, W);
}

void consecutive_portable(const uint64_t* c, int64_t W, int32_t* out, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) out[i] = row_distance<0>(c + i * W, c + (i + 1) * W, W);
}

at::Tensor hamming_consecutive_cpu(const at::Tensor& codes) {
  check_codes(codes, "codes");
  const at::Tensor cc = codes.contiguous();
  const int64_t N = cc.size(0), W = cc.size(1);
  const int64_t n = std::max<int64_t>(N - 1, 0);
  at::Tensor out = at::empty({n}, cc.options().dtype(at::kInt));
  if (n == 0) return out;
  const uint64_t* cp = words_of(cc);
  int32_t* op = out.mutable_data_ptr<int32_t>();
  at::parallel_for(0, n, 4096, [&](int64_t i0, int64_t i1) {
#ifdef AH_X86
    if (isa() != Isa::kScalar) return consecutive_popcnt(cp, W, op, i0, i1);
#endif
    consecutive_portable(cp, W, op, i0, i1);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(activation_hash, CPU, m) {
  m.impl("hamming_distance", &hamming_distance_cpu);
  m.impl("hamming_topk", &hamming_topk_cpu);
  m.impl("hamming_consecutive", &hamming_consecutive_cpu);
}

}  // namespace activation_hash::cpu
