// Emulation tests of csrc/cuda/hamming.cuh: hamming_distance_kernel, hamming_topk_kernel and
// hamming_consecutive_kernel against plain C++ references (popcount of xor; top-k by a stable
// sort of (distance, index)), on random codes, on codes full of ties and (top-k) on codes where
// every base row is the same (one distance shared by every lane of every warp).
#include "harness.h"

#include <algorithm>
#include <numeric>

#include "cuda/hamming.cuh"
#include "cuda/launch.h"

namespace {

using activation_hash::cuda::grid_for;
using activation_hash::cuda::hamming_consecutive_kernel;
using activation_hash::cuda::hamming_distance_kernel;
using activation_hash::cuda::hamming_topk_kernel;
using activation_hash::cuda::kDistThreads;
using activation_hash::cuda::kThreads;
using activation_hash::cuda::topk_shared_bytes;
using emu_test::Buf;
using emu_test::Rng;

// Random words, or (ties) words from a pool of 4 values so that many distances are equal.
void fill_codes(Buf<uint64_t>& c, Rng& r, bool ties) {
  const uint64_t pool[4] = {0, ~uint64_t(0), 0x0F0F, uint64_t(1) << 63};
  for (int64_t i = 0; i < c.size(); ++i) c[i] = ties ? pool[r.below(4)] : r.next();
}

// Top-k inputs: 0 random, 1 pooled words (ties), 2 every base row equal to the first one.
void fill_topk(Buf<uint64_t>& c, Rng& r, int mode, int64_t W) {
  fill_codes(c, r, mode != 0);
  if (mode == 2)
    for (int64_t i = W; i < c.size(); ++i) c[i] = c[i % W];
}

int32_t ref_distance(const uint64_t* a, const uint64_t* b, int64_t W) {
  int32_t s = 0;
  for (int64_t w = 0; w < W; ++w) s += __builtin_popcountll(a[w] ^ b[w]);
  return s;
}

struct Dims {
  int64_t N, M, W;
};
const Dims kDims[] = {{0, 5, 4},  {5, 0, 4},   {1, 1, 1},  {3, 17, 0},  {16, 16, 16},
                      {17, 33, 4}, {5, 40, 17}, {40, 7, 33}, {2, 300, 4}, {33, 65, 2}};

// ------------------------------------------------------------------ hamming_distance_kernel
void test_hamming_distance_kernel() {
  Rng rng(11);
  const unsigned grids[] = {1, 3, 0};  // 0: one block per tile
  for (const Dims& dm : kDims)
    for (unsigned g : grids)
      for (bool ties : {false, true}) {
        const int64_t N = dm.N, M = dm.M, W = dm.W;
        const int64_t tiles = ((N + 15) / 16) * ((M + 15) / 16);
        const unsigned grid = g != 0 ? g : unsigned(std::max<int64_t>(tiles, 1));
        emu_test::set_case("hamming_distance N=%" PRId64 " M=%" PRId64 " W=%" PRId64
                           " grid=%u ties=%d", N, M, W, grid, int(ties));
        Buf<uint64_t> a(N * W), b(M * W);
        fill_codes(a, rng, ties);
        fill_codes(b, rng, ties);
        Buf<int32_t> out(N * M);
        std::vector<int32_t> want(size_t(N * M) + 1);
        for (int64_t i = 0; i < N; ++i)
          for (int64_t j = 0; j < M; ++j)
            want[size_t(i * M + j)] = ref_distance(a.data() + i * W, b.data() + j * W, W);
        launch(dim3(grid), dim3(kDistThreads), hamming_distance_kernel, a.data(), b.data(),
               out.data(), N, M, W);
        CHECK_EQUAL_BITS(out.data(), want.data(), N * M, "distances");
        CHECK(out.front_intact(), "write before the start of out");
      }
}

// ------------------------------------------------------------------ hamming_topk_kernel
void test_hamming_topk_kernel() {
  Rng rng(12);
  struct Shape {
    unsigned grid, block;
  };
  // grid 0: one block per query. Blocks of several warps check the warps' turns of placement.
  const Shape shapes[] = {{1, 32}, {2, 64}, {3, 256}, {0, 96}, {2, 160}};
  std::vector<Dims> dims(std::begin(kDims), std::end(kDims));
  dims.push_back({3, 700, 1});  // many chunks, few distinct distances (0 .. 64)
  for (const Dims& dm : dims)
    for (const Shape& sh : shapes)
      for (int mode : {0, 1, 2}) {
        const int64_t Q = dm.N, M = dm.M, W = dm.W;
        const int64_t ks[] = {0, 1, std::min<int64_t>(M, 5), M / 2, M};
        for (int64_t k : ks) {
          if (k > M) continue;  // the launcher rejects k > M
          const unsigned grid = sh.grid != 0 ? sh.grid : unsigned(std::max<int64_t>(Q, 1));
          emu_test::set_case("hamming_topk Q=%" PRId64 " M=%" PRId64 " W=%" PRId64 " k=%" PRId64
                             " grid=%u block=%u mode=%d", Q, M, W, k, grid, sh.block, mode);
          Buf<uint64_t> q(Q * W), b(M * W);
          fill_topk(q, rng, mode == 0 ? 0 : 1, W);
          fill_topk(b, rng, mode, W);
          Buf<int32_t> out_d(Q * k);
          Buf<int64_t> out_i(Q * k);
          std::vector<int32_t> want_d(size_t(Q * k) + 1);
          std::vector<int64_t> want_i(size_t(Q * k) + 1);
          for (int64_t i = 0; i < Q; ++i) {
            std::vector<int32_t> d(static_cast<size_t>(M));
            for (int64_t j = 0; j < M; ++j) d[j] = ref_distance(q.data() + i * W, b.data() + j * W, W);
            std::vector<int64_t> order(static_cast<size_t>(M));
            std::iota(order.begin(), order.end(), int64_t(0));
            std::stable_sort(order.begin(), order.end(),
                             [&](int64_t x, int64_t y) { return d[x] < d[y]; });
            for (int64_t t = 0; t < k; ++t) {
              want_d[size_t(i * k + t)] = d[order[t]];
              want_i[size_t(i * k + t)] = order[t];
            }
          }
          launch_smem(dim3(grid), dim3(sh.block), size_t(topk_shared_bytes(W, int(sh.block))),
                      hamming_topk_kernel, q.data(), b.data(), Q, M, W, k, out_d.data(),
                      out_i.data());
          CHECK_EQUAL_BITS(out_d.data(), want_d.data(), Q * k, "dist");
          CHECK_EQUAL_BITS(out_i.data(), want_i.data(), Q * k, "idx");
          CHECK(out_d.front_intact() && out_i.front_intact(), "write before an output");
        }
      }
}

// ------------------------------------------------------------------ hamming_consecutive_kernel
void test_hamming_consecutive_kernel() {
  Rng rng(13);
  struct Shape {
    unsigned grid, block;
  };
  const Shape shapes[] = {{1, 1}, {2, 33}, {3, 256}, {0, 0}};
  for (const Dims& dm : kDims)
    for (const Shape& sh : shapes)
      for (bool ties : {false, true}) {
        const int64_t N = dm.M, W = dm.W, n = N > 0 ? N - 1 : 0;
        const unsigned grid = sh.grid == 0 ? grid_for(n) : sh.grid;
        const unsigned block = sh.grid == 0 ? unsigned(kThreads) : sh.block;
        emu_test::set_case("hamming_consecutive N=%" PRId64 " W=%" PRId64 " grid=%u block=%u",
                           N, W, grid, block);
        Buf<uint64_t> c(N * W);
        fill_codes(c, rng, ties);
        Buf<int32_t> out(n);
        std::vector<int32_t> want(size_t(n) + 1);
        for (int64_t i = 0; i < n; ++i)
          want[size_t(i)] = ref_distance(c.data() + i * W, c.data() + (i + 1) * W, W);
        launch(dim3(grid), dim3(block), hamming_consecutive_kernel, c.data(), out.data(), n, W);
        CHECK_EQUAL_BITS(out.data(), want.data(), n, "consecutive");
        CHECK(out.front_intact(), "write before the start of out");
      }
}

}  // namespace

AH_KERNEL_TEST(hamming_distance_kernel, test_hamming_distance_kernel);
AH_KERNEL_TEST(hamming_topk_kernel, test_hamming_topk_kernel);
AH_KERNEL_TEST(hamming_consecutive_kernel, test_hamming_consecutive_kernel);
