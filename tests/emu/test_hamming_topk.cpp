// Emulation tests of csrc/cuda/hamming_topk.cuh: every instance of hamming_topk_tile_kernel
// (W = 1, 2, 4, 8, 16 and the run-time-W one on 0, 3, 17 and 33 words), in one slice (the
// result directly) and in several (each slice's list checked, then hamming_topk_merge_kernel),
// and hamming_topk_merge_kernel on its own on lists full of ties and empty slots. The
// reference is a stable sort of (distance, index): sorted by distance, ties to the lower index.
#include "harness.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "cuda/hamming_topk.cuh"
#include "cuda/launch.h"
#include "hamming_ref.h"

namespace {

using activation_hash::cuda::grid_for;
using activation_hash::cuda::hamming_topk_merge_kernel;
using activation_hash::cuda::hamming_topk_tile_kernel;
using activation_hash::cuda::kNoKey;
using activation_hash::cuda::kThreads;
using activation_hash::cuda::kTopkMaxK;
using activation_hash::cuda::kTopkQueries;
using activation_hash::cuda::kTopkThreads;
using activation_hash::cuda::topk_chunk;
using activation_hash::cuda::topk_key;
using activation_hash::cuda::topk_shared_bytes;
using activation_hash::cuda::topk_plan;
using emu_test::Buf;
using emu_test::Rng;
namespace ref = hamming_ref;

// The k best keys of rows [begin, end) by a stable sort of the distances d, kNoKey past the end.
std::vector<uint64_t> best_keys(const std::vector<int32_t>& d, int64_t begin, int64_t end,
                                int64_t k) {
  std::vector<int64_t> order(size_t(end - begin));
  std::iota(order.begin(), order.end(), begin);
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return d[x] < d[y]; });
  std::vector<uint64_t> keys(size_t(k), kNoKey);
  for (int64_t t = 0; t < k && t < end - begin; ++t) keys[size_t(t)] = topk_key(d[order[t]], order[t]);
  return keys;
}

// out_d / out_i [Q, k] against the reference keys want[q] (k each).
void check_result(const Buf<int32_t>& out_d, const Buf<int64_t>& out_i,
                  const std::vector<std::vector<uint64_t>>& want, int64_t k) {
  const int64_t Q = int64_t(want.size());
  std::vector<int32_t> wd(size_t(Q * k) + 1);
  std::vector<int64_t> wi(size_t(Q * k) + 1);
  for (int64_t q = 0; q < Q; ++q)
    for (int64_t t = 0; t < k; ++t) {
      wd[size_t(q * k + t)] = int32_t(want[size_t(q)][size_t(t)] >> 32);
      wi[size_t(q * k + t)] = int64_t(want[size_t(q)][size_t(t)] & 0xffffffffu);
    }
  CHECK_EQUAL_BITS(out_d.data(), wd.data(), Q * k, "dist");
  CHECK_EQUAL_BITS(out_i.data(), wi.data(), Q * k, "idx");
  CHECK(out_d.front_intact() && out_i.front_intact(), "write before an output");
}

void merge(const Buf<uint64_t>& partial, int64_t Q, int64_t slices, int64_t k, unsigned grid,
           unsigned block, Buf<int32_t>& out_d, Buf<int64_t>& out_i) {
  launch(dim3(grid), dim3(block), hamming_topk_merge_kernel, partial.data(), Q, slices, k,
         out_d.data(), out_i.data());
}

// ------------------------------------------------------------------ hamming_topk_tile_kernel
int64_t g_split_cases = 0;  // cases with several slices (the test checks there are some)

