// Emulation tests of csrc/cuda/pack.cuh: pack_words_kernel (pack_signs, relu_pack with ReLU and
// LeakyReLU), mask_backward_kernel and unpack_bits_kernel, on float and double, against plain
// C++ references written here from the bit layout (docs/design.md), bit for bit.
#include "harness.h"

#include "cuda/launch.h"
#include "cuda/pack.cuh"

namespace {

using activation_hash::cuda::grid_for;
using activation_hash::cuda::kThreads;
using activation_hash::cuda::mask_backward_kernel;
using activation_hash::cuda::pack_words_kernel;
using activation_hash::cuda::unpack_bits_kernel;
using emu_test::Buf;
using emu_test::Rng;

struct Size {
  int64_t B, n;
};
// Units per sample around the word and warp boundaries, and B = 0.
const Size kSizes[] = {{0, 0},  {0, 70},  {3, 0},   {1, 1},   {2, 31},  {3, 32},  {1, 33},
                       {2, 63}, {3, 64},  {2, 65},  {1, 127}, {2, 128}, {3, 129}, {5, 200},
                       {7, 96}, {2, 1000}, {37, 70}, {1, 4099}};

// Plus random sizes (fixed seed), up to a few thousand units per sample.
std::vector<Size> all_sizes() {
  std::vector<Size> v(std::begin(kSizes), std::end(kSizes));
  Rng r(99);
  for (int k = 0; k < 12; ++k) v.push_back({r.below(12), 1 + r.below(k < 6 ? 300 : 3000)});
  return v;
}

struct Shape {
  unsigned grid, block;  // grid 0: the production launch (csrc/cuda/launch.h grid_for, kThreads)
};

int64_t words_for(int64_t n) { return (n + 63) / 64; }

// ------------------------------------------------------------------ references
template <typename T>
void ref_pack(const T* x, int64_t B, int64_t n, int64_t* words, T* y, bool leaky, T slope) {
  const int64_t W = words_for(n);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t w = 0; w < W; ++w) words[b * W + w] = 0;
    for (int64_t j = 0; j < n; ++j) {
      const T v = x[b * n + j];
      const bool on = v > T(0);  // -0, +0 and NaN are off
      if (on) words[b * W + j / 64] |= int64_t(uint64_t(1) << (j % 64));
      if (y != nullptr) {
        if (leaky) y[b * n + j] = v > T(0) ? v : v * slope;
        else y[b * n + j] = v < T(0) ? T(0) : v;  // torch.relu keeps -0.0 and NaN
      }
    }
  }
}

bool ref_bit(const int64_t* words, int64_t W, int64_t b, int64_t j) {
  return (uint64_t(words[b * W + j / 64]) >> (j % 64)) & 1;
}

// ------------------------------------------------------------------ pack_words_kernel
template <typename T, bool kWriteY, bool kLeaky>
void run_pack_case(const char* op, Size sz, Shape sh, T slope, Rng& rng) {
  const int64_t B = sz.B, n = sz.n, W = words_for(n), tasks = B * W;
  const unsigned grid = sh.grid == 0 ? grid_for(tasks * 32) : sh.grid;
  const unsigned block = sh.grid == 0 ? unsigned(kThreads) : sh.block;
  emu_test::set_case("%s<%s> B=%" PRId64 " n=%" PRId64 " grid=%u block=%u slope=%g", op,
                     sizeof(T) == 4 ? "float" : "double", B, n, grid, block, double(slope));
  Buf<T> x(B * n), y(kWriteY ? B * n : 0);
  Buf<int64_t> words(tasks);
  for (int64_t i = 0; i < B * n; ++i) x[i] = emu_test::edgy_value<T>(rng);
  std::vector<int64_t> want_words(size_t(tasks) + 1);
  std::vector<T> want_y(size_t(B * n) + 1);
  ref_pack<T>(x.data(), B, n, want_words.data(), kWriteY ? want_y.data() : nullptr, kLeaky, slope);

  launch(dim3(grid), dim3(block), pack_words_kernel<T, T, kWriteY, kLeaky>, x.data(),
         kWriteY ? y.data() : static_cast<T*>(nullptr), words.data(), n, W, tasks, slope);

  CHECK_EQUAL_BITS(words.data(), want_words.data(), tasks, "words");
  if (kWriteY) CHECK_EQUAL_BITS(y.data(), want_y.data(), B * n, "y");
  CHECK(words.front_intact() && y.front_intact(), "write before the start of an output");
}

