// CUDA kernels of pack_signs / relu_pack, relu_mask_backward and unpack_bits on contiguous
// [B, n] rows, on raw pointers (pack_cl.cuh: channels_last inputs). No launches here:
// csrc/cuda/pack.cu launches them, the emulation tests (tests/emu) run them on the CPU.
//
// Shared design, for an HBM3 GPU (H100/H200, ~4.8 TB/s, latency-bound only below ~2 MB in
// flight):
//   - 2-D grid: samples in blockIdx.y (grid-stride), "chunks" of a row in blockIdx.x and the
//     warp index (grid-stride). A chunk is 32 * V units, V = 16 bytes / element size (4 floats,
//     8 halves/bf16, 2 doubles), i.e. V / 2 words. No division in the loops: a row starts at
//     b * n, a chunk at c * 32 V; the only division (chunks per row) is by a power of two.
//     Rows of fewer chunks than a block has warps share blocks (RowLoop), so that MLP-sized
//     rows (fp32 n <= 896) keep every warp of a block busy.
//   - Vector path (kVec, when every row starts 16-byte aligned: aligned base pointers and
//     n % V == 0; see rows_vector_ok): lane l of the warp owns units [32 V c + V l, + V): one
//     16-byte load (and one 16-byte store of y / grad_x), so a warp moves 512 contiguous bytes
//     per instruction, fully coalesced. Its V bits go to the right place of a 32-bit half word
//     by an OR-reduction over the 32 / V lanes of that half (log2(32 / V) shuffles); one lane
//     per half stores it (the words are written as uint32 halves, little-endian).
//   - Scalar path (any alignment, any n): lane l owns units 32 V c + 32 i + l, i < V, so each
//     load instruction of the warp reads 32 consecutive elements (coalesced), and ballot i is
//     half word c V + i directly. Same chunk geometry, same halves.
//   - Units of a row beyond n (the last chunk) are off and never loaded; padding bits are 0.
//   - Warp collectives sit outside the per-lane conditions and loop bounds are warp-uniform,
//     so blockDim.x must be a multiple of 32; any grid is correct.
// Bytes per unit of s-byte elements: pack_signs s + 1/8, relu_pack 2 s + 1/8, mask_backward
// 2 s + 1/8, unpack_bits 1 + 1/8: at most 1/(16 s) more than a copy of the same elements.
#pragma once
#include <cstdint>

#include "activation_hash/bits.h"
#include "cuda/dtype.cuh"

