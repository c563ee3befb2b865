// Emulation tests of csrc/cuda/pack.cuh: pack_words_kernel (pack_signs, relu_pack with ReLU and
// LeakyReLU), mask_backward_kernel and unpack_bits_kernel, for every element type the .cu
// launches (F32, F64, F16, BF16 of dtype.cuh) and both paths (16-byte vectors, scalar), against
// the plain C++ references of pack_ref.h, bit for bit. Also the float16.h host conversions.
#include "harness.h"

#include "cuda/pack.cuh"
#include "pack_ref.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

namespace ah = activation_hash;
namespace cu = activation_hash::cuda;
using emu_test::Buf;
using emu_test::Rng;

template <int K>
using DOf = std::conditional_t<K == 0, cu::F32,
                               std::conditional_t<K == 1, cu::F64,
                                                  std::conditional_t<K == 2, cu::F16, cu::BF16>>>;

struct Size {
  int64_t B, n;
};
// Units per sample around vector (2/4/8), word, chunk (64/128/256) boundaries, and empty.
const Size kSizes[] = {{0, 0},   {0, 70},  {3, 0},   {1, 1},   {2, 7},    {3, 8},   {2, 31},
                       {3, 32},  {1, 33},  {2, 63},  {3, 64},  {2, 65},   {1, 127}, {2, 128},
                       {3, 129}, {2, 256}, {1, 257}, {5, 200}, {7, 96},   {2, 1000},
                       {37, 70}, {1, 4099}, {2, 4096}};

std::vector<Size> all_sizes() {
  std::vector<Size> v(std::begin(kSizes), std::end(kSizes));
  Rng r(99);
  for (int k = 0; k < 6; ++k) v.push_back({r.below(9), 1 + r.below(k < 3 ? 300 : 3000)});
  return v;
}

// Launch shapes: {grid x, grid y, block}; grid 0 = the production launch (rows_grid).
struct Shape {
  unsigned gx, gy, block;
};
const Shape kShapes[] = {{0, 0, 0}, {1, 1, 32}, {2, 3, 64}, {3, 2, 96}};

// An array of `total` elements: 16-byte aligned when that is possible (the Buf placement
// gives it when total * sizeof(T) % 16 == 0, as a kernel's rows then are), or deliberately one
// element off an alignment (misaligned = true).
template <typename T>
struct Arr {
  Buf<T> buf;
  T* p;
  Arr(int64_t total, bool misaligned) : buf(total + 1), p(buf.data()) {
    T* d = buf.data();
    if (misaligned) p = cu::aligned16(d) ? d + 1 : d;
    else p = cu::aligned16(d) || !cu::aligned16(d + 1) ? d : d + 1;
  }
  T& operator[](int64_t i) { return p[i]; }
};

dim3 grid_of(const Shape& s, int64_t B, int64_t chunks) {
  return s.gx == 0 ? cu::rows_grid(B, chunks) : dim3(s.gx, s.gy);
}
unsigned block_of(const Shape& s) { return s.gx == 0 ? unsigned(cu::kRowThreads) : s.block; }

// ------------------------------------------------------------------ float16.h host conversions
#if defined(__x86_64__)
__attribute__((target("f16c"))) uint16_t f16c_round(float f) { return uint16_t(_cvtss_sh(f, 0)); }
#endif

void check_conversions() {
  emu_test::set_case("float16.h conversions");
  bool ok = true;
  for (uint32_t h = 0; h < 65536 && ok; ++h) {  // every half, exactly
    const float f = ah::half_to_float_host(uint16_t(h));
    const double want = pack_ref::half_value(uint16_t(h));
    ok = std::isnan(want) ? std::isnan(f)
                          : (double(f) == want && std::signbit(f) == std::signbit(want));
    if (ok && !std::isnan(want)) ok = ah::float_to_half_rn_host(f) == h;  // round trip
  }
  CHECK(ok, "half_to_float / round trip");
  Rng rng(17);
#if defined(__x86_64__)
  const bool f16c = __builtin_cpu_supports("f16c");
#endif
  int bad_h = 0, bad_b = 0;
  for (int i = 0; i < 400000; ++i) {
    uint32_t u = uint32_t(rng.next());
    if (i % 4 == 1)  // the half range, subnormals to overflow
      u = (u & 0x80000000u) | (0x33000000u + uint32_t(rng.below(0x14800000)));
    if (i % 4 == 2)  // at and next to the ties of float -> half
      u = (u & ~0x1FFFu) | (rng.below(2) ? 0x1000u : 0xFFFu + uint32_t(rng.below(3)));
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isnan(f)) continue;
    if (ah::float_to_half_rn_host(f) != pack_ref::round16<2>(f)) ++bad_h;
#if defined(__x86_64__)
    if (f16c && ah::float_to_half_rn_host(f) != f16c_round(f)) ++bad_h;
#endif
    if (ah::float_to_bf16_rn_host(f) != pack_ref::round16<3>(f)) ++bad_b;
  }
  CHECK(bad_h == 0, "float_to_half_rn_host: %d mismatches", bad_h);
  CHECK(bad_b == 0, "float_to_bf16_rn_host: %d mismatches", bad_b);
}