// The base is cut by topk_plan, as in hamming.cu, with sms SMs (0: one slice) and slices of at
// least min_tiles tiles (hamming.cu: 8; here mostly 1, so that small bases have several).
template <int kW>
void topk_case(Rng& rng, int64_t Q, int64_t M, int64_t W, int64_t k, int64_t sms,
               unsigned grid, ref::Fill fill, int64_t min_tiles = 1) {
  const activation_hash::cuda::TopkPlan plan =
      topk_plan(Q, std::max<int64_t>(M, 1), sms, min_tiles);
  const int64_t slice_rows = plan.slice_rows, slices = plan.slices;
  g_split_cases += slices > 1;
  const int64_t items = (Q + kTopkQueries - 1) / kTopkQueries * slices;
  if (grid == 0) grid = unsigned(std::max<int64_t>(items, 1));
  emu_test::set_case("hamming_topk_tile<%d> Q=%" PRId64 " M=%" PRId64 " W=%" PRId64
                     " k=%" PRId64 " slices=%" PRId64 " grid=%u fill=%s", kW, Q, M, W, k,
                     slices, grid, ref::fill_name(fill));
  Buf<uint64_t> q(Q * W), b(M * W);
  ref::fill(q, rng, fill == ref::kDescending ? ref::kRandom : fill, W);
  if (fill == ref::kDescending) q.fill_bytes(0);  // distance 64 W - index, then 0
  ref::fill(b, rng, fill, W);
  std::vector<std::vector<int32_t>> d(static_cast<size_t>(Q), std::vector<int32_t>(static_cast<size_t>(M)));
  for (int64_t i = 0; i < Q; ++i)
    for (int64_t j = 0; j < M; ++j)
      d[size_t(i)][size_t(j)] = ref::distance(q.data() + i * W, b.data() + j * W, W);
  Buf<int32_t> out_d(Q * k);
  Buf<int64_t> out_i(Q * k);
  Buf<uint64_t> partial(slices > 1 ? Q * slices * k : 0);
  const size_t smem = size_t(topk_shared_bytes(k, topk_chunk(kW, W)));
  launch_smem(dim3(grid), dim3(kTopkThreads), smem, hamming_topk_tile_kernel<kW>, q.data(),
              b.data(), Q, M, W, k, slices, slice_rows, out_d.data(), out_i.data(),
              slices > 1 ? partial.data() : nullptr);
  std::vector<std::vector<uint64_t>> want(static_cast<size_t>(Q));
  for (int64_t i = 0; i < Q; ++i) want[size_t(i)] = best_keys(d[size_t(i)], 0, M, k);
  if (k == 0) {
    CHECK(out_d.front_intact() && out_i.front_intact(), "k = 0 wrote before an output");
    return;
  }
  if (slices == 1) return check_result(out_d, out_i, want, k);
  std::vector<uint64_t> wp(size_t(Q * slices * k) + 1);
  for (int64_t i = 0; i < Q; ++i)
    for (int64_t s = 0; s < slices; ++s) {
      const std::vector<uint64_t> keys =
          best_keys(d[size_t(i)], s * slice_rows, std::min(M, (s + 1) * slice_rows), k);
      std::copy(keys.begin(), keys.end(), wp.begin() + (i * slices + s) * k);
    }
  CHECK_EQUAL_BITS(partial.data(), wp.data(), Q * slices * k, "partial lists");
  CHECK(partial.front_intact(), "write before the partial lists");
  merge(partial, Q, slices, k, grid_for(Q * slices * k), unsigned(kThreads), out_d, out_i);
  check_result(out_d, out_i, want, k);
}

template <int kW>
void topk_instance(Rng& rng, std::initializer_list<int64_t> widths) {
  struct Shape {
    int64_t Q, M;
  };
  // One tile; 129 rows (2 slices, the second of 1 row); several tiles and query tiles.
  const Shape shapes[] = {{1, 1}, {5, 7}, {33, 129}, {3, 300}, {40, 700}};
  int n = 0;
  for (int64_t W : widths)
    for (const Shape& s : shapes) {
      std::vector<int64_t> ks = {0, 1, std::min<int64_t>(s.M, 5), std::min<int64_t>(s.M, 33),
                                 std::min<int64_t>(s.M, kTopkMaxK)};
      std::sort(ks.begin(), ks.end());
      ks.erase(std::unique(ks.begin(), ks.end()), ks.end());
      for (int64_t k : ks)
        for (int64_t sms : {0, 1}) {
          if (sms > 0 && (s.M <= 128 || k == 0)) continue;  // one tile: one slice
          const ref::Fill fills[] = {ref::kRandom, ref::kTies, ref::kEqual, ref::kFar};
          const unsigned grids[] = {0, 1, 2};
          topk_case<kW>(rng, s.Q, s.M, W, k, sms, grids[n % 3], fills[n % 4]);
          ++n;
        }
    }
  // Every row a new best (full buffers and lists at each tile), in one slice and in three.
  for (int64_t W : widths)
    if (W >= 2 && W <= 16)
      for (int64_t sms : {0, 1}) topk_case<kW>(rng, 2, 700, W, kTopkMaxK, sms, 0, ref::kDescending);
}

