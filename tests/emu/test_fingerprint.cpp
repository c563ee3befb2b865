// Emulation test of csrc/cuda/fingerprint.cuh: fingerprint128_kernel and fingerprint_key_kernel
// against a plain C++ reference written here from the specification in
// activation_hash/fingerprint.h (and activation_hash/reference.py), with prefix lists (empty,
// repeated, 0 and W ends, more ends than FpEnds holds, launched in groups as fingerprint.cu
// does), widths around the 16-word staging chunk and row counts around the 256-row tile.
#include "harness.h"

#include "cuda/fingerprint.cuh"
#include "cuda/launch.h"

namespace {

using activation_hash::cuda::fingerprint128_kernel;
using activation_hash::cuda::fingerprint_key_kernel;
using activation_hash::cuda::FpEnds;
using activation_hash::cuda::kFpThreads;
using emu_test::Buf;
using emu_test::Rng;

uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
uint64_t fmix(uint64_t h) {
  h ^= h >> 32;
  h *= 0xF4A3CC3052800E05ull;
  h ^= h >> 29;
  h *= 0x09C9C31AE2F93909ull;
  return h ^ (h >> 32);
}

// Fingerprint of the first m words of x, stream by stream, as the specification reads.
void ref_fingerprint(const int64_t* x, int64_t m, int64_t* out) {
  const uint64_t M[2] = {0xE71B9592244ECECBull, 0xFF3F3F8CFE53B313ull};
  const uint64_t Nc[2] = {0x3FCB4B70F79A7FFDull, 0xE427F474114D9FCFull};
  const uint64_t S[2] = {0x3BCE14AB261DB1D5ull, 0x15D25341EDC5FE85ull};
  const uint64_t D[2] = {0x2A438F2A3172F443ull, 0x23EB71643AC5C727ull};
  const int R1[2] = {31, 33}, R2[2] = {27, 29};
  for (int s = 0; s < 2; ++s) {
    uint64_t h = S[s];
    for (int64_t j = 0; j < m; ++j) {
      const uint64_t k = rotl(uint64_t(x[j]) * M[s], R1[s]) * Nc[s];
      h = rotl(h ^ k, R2[s]) * 5 + D[s];
    }
    out[s] = int64_t(fmix(h ^ uint64_t(m)));
  }
}

// grid 0: the production launch (ceil(N / 256) blocks); the block is always kFpThreads.
unsigned grid_of(unsigned grid, int64_t N) {
  return grid != 0 ? grid : unsigned(N < 1 ? 1 : (N + kFpThreads - 1) / kFpThreads);
}

void run_case(int64_t N, int64_t W, const std::vector<int64_t>& ends, unsigned grid, Rng& rng) {
  const int64_t P = int64_t(ends.size());
  grid = grid_of(grid, N);
  emu_test::set_case("fingerprint128 N=%" PRId64 " W=%" PRId64 " P=%" PRId64 " grid=%u", N, W, P,
                     grid);
  Buf<int64_t> codes(N * W), out(N * P * 2);
  for (int64_t i = 0; i < N * W; ++i) {
    // sparse words, repeated rows: structured inputs as codes are
    const uint64_t r = rng.next();
    codes[i] = int64_t(rng.below(4) == 0 ? (r & 0xFF) : r);
  }
  for (int64_t r = 1; r < N; r += 3)
    for (int64_t j = 0; j < W; ++j) codes[r * W + j] = codes[(r - 1) * W + j];
  std::vector<int64_t> want(size_t(N * P * 2) + 1);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t p = 0; p < P; ++p) ref_fingerprint(&codes[r * W], ends[size_t(p)], &want[size_t((r * P + p) * 2)]);
  // The ends by value, FpEnds::kCapacity per launch (fingerprint.cu's grouping).
  for (int64_t p0 = 0; p0 < P; p0 += FpEnds::kCapacity) {
    FpEnds group{};
    group.count = int32_t(std::min<int64_t>(P - p0, FpEnds::kCapacity));
    for (int32_t q = 0; q < group.count; ++q) group.v[q] = ends[size_t(p0 + q)];
    launch(dim3(grid), dim3(kFpThreads), fingerprint128_kernel, codes.data(), N, W, group, P, p0,
           out.data());
  }
  CHECK_EQUAL_BITS(out.data(), want.data(), N * P * 2, "fingerprints");
  CHECK(out.front_intact(), "write before the start of the output");
  // equal rows, equal fingerprints
  if (N >= 2 && P > 0) CHECK(out[P * 2] == out[0] && out[P * 2 + 1] == out[1], "repeated row");
}

void test_fingerprint128_kernel() {
  Rng rng(4);
  const int64_t Ns[] = {1, 2, 5, 255, 257, 600};
  const int64_t Ws[] = {0, 1, 2, 5, 15, 16, 17, 33, 100};
  const unsigned grids[] = {1, 2, 0};
  for (int64_t N : Ns)
    for (int64_t W : Ws) {
      std::vector<std::vector<int64_t>> lists = {{W}, {0}, {0, W}};
      if (W >= 2) lists.push_back({1, 1, W - 1, W});
      if (W >= 17) lists.push_back({0, 2, 3, 3, 5, 16, 16, 17});
      if (W == 100 && N <= 5) {  // more ends than one launch takes
        std::vector<int64_t> many;
        for (int64_t p = 0; p < 150; ++p) many.push_back(p * W / 149);
        lists.push_back(many);
      }
      for (const auto& ends : lists)
        for (unsigned g : grids) run_case(N, W, ends, g, rng);
    }
}

// fingerprint_key_kernel: stream 0 of the reference fingerprint, low bits = row index.
void run_key_case(int64_t N, int64_t W, int bits, unsigned grid, Rng& rng) {
  grid = grid_of(grid, N);
  emu_test::set_case("fingerprint_key N=%" PRId64 " W=%" PRId64 " bits=%d grid=%u", N, W, bits,
                     grid);
  Buf<int64_t> codes(N * W), out(N);
  for (int64_t i = 0; i < N * W; ++i) codes[i] = int64_t(rng.next());
  std::vector<int64_t> want(size_t(N) + 1);
  const uint64_t low = (uint64_t(1) << bits) - 1;
  for (int64_t r = 0; r < N; ++r) {
    int64_t fp[2];
    ref_fingerprint(&codes[r * W], W, fp);
    want[size_t(r)] = int64_t((uint64_t(fp[0]) & ~low) | (uint64_t(r) & low));
  }
  launch(dim3(grid), dim3(kFpThreads), fingerprint_key_kernel, codes.data(), N, W, bits,
         out.data());
  CHECK_EQUAL_BITS(out.data(), want.data(), N, "keys");
  CHECK(out.front_intact(), "write before the start of the output");
}

void test_fingerprint_key_kernel() {
  Rng rng(5);
  const int64_t Ns[] = {0, 1, 2, 7, 256, 300};
  const int64_t Ws[] = {0, 1, 3, 16, 17, 64};
  const unsigned grids[] = {1, 2, 0};
  for (int64_t N : Ns)
    for (int64_t W : Ws)
      for (int extra : {0, 3, 40})
        for (unsigned g : grids) {
          int bits = 0;
          while ((int64_t(1) << bits) < N) ++bits;
          run_key_case(N, W, bits + extra, g, rng);
        }
}

}  // namespace

AH_KERNEL_TEST(fingerprint128_kernel, test_fingerprint128_kernel);
AH_KERNEL_TEST(fingerprint_key_kernel, test_fingerprint_key_kernel);
