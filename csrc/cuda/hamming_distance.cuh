// CUDA kernels of hamming_distance and hamming_consecutive, on raw pointers (launched by
// csrc/cuda/hamming.cu; run on the CPU by tests/emu). Rows are packed codes of W 64-bit words;
// a distance is the popcount of the rows' xor. hamming_topk's kernels: hamming_topk.cuh.
//
// Bounds on an H100/H200 (132 SMs near 1.9 GHz, ~4.8 TB/s HBM on the H200): a 64-bit popcount
// is two 32-bit POPC, and POPC issues at 16 lanes per clock per SM (~4.2e12 POPC/s), a quarter
// of the xor/add rate. The all-pairs distance therefore costs 2 N M W POPC, the output 4 N M
// bytes: at 4096 x 4096 x 4 words that is 134e6 POPC (~32 us) against 64 MiB of stores (~14 us),
// so the tile kernel below is built to keep POPC busy (every operand from a conflict-free shared
// load or a register, no other instruction in the inner loop). Matrix-vector shapes (M = 1 as in
// probes._nnz, N = 1) and hamming_consecutive read each code once and are bandwidth-bound.
#pragma once
#include <cstdint>

#include "activation_hash/bits.h"

namespace activation_hash::cuda {

// Four int32 to 16-byte aligned p, one 128-bit store on the GPU.
AH_HD inline void store_int4(int32_t* p, int32_t x, int32_t y, int32_t z, int32_t w) {
#if defined(__CUDACC__) && !defined(AH_CUDA_EMULATION)
  *reinterpret_cast<int4*>(p) = make_int4(x, y, z, w);
#else
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) __builtin_trap();  // an int4 store would fault
  p[0] = x;
  p[1] = y;
  p[2] = z;
  p[3] = w;
#endif
}

// ------------------------------------------------------------------ all-pairs tile kernel
constexpr int kDistTile = 64;      // a block computes a 64 x 64 tile of the output
constexpr int kDistThreads = 256;  // hamming_distance_tile_kernel's blockDim.x (16 x 16)
constexpr int kDistChunk = 16;     // words staged at a time by the run-time-W instance

// Words of the tile rows held in shared memory at a time: all of them for kW > 0.
template <int kW>
struct DistWords {
  static constexpr int kChunk = kW > 0 ? kW : kDistChunk;
};

