// Launch of fingerprint128_kernel (fingerprint.cuh) and its registration for CUDA.
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

at::Tensor fingerprint128_cuda(const at::Tensor& codes, at::OptionalIntArrayRef ends) {
  const std::vector<int64_t> e = checked_fingerprint_ends(codes, ends);
  const c10::cuda::CUDAGuard guard(codes.device());
  const at::Tensor c = codes.contiguous();
  const int64_t N = c.size(0), W = c.size(1);
  const int64_t P = static_cast<int64_t>(e.size());
  at::Tensor out = ends.has_value() ? at::empty({N, P, 2}, c.options())
                                    : at::empty({N, 2}, c.options());
  if (N == 0 || P == 0) return out;
  at::Tensor ends_host = at::empty({P}, c.options().device(at::kCPU));
  std::copy(e.begin(), e.end(), ends_host.mutable_data_ptr<int64_t>());
  const at::Tensor ends_dev = ends_host.to(c.device());
  fingerprint128_kernel<<<grid_for(N), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      c.const_data_ptr<int64_t>(), N, W, ends_dev.const_data_ptr<int64_t>(), P,
      out.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor fingerprint_key_cuda(const at::Tensor& codes, int64_t index_bits) {
  check_fingerprint_key_args(codes, index_bits);
  const c10::cuda::CUDAGuard guard(codes.device());
  const at::Tensor c = codes.contiguous();
  const int64_t N = c.size(0);
  at::Tensor out = at::empty({N}, c.options());
  if (N == 0) return out;
  fingerprint_key_kernel<<<grid_for(N), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
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
