// Emulation test of csrc/cuda/pack_cl.cuh: pack_channels_last_kernel (pack_signs, relu_pack
// ReLU / LeakyReLU on [B, S, C] memory = channels_last [B, C, ...]) for F32, F64, F16 and
// BF16, vector and scalar paths, against pack_ref.h: words in the logical unit order
// j = c * S + s, y at the input's own addresses, bit for bit.
#include "harness.h"

#include "cuda/pack_cl.cuh"
#include "pack_ref.h"

namespace {

namespace cu = activation_hash::cuda;
using emu_test::Buf;
using emu_test::Rng;

template <int K>
using DOf = std::conditional_t<K == 0, cu::F32,
                               std::conditional_t<K == 1, cu::F64,
                                                  std::conditional_t<K == 2, cu::F16, cu::BF16>>>;

template <int K, bool kWriteY, bool kLeaky>
void run_case(int64_t B, int64_t C, int64_t S, bool small_grid, bool force_scalar, double slope,
              Rng& rng) {
  using D = DOf<K>;
  using raw_t = typename D::raw_t;
  const int64_t n = C * S, W = (n + 63) / 64, total = B * n;
  Buf<raw_t> x(total), y(kWriteY ? total : 0);
  Buf<int64_t> words(B * W);  // 0xCD bytes: every word must be written (or zeroed, below)
  for (int64_t i = 0; i < total; ++i) x[i] = pack_ref::edgy<K>(rng);
  std::vector<int64_t> want_w(size_t(B * W) + 1, 0);
  std::vector<raw_t> want_y(size_t(total) + 1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t m = b * n + s * C + c, j = c * S + s;  // memory index, logical unit
        if (pack_ref::on<K>(x[m]))
          want_w[size_t(b * W + j / 64)] |= int64_t(uint64_t(1) << (j % 64));
        want_y[size_t(m)] = pack_ref::activation<K>(x[m], kLeaky, slope);
      }
  raw_t* yp = kWriteY ? y.data() : nullptr;
  const bool vec = !force_scalar && cu::channels_last_vector_ok<D>(C, x.data(), yp);
  const dim3 grid = small_grid ? dim3(1, 1, 1) : cu::channels_last_grid(B, C, S);
  emu_test::set_case("pack_channels_last<%s,y=%d,leaky=%d,vec=%d> B=%" PRId64 " C=%" PRId64
                     " S=%" PRId64 " grid=%ux%ux%u slope=%g", pack_ref::Kind<K>::kName, kWriteY,
                     kLeaky, vec, B, C, S, grid.x, grid.y, grid.z, slope);
  if (cu::channels_last_needs_zeroed_words(S)) words.fill_bytes(0);  // as pack.cu does
  auto* wp = reinterpret_cast<unsigned long long*>(words.data());
  const typename D::op_t sl = typename D::op_t(slope);
  if (vec)
    launch(grid, dim3(cu::kClThreads), cu::pack_channels_last_kernel<D, kWriteY, kLeaky, true>,
           x.data(), yp, wp, B, C, S, sl);
  else
    launch(grid, dim3(cu::kClThreads), cu::pack_channels_last_kernel<D, kWriteY, kLeaky, false>,
           x.data(), yp, wp, B, C, S, sl);
  CHECK_EQUAL_BITS(words.data(), want_w.data(), B * W, "words");
  if (kWriteY) CHECK_EQUAL_BITS(y.data(), want_y.data(), total, "y");
  CHECK(words.front_intact() && y.front_intact(), "write before the start of an output");
}

template <int K>
void cases(Rng& rng) {
  const int64_t Cs[] = {1, 3, 4, 8, 32, 33, 64, 70};
  const int64_t Ss[] = {1, 7, 49, 63, 64, 65, 128, 200};
  const double slopes[] = {0.01, 0.2, -1.5, 3.0};
  int k = 0;
  for (int64_t C : Cs)
    for (int64_t S : Ss) {
      const int64_t B = (C * S > 4000) ? 1 : 1 + rng.below(3);
      const bool small = (k % 3) == 1;
      for (int scalar = 0; scalar < 2; ++scalar) {
        run_case<K, false, false>(B, C, S, small, scalar, 0.0, rng);
        run_case<K, true, false>(B, C, S, small, scalar, 0.0, rng);
        run_case<K, true, true>(B, C, S, small, scalar, slopes[k % 4], rng);
      }
      ++k;
    }
  run_case<K, true, false>(0, 8, 64, false, false, 0.0, rng);  // no samples
  run_case<K, true, true>(3, 16, 9, true, false, 0.5, rng);    // several samples, one block
}

void test_pack_channels_last_kernel() {
  Rng rng(11);
  cases<0>(rng);
  cases<1>(rng);
  cases<2>(rng);
  cases<3>(rng);
}

}  // namespace

AH_KERNEL_TEST(pack_channels_last_kernel, test_pack_channels_last_kernel);