namespace activation_hash::cuda {

constexpr int kRowThreads = 256;        // block of the row kernels (any multiple of 32 works)
constexpr int64_t kMaxGridX = 1 << 16;  // chunk blocks per row at most (the loop does the rest)
constexpr int64_t kMaxGridY = 65535;

// The production grid of the row kernels: one warp per chunk, one block row per sample; rows
// of fewer chunks than a block has warps share a block (RowLoop), so its warps all work.
inline dim3 rows_grid(int64_t B, int64_t chunks, int threads = kRowThreads) {
  const int64_t warps = threads / 32;
  const int64_t x = (chunks + warps - 1) / warps;
  const int64_t per = chunks < warps ? warps / (chunks < 1 ? 1 : chunks) : 1;  // rows a block
  const int64_t y = (B + per - 1) / per;
  return dim3(unsigned(x < 1 ? 1 : (x > kMaxGridX ? kMaxGridX : x)),
              unsigned(y < 1 ? 1 : (y > kMaxGridY ? kMaxGridY : y)));
}

// Chunks of a row of n units for element type D (32 V units each).
template <typename D>
AH_HD inline int64_t row_chunks(int64_t n) {
  constexpr int64_t k = 32 * Vec16<D>::kN;
  return (n + k - 1) / k;
}

// The vector path needs every row 16-byte aligned in every array it reads or writes.
template <typename D>
AH_HD inline bool rows_vector_ok(int64_t n, const void* a, const void* b) {
  return n % Vec16<D>::kN == 0 && aligned16(a) && (b == nullptr || aligned16(b));
}

// Thread geometry of the row and chunk loops (see the design above). A row of at least as many
// chunks as the block has warps: samples b = blockIdx.y + k gridDim.y, chunks c = warp index
// over the x blocks. A shorter row (MLP-sized: fp32 rows of at most 7 x 128 units) would leave
// warps idle, so `per` = warps / chunks rows share each block instead: warp w takes row
// w / chunks of the block's group and chunk w % chunks (one 32-bit division per thread, not per
// element); the groups are numbered over the whole grid. Every warp's values are uniform.
struct RowLoop {
  int lane;
  int64_t b0, bstep, c0, cstep;
  __device__ explicit RowLoop(int64_t chunks) : lane(int(threadIdx.x & 31)) {
    const int warps = int(blockDim.x >> 5), w = int(threadIdx.x >> 5);
    if (chunks >= warps) {
      b0 = blockIdx.y;
      bstep = gridDim.y;
      c0 = int64_t(blockIdx.x) * warps + w;
      cstep = int64_t(gridDim.x) * warps;
      return;
    }
    const int c = int(chunks < 1 ? 1 : chunks), per = warps / c, r = w / c;
    const int64_t group = int64_t(blockIdx.y) * gridDim.x + blockIdx.x;
    bstep = int64_t(gridDim.x) * gridDim.y * per;
    b0 = r < per ? group * per + r : INT64_MAX;  // warps past per * c rows: none
    c0 = w % c;
    cstep = c;
  }
};

// x [B, n] -> words [B, W] (as 2 W uint32 halves per row) and, if kWriteY, y [B, n] = ReLU or
// LeakyReLU of x (dtype.cuh raw_activation). y may be null when kWriteY is false.
template <typename D, bool kWriteY, bool kLeaky, bool kVec>
__global__ void pack_words_kernel(const typename D::raw_t* __restrict__ x,
                                  typename D::raw_t* __restrict__ y,
                                  uint32_t* __restrict__ halves, int64_t B, int64_t n, int64_t W,
                                  typename D::op_t slope) {
  using raw_t = typename D::raw_t;
  constexpr int V = Vec16<D>::kN;
  constexpr int kLanes = 32 / V;  // lanes per 32-bit half (vector path)
  const int64_t chunks = row_chunks<D>(n), H = 2 * W;
  const RowLoop loop(chunks);
  const int lane = loop.lane;
  for (int64_t b = loop.b0; b < B; b += loop.bstep) {
    const raw_t* xr = x + b * n;
    raw_t* yr = kWriteY ? y + b * n : nullptr;
    uint32_t* hr = halves + b * H;
    for (int64_t c = loop.c0; c < chunks; c += loop.cstep) {
      if constexpr (kVec) {
        const int64_t u = c * (32 * V) + V * lane;
        uint32_t bits = 0;
        if (u < n)  // n % V == 0: the whole vector is in the row
          bits = pack_vec16<D, kWriteY, kLeaky>(xr + u, kWriteY ? yr + u : nullptr, slope);
        bits <<= (lane % kLanes) * V;
AH_UNROLL
        for (int o = 1; o < kLanes; o <<= 1) bits |= __shfl_xor_sync(0xffffffffu, bits, o);
        const int64_t h = c * V + lane / kLanes;
        if (lane % kLanes == 0 && h < H) hr[h] = bits;
      } else {
        uint32_t mine = 0;
AH_UNROLL
        for (int i = 0; i < V; ++i) {
          const int64_t u = c * (32 * V) + 32 * i + lane;
          bool on = false;
          if (u < n) {
            const raw_t r = xr[u];
            on = raw_on<D>(r);
            if constexpr (kWriteY) yr[u] = raw_activation<D, kLeaky>(r, slope);
          }
          const uint32_t ballot = __ballot_sync(0xffffffffu, on);
          if (lane == i) mine = ballot;
        }
        const int64_t h = c * V + lane;
        if (lane < V && h < H) hr[h] = mine;
      }
    }
  }
}

// grad_y [B, n], words [B, W] (as uint32 halves) -> grad_x [B, n]: grad_y where the unit's bit
// is 1, else +0 (ReLU) or grad_y * slope (LeakyReLU). Same geometry as pack_words_kernel; the
// lanes of a half read the same 4 bytes (one broadcast transaction).
template <typename D, bool kLeaky, bool kVec>
__global__ void mask_backward_kernel(const typename D::raw_t* __restrict__ grad_y,
                                     const uint32_t* __restrict__ halves,
                                     typename D::raw_t* __restrict__ grad_x, int64_t B,
                                     int64_t n, int64_t W, typename D::op_t slope) {
  using raw_t = typename D::raw_t;
  constexpr int V = Vec16<D>::kN;
  constexpr int kLanes = 32 / V;
  const int64_t chunks = row_chunks<D>(n);
  const RowLoop loop(chunks);
  const int lane = loop.lane;
  for (int64_t b = loop.b0; b < B; b += loop.bstep) {
    const raw_t* gr = grad_y + b * n;
    raw_t* xr = grad_x + b * n;
    const uint32_t* hr = halves + b * 2 * W;
    for (int64_t c = loop.c0; c < chunks; c += loop.cstep) {
      if constexpr (kVec) {
        const int64_t u = c * (32 * V) + V * lane;
        if (u < n) {
          const uint32_t bits = hr[c * V + lane / kLanes] >> ((lane % kLanes) * V);
          Vec16<D> v;
          load16(gr + u, &v);
AH_UNROLL
          for (int k = 0; k < V; ++k)
            v.v[k] = raw_masked_grad<D, kLeaky>(v.v[k], (bits >> k) & 1u, slope);
          store16(xr + u, &v);
        }
      } else {
AH_UNROLL
        for (int i = 0; i < V; ++i) {
          const int64_t u = c * (32 * V) + 32 * i + lane;
          if (u < n) xr[u] = raw_masked_grad<D, kLeaky>(gr[u], (hr[c * V + i] >> lane) & 1u, slope);
        }
      }
    }
  }
}

// Units per chunk of unpack_bits_kernel: 16 per lane (one 16-byte store of bools).
constexpr int64_t kUnpackChunk = 512;

AH_HD inline bool unpack_vector_ok(int64_t n, const void* bits) {
  return n % 16 == 0 && aligned16(bits);
}

// words [B, W] (as 4 W uint16 quarters per row) -> bits [B, n] (bool bytes, 0 or 1). A chunk
// is 512 units (8 words). Vector path (n % 16 == 0, bits 16-byte aligned): lane l turns
// quarter 32 c + l into 16 bytes (4 multiply-spreads of a nibble) and stores them at once, a
// warp 512 contiguous bytes. Scalar path: byte stores of 32 consecutive units per
// instruction. Bytes per unit: 1/8 read, 1 written.
template <bool kVec>
__global__ void unpack_bits_kernel(const uint16_t* __restrict__ quarters,
                                   uint8_t* __restrict__ bits, int64_t B, int64_t n,
                                   int64_t W) {
  const int64_t chunks = (n + kUnpackChunk - 1) / kUnpackChunk;
  const RowLoop loop(chunks);
  const int lane = loop.lane;
  for (int64_t b = loop.b0; b < B; b += loop.bstep) {
    const uint16_t* qr = quarters + b * 4 * W;
    uint8_t* br = bits + b * n;
    for (int64_t c = loop.c0; c < chunks; c += loop.cstep) {
      if constexpr (kVec) {
        const int64_t u = c * kUnpackChunk + 16 * lane;
        if (u < n) {
          const uint32_t q = qr[c * 32 + lane];
          alignas(16) uint32_t out[4];
AH_UNROLL
          for (int k = 0; k < 4; ++k)
            out[k] = (((q >> (4 * k)) & 0xFu) * 0x00204081u) & 0x01010101u;  // bit i -> byte i
          store16(br + u, out);
        }
      } else {
AH_UNROLL
        for (int i = 0; i < 16; ++i) {
          const int64_t u = c * kUnpackChunk + 32 * i + lane;
          if (u < n) br[u] = uint8_t((qr[c * 32 + 2 * i + (lane >> 4)] >> (lane & 15)) & 1u);
        }
      }
    }
  }
}

}  // namespace activation_hash::cuda
