// Emulation tests of csrc/cuda/hamming_distance.cuh: every instance of
// hamming_distance_tile_kernel (W = 1, 2, 4, 8, 16 and the run-time-W one on widths that match
// no instance, 0 included), hamming_distance_few_kernel (M = 1 as probes._nnz, N = 1, up to
// kFewMax rows on either side) and hamming_consecutive_kernel, against plain C++ references, on
// random, tied, equal and extreme codes, with the production launch and odd grids.
#include "harness.h"

#include <algorithm>
#include <vector>

#include "cuda/hamming_distance.cuh"
#include "cuda/launch.h"
#include "hamming_ref.h"

namespace {

using activation_hash::cuda::grid_for;
using activation_hash::cuda::hamming_consecutive_kernel;
using activation_hash::cuda::hamming_distance_few_kernel;
using activation_hash::cuda::hamming_distance_tile_kernel;
using activation_hash::cuda::kDistThreads;
using activation_hash::cuda::kDistTile;
using activation_hash::cuda::kFewMax;
using activation_hash::cuda::kThreads;
using activation_hash::cuda::lane_group;
using emu_test::Buf;
using emu_test::Rng;
namespace ref = hamming_ref;

// The bytes of n elements from p are still the Buf fill (0xCD): nothing was written there.
bool untouched(const int32_t* p, int64_t n) {
  const unsigned char* b = reinterpret_cast<const unsigned char*>(p);
  for (int64_t i = 0; i < 4 * n; ++i)
    if (b[i] != 0xCD) return false;
  return true;
}

// ------------------------------------------------------------------ hamming_distance_tile_kernel
// One case: out (offset `off` elements into its buffer, so that M % 4 == 0 can come with an
// unaligned out) against the reference.
template <int kW>
void tile_case(Rng& rng, int64_t N, int64_t M, int64_t W, unsigned grid, ref::Fill fill,
               int64_t off) {
  const int64_t tiles = ((N + kDistTile - 1) / kDistTile) * ((M + kDistTile - 1) / kDistTile);
  if (grid == 0) grid = unsigned(std::max<int64_t>(tiles, 1));
  emu_test::set_case("hamming_distance_tile<%d> N=%" PRId64 " M=%" PRId64 " W=%" PRId64
                     " grid=%u fill=%s off=%" PRId64, kW, N, M, W, grid, ref::fill_name(fill),
                     off);
  Buf<uint64_t> a(N * W), b(M * W);
  ref::fill(a, rng, fill, W);
  ref::fill(b, rng, fill == ref::kDescending ? ref::kRandom : fill, W);
  const int64_t slack = off > 0 ? 1 : 0;
  Buf<int32_t> out(N * M + off + slack);
  std::vector<int32_t> want(size_t(N * M) + 1);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < M; ++j)
      want[size_t(i * M + j)] = ref::distance(a.data() + i * W, b.data() + j * W, W);
  launch(dim3(grid), dim3(kDistThreads), hamming_distance_tile_kernel<kW>, a.data(), b.data(),
         out.data() + off, N, M, W);
  CHECK_EQUAL_BITS(out.data() + off, want.data(), N * M, "distances");
  CHECK(untouched(out.data(), off) && untouched(out.data() + off + N * M, slack),
        "write outside out");
  CHECK(out.front_intact(), "write before the start of out");
}

struct Shape {
  int64_t N, M;
};
// Around the 64 x 64 tile and the 4-column groups; 9 rows: just above kFewMax.
const Shape kTileShapes[] = {{9, 9}, {64, 64}, {65, 12}, {17, 130}, {70, 67}, {1, 1}, {0, 5}};

template <int kW>
void tile_instance(Rng& rng, std::initializer_list<int64_t> widths) {
  for (int64_t W : widths)
    for (const Shape& s : kTileShapes)
      for (unsigned grid : {0u, 1u, 3u}) {
        const ref::Fill fill = grid == 1 ? ref::kTies : grid == 3 ? ref::kFar : ref::kRandom;
        tile_case<kW>(rng, s.N, s.M, W, grid, fill, 0);
      }
  // M % 4 == 0 with out 16-byte aligned (int4 stores) and not (int32 stores).
  for (int64_t W : widths) {
    tile_case<kW>(rng, 20, 68, W, 0, ref::kRandom, 1);
    tile_case<kW>(rng, 20, 68, W, 0, ref::kEqual, 0);
  }
}

void test_hamming_distance_tile_kernel() {
  Rng rng(11);
  tile_instance<1>(rng, {1});
  tile_instance<2>(rng, {2});
  tile_instance<4>(rng, {4});
  tile_instance<8>(rng, {8});
  tile_instance<16>(rng, {16});
  tile_instance<0>(rng, {0, 3, 5, 16, 17, 33});  // no instance; 33: chunks of 16, 16 and 1
}

