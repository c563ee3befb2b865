// CUDA kernels of hamming_topk (launched by csrc/cuda/hamming.cu; run on the CPU by tests/emu):
// a query-blocked single pass over the base with per-query candidate lists, optionally over
// slices of the base, and the merge of the slices' lists. The result is exact and ordered as a
// stable sort: by distance, ties to the lower base index (keys (distance << 32) | index,
// distinct, so every comparison below is on keys).
//
// Bound at 1M base rows x 10k queries x 256 bits (W = 4), k = 10: 1e10 pairs x 8 POPC = 8e10
// POPC, ~19 ms on an H100/H200 (hamming_distance.cuh). Memory: a block reads its slice of the
// base once for 32 queries, so the SMs read (Q / 32) x 32 MiB = 10 GB, from L2 (the 32 MiB base
// stays resident), ~2 ms under the popcounts; DRAM sees the base and the queries about once.
// The per-row selection is a compare against the query's current k-th distance and a ballot.
#pragma once
#include <cstdint>

#include "activation_hash/bits.h"

namespace activation_hash::cuda {

constexpr int kTopkQueries = 32;   // queries per block: 8 warps x 4
constexpr int kTopkRows = 128;     // base rows per tile: 32 lanes x 4
constexpr int kTopkThreads = 256;  // hamming_topk_tile_kernel's blockDim.x
constexpr int kTopkMaxK = 128;     // larger k: hamming.cu's distance + sort fallback
constexpr int kTopkChunk = 16;     // words staged at a time by the run-time-W instance
constexpr uint64_t kNoKey = ~uint64_t(0);  // an empty slot of a partial list (sorts last)

AH_HD inline uint64_t topk_key(int d, int64_t index) {
  return (uint64_t(uint32_t(d)) << 32) | uint64_t(index);
}
// Slots of a query's sorted list: k rounded up to a warp.
AH_HD inline int64_t topk_list_cap(int64_t k) { return (k + 31) / 32 * 32; }
// Words of a row staged per tile: W for the fixed-width instances (kW > 0), else up to 16.
AH_HD inline int topk_chunk(int kW, int64_t W) {
  return kW > 0 ? kW : int(W < kTopkChunk ? W : kTopkChunk);
}
// Dynamic shared memory of hamming_topk_tile_kernel<kW>, in bytes (chunk = topk_chunk(kW, W)):
// the base tile, the query tile, 32 lists of topk_list_cap(k) keys and 32 buffers of 128 keys.
AH_HD inline int64_t topk_shared_bytes(int64_t k, int chunk) {
  return 8 * ((kTopkRows + kTopkQueries) * int64_t(chunk) +
              kTopkQueries * (topk_list_cap(k) + kTopkRows));
}

// How hamming.cu cuts the base: `slices` slices of `slice_rows` rows (a multiple of kTopkRows; all
// but the last full). Enough (query tile, slice) items for ~8 blocks per SM when the queries are
// few (sms: the device's SM count), each slice at least min_tiles tiles (hamming.cu: 8), at most
// 256 slices; M >= 1.
struct TopkPlan {
  int64_t slices, slice_rows;
};
AH_HD inline TopkPlan topk_plan(int64_t Q, int64_t M, int64_t sms, int64_t min_tiles) {
  const int64_t qtiles = (Q + kTopkQueries - 1) / kTopkQueries;
  const int64_t want = (8 * sms + qtiles - 1) / qtiles, most = M / (min_tiles * kTopkRows);
  int64_t slices = want < most ? want : most;
  slices = slices > 256 ? 256 : slices < 1 ? 1 : slices;
  int64_t rows = (M + slices - 1) / slices;
  rows = (rows + kTopkRows - 1) / kTopkRows * kTopkRows;
  return {(M + rows - 1) / rows, rows};
}

// Keys of v[0 .. n) below key: any order (a linear count), sorted (a binary search).
AH_HD inline int count_below(const uint64_t* v, int n, uint64_t key) {
  int c = 0;
  for (int i = 0; i < n; ++i) c += v[i] < key;
  return c;
}
AH_HD inline int count_below_sorted(const uint64_t* v, int n, uint64_t key) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (v[mid] < key)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// The whole warp merges the c (<= kTopkRows) unsorted keys of buf into the sorted list of
// n (<= k <= kTopkMaxK) keys, in place, and returns the new length min(k, n + c). Each key's new
// place is its rank in the union (keys are distinct): a list key moves down by the buffer keys
// below it, a buffer key lands after the list keys (binary search) and buffer keys below it.
// Lanes take keys lane + 32 m; all reads happen before the first write (__syncwarp).
__device__ __noinline__ int warp_merge(uint64_t* list, int n, const uint64_t* buf, int c, int k,
                                 int lane) {
  constexpr int kL = kTopkMaxK / 32, kB = kTopkRows / 32, kNone = 0x7fffffff;
  uint64_t key[kL + kB];
  int rank[kL + kB];
  __syncwarp();  // the lanes' appends to buf are visible
  AH_UNROLL
  for (int m = 0; m < kL; ++m) {
    const int p = lane + 32 * m;
    key[m] = 0;
    rank[m] = kNone;
    if (p < n) {
      key[m] = list[p];
      rank[m] = p + count_below(buf, c, key[m]);
    }
  }
  AH_UNROLL
  for (int m = 0; m < kB; ++m) {
    const int p = lane + 32 * m;
    key[kL + m] = 0;
    rank[kL + m] = kNone;
    if (p < c) {
      key[kL + m] = buf[p];
      rank[kL + m] = count_below_sorted(list, n, key[kL + m]) + count_below(buf, c, key[kL + m]);
    }
  }
  __syncwarp();  // every lane has read list and buf
  AH_UNROLL
  for (int m = 0; m < kL + kB; ++m)
    if (rank[m] < k) list[rank[m]] = key[m];
  __syncwarp();  // the new list is visible to the warp
  return n + c < k ? n + c : k;
}

// acc[i][j] += distance over words [0, kc) of the staged tiles between query 4 warp + i
// (sq[w][q]: broadcast loads) and base row lane + 32 j (sb[w][r]: 32 consecutive words per load).
__device__ __forceinline__ void tile_popcounts(const uint64_t* sq, const uint64_t* sb, int kc,
                                               int warp, int lane, int (&acc)[4][4]) {
  AH_UNROLL_4
  for (int w = 0; w < kc; ++w) {
    uint64_t qv[4], bv[4];
    AH_UNROLL
    for (int i = 0; i < 4; ++i) qv[i] = sq[w * kTopkQueries + 4 * warp + i];
    AH_UNROLL
    for (int j = 0; j < 4; ++j) bv[j] = sb[w * kTopkRows + lane + 32 * j];
    AH_UNROLL
    for (int i = 0; i < 4; ++i)
      AH_UNROLL
      for (int j = 0; j < 4; ++j) acc[i][j] += __popcll(qv[i] ^ bv[j]);
  }
}

// Words of a base tile per thread, fixed widths: element e = t + kTopkThreads m of the tile in
// sb order (word e / 128 of row r0 + e % 128; lanes = consecutive rows).
template <int kW>
struct TopkPre {
  static constexpr int kWords = kW > 0 ? (kTopkRows * kW + kTopkThreads - 1) / kTopkThreads : 1;
};
template <int kW>
__device__ __forceinline__ void load_tile(const uint64_t* base, int64_t W, int64_t r0,
                                          int64_t end, int t,
                                          uint64_t (&pre)[TopkPre<kW>::kWords]) {
  AH_UNROLL
  for (int m = 0; m < TopkPre<kW>::kWords; ++m) {
    const int e = t + kTopkThreads * m;
    const int64_t row = r0 + e % kTopkRows;
    pre[m] = e < kTopkRows * kW && row < end ? base[row * W + e / kTopkRows] : 0;
  }
}

// Top-k of queries [Q, W] among base rows [M, W] (M < 2^31, 1 <= k <= kTopkMaxK; k <= 0 does
// nothing). kW > 0: W == kW (instances 1, 2, 4, 8, 16); kW == 0: any W, 16 words at a time.
// blockDim.x == kTopkThreads, dynamic shared memory topk_shared_bytes(k, topk_chunk(kW, W)), any
// grid: grid-stride over items = (query tile of 32, slice of the base). Slice s holds base rows
// [s slice_rows, (s + 1) slice_rows) (slice_rows a multiple of kTopkRows; every slice but the
// last full). slices == 1: the result goes to out_d / out_i [Q, k]; else slice s's sorted list
// goes to partial[(q slices + s) k ..] (kNoKey past the slice's rows) for
// hamming_topk_merge_kernel.
//
// Per tile of 128 base rows: the block stages the tile and its 32 queries word-major in shared
// memory (sb[w][r], sq[w][q]; lane = row, so the staging stores are conflict-free and a thread's
// loads walk its row's contiguous words, each sector fetched once, the rest from L1). Warp w owns
// queries 4 w .. 4 w + 3, lane l base rows l + 32 j (j < 4): a 4 x 4 register tile, per word 4
// broadcast loads of sq and 4 loads of 32 consecutive words of sb (conflict-free), 16
// xor-popcounts: popcount-bound, as the distance tile. Fixed widths keep the block's queries in
// shared memory for the whole item and load the next base tile into registers (load_tile) while
// the current one is computed, so each tile costs two barriers and no exposed load latency; the
// run-time-W instance stages both, 16 words at a time. __launch_bounds__(256, 2): 128 registers,
// two blocks (16 warps of 16 independent popcount chains) per SM.
// Selection, per query, by the warp that owns it (no block barrier, no atomics): the list holds
// the best keys seen so far (sorted, in shared memory), and `limit` its k-th distance (or
// INT_MAX while not full). Rows of the tile with distance < limit are appended to the query's
// buffer in lane order (ballot + popcount of the lower lanes), then merged (warp_merge). A row at
// distance == limit never enters: the base is scanned in index order, so its index is larger
// than those of all listed keys. The buffer holds one tile (128 keys), so it never overflows; a
// merge runs only for tiles with candidates (on random codes, a few dozen over a whole base).
template <int kW>
__global__ void __launch_bounds__(kTopkThreads, 2)
    hamming_topk_tile_kernel(const uint64_t* __restrict__ queries,
                             const uint64_t* __restrict__ base, int64_t Q, int64_t M, int64_t W,
                             int64_t k, int64_t slices, int64_t slice_rows,
                             int32_t* __restrict__ out_d, int64_t* __restrict__ out_i,
                             uint64_t* __restrict__ partial) {
  if (k <= 0) return;
  AH_DYNAMIC_SHARED(uint64_t, smem);
  constexpr int kPre = TopkPre<kW>::kWords;
  const int chunk = topk_chunk(kW, W);
  const int kcap = int(topk_list_cap(k));
  uint64_t* sb = smem;                             // [chunk][kTopkRows]
  uint64_t* sq = sb + kTopkRows * chunk;           // [chunk][kTopkQueries]
  uint64_t* lists = sq + kTopkQueries * chunk;     // [kTopkQueries][kcap]
  uint64_t* bufs = lists + kTopkQueries * kcap;    // [kTopkQueries][kTopkRows]
  const unsigned kAll = 0xffffffffu;
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  const unsigned below = (1u << lane) - 1u;
  const int64_t items = ((Q + kTopkQueries - 1) / kTopkQueries) * slices;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t q0 = (item / slices) * kTopkQueries, s = item % slices;
    const int64_t begin = s * slice_rows;
    const int64_t end = M - begin < slice_rows ? M : begin + slice_rows;
    const bool active = q0 + 4 * warp < Q;
    int n_list[4], limit[4];
    AH_UNROLL
    for (int i = 0; i < 4; ++i) {
      n_list[i] = 0;
      limit[i] = 0x7fffffff;
    }
    uint64_t pre[kPre];  // kW > 0: this thread's words of the next base tile
    if (kW > 0) {
      __syncthreads();  // the previous item is done with sq
      for (int e = t; e < kTopkQueries * kW; e += kTopkThreads) {
        const int64_t q = q0 + e % kTopkQueries;
        sq[e] = q < Q ? queries[q * W + e / kTopkQueries] : 0;
      }
      load_tile<kW>(base, W, begin, end, t, pre);
    }
    for (int64_t r0 = begin; r0 < end; r0 += kTopkRows) {
      int acc[4][4] = {};
      if (kW > 0) {  // one chunk: the queries stay, the next tile's loads fly during this one
        __syncthreads();  // the previous tile is done with sb
        AH_UNROLL
        for (int m = 0; m < kPre; ++m)
          if (t + kTopkThreads * m < kTopkRows * kW) sb[t + kTopkThreads * m] = pre[m];
        __syncthreads();
        if (r0 + kTopkRows < end) load_tile<kW>(base, W, r0 + kTopkRows, end, t, pre);
        if (active) tile_popcounts(sq, sb, kW, warp, lane, acc);
      }
      for (int64_t w0 = 0; kW == 0 && w0 < W; w0 += chunk) {
        const int kc = int(W - w0 < chunk ? W - w0 : chunk);
        __syncthreads();  // the previous chunk is done with sb and sq
        for (int e = t; e < kTopkRows * kc; e += kTopkThreads) {
          const int64_t row = r0 + e % kTopkRows;
          sb[e] = row < end ? base[row * W + w0 + e / kTopkRows] : 0;
        }
        for (int e = t; e < kTopkQueries * kc; e += kTopkThreads) {
          const int64_t q = q0 + e % kTopkQueries;
          sq[e] = q < Q ? queries[q * W + w0 + e / kTopkQueries] : 0;
        }
        __syncthreads();
        if (active) tile_popcounts(sq, sb, kc, warp, lane, acc);
      }
      AH_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int ql = 4 * warp + i;
        if (q0 + ql >= Q) continue;  // warp-uniform
        uint64_t* buf = bufs + ql * kTopkRows;
        int c = 0;
        AH_UNROLL
        for (int j = 0; j < 4; ++j) {
          const int64_t row = r0 + lane + 32 * j;
          const bool cand = row < end && acc[i][j] < limit[i];
          const unsigned mask = __ballot_sync(kAll, cand);
          if (cand) buf[c + __popc(mask & below)] = topk_key(acc[i][j], row);
          c += __popc(mask);
        }
        if (c > 0) {  // warp-uniform
          uint64_t* list = lists + ql * kcap;
          n_list[i] = warp_merge(list, n_list[i], buf, c, int(k), lane);
          if (n_list[i] == k) limit[i] = int(list[k - 1] >> 32);
        }
      }
    }
    AH_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int ql = 4 * warp + i;
      const int64_t q = q0 + ql;
      if (q >= Q) continue;
      const uint64_t* list = lists + ql * kcap;
      for (int p = lane; p < k; p += 32) {
        const uint64_t key = p < n_list[i] ? list[p] : kNoKey;
        if (slices == 1) {
          out_d[q * k + p] = int32_t(key >> 32);
          out_i[q * k + p] = int64_t(key & 0xffffffffu);
        } else {
          partial[(q * slices + s) * k + p] = key;
        }
      }
    }
  }
}