void test_hamming_topk_tile_kernel() {
  Rng rng(21);
  topk_instance<1>(rng, {1});
  topk_instance<2>(rng, {2});
  topk_instance<4>(rng, {4});
  // The production plan (132 SMs, slices of 8 tiles or more): 3000 rows in 2 slices.
  const int64_t before = g_split_cases;
  topk_case<4>(rng, 3, 3000, 4, 10, 132, 0, ref::kTies, 8);
  CHECK(g_split_cases == before + 1, "the production plan keeps 3000 rows in one slice");
  topk_instance<8>(rng, {8});
  topk_instance<16>(rng, {16});
  topk_instance<0>(rng, {0, 3, 17, 33});  // no instance; 33: chunks of 16, 16 and 1
  CHECK(g_split_cases >= 50, "only %" PRId64 " cases with several slices", g_split_cases);
}

// ------------------------------------------------------------------ hamming_topk_merge_kernel
// Lists built by the reference from random distances (few distinct values: ties inside and
// across slices), slices shorter than k (kNoKey slots), any grid.
void test_hamming_topk_merge_kernel() {
  Rng rng(22);
  struct Case {
    int64_t Q, M, slice_rows, k;
  };
  const Case cases[] = {{1, 2, 1, 1},    {3, 10, 3, 4},    {2, 9, 2, 9},     {4, 300, 128, 128},
                        {5, 1000, 128, 10}, {2, 260, 128, 100}, {7, 50, 7, 33}};
  for (const Case& c : cases)
    for (int range : {2, 1000})
      for (unsigned grid : {0u, 1u, 3u}) {
        const int64_t slices = (c.M + c.slice_rows - 1) / c.slice_rows;
        const int64_t total = c.Q * slices * c.k;
        const unsigned g = grid == 0 ? grid_for(total) : grid;
        const unsigned block = grid == 0 ? unsigned(kThreads) : 64u;
        emu_test::set_case("hamming_topk_merge Q=%" PRId64 " M=%" PRId64 " slices=%" PRId64
                           " k=%" PRId64 " range=%d grid=%u", c.Q, c.M, slices, c.k, range, g);
        Buf<uint64_t> partial(total);
        std::vector<std::vector<uint64_t>> want(static_cast<size_t>(c.Q));
        for (int64_t q = 0; q < c.Q; ++q) {
          std::vector<int32_t> d(static_cast<size_t>(c.M));
          for (int32_t& x : d) x = int32_t(rng.below(range));
          for (int64_t s = 0; s < slices; ++s) {
            const std::vector<uint64_t> keys =
                best_keys(d, s * c.slice_rows, std::min(c.M, (s + 1) * c.slice_rows), c.k);
            std::copy(keys.begin(), keys.end(), partial.data() + (q * slices + s) * c.k);
          }
          want[size_t(q)] = best_keys(d, 0, c.M, c.k);
        }
        Buf<int32_t> out_d(c.Q * c.k);
        Buf<int64_t> out_i(c.Q * c.k);
        merge(partial, c.Q, slices, c.k, g, block, out_d, out_i);
        check_result(out_d, out_i, want, c.k);
      }
}

}  // namespace

AH_KERNEL_TEST(hamming_topk_tile_kernel, test_hamming_topk_tile_kernel);
AH_KERNEL_TEST(hamming_topk_merge_kernel, test_hamming_topk_merge_kernel);