// ------------------------------------------------------------------ hamming_distance_few_kernel
// rows [n, W] against few [n_few, W]; the launcher's two layouts: few = b (out [n, n_few]) and
// few = a (out [n_few, n]).
void test_hamming_distance_few_kernel() {
  Rng rng(12);
  struct Launch {
    unsigned grid, block;  // grid 0: the production launch
  };
  const Launch launches[] = {{0, 0}, {1, 32}, {3, 64}};
  for (int64_t W : {0, 1, 2, 3, 4, 5, 8, 16, 31, 32, 33, 70})
    for (int64_t n : {1, 2, 31, 33, 100})
      for (int n_few : {1, 2, 5, kFewMax})
        for (bool few_is_b : {true, false})
          for (const Launch& l : launches) {
            if (l.grid != 0 && (n_few == 2 || n == 31)) continue;  // keep the run short
            const int G = lane_group(W);
            const unsigned grid = l.grid != 0 ? l.grid : grid_for((n + 32 / G - 1) / (32 / G) * 32);
            const unsigned block = l.grid != 0 ? l.block : unsigned(kThreads);
            const ref::Fill fill = n % 3 == 0 ? ref::kFar : n_few == 5 ? ref::kTies : ref::kRandom;
            emu_test::set_case("hamming_distance_few n=%" PRId64 " n_few=%d W=%" PRId64
                               " few_is_b=%d grid=%u block=%u fill=%s", n, n_few, W,
                               int(few_is_b), grid, block, ref::fill_name(fill));
            Buf<uint64_t> rows(n * W), few(int64_t(n_few) * W);
            ref::fill(rows, rng, fill, W);
            ref::fill(few, rng, ref::kRandom, W);
            if (n_few == 1 && W > 0 && n == 100)  // probes._nnz: popcounts against a zero row
              for (int64_t w = 0; w < W; ++w) few[w] = 0;
            Buf<int32_t> out(n * n_few);
            std::vector<int32_t> want(size_t(n * n_few) + 1);
            const int64_t sr = few_is_b ? n_few : 1, ss = few_is_b ? 1 : n;
            for (int64_t r = 0; r < n; ++r)
              for (int s = 0; s < n_few; ++s)
                want[size_t(r * sr + s * ss)] =
                    ref::distance(rows.data() + r * W, few.data() + s * W, W);
            launch(dim3(grid), dim3(block), hamming_distance_few_kernel, rows.data(), n,
                   few.data(), n_few, W, out.data(), sr, ss);
            CHECK_EQUAL_BITS(out.data(), want.data(), n * n_few, "distances");
            CHECK(out.front_intact(), "write before the start of out");
          }
}

// ------------------------------------------------------------------ hamming_consecutive_kernel
void test_hamming_consecutive_kernel() {
  Rng rng(13);
  struct Launch {
    unsigned grid, block;
  };
  const Launch launches[] = {{0, 0}, {1, 32}, {3, 96}};
  for (int64_t W : {0, 1, 2, 3, 4, 7, 16, 32, 33, 65})
    for (int64_t N : {0, 1, 2, 17, 65, 300})
      for (const Launch& l : launches)
        for (ref::Fill fill : {ref::kRandom, ref::kTies, ref::kDescending}) {
          const int64_t n = N > 0 ? N - 1 : 0;
          const int per = 32 / lane_group(W);
          const unsigned grid = l.grid == 0 ? grid_for((n + per - 1) / per * 32) : l.grid;
          const unsigned block = l.grid == 0 ? unsigned(kThreads) : l.block;
          emu_test::set_case("hamming_consecutive N=%" PRId64 " W=%" PRId64
                             " grid=%u block=%u fill=%s", N, W, grid, block,
                             ref::fill_name(fill));
          Buf<uint64_t> c(N * W);
          ref::fill(c, rng, fill, W);
          Buf<int32_t> out(n);
          std::vector<int32_t> want(size_t(n) + 1);
          for (int64_t i = 0; i < n; ++i)
            want[size_t(i)] = ref::distance(c.data() + i * W, c.data() + (i + 1) * W, W);
          launch(dim3(grid), dim3(block), hamming_consecutive_kernel, c.data(), out.data(), n, W);
          CHECK_EQUAL_BITS(out.data(), want.data(), n, "consecutive");
          CHECK(out.front_intact(), "write before the start of out");
        }
}

}  // namespace

AH_KERNEL_TEST(hamming_distance_tile_kernel, test_hamming_distance_tile_kernel);
AH_KERNEL_TEST(hamming_distance_few_kernel, test_hamming_distance_few_kernel);
AH_KERNEL_TEST(hamming_consecutive_kernel, test_hamming_consecutive_kernel);
