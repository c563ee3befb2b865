// CUDA kernels of fingerprint128 and fingerprint_key on raw pointers (launched by
// fingerprint.cu, run on the CPU by the emulation tests).
//
// Design. The hash of a row is a sequential chain over its words (activation_hash/
// fingerprint.h), so a row stays with one thread, which runs fp::State over the words in
// order, exactly as the CPU does: the result is the same function, bit for bit. What changes is
// how the words reach the thread. Hashing straight from global memory makes the 32 lanes of a
// warp load 32 words 8 W bytes apart (one sector each, mostly wasted). Instead a block
// (exactly kFpThreads = 256 threads, one row each) stages its 256 rows in chunks of kFpWords =
// 16 words through shared memory: element e = t + 256 i of the chunk (row e / 16, word e % 16)
// is loaded by thread t, so a warp reads 2 rows x 128 contiguous bytes per instruction, fully
// used lines. The tile's row pitch is 17 words, so that thread t reading word j of its own row
// (stride 17 x 8 bytes across the warp) hits distinct bank pairs. __syncthreads before and
// after each chunk; chunk loops and row-tile loops are block-uniform.
// Bytes: 8 per word read once (only up to the largest prefix end), 16 per fingerprint written
// (thread t writes its row's P fingerprints, P x 16 bytes apart across a warp). Shared memory:
// 256 x 17 x 8 = 34816 bytes (static).
//
// The prefix ends are a kernel argument by value (FpEnds, up to kCapacity ends), so no host
// copy or stream sync is needed and the launch can be captured in a CUDA graph. More ends are
// launched in groups of kCapacity (fingerprint.cu): each group writes its own columns of out
// and re-reads the rows up to its own largest end.
#pragma once
#include <cstdint>

#include "activation_hash/fingerprint.h"

namespace activation_hash::cuda {

constexpr int kFpThreads = 256, kFpWords = 16;

struct FpEnds {
  static constexpr int kCapacity = 64;
  int64_t v[kCapacity];  // non-decreasing, <= W
  int32_t count;         // 1..kCapacity
};

// Loads words [k0, k0 + 16) (those < kend) of rows [r0, r0 + 256) into tile; 0 elsewhere.
__device__ inline void fp_stage(const int64_t* __restrict__ codes, int64_t N, int64_t W,
                                int64_t r0, int64_t k0, int64_t kend,
                                int64_t (*tile)[kFpWords + 1]) {
  __syncthreads();  // the previous chunk has been hashed
  for (int i = 0; i < kFpWords; ++i) {
    const int e = int(threadIdx.x) + i * kFpThreads;
    const int rr = e / kFpWords, cc = e % kFpWords;
    const int64_t row = r0 + rr, col = k0 + cc;
    tile[rr][cc] = (row < N && col < kend) ? codes[row * W + col] : 0;
  }
  __syncthreads();
}

// codes [N, W], ends (P = ends.count) -> out [N, P_total, 2], columns [p0, p0 + P): the
// fingerprint of the first ends.v[p] words of each row goes to out[row, p0 + p].
__global__ __launch_bounds__(kFpThreads) void fingerprint128_kernel(
    const int64_t* __restrict__ codes, int64_t N, int64_t W, FpEnds ends, int64_t P_total,
    int64_t p0, int64_t* __restrict__ out) {
  __shared__ int64_t tile[kFpThreads][kFpWords + 1];
  const int P = ends.count;
  const int64_t kend = ends.v[P - 1];  // the largest end: later words are never read
  const int64_t tile_step = int64_t(gridDim.x) * kFpThreads;
  for (int64_t r0 = int64_t(blockIdx.x) * kFpThreads; r0 < N; r0 += tile_step) {
    const int64_t row = r0 + threadIdx.x;
    int64_t* o = out + (row * P_total + p0) * 2;
    fp::State s;
    int p = 0;
    for (int64_t k0 = 0; k0 < kend; k0 += kFpWords) {
      fp_stage(codes, N, W, r0, k0, kend, tile);
      if (row < N) {
        const int m = int(kend - k0 < kFpWords ? kend - k0 : kFpWords);
        for (int j = 0; j < m; ++j) {
          for (; p < P && ends.v[p] == k0 + j; ++p) s.emit(k0 + j, o + 2 * p);
          s.add(static_cast<uint64_t>(tile[threadIdx.x][j]));
        }
      }
    }
    if (row < N)
      for (; p < P; ++p) s.emit(kend, o + 2 * p);  // the ends equal to kend
  }
}

// codes [N, W] -> out [N]: fp::key_of_row of each row (stream 0 of the full-row fingerprint,
// low index_bits replaced by the row index), staged as fingerprint128_kernel.
__global__ __launch_bounds__(kFpThreads) void fingerprint_key_kernel(
    const int64_t* __restrict__ codes, int64_t N, int64_t W, int index_bits,
    int64_t* __restrict__ out) {
  __shared__ int64_t tile[kFpThreads][kFpWords + 1];
  const int64_t tile_step = int64_t(gridDim.x) * kFpThreads;
  for (int64_t r0 = int64_t(blockIdx.x) * kFpThreads; r0 < N; r0 += tile_step) {
    const int64_t row = r0 + threadIdx.x;
    uint64_t h = fp::kSeed0;
    for (int64_t k0 = 0; k0 < W; k0 += kFpWords) {
      fp_stage(codes, N, W, r0, k0, W, tile);
      const int m = int(W - k0 < kFpWords ? W - k0 : kFpWords);
      for (int j = 0; j < m; ++j) h = fp::key_add(h, static_cast<uint64_t>(tile[threadIdx.x][j]));
    }
    if (row < N) out[row] = fp::key_finish(h, W, row, index_bits);
  }
}

}  // namespace activation_hash::cuda
