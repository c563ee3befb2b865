// CPU kernel of split_pieces: one ReLU-like layer of the layer-by-layer segment walk of MLPs
// (activation_hash/regions_layers.py; the op's contract is in csrc/ops.cpp and, in Python,
// activation_hash/reference.py: split_pieces, whose float64 results this kernel reproduces bit
// for bit: the same operations in the same order, no FMA contraction).
//
// A piece [lo, hi) of a segment carries the layer's pre-activation z(t) = za + (t - lo) zb.
// Only a few rows are stored: zb of the first piece of each group (the children of one piece
// of the previous layer) and, for the other pieces, the units whose mask changed at their
// start (zb[p] = zb[p - 1] + sum coef * weight_t[unit]: a rank-one update per flipped unit
// instead of a row of the next matmul); za runs along the segment from its start value
// (za[p] = za[p - 1] + (lo[p] - lo[p - 1]) zb[p - 1]). So one pass per segment, with za and zb
// of the current piece in L1, finds the zero crossings inside each piece, splits it, decides
// each child by its midpoint, packs the child's bits, and writes what the next layer needs:
// the masked zb of each piece's first child (the next matmul's rows), the masked value at each
// segment's start, and the flips between consecutive children. Segments run in parallel.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

#include "activation_hash/bits.h"
#include "activation_hash/regions_checks.h"
#include "cpu/isa.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace activation_hash::cpu {
namespace {

// The O(n) loops over a piece's units, per ISA. Every variant makes the same IEEE operations
// as the scalar one (products and sums, never fused), so all give the same bits.
struct UnitLoops {
  // y[u] = y[u] + a * x[u]
  void (*axpy)(double* y, double a, const double* x, int64_t n);
  // the units whose crossing t = lo - za / zb lies in (lo_t, hi_t): written to t_out/u_out,
  // in unit order; returns how many
  int64_t (*crossings)(const double* za, const double* zb, double lo, double lo_t, double hi_t,
                       int64_t n, double* t_out, int64_t* u_out);
  // bit u of bits = (za[u] + d0 * zb[u]) + h * zb[u] > 0 (bits: ceil(n / 64) words, zeroed)
  void (*child_bits)(const double* za, const double* zb, double d0, double h, int64_t n,
                     uint64_t* bits);
  // out[u] = bit u ? v[u] : (slope == 0 ? +0.0 : v[u] * slope), v = va + d0 * vb (vb may be
  // null: v = va)
  void (*masked_row)(const double* va, const double* vb, double d0, const uint64_t* bits,
                     double slope, int64_t n, double* out);
};

inline bool bit_of(const uint64_t* bits, int64_t u) {
  return (bits[u / kWordBits] >> (u % kWordBits)) & 1;
}

void axpy_scalar(double* y, double a, const double* x, int64_t n) {
  for (int64_t u = 0; u < n; ++u) y[u] = y[u] + a * x[u];
}

int64_t crossings_scalar(const double* za, const double* zb, double lo, double lo_t, double hi_t,
                         int64_t n, double* t_out, int64_t* u_out) {
  int64_t k = 0;
  for (int64_t u = 0; u < n; ++u) {
    const double tc = lo - za[u] / zb[u];
    if (tc > lo_t && tc < hi_t) t_out[k] = tc, u_out[k++] = u;
  }
  return k;
}

// child_bits on the units [u, n).
inline void child_bits_from(const double* za, const double* zb, double d0, double h, int64_t u,
                            int64_t n, uint64_t* bits) {
  for (; u < n; ++u) {
    const double ar = za[u] + d0 * zb[u];
    if (unit_on(ar + h * zb[u])) bits[u / kWordBits] |= uint64_t(1) << (u % kWordBits);
  }
}

void child_bits_scalar(const double* za, const double* zb, double d0, double h, int64_t n,
                       uint64_t* bits) {
  child_bits_from(za, zb, d0, h, 0, n, bits);
}

// masked_row on the units [u, n).
inline void masked_row_from(const double* va, const double* vb, double d0, const uint64_t* bits,
                            double slope, int64_t u, int64_t n, double* out) {
  for (; u < n; ++u) {
    const double v = vb ? va[u] + d0 * vb[u] : va[u];
    out[u] = bit_of(bits, u) ? v : (slope == 0.0 ? 0.0 : v * slope);
  }
}

void masked_row_scalar(const double* va, const double* vb, double d0, const uint64_t* bits,
                       double slope, int64_t n, double* out) {
  masked_row_from(va, vb, d0, bits, slope, 0, n, out);
}

// The crossings of lanes m (bits) of a vector whose t values are in t, units from u.
inline void emit_lanes(unsigned m, const double* t, int64_t u, double* t_out, int64_t* u_out,
                       int64_t& k) {
  for (; m; m &= m - 1) {
    const int j = __builtin_ctz(m);
    t_out[k] = t[j], u_out[k++] = u + j;
  }
}

// crossings_scalar on the units [u, n) after a vector loop that found k: the total.
inline int64_t crossings_tail(const double* za, const double* zb, double lo, double lo_t,
                              double hi_t, int64_t u, int64_t n, double* t_out, int64_t* u_out,
                              int64_t k) {
  const int64_t tail = crossings_scalar(za + u, zb + u, lo, lo_t, hi_t, n - u, t_out + k,
                                        u_out + k);
  for (int64_t j = k; j < k + tail; ++j) u_out[j] += u;  // the tail counted units from u
  return k + tail;
}

#if defined(__x86_64__) || defined(_M_X64)
#define AH_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl")))
#define AH_AVX2 __attribute__((target("avx2,fma,popcnt")))

AH_AVX512 void axpy_avx512(double* y, double a, const double* x, int64_t n) {
  const __m512d va = _mm512_set1_pd(a);
  int64_t u = 0;
  for (; u + 8 <= n; u += 8)
    _mm512_storeu_pd(y + u, _mm512_add_pd(_mm512_loadu_pd(y + u),
                                          _mm512_mul_pd(va, _mm512_loadu_pd(x + u))));
  axpy_scalar(y + u, a, x + u, n - u);
}

AH_AVX512 int64_t crossings_avx512(const double* za, const double* zb, double lo, double lo_t,
                                   double hi_t, int64_t n, double* t_out, int64_t* u_out) {
  const __m512d vlo = _mm512_set1_pd(lo), vlt = _mm512_set1_pd(lo_t), vht = _mm512_set1_pd(hi_t);
  int64_t k = 0, u = 0;
  for (; u + 8 <= n; u += 8) {
    const __m512d tc = _mm512_sub_pd(vlo, _mm512_div_pd(_mm512_loadu_pd(za + u),
                                                        _mm512_loadu_pd(zb + u)));
    unsigned m = _mm512_cmp_pd_mask(tc, vlt, _CMP_GT_OQ) & _mm512_cmp_pd_mask(tc, vht, _CMP_LT_OQ);
    if (!m) continue;
    alignas(64) double t[8];
    _mm512_store_pd(t, tc);
    emit_lanes(m, t, u, t_out, u_out, k);
  }
  return crossings_tail(za, zb, lo, lo_t, hi_t, u, n, t_out, u_out, k);
}

AH_AVX512 void child_bits_avx512(const double* za, const double* zb, double d0, double h,
                                 int64_t n, uint64_t* bits) {
  const __m512d vd = _mm512_set1_pd(d0), vh = _mm512_set1_pd(h), zero = _mm512_setzero_pd();
  int64_t u = 0;
  for (; u + 8 <= n; u += 8) {
    const __m512d b = _mm512_loadu_pd(zb + u);
    const __m512d ar = _mm512_add_pd(_mm512_loadu_pd(za + u), _mm512_mul_pd(vd, b));
    const uint64_t m = _mm512_cmp_pd_mask(_mm512_add_pd(ar, _mm512_mul_pd(vh, b)), zero,
                                          _CMP_GT_OQ);
    bits[u / kWordBits] |= m << (u % kWordBits);
  }
  child_bits_from(za, zb, d0, h, u, n, bits);
}

AH_AVX512 void masked_row_avx512(const double* va, const double* vb, double d0,
                                 const uint64_t* bits, double slope, int64_t n, double* out) {
  const __m512d vd = _mm512_set1_pd(d0), vs = _mm512_set1_pd(slope);
  int64_t u = 0;
  for (; u + 8 <= n; u += 8) {
    __m512d v = _mm512_loadu_pd(va + u);
    if (vb) v = _mm512_add_pd(v, _mm512_mul_pd(vd, _mm512_loadu_pd(vb + u)));
    const __mmask8 on = __mmask8(bits[u / kWordBits] >> (u % kWordBits));
    const __m512d off = slope == 0.0 ? _mm512_setzero_pd() : _mm512_mul_pd(v, vs);
    _mm512_storeu_pd(out + u, _mm512_mask_blend_pd(on, off, v));
  }
  masked_row_from(va, vb, d0, bits, slope, u, n, out);
}

AH_AVX2 void axpy_avx2(double* y, double a, const double* x, int64_t n) {
  const __m256d va = _mm256_set1_pd(a);
  int64_t u = 0;
  for (; u + 4 <= n; u += 4)
    _mm256_storeu_pd(y + u, _mm256_add_pd(_mm256_loadu_pd(y + u),
                                          _mm256_mul_pd(va, _mm256_loadu_pd(x + u))));
  axpy_scalar(y + u, a, x + u, n - u);
}

AH_AVX2 int64_t crossings_avx2(const double* za, const double* zb, double lo, double lo_t,
                               double hi_t, int64_t n, double* t_out, int64_t* u_out) {
  const __m256d vlo = _mm256_set1_pd(lo), vlt = _mm256_set1_pd(lo_t), vht = _mm256_set1_pd(hi_t);
  int64_t k = 0, u = 0;
  for (; u + 4 <= n; u += 4) {
    const __m256d tc = _mm256_sub_pd(vlo, _mm256_div_pd(_mm256_loadu_pd(za + u),
                                                        _mm256_loadu_pd(zb + u)));
    unsigned m = _mm256_movemask_pd(_mm256_and_pd(_mm256_cmp_pd(tc, vlt, _CMP_GT_OQ),
                                                  _mm256_cmp_pd(tc, vht, _CMP_LT_OQ)));
    if (!m) continue;
    alignas(32) double t[4];
    _mm256_store_pd(t, tc);
    emit_lanes(m, t, u, t_out, u_out, k);
  }
  return crossings_tail(za, zb, lo, lo_t, hi_t, u, n, t_out, u_out, k);
}

AH_AVX2 void child_bits_avx2(const double* za, const double* zb, double d0, double h, int64_t n,
                             uint64_t* bits) {
  const __m256d vd = _mm256_set1_pd(d0), vh = _mm256_set1_pd(h), zero = _mm256_setzero_pd();
  int64_t u = 0;
  for (; u + 4 <= n; u += 4) {
    const __m256d b = _mm256_loadu_pd(zb + u);
    const __m256d ar = _mm256_add_pd(_mm256_loadu_pd(za + u), _mm256_mul_pd(vd, b));
    const uint64_t m = unsigned(_mm256_movemask_pd(
        _mm256_cmp_pd(_mm256_add_pd(ar, _mm256_mul_pd(vh, b)), zero, _CMP_GT_OQ)));
    bits[u / kWordBits] |= m << (u % kWordBits);
  }
  child_bits_from(za, zb, d0, h, u, n, bits);
}
#endif

const UnitLoops& unit_loops() {
  static const UnitLoops scalar{axpy_scalar, crossings_scalar, child_bits_scalar,
                                masked_row_scalar};
#if defined(__x86_64__) || defined(_M_X64)
  static const UnitLoops avx512{axpy_avx512, crossings_avx512, child_bits_avx512,
                                masked_row_avx512};
  static const UnitLoops avx2{axpy_avx2, crossings_avx2, child_bits_avx2, masked_row_scalar};
  if (isa() == Isa::kAvx512) return avx512;
  if (isa() == Isa::kAvx2) return avx2;
#endif
  return scalar;
}

struct SplitIn {
  const double *first_dir, *flip_coef, *weight_t, *start_value, *lo, *hi;
  const int64_t *group_ptr, *flip_ptr, *flip_unit, *seg_ptr;
  int64_t n, n_in, G;
  double slope, tol;
  int64_t max_pieces;
  bool last;  // no next layer: first_out, start_out and the flips are not written
};

// What one segment's pieces produce, before the outputs are assembled.
struct SegmentChildren {
  std::vector<double> lo, hi;
  std::vector<uint64_t> words;         // [children, W]
  std::vector<int64_t> flips_of;       // per child: how many flips it starts with
  std::vector<int64_t> flip_unit;
  std::vector<double> flip_coef;
};

// Returns false when the segment has more than max_pieces children.
bool split_segment(const SplitIn& in, const UnitLoops& k, int64_t s, SegmentChildren& out,
                   int64_t* child_count, double* first_out, double* start_out) {
  const int64_t n = in.n, W = words_for_bits(n);
  const int64_t p0 = in.seg_ptr[s], p1 = in.seg_ptr[s + 1];
  if (p0 == p1) {
    if (!in.last) std::fill(start_out + s * n, start_out + (s + 1) * n, 0.0);
    return true;
  }
  const size_t guess = 2 * size_t(p1 - p0);  // children: about twice the pieces
  out.lo.reserve(guess);
  out.hi.reserve(guess);
  out.flips_of.reserve(guess);
  out.words.reserve(guess * W);
  if (!in.last) out.flip_unit.reserve(guess), out.flip_coef.reserve(guess);
  std::vector<double> za(in.start_value + s * n, in.start_value + (s + 1) * n), zb(n, 0.0);
  std::vector<uint64_t> prev(W), cur(W);
  std::vector<double> t_cross(n), edges;
  std::vector<int64_t> u_cross(n), order;
  int64_t g = std::lower_bound(in.group_ptr, in.group_ptr + in.G + 1, p0) - in.group_ptr;
  for (int64_t p = p0; p < p1; ++p) {
    const double lo = in.lo[p], hi = in.hi[p];
    if (p > p0) k.axpy(za.data(), lo - in.lo[p - 1], zb.data(), n);  // zb: still p - 1's
    while (g < in.G && in.group_ptr[g + 1] <= p) ++g;  // skips empty groups
    if (in.group_ptr[g] == p) {
      std::memcpy(zb.data(), in.first_dir + g * n, n * sizeof(double));
    } else {
      for (int64_t f = in.flip_ptr[p]; f < in.flip_ptr[p + 1]; ++f)
        k.axpy(zb.data(), in.flip_coef[f], in.weight_t + in.flip_unit[f] * n, n);
    }
    // crossings inside (lo + tol, hi - tol), by t then unit; one within tol of the previous
    // crossing joins its cut
    const int64_t nc = k.crossings(za.data(), zb.data(), lo, lo + in.tol, hi - in.tol, n,
                                   t_cross.data(), u_cross.data());
    order.resize(nc);
    for (int64_t j = 0; j < nc; ++j) order[j] = j;
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return t_cross[a] < t_cross[b]; });
    edges.clear();
    edges.push_back(lo);
    for (int64_t j = 0; j < nc; ++j)
      if (j == 0 || t_cross[order[j]] > t_cross[order[j - 1]] + in.tol)
        edges.push_back(t_cross[order[j]]);
    edges.push_back(hi);
    const int64_t children = int64_t(edges.size()) - 1;
    child_count[p] = children;
    if (int64_t(out.lo.size()) + children > in.max_pieces) return false;
    for (int64_t c = 0; c < children; ++c) {
      const double nl = edges[c], nh = edges[c + 1], d0 = nl - lo;
      std::fill(cur.begin(), cur.end(), uint64_t(0));
      k.child_bits(za.data(), zb.data(), d0, 0.5 * (nh - nl), n, cur.data());
      out.lo.push_back(nl);
      out.hi.push_back(nh);
      out.words.insert(out.words.end(), cur.begin(), cur.end());
      if (in.last) {
        out.flips_of.push_back(0);
      } else if (c == 0) {
        k.masked_row(zb.data(), nullptr, 0.0, cur.data(), in.slope, n, first_out + p * n);
        if (p == p0)
          k.masked_row(za.data(), zb.data(), d0, cur.data(), in.slope, n, start_out + s * n);
        out.flips_of.push_back(0);
      } else {
        int64_t flips = 0;
        for (int64_t w = 0; w < W; ++w) {
          for (uint64_t x = prev[w] ^ cur[w]; x; x &= x - 1) {
            const int64_t u = w * kWordBits + __builtin_ctzll(x);
            out.flip_unit.push_back(u);
            out.flip_coef.push_back((bit_of(cur.data(), u) ? 1.0 - in.slope : in.slope - 1.0) *
                                    zb[u]);
            ++flips;
          }
        }
        out.flips_of.push_back(flips);
      }
      std::swap(prev, cur);
    }
  }
  return true;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
