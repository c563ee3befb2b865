// CUDA kernel of fingerprint128 on raw pointers (launched by fingerprint.cu, run on the CPU by
// the emulation tests). One thread per row, grid-stride: each row's words are a sequential
// hash chain (activation_hash/fingerprint.h).
#pragma once
#include <cstdint>

#include "activation_hash/fingerprint.h"

namespace activation_hash::cuda {

// codes [N, W], ends [P] (non-decreasing, <= W) -> out [N, P, 2].
__global__ void fingerprint128_kernel(const int64_t* __restrict__ codes, int64_t N, int64_t W,
                                      const int64_t* __restrict__ ends, int64_t P,
                                      int64_t* __restrict__ out) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < N; r += stride)
    fp::fingerprint_row(codes, W, ends, P, r, out);
}

// codes [N, W] -> out [N]: fp::key_of_row of each row (one thread per row, grid-stride).
__global__ void fingerprint_key_kernel(const int64_t* __restrict__ codes, int64_t N, int64_t W,
                                       int index_bits, int64_t* __restrict__ out) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < N; r += stride)
    out[r] = fp::key_of_row(codes, W, r, index_bits);
}

}  // namespace activation_hash::cuda
