// Launches of the fingerprint kernels (fingerprint.cuh) and their registration for CUDA.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "activation_hash/checks.h"
#include "cuda/fingerprint.cuh"
#include "cuda/launch.h"

namespace activation_hash::cuda {
namespace {

// The ends go to the kernel by value (FpEnds), kCapacity at a time: no host-to-device copy, no
// stream sync, capturable in a CUDA graph. A group re-reads the rows up to its largest end.
at::Tensor fingerprint128_cuda(const at::Tensor& codes, at::OptionalIntArrayRef ends) {
  const std::vector<int64_t> e = checked_fingerprint_ends(codes, ends);
  const c10::cuda::CUDAGuard guard(codes.device());
  const at::Tensor c = codes.contiguous();
  const int64_t N = c.size(0), W = c.size(1);
  const int64_t P = static_cast<int64_t>(e.size());
  at::Tensor out = ends.has_value() ? at::empty({N, P, 2}, c.options())
                                    : at::empty({N, 2}, c.options());
  if (N == 0 || P == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const unsigned grid = unsigned(std::min<int64_t>((N + kFpThreads - 1) / kFpThreads, kMaxBlocks));
  for (int64_t p0 = 0; p0 < P; p0 += FpEnds::kCapacity) {
    FpEnds group{};
    group.count = static_cast<int32_t>(std::min<int64_t>(P - p0, FpEnds::kCapacity));
    std::copy(e.begin() + p0, e.begin() + p0 + group.count, group.v);
    fingerprint128_kernel<<<grid, kFpThreads, 0, stream>>>(c.const_data_ptr<int64_t>(), N, W,
                                                           group, P, p0,
                                                           out.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

at::Tensor fingerprint_key_cuda(const at::Tensor& codes, int64_t index_bits) {
  check_fingerprint_key_args(codes, index_bits);
  const c10::cuda::CUDAGuard guard(codes.device());
  const at::Tensor c = codes.contiguous();
  const int64_t N = c.size(0);
  at::Tensor out = at::empty({N}, c.options());
  if (N == 0) return out;
  const unsigned grid = unsigned(std::min<int64_t>((N + kFpThreads - 1) / kFpThreads, kMaxBlocks));
  fingerprint_key_kernel<<<grid, kFpThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      c.const_data_ptr<int64_t>(), N, c.size(1), static_cast<int>(index_bits),
      out.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(activation_hash, CUDA, m) {
  m.impl("fingerprint128", &fingerprint128_cuda);
  m.impl("fingerprint_key", &fingerprint_key_cuda);
}

}  // namespace activation_hash::cuda