// out[i, j] = popcount(a[i] ^ b[j]) for i < N, j < M; kW > 0: W == kW words (instances 1, 2, 4,
// 8, 16), kW == 0: any W, kDistChunk words at a time. blockDim.x == kDistThreads, any grid
// (grid-stride over the 64 x 64 tiles).
//
// Work per thread: thread (ty, tx) = (t / 16, t % 16) owns the 4 x 4 outputs of rows
// i0 + ty + 16 i (i < 4) and columns j0 + 4 tx + c (c < 4). Per word it makes 4 + 4 shared loads
// and 16 xor-popcounts (32 POPC), so POPC, not shared memory, is the limit (per warp and word:
// 32 POPC instructions = 64 SM clocks against 8 one-wavefront loads).
// Shared memory, word-major (sa[w][r], sb[w][slot]), 2 x 64 x kChunk words:
//   - a: a warp's lanes read sa[w][ty + 16 i] for two values of ty: a broadcast;
//   - b: the 64 rows of b are stored at slot(r) = 16 (r % 4) + ((r / 4) ^ 4 (r % 4)), so the
//     4 columns 4 tx + c of a thread sit at 16 c + (tx ^ 4 c): for a fixed c the 16 tx of a warp
//     read 16 distinct consecutive words (conflict-free), while the thread's columns stay
//     contiguous for the store. The xor swizzle also keeps the staging stores (lanes = 32
//     consecutive rows) on 16 distinct words per half-warp.
// Staging: lane = row, one word of 32 consecutive rows per load; the kChunk loads of a thread
// read its row's contiguous words, so every sector is fetched once (later loads hit L1). Global
// traffic per tile: 128 rows x kChunk words, reused by 64 outputs each.
// Stores: each thread writes 4 rows x one int4 (a warp: 2 rows x 256 contiguous bytes) when M is
// a multiple of 4 and out is 16-byte aligned, else int32 stores (64-byte runs per row).
template <int kW>
__global__ void __launch_bounds__(kDistThreads)
    hamming_distance_tile_kernel(const uint64_t* __restrict__ a, const uint64_t* __restrict__ b,
                                 int32_t* __restrict__ out, int64_t N, int64_t M, int64_t W) {
  constexpr int kC = DistWords<kW>::kChunk;
  __shared__ uint64_t sa[kC][kDistTile];
  __shared__ uint64_t sb[kC][kDistTile];
  const int t = threadIdx.x, tx = t & 15, ty = t >> 4;
  const int64_t tiles_m = (M + kDistTile - 1) / kDistTile;
  const int64_t tiles = ((N + kDistTile - 1) / kDistTile) * tiles_m;
  const bool vec = M % 4 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  // Staging role: rows t % 64 of a (t / 64 even) or of b (odd), words t / 128 + 2 s.
  const int sr = t & (kDistTile - 1);
  const bool sb_side = (t & kDistTile) != 0;
  const int sslot = 16 * (sr & 3) + ((sr >> 2) ^ ((sr & 3) << 2));
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t i0 = (tile / tiles_m) * kDistTile, j0 = (tile % tiles_m) * kDistTile;
    int acc[4][4] = {};
    for (int64_t w0 = 0; w0 < W; w0 += kC) {
      const int kc = kW > 0 ? kW : int(W - w0 < kC ? W - w0 : kC);
      __syncthreads();  // the previous chunk (or tile) is done with sa and sb
      {
        const int64_t row = (sb_side ? j0 : i0) + sr;
        const bool ok = row < (sb_side ? M : N);
        const uint64_t* src = ok ? (sb_side ? b : a) + row * W + w0 : nullptr;
        for (int w = t >> 7; w < kc; w += 2) {
          const uint64_t v = ok ? src[w] : 0;
          if (sb_side)
            sb[w][sslot] = v;
          else
            sa[w][sr] = v;
        }
      }
      __syncthreads();
      AH_UNROLL_4
      for (int w = 0; w < kc; ++w) {
        uint64_t av[4], bv[4];
        AH_UNROLL
        for (int i = 0; i < 4; ++i) av[i] = sa[w][ty + 16 * i];
        AH_UNROLL
        for (int c = 0; c < 4; ++c) bv[c] = sb[w][16 * c + (tx ^ (4 * c))];
        AH_UNROLL
        for (int i = 0; i < 4; ++i)
          AH_UNROLL
          for (int c = 0; c < 4; ++c) acc[i][c] += __popcll(av[i] ^ bv[c]);
      }
    }
    const int64_t j = j0 + 4 * tx;
    AH_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int64_t row = i0 + ty + 16 * i;
      if (row >= N || j >= M) continue;
      int32_t* o = out + row * M + j;
      if (vec) {  // M % 4 == 0 and j % 4 == 0: the 4 columns exist and are 16-byte aligned
        store_int4(o, acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
      } else {
        AH_UNROLL
        for (int c = 0; c < 4; ++c)
          if (j + c < M) o[c] = acc[i][c];
      }
    }
  }
}

// ------------------------------------------------------------------ lane groups
// The bandwidth-bound kernels below give each row a group of G lanes, G = the smallest power of
// two >= W (at most 32): lane g of a group reads words g, g + G, ... of its row, so a warp reads
// 32 / G consecutive rows as one contiguous run of words per load (fully coalesced for W a power
// of two, with W % G idle lanes otherwise), and the group's sums meet by log2(G) xor-shuffles.
AH_HD inline int lane_group(int64_t W) {
  int g = 1;
  while (g < W && g < 32) g *= 2;
  return g;
}

// Sum over the aligned group of G lanes (every lane of the warp calls it).
__device__ __forceinline__ int group_sum(int x, int G) {
  for (int m = G >> 1; m > 0; m >>= 1) x += __shfl_xor_sync(0xffffffffu, x, m);
  return x;
}

// ------------------------------------------------------------------ few rows against many
constexpr int kFewMax = 8;  // at most this many rows on the small side

