// CUDA kernels of pack_signs / relu_pack, relu_mask_backward and unpack_bits, on raw
// pointers. No launches here: csrc/cuda/pack.cu launches them on the GPU, and the emulation
// tests (tests/emu) run them on the CPU. They use only what the emulation provides
// (thread/block indices, full-mask __ballot_sync).
#pragma once
#include <cstdint>

#include "activation_hash/bits.h"

namespace activation_hash::cuda {

// Grid-stride loop over word tasks with one warp per task: task i = b * W + w covers units
// [64 w, 64 w + 64) of sample b; lane l handles units 64 w + l and 64 w + 32 + l, and two
// ballots give the word. blockDim.x must be a multiple of 32 (every lane of a warp runs the
// same tasks, so the ballots are convergent). y may be null when kWriteY is false.
template <typename scalar_t, typename opmath_t, bool kWriteY, bool kLeaky>
__global__ void pack_words_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                                  int64_t* __restrict__ words, int64_t n, int64_t W,
                                  int64_t tasks, opmath_t slope) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) / 32;
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; i < tasks;
       i += warps) {
    const int64_t w = i % W;
    const int64_t off = (i / W) * n + w * kWordBits;
    const int64_t m = n - w * kWordBits < kWordBits ? n - w * kWordBits : kWordBits;
    uint64_t word = 0;
    for (int half = 0; half < 2; ++half) {
      const int64_t k = half * 32 + lane;
      bool on = false;
      if (k < m) {
        const opmath_t v = static_cast<opmath_t>(x[off + k]);
        on = unit_on(v);
        if (kWriteY) {
          if (kLeaky) y[off + k] = on ? x[off + k] : scalar_t(v * slope);
          else y[off + k] = v < opmath_t(0) ? scalar_t(0.0f) : x[off + k];
        }
      }
      word |= uint64_t(__ballot_sync(0xffffffffu, on)) << (32 * half);
    }
    if (lane == 0) words[i] = static_cast<int64_t>(word);
  }
}

// One thread per unit (grid-stride): grad_x = grad_y where the unit's bit is 1, else
// grad_y * slope (leaky) or 0.
template <typename scalar_t, typename opmath_t, bool kLeaky>
__global__ void mask_backward_kernel(const scalar_t* __restrict__ grad_y,
                                     const int64_t* __restrict__ words,
                                     scalar_t* __restrict__ grad_x, int64_t n, int64_t W,
                                     int64_t total, opmath_t slope) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t b = e / n, j = e % n;
    const bool on = (static_cast<uint64_t>(words[b * W + j / kWordBits]) >> (j % kWordBits)) & 1;
    grad_x[e] = on ? grad_y[e]
                   : scalar_t(masked_grad<opmath_t>(static_cast<opmath_t>(grad_y[e]), false,
                                                    slope, kLeaky));
  }
}

// One thread per unit (grid-stride): bits[b, j] = bit j of words[b].
__global__ void unpack_bits_kernel(const int64_t* __restrict__ words, bool* __restrict__ bits,
                                   int64_t n, int64_t W, int64_t total) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t b = e / n, j = e % n;
    bits[e] = (static_cast<uint64_t>(words[b * W + j / kWordBits]) >> (j % kWordBits)) & 1;
  }
}

}  // namespace activation_hash::cuda