split_pieces_cpu(const at::Tensor& first_dir, const at::Tensor& group_ptr,
                 const at::Tensor& flip_ptr, const at::Tensor& flip_unit,
                 const at::Tensor& flip_coef, const at::Tensor& weight_t,
                 const at::Tensor& start_value, const at::Tensor& lo, const at::Tensor& hi,
                 const at::Tensor& seg_ptr, double negative_slope, double tol,
                 int64_t max_pieces, bool last, at::Tensor& first_out) {
  check_split_args(first_dir, group_ptr, flip_ptr, flip_unit, flip_coef, weight_t, start_value,
                   lo, hi, seg_ptr, tol, max_pieces);
  check_first_out(first_out, last ? 0 : lo.size(0), first_dir.size(1));
  const at::Tensor fd = first_dir.contiguous(), gp = group_ptr.contiguous(),
                   fp = flip_ptr.contiguous(), fu = flip_unit.contiguous(),
                   fc = flip_coef.contiguous(), wt = weight_t.contiguous(),
                   sv = start_value.contiguous(), lo_c = lo.contiguous(), hi_c = hi.contiguous(),
                   sp = seg_ptr.contiguous();
  const int64_t n = fd.size(1), G = fd.size(0), P = lo_c.size(0), S = sp.size(0) - 1;
  const int64_t W = words_for_bits(n), F = fu.size(0), n_in = wt.size(0);
  SplitIn in{fd.const_data_ptr<double>(),  fc.const_data_ptr<double>(),
             wt.const_data_ptr<double>(),  sv.const_data_ptr<double>(),
             lo_c.const_data_ptr<double>(), hi_c.const_data_ptr<double>(),
             gp.const_data_ptr<int64_t>(), fp.const_data_ptr<int64_t>(),
             fu.const_data_ptr<int64_t>(), sp.const_data_ptr<int64_t>(),
             n, n_in, G, negative_slope, tol, max_pieces, last};
  check_offsets(in.group_ptr, G, P, "group_ptr");
  check_offsets(in.flip_ptr, P, F, "flip_ptr");
  check_offsets(in.seg_ptr, S, P, "seg_ptr");
  for (int64_t s = 0; s < S; ++s) {
    const int64_t p = in.seg_ptr[s];
    if (p == in.seg_ptr[s + 1]) continue;
    TORCH_CHECK_VALUE(std::binary_search(in.group_ptr, in.group_ptr + G + 1, p),
                      "every segment must begin a group: seg_ptr[", s, "] = ", p,
                      " is not in group_ptr");
  }
  for (int64_t k = 0; k < F; ++k)
    TORCH_CHECK_VALUE(in.flip_unit[k] >= 0 && in.flip_unit[k] < n_in, "flip_unit[", k, "] = ",
                      in.flip_unit[k], " is not a row of weight_t (", n_in, " rows)");

  const auto f64 = fd.options(), i64 = fd.options().dtype(at::kLong);
  at::Tensor child_ptr = at::empty({P + 1}, i64);
  at::Tensor start_out = at::empty({last ? 0 : S, n}, f64);
  int64_t* counts = child_ptr.mutable_data_ptr<int64_t>();
  counts[0] = 0;
  std::vector<SegmentChildren> parts(S);
  std::atomic<bool> too_many{false};
  const UnitLoops& loops = unit_loops();
  at::parallel_for(0, S, 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end && !too_many.load(std::memory_order_relaxed); ++s)
      if (!split_segment(in, loops, s, parts[s], counts + 1, first_out.mutable_data_ptr<double>(),
                         start_out.mutable_data_ptr<double>()))
        too_many = true;
  });
  TORCH_CHECK_VALUE(!too_many, "a segment has more than max_pieces=", max_pieces,
                    " pieces; raise max_pieces");
  for (int64_t p = 0; p < P; ++p) counts[p + 1] += counts[p];

  // assemble: children and flips of segment s go after those of segments < s
  std::vector<int64_t> child_at(S + 1, 0), flip_at(S + 1, 0);
  for (int64_t s = 0; s < S; ++s) {
    child_at[s + 1] = child_at[s] + int64_t(parts[s].lo.size());
    flip_at[s + 1] = flip_at[s] + int64_t(parts[s].flip_unit.size());
  }
  const int64_t C = child_at[S], FC = flip_at[S];
  at::Tensor child_lo = at::empty({C}, f64), child_hi = at::empty({C}, f64);
  at::Tensor words = at::empty({C, W}, i64);
  at::Tensor child_flip_ptr = at::empty({C + 1}, i64);
  at::Tensor child_flip_unit = at::empty({FC}, i64), child_flip_coef = at::empty({FC}, f64);
  int64_t* cfp = child_flip_ptr.mutable_data_ptr<int64_t>();
  cfp[0] = 0;
  at::parallel_for(0, S, 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      const SegmentChildren& q = parts[s];
      const int64_t c0 = child_at[s], k = int64_t(q.lo.size());
      std::copy(q.lo.begin(), q.lo.end(), child_lo.mutable_data_ptr<double>() + c0);
      std::copy(q.hi.begin(), q.hi.end(), child_hi.mutable_data_ptr<double>() + c0);
      if (W) std::memcpy(words.mutable_data_ptr<int64_t>() + c0 * W, q.words.data(),
                         k * W * sizeof(uint64_t));
      int64_t at_flip = flip_at[s];
      for (int64_t j = 0; j < k; ++j) cfp[c0 + j + 1] = at_flip += q.flips_of[j];
      std::copy(q.flip_unit.begin(), q.flip_unit.end(),
                child_flip_unit.mutable_data_ptr<int64_t>() + flip_at[s]);
      std::copy(q.flip_coef.begin(), q.flip_coef.end(),
                child_flip_coef.mutable_data_ptr<double>() + flip_at[s]);
    }
  });
  return {child_ptr, child_lo, child_hi, words, start_out, child_flip_ptr,
          child_flip_unit, child_flip_coef};
}

}  // namespace

TORCH_LIBRARY_IMPL(activation_hash, CPU, m) { m.impl("split_pieces", &split_pieces_cpu); }

}  // namespace activation_hash::cpu