// ------------------------------------------------------------------ pack_words_kernel
template <int K, bool kWriteY, bool kLeaky>
void run_pack_case(Size sz, const Shape& sh, bool misaligned, bool force_scalar, double slope,
                   Rng& rng) {
  using D = DOf<K>;
  using raw_t = typename D::raw_t;
  const int64_t B = sz.B, n = sz.n, W = (n + 63) / 64, total = B * n;
  Arr<raw_t> x(total, misaligned), y(kWriteY ? total : 0, misaligned);
  Buf<int64_t> words(B * W);
  for (int64_t i = 0; i < total; ++i) x[i] = pack_ref::edgy<K>(rng);
  std::vector<int64_t> want_w(size_t(B * W) + 1, 0);
  std::vector<raw_t> want_y(size_t(total) + 1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < n; ++j) {
      const raw_t r = x[b * n + j];
      if (pack_ref::on<K>(r)) want_w[size_t(b * W + j / 64)] |= int64_t(uint64_t(1) << (j % 64));
      want_y[size_t(b * n + j)] = pack_ref::activation<K>(r, kLeaky, slope);
    }
  const bool vec = !force_scalar && cu::rows_vector_ok<D>(n, x.p, kWriteY ? y.p : nullptr);
  const dim3 grid = grid_of(sh, B, cu::row_chunks<D>(n));
  emu_test::set_case("pack_words<%s,y=%d,leaky=%d,vec=%d> B=%" PRId64 " n=%" PRId64
                     " grid=%ux%u block=%u misaligned=%d slope=%g", pack_ref::Kind<K>::kName,
                     kWriteY, kLeaky, vec, B, n, grid.x, grid.y, block_of(sh), misaligned, slope);
  auto* hp = reinterpret_cast<uint32_t*>(words.data());
  raw_t* yp = kWriteY ? y.p : nullptr;
  const typename D::op_t s = typename D::op_t(slope);
  if (vec)
    launch(grid, dim3(block_of(sh)), cu::pack_words_kernel<D, kWriteY, kLeaky, true>, x.p, yp,
           hp, B, n, W, s);
  else
    launch(grid, dim3(block_of(sh)), cu::pack_words_kernel<D, kWriteY, kLeaky, false>, x.p, yp,
           hp, B, n, W, s);
  CHECK_EQUAL_BITS(words.data(), want_w.data(), B * W, "words");
  if (kWriteY) CHECK_EQUAL_BITS(y.p, want_y.data(), total, "y");
  CHECK(words.front_intact() && y.buf.front_intact(), "write before the start of an output");
}

template <int K>
void pack_cases(Rng& rng) {
  const double slopes[] = {0.01, 0.2, -1.5, 3.0};
  int k = 0;
  for (const Size& sz : all_sizes())
    for (const Shape& sh : kShapes)
      for (int variant = 0; variant < 3; ++variant) {  // production choice, scalar, misaligned
        const bool mis = variant == 2, scalar = variant == 1;
        run_pack_case<K, false, false>(sz, sh, mis, scalar, 0.0, rng);
        run_pack_case<K, true, false>(sz, sh, mis, scalar, 0.0, rng);
        run_pack_case<K, true, true>(sz, sh, mis, scalar, slopes[k++ % 4], rng);
      }
}

void test_pack_words_kernel() {
  check_conversions();
  Rng rng(1);
  pack_cases<0>(rng);
  pack_cases<1>(rng);
  pack_cases<2>(rng);
  pack_cases<3>(rng);
}

