// CUDA kernels of hamming_distance, hamming_topk and hamming_consecutive, on raw pointers.
// Launched by csrc/cuda/hamming.cu; run on the CPU by the emulation tests (tests/emu).
// Rows are packed codes of W 64-bit words; a distance is the popcount of the rows' xor.
#pragma once
#include <cstdint>

#include "activation_hash/bits.h"

namespace activation_hash::cuda {

constexpr int kDistTile = 16;              // a rows x b rows per block tile
constexpr int kDistThreads = kDistTile * kDistTile;  // hamming_distance_kernel's blockDim.x
constexpr int kDistChunk = 16;             // words of a row staged in shared memory at a time

// Grid-stride over 16 x 16 tiles of the [N, M] output; blockDim.x must be kDistThreads.
// Thread t computes out[i0 + t / 16, j0 + t % 16]; the words of the tile's 16 rows of a and of
// b are staged in shared memory kDistChunk at a time, so each word is read once per tile.
__global__ void hamming_distance_kernel(const uint64_t* __restrict__ a,
                                        const uint64_t* __restrict__ b, int32_t* __restrict__ out,
                                        int64_t N, int64_t M, int64_t W) {
  __shared__ uint64_t sa[kDistTile][kDistChunk];
  __shared__ uint64_t sb[kDistTile][kDistChunk];
  const int t = threadIdx.x;
  const int ty = t / kDistTile, tx = t % kDistTile;
  const int64_t tiles_m = (M + kDistTile - 1) / kDistTile;
  const int64_t tiles = ((N + kDistTile - 1) / kDistTile) * tiles_m;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t i0 = (tile / tiles_m) * kDistTile, j0 = (tile % tiles_m) * kDistTile;
    int acc = 0;
    for (int64_t w0 = 0; w0 < W; w0 += kDistChunk) {
      {  // one word of a and one of b per thread (kDistThreads == kDistTile * kDistChunk)
        const int r = t / kDistChunk, c = t % kDistChunk;
        const int64_t w = w0 + c;
        sa[r][c] = (i0 + r < N && w < W) ? a[(i0 + r) * W + w] : 0;
        sb[r][c] = (j0 + r < M && w < W) ? b[(j0 + r) * W + w] : 0;
      }
      __syncthreads();
      for (int c = 0; c < kDistChunk; ++c) acc += __popcll(sa[ty][c] ^ sb[tx][c]);
      __syncthreads();
    }
    if (i0 + ty < N && j0 + tx < M) out[(i0 + ty) * M + j0 + tx] = acc;
  }
}

// Dynamic shared memory of hamming_topk_kernel, in bytes (`threads` is kept for the
// launchers' signature; the kernel no longer stages per-thread flags).
AH_HD inline int64_t topk_shared_bytes(int64_t W, int threads) {
  (void)threads;
  return 8 * W + 4 * (64 * W + 1);
}