template <typename T>
void pack_cases(Rng& rng) {
  // Blocks are whole warps (the kernel's contract); grids of 1, 2 and 5 blocks are smaller than
  // the work for most sizes, so the grid-stride loop runs several rounds.
  const Shape shapes[] = {{1, 32}, {2, 64}, {5, 96}, {1, 256}, {3, 128}, {2, 1024}, {0, 0}};
  const T slopes[] = {T(0.01), T(0.2), T(-1.5), T(3.0)};
  int k = 0;
  for (const Size& sz : all_sizes())
    for (const Shape& sh : shapes) {
      run_pack_case<T, false, false>("pack_signs", sz, sh, T(0), rng);
      run_pack_case<T, true, false>("relu_pack relu", sz, sh, T(0), rng);
      run_pack_case<T, true, true>("relu_pack leaky", sz, sh, slopes[k++ % 4], rng);
    }
}

void test_pack_words_kernel() {
  Rng rng(1);
  pack_cases<float>(rng);
  pack_cases<double>(rng);
}

// ------------------------------------------------------------------ mask_backward_kernel
// Shapes for the one-thread-per-element kernels: any block size (no warp collectives), partial
// warps, grids smaller than the work.
const Shape kElementShapes[] = {{1, 1},   {3, 7},   {1, 32},   {2, 33},
                                {4, 100}, {1, 256}, {3, 1024}, {0, 0}};

template <typename T, bool kLeaky>
void run_backward_case(Size sz, Shape sh, T slope, Rng& rng) {
  const int64_t B = sz.B, n = sz.n, W = words_for(n), total = B * n;
  const unsigned grid = sh.grid == 0 ? grid_for(total) : sh.grid;
  const unsigned block = sh.grid == 0 ? unsigned(kThreads) : sh.block;
  emu_test::set_case("mask_backward<%s,%s> B=%" PRId64 " n=%" PRId64 " grid=%u block=%u "
                     "slope=%g", sizeof(T) == 4 ? "float" : "double", kLeaky ? "leaky" : "relu",
                     B, n, grid, block, double(slope));
  Buf<T> gy(total), gx(total);
  Buf<int64_t> words(B * W);
  for (int64_t i = 0; i < total; ++i) gy[i] = emu_test::edgy_value<T>(rng);
  // Random words, padding bits included: the kernel must read only bits j < n.
  for (int64_t i = 0; i < B * W; ++i) words[i] = int64_t(rng.next());
  std::vector<T> want(size_t(total) + 1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < n; ++j) {
      const T g = gy[b * n + j];
      want[size_t(b * n + j)] = ref_bit(words.data(), W, b, j) ? g : (kLeaky ? g * slope : T(0));
    }

  launch(dim3(grid), dim3(block), mask_backward_kernel<T, T, kLeaky>, gy.data(), words.data(),
         gx.data(), n, W, total, slope);

  CHECK_EQUAL_BITS(gx.data(), want.data(), total, "grad_x");
  CHECK(gx.front_intact(), "write before the start of grad_x");
}

template <typename T>
void backward_cases(Rng& rng) {
  const T slopes[] = {T(0.01), T(-0.3), T(2.5)};
  int k = 0;
  for (const Size& sz : all_sizes())
    for (const Shape& sh : kElementShapes) {
      run_backward_case<T, false>(sz, sh, T(0), rng);
      run_backward_case<T, true>(sz, sh, slopes[k++ % 3], rng);
    }
}

void test_mask_backward_kernel() {
  Rng rng(2);
  backward_cases<float>(rng);
  backward_cases<double>(rng);
}

// ------------------------------------------------------------------ unpack_bits_kernel
void test_unpack_bits_kernel() {
  Rng rng(3);
  for (const Size& sz : all_sizes())
    for (const Shape& sh : kElementShapes) {
      const int64_t B = sz.B, n = sz.n, W = words_for(n), total = B * n;
      const unsigned grid = sh.grid == 0 ? grid_for(total) : sh.grid;
      const unsigned block = sh.grid == 0 ? unsigned(kThreads) : sh.block;
      emu_test::set_case("unpack_bits B=%" PRId64 " n=%" PRId64 " grid=%u block=%u", B, n, grid,
                         block);
      Buf<int64_t> words(B * W);
      Buf<bool> bits(total);  // filled with 0xCD bytes: every element must be written 0 or 1
      for (int64_t i = 0; i < B * W; ++i) words[i] = int64_t(rng.next());
      std::vector<unsigned char> want(size_t(total) + 1);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < n; ++j) want[size_t(b * n + j)] = ref_bit(words.data(), W, b, j);

      launch(dim3(grid), dim3(block), unpack_bits_kernel, words.data(), bits.data(), n, W, total);

      CHECK_EQUAL_BITS(reinterpret_cast<const unsigned char*>(bits.data()), want.data(), total,
                       "bits");
      CHECK(bits.front_intact(), "write before the start of bits");
    }
}

}  // namespace

AH_KERNEL_TEST(pack_words_kernel, test_pack_words_kernel);
AH_KERNEL_TEST(mask_backward_kernel, test_mask_backward_kernel);
AH_KERNEL_TEST(unpack_bits_kernel, test_unpack_bits_kernel);