// ------------------------------------------------------------------ mask_backward_kernel
template <int K, bool kLeaky>
void run_backward_case(Size sz, const Shape& sh, bool misaligned, bool force_scalar,
                       double slope, Rng& rng) {
  using D = DOf<K>;
  using raw_t = typename D::raw_t;
  const int64_t B = sz.B, n = sz.n, W = (n + 63) / 64, total = B * n;
  Arr<raw_t> gy(total, misaligned), gx(total, misaligned);
  Buf<int64_t> words(B * W);
  for (int64_t i = 0; i < total; ++i) gy[i] = pack_ref::edgy<K>(rng);
  // Random words, padding bits included: the kernel must read only bits j < n.
  for (int64_t i = 0; i < B * W; ++i) words[i] = int64_t(rng.next());
  std::vector<raw_t> want(size_t(total) + 1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < n; ++j) {
      const bool bit = (uint64_t(words[b * W + j / 64]) >> (j % 64)) & 1;
      want[size_t(b * n + j)] = pack_ref::masked_grad<K>(gy[b * n + j], bit, kLeaky, slope);
    }
  const bool vec = !force_scalar && cu::rows_vector_ok<D>(n, gy.p, gx.p);
  const dim3 grid = grid_of(sh, B, cu::row_chunks<D>(n));
  emu_test::set_case("mask_backward<%s,leaky=%d,vec=%d> B=%" PRId64 " n=%" PRId64
                     " grid=%ux%u block=%u misaligned=%d", pack_ref::Kind<K>::kName, kLeaky, vec,
                     B, n, grid.x, grid.y, block_of(sh), misaligned);
  const auto* hp = reinterpret_cast<const uint32_t*>(words.data());
  const typename D::op_t s = typename D::op_t(slope);
  if (vec)
    launch(grid, dim3(block_of(sh)), cu::mask_backward_kernel<D, kLeaky, true>, gy.p, hp, gx.p,
           B, n, W, s);
  else
    launch(grid, dim3(block_of(sh)), cu::mask_backward_kernel<D, kLeaky, false>, gy.p, hp, gx.p,
           B, n, W, s);
  CHECK_EQUAL_BITS(gx.p, want.data(), total, "grad_x");
  CHECK(gx.buf.front_intact(), "write before the start of grad_x");
}

template <int K>
void backward_cases(Rng& rng) {
  const double slopes[] = {0.01, -0.3, 2.5};
  int k = 0;
  for (const Size& sz : all_sizes())
    for (const Shape& sh : kShapes)
      for (int variant = 0; variant < 3; ++variant) {
        run_backward_case<K, false>(sz, sh, variant == 2, variant == 1, 0.0, rng);
        run_backward_case<K, true>(sz, sh, variant == 2, variant == 1, slopes[k++ % 3], rng);
      }
}

void test_mask_backward_kernel() {
  Rng rng(2);
  backward_cases<0>(rng);
  backward_cases<1>(rng);
  backward_cases<2>(rng);
  backward_cases<3>(rng);
}

// ------------------------------------------------------------------ unpack_bits_kernel
void test_unpack_bits_kernel() {
  Rng rng(3);
  std::vector<Size> sizes = all_sizes();
  for (Size s : {Size{2, 512}, Size{1, 513}, Size{3, 1040}, Size{2, 16}}) sizes.push_back(s);
  for (const Size& sz : sizes)
    for (const Shape& sh : kShapes)
      for (int variant = 0; variant < 3; ++variant) {
        const int64_t B = sz.B, n = sz.n, W = (n + 63) / 64, total = B * n;
        Buf<int64_t> words(B * W);
        Arr<uint8_t> bits(total, variant == 2);  // 0xCD bytes: every element must be written
        for (int64_t i = 0; i < B * W; ++i) words[i] = int64_t(rng.next());
        std::vector<uint8_t> want(size_t(total) + 1);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t j = 0; j < n; ++j)
            want[size_t(b * n + j)] = (uint64_t(words[b * W + j / 64]) >> (j % 64)) & 1;
        const bool vec = variant == 0 && cu::unpack_vector_ok(n, bits.p);
        const dim3 grid = grid_of(sh, B, (n + cu::kUnpackChunk - 1) / cu::kUnpackChunk);
        emu_test::set_case("unpack_bits<vec=%d> B=%" PRId64 " n=%" PRId64 " grid=%ux%u block=%u",
                           vec, B, n, grid.x, grid.y, block_of(sh));
        const auto* qp = reinterpret_cast<const uint16_t*>(words.data());
        const dim3 block(block_of(sh));
        if (vec) launch(grid, block, cu::unpack_bits_kernel<true>, qp, bits.p, B, n, W);
        else launch(grid, block, cu::unpack_bits_kernel<false>, qp, bits.p, B, n, W);
        CHECK_EQUAL_BITS(bits.p, want.data(), total, "bits");
        CHECK(bits.buf.front_intact(), "write before the start of bits");
      }
}

}  // namespace

AH_KERNEL_TEST(pack_words_kernel, test_pack_words_kernel);
AH_KERNEL_TEST(mask_backward_kernel, test_mask_backward_kernel);
AH_KERNEL_TEST(unpack_bits_kernel, test_unpack_bits_kernel);