// One block per query (grid-stride over queries), any blockDim.x that is a multiple of 32, any
// 0 <= k <= M < 2^31. Exact, with ties to the lower index, in two passes over the base:
//   1. a histogram of the query's distances (0 .. 64 W) in shared memory gives the distance t
//      of the k-th nearest and, for every d <= t, the output slot where rows at distance d
//      start (counting sort);
//   2. the base is scanned again in index order, blockDim.x rows at a time; the rows at
//      distance <= t of a chunk go to the slots of their distance in index order (those at t
//      only while slots remain), so the output comes out sorted by (distance, index). The scan
//      stops once the k slots are full.
// Placement of a chunk is parallel: in each warp, the lanes with equal distances form a group
// (ballot + shuffle; the lowest lane leads) and each lane's rank in its group is the popcount
// of the group's lower lanes. Then the warps take turns in order (one barrier per warp): the
// leaders of warp w reserve their group's slots from hist[d] (distinct d per leader, so no
// conflicts), which keeps warp w's rows after those of warps < w. Every lane then writes its
// own slot = reserved start + rank. Cost per chunk with candidates: blockDim.x / 32 barriers
// and, per warp, one ballot round per distinct distance (instead of a serial scan of the
// chunk by one thread).
// Shared memory: topk_shared_bytes(W, blockDim.x) (the query and the histogram).
__global__ void hamming_topk_kernel(const uint64_t* __restrict__ queries,
                                    const uint64_t* __restrict__ base, int64_t Q, int64_t M,
                                    int64_t W, int64_t k, int32_t* __restrict__ out_d,
                                    int64_t* __restrict__ out_i) {
  AH_DYNAMIC_SHARED(uint64_t, smem);
  uint64_t* qs = smem;                                  // [W]
  int* hist = reinterpret_cast<int*>(smem + W);         // [64 W + 1]
  __shared__ int s_threshold;
  __shared__ int s_filled;
  const unsigned kAll = 0xffffffffu;
  const int nb = int(64 * W);
  const int t = threadIdx.x;
  const int lane = t & 31, warp = t >> 5, n_warps = int(blockDim.x) >> 5;
  const unsigned below = (1u << lane) - 1u;  // lanes lower than this one
  for (int64_t q = blockIdx.x; q < Q; q += gridDim.x) {
    __syncthreads();  // the previous query is done with the shared arrays
    for (int64_t w = t; w < W; w += blockDim.x) qs[w] = queries[q * W + w];
    for (int d = t; d <= nb; d += blockDim.x) hist[d] = 0;
    __syncthreads();
    for (int64_t j = t; j < M; j += blockDim.x) {
      int d = 0;
      for (int64_t w = 0; w < W; ++w) d += __popcll(qs[w] ^ base[j * W + w]);
      atomicAdd(&hist[d], 1);
    }
    __syncthreads();
    if (t == 0) {  // threshold and starting slots (exclusive prefix sums up to t)
      int cum = 0, thr = nb;
      for (int d = 0; d <= nb; ++d) {
        const int h = hist[d];
        hist[d] = cum;
        if (int64_t(cum) + h >= k) {
          thr = d;
          break;
        }
        cum += h;
      }
      s_threshold = thr;
      s_filled = 0;
    }
    __syncthreads();
    const int thr = s_threshold;
    for (int64_t j0 = 0; j0 < M; j0 += blockDim.x) {
      // Uniform: s_filled was last written before the previous barrier, and is written again
      // only after the next one.
      if (s_filled >= k) break;
      const int64_t j = j0 + t;
      int d = -1;
      if (j < M) {
        int s = 0;
        for (int64_t w = 0; w < W; ++w) s += __popcll(qs[w] ^ base[j * W + w]);
        if (s <= thr) d = s;
      }
      if (!__syncthreads_or(d >= 0)) continue;
      // Groups of equal distance within the warp (the whole warp runs this loop: todo is
      // warp-uniform).
      unsigned group = 0;
      for (unsigned todo = __ballot_sync(kAll, d >= 0); todo != 0;) {
        const int dl = __shfl_sync(kAll, d, __ffs(int(todo)) - 1);
        const unsigned g = __ballot_sync(kAll, d == dl);
        if (d == dl) group = g;
        todo &= ~g;
      }
      const bool leads = d >= 0 && (group & below) == 0;
      int start = 0;
      for (int w = 0; w < n_warps; ++w) {  // warps in index order reserve their slots
        if (w == warp && leads) {
          const int n = __popc(group);
          start = hist[d];
          hist[d] = start + n;
          const int64_t room = k - int64_t(start);
          atomicAdd(&s_filled, int(room < 0 ? 0 : (room < n ? room : n)));
        }
        __syncthreads();
      }
      start = __shfl_sync(kAll, start, d >= 0 ? __ffs(int(group)) - 1 : lane);
      if (d >= 0) {
        const int64_t slot = int64_t(start) + __popc(group & below);
        if (slot < k) {
          out_d[q * k + slot] = d;
          out_i[q * k + slot] = j;
        }
      }
    }
  }
}

// One thread per pair (grid-stride): out[i] = distance of row i to row i + 1, i < n.
__global__ void hamming_consecutive_kernel(const uint64_t* __restrict__ codes,
                                           int32_t* __restrict__ out, int64_t n, int64_t W) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int s = 0;
    for (int64_t w = 0; w < W; ++w) s += __popcll(codes[i * W + w] ^ codes[(i + 1) * W + w]);
    out[i] = s;
  }
}

}  // namespace activation_hash::cuda