// out[r * stride_r + s * stride_s] = popcount(rows[r] ^ few[s]) for r < n, s < n_few <= kFewMax:
// all-pairs distances when one side has at most kFewMax rows (M = 1: probes._nnz against a zero
// row, rows = a, stride_r = M, stride_s = 1; N small: rows = b, stride_r = 1, stride_s = M).
// blockDim.x a multiple of 32, any grid (grid-stride over steps of 32 / G rows per warp).
// Bytes: each of the n rows is read once (8 W bytes, coalesced: see lane groups), the few rows
// come from L1 (for W <= 32 a lane keeps its word of each in registers), and 4 n_few bytes are
// stored per row (the group's first lane; lanes of a warp write 32 / G consecutive rows, so the
// stores of one s are runs of 4-byte words at stride_r). With n_few = 1, 1M rows x 4 words is
// 32 MiB read + 4 MiB written (~8 us at 4.8 TB/s); popcounts pass the loads from about
// n_few = 4 on (2 n_few W POPC per 8 W bytes).
__global__ void hamming_distance_few_kernel(const uint64_t* __restrict__ rows, int64_t n,
                                            const uint64_t* __restrict__ few, int n_few,
                                            int64_t W, int32_t* __restrict__ out,
                                            int64_t stride_r, int64_t stride_s) {
  const int G = lane_group(W), per = 32 / G;
  const int lane = threadIdx.x & 31, g = lane & (G - 1), sub = lane / G;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  const bool one_word = W <= 32;  // lane g holds at most word g of a row
  uint64_t fv[kFewMax];
  AH_UNROLL
  for (int s = 0; s < kFewMax; ++s) fv[s] = (one_word && s < n_few && g < W) ? few[s * W + g] : 0;
  for (int64_t r0 = warp * per; r0 < n; r0 += warps * per) {  // warp-uniform
    const int64_t r = r0 + sub;
    const bool ok = r < n;
    int acc[kFewMax] = {};
    if (ok && one_word) {
      if (g < W) {
        const uint64_t x = rows[r * W + g];
        AH_UNROLL
        for (int s = 0; s < kFewMax; ++s)
          if (s < n_few) acc[s] = __popcll(x ^ fv[s]);
      }
    } else if (ok) {
      for (int64_t w = g; w < W; w += G) {
        const uint64_t x = rows[r * W + w];
        AH_UNROLL
        for (int s = 0; s < kFewMax; ++s)
          if (s < n_few) acc[s] += __popcll(x ^ __ldg(few + s * W + w));
      }
    }
    AH_UNROLL
    for (int s = 0; s < kFewMax; ++s)
      if (s < n_few) acc[s] = group_sum(acc[s], G);
    if (ok && g == 0) {
      AH_UNROLL
      for (int s = 0; s < kFewMax; ++s)
        if (s < n_few) out[r * stride_r + s * stride_s] = acc[s];
    }
  }
}

// ------------------------------------------------------------------ consecutive rows
// out[i] = popcount(codes[i] ^ codes[i + 1]) for i < n (n = rows - 1). blockDim.x a multiple of
// 32, any grid. Lane groups of G lanes per pair (see above): the group of pair i reads rows i and
// i + 1, word g + m G; the neighbouring group reads row i + 1 in the same instruction, so DRAM
// sees each row once (8 W (n + 1) bytes, coalesced) and L1 serves the second read; 4 n bytes
// of stores. Bandwidth-bound: 1M rows x 4 words is ~36 MiB (~8 us at 4.8 TB/s).
__global__ void hamming_consecutive_kernel(const uint64_t* __restrict__ codes,
                                           int32_t* __restrict__ out, int64_t n, int64_t W) {
  const int G = lane_group(W), per = 32 / G;
  const int lane = threadIdx.x & 31, g = lane & (G - 1), sub = lane / G;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r0 = warp * per; r0 < n; r0 += warps * per) {  // warp-uniform
    const int64_t i = r0 + sub;
    int s = 0;
    if (i < n)
      for (int64_t w = g; w < W; w += G) s += __popcll(codes[i * W + w] ^ codes[(i + 1) * W + w]);
    s = group_sum(s, G);
    if (i < n && g == 0) out[i] = s;
  }
}

}  // namespace activation_hash::cuda
