// CUDA kernel of pack_signs / relu_pack on channels_last inputs (4-D NHWC, 5-D NDHWC), fused:
// it reads x once in its own memory order, writes y in the same (channels_last) layout and
// the words in the op's unit order, which is the logical C order of x[b] on every device
// (unit j = c * S + s, S = H * W or D * H * W, s the flat spatial index; docs/design.md).
// Memory holds x[b] as [S, C], so the bits need a transpose; the values do not.
//
// Design. A block (exactly kClThreads = 256 threads) owns a tile of 64 spatial positions x 32
// channels of one sample; grid (spatial tiles, channel tiles, samples), each grid-stride.
//   1. Load: the tile's rows are 32 consecutive channels = 32 s contiguous bytes in memory.
//      Vector path (C % V == 0 and x, y 16-byte aligned): 32 / V lanes cover a row with one
//      16-byte load each, a warp reads V rows of 128 (fp32) or 64 (16-bit) contiguous bytes:
//      every sector it touches is used whole. Scalar path: one channel per lane, a warp reads
//      one row of 32 elements. y is written at the same addresses.
//   2. Row masks: bit k of mask[r] = channel c0 + k of spatial s0 + r is on; built by an OR
//      shuffle-reduction over the lanes of a row (a ballot on the scalar path), in shared
//      memory (256 bytes).
//   3. Transpose: lane t of warp 0 collects bit t of the 64 masks (broadcast reads, no bank
//      conflicts) into the 64-bit segment of channel c0 + t: units c S + s0 .. c S + s0 + 63.
//      When S % 64 == 0 the segment is exactly word (c S + s0) / 64, a plain store. Otherwise
//      it straddles up to 2 words: they are OR-ed with 64-bit atomics into words that the
//      launcher zeroed (an extra 1/(8 s) bytes per unit; at most 2 atomics per 64 units).
// Bytes per unit: s read, s written (relu_pack), 1/8 written: the same as the contiguous
// kernel, with no copies. Tiles cut by C < 32 or S < 64 leave lanes idle (still one pass).
#pragma once
#include <cstdint>

#include "activation_hash/bits.h"
#include "cuda/dtype.cuh"

namespace activation_hash::cuda {

constexpr int kClThreads = 256, kClTileS = 64, kClTileC = 32;

// The vector path of pack_channels_last_kernel: C a multiple of V, base pointers aligned.
template <typename D>
AH_HD inline bool channels_last_vector_ok(int64_t C, const void* x, const void* y) {
  return C % Vec16<D>::kN == 0 && aligned16(x) && (y == nullptr || aligned16(y));
}

// Whether the words must be zeroed before the launch (segments straddle words).
AH_HD inline bool channels_last_needs_zeroed_words(int64_t S) { return S % 64 != 0; }

inline dim3 channels_last_grid(int64_t B, int64_t C, int64_t S) {
  auto cap = [](int64_t v, int64_t hi) { return unsigned(v < 1 ? 1 : (v > hi ? hi : v)); };
  return dim3(cap((S + kClTileS - 1) / kClTileS, int64_t(1) << 30),
              cap((C + kClTileC - 1) / kClTileC, 65535), cap(B, 65535));
}

// x [B, S, C] in memory (logical [B, C, S]) -> words [B, ceil(C S / 64)] in logical order and,
// if kWriteY, y [B, S, C] (same layout as x). y may be null when kWriteY is false.
template <typename D, bool kWriteY, bool kLeaky, bool kVec>
__global__ __launch_bounds__(kClThreads) void pack_channels_last_kernel(
    const typename D::raw_t* __restrict__ x, typename D::raw_t* __restrict__ y,
    unsigned long long* __restrict__ words, int64_t B, int64_t C, int64_t S,
    typename D::op_t slope) {
  using raw_t = typename D::raw_t;
  constexpr int V = kVec ? Vec16<D>::kN : 1;
  constexpr int kLanesPerRow = kClTileC / V;             // lanes covering a row's 32 channels
  constexpr int kRowsPerPass = kClThreads / kLanesPerRow;
  static_assert(kClTileS % kRowsPerPass == 0, "the passes cover the tile's rows");
  __shared__ uint32_t mask[kClTileS];
  const int t = int(threadIdx.x);
  const int g = t % kLanesPerRow, r_first = t / kLanesPerRow;
  const int64_t s_tiles = (S + kClTileS - 1) / kClTileS, c_tiles = (C + kClTileC - 1) / kClTileC;
  const int64_t W = (C * S + 63) / 64;
  const bool straddle = channels_last_needs_zeroed_words(S);
  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    const raw_t* xs = x + b * S * C;
    raw_t* ys = kWriteY ? y + b * S * C : nullptr;
    unsigned long long* ws = words + b * W;
    for (int64_t ct = blockIdx.y; ct < c_tiles; ct += gridDim.y) {
      const int64_t c0 = ct * kClTileC, c = c0 + int64_t(g) * V;
      for (int64_t st = blockIdx.x; st < s_tiles; st += gridDim.x) {
        const int64_t s0 = st * kClTileS;
AH_UNROLL
        for (int pass = 0; pass < kClTileS / kRowsPerPass; ++pass) {
          const int r = pass * kRowsPerPass + r_first;
          const int64_t s = s0 + r;
          uint32_t bits = 0;
          if (s < S && c < C) {  // kVec: C % V == 0, so the whole vector is in the row
            const int64_t off = s * C + c;
            if constexpr (kVec) {
              bits = pack_vec16<D, kWriteY, kLeaky>(xs + off, kWriteY ? ys + off : nullptr,
                                                    slope);
            } else {
              const raw_t v = xs[off];
              bits = raw_on<D>(v);
              if constexpr (kWriteY) ys[off] = raw_activation<D, kLeaky>(v, slope);
            }
          }
          if constexpr (V == 1) {
            bits = __ballot_sync(0xffffffffu, bits != 0);
          } else {
            bits <<= g * V;
AH_UNROLL
            for (int o = 1; o < kLanesPerRow; o <<= 1)
              bits |= __shfl_xor_sync(0xffffffffu, bits, o);
          }
          if (g == 0) mask[r] = bits;
        }
        __syncthreads();
        if (t < kClTileC && c0 + t < C) {
          uint64_t seg = 0;
AH_UNROLL
          for (int k = 0; k < kClTileS; ++k) seg |= uint64_t((mask[k] >> t) & 1u) << k;
          const int64_t j = (c0 + t) * S + s0;  // the logical unit of the segment's bit 0
          if (!straddle) {
            ws[j >> 6] = seg;
          } else if (seg != 0) {
            const int o = int(j & 63);
            atomicOr(&ws[j >> 6], (unsigned long long)(seg << o));
            if (o != 0 && (seg >> (64 - o)) != 0)
              atomicOr(&ws[(j >> 6) + 1], (unsigned long long)(seg >> (64 - o)));
          }
        }
        __syncthreads();  // mask is rewritten by the next tile
      }
    }
  }
}

}  // namespace activation_hash::cuda