// Merges the `slices` sorted lists of k keys per query (partial, from hamming_topk_tile_kernel)
// into out_d / out_i [Q, k]. One thread per list entry (grid-stride, any grid and block): its rank
// in the union is its place in its list plus a binary search in each other list of the query
// (keys are distinct; kNoKey slots are skipped), and entries of rank < k are written at that
// rank. Bytes: 8 Q slices k read (coalesced), the searches hit L1, 12 Q k written.
__global__ void hamming_topk_merge_kernel(const uint64_t* __restrict__ partial, int64_t Q,
                                          int64_t slices, int64_t k, int32_t* __restrict__ out_d,
                                          int64_t* __restrict__ out_i) {
  const int64_t total = Q * slices * k, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const uint64_t key = partial[e];
    if (key == kNoKey) continue;
    const int64_t q = e / (slices * k), s = (e / k) % slices;
    int64_t rank = e % k;
    for (int64_t s2 = 0; s2 < slices; ++s2)
      if (s2 != s) rank += count_below_sorted(partial + (q * slices + s2) * k, int(k), key);
    if (rank < k) {
      out_d[q * k + rank] = int32_t(key >> 32);
      out_i[q * k + rank] = int64_t(key & 0xffffffffu);
    }
  }
}

}  // namespace activation_hash::cuda
