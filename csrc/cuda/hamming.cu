// Launches of the Hamming kernels (hamming.cuh) and their registration for the CUDA key.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>

#include "activation_hash/hamming_checks.h"
#include "cuda/hamming.cuh"
#include "cuda/launch.h"

namespace activation_hash::cuda {
namespace {

constexpr int kTopkThreads = 256;
// Above this width the histogram of hamming_topk_kernel (64 W + 1 ints) no longer fits the
// default 48 KiB of shared memory: hamming_topk falls back to chunks of hamming_distance and
// a stable sort (same results).
constexpr int64_t kTopkMaxWords = 128;

const uint64_t* words_of(const at::Tensor& t) {
  return reinterpret_cast<const uint64_t*>(t.const_data_ptr<int64_t>());
}

void launch_distance(const at::Tensor& a, const at::Tensor& b, at::Tensor& out) {
  const int64_t N = a.size(0), M = b.size(0), W = a.size(1);
  const int64_t tiles = ((N + kDistTile - 1) / kDistTile) * ((M + kDistTile - 1) / kDistTile);
  const unsigned grid = unsigned(std::min<int64_t>(std::max<int64_t>(tiles, 1), kMaxBlocks));
  hamming_distance_kernel<<<grid, kDistThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      words_of(a), words_of(b), out.mutable_data_ptr<int32_t>(), N, M, W);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor hamming_distance_cuda(const at::Tensor& a, const at::Tensor& b) {
  check_code_pair(a, b, "a", "b");
  const c10::cuda::CUDAGuard guard(a.device());
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor out = at::empty({ac.size(0), bc.size(0)}, ac.options().dtype(at::kInt));
  if (out.numel() == 0) return out;
  launch_distance(ac, bc, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> hamming_topk_cuda(const at::Tensor& queries,
                                                     const at::Tensor& base, int64_t k) {
  check_code_pair(queries, base, "queries", "base");
  const int64_t Q = queries.size(0), M = base.size(0), W = queries.size(1);
  check_k(k, M);
  const c10::cuda::CUDAGuard guard(queries.device());
  const at::Tensor qc = queries.contiguous(), bc = base.contiguous();
  at::Tensor dist = at::empty({Q, k}, qc.options().dtype(at::kInt));
  at::Tensor idx = at::empty({Q, k}, qc.options().dtype(at::kLong));
  if (Q == 0 || k == 0) return {dist, idx};
  if (W > kTopkMaxWords || M > INT_MAX) {
    // Wide codes: distances of a chunk of queries at a time, then a stable sort (ties to the
    // lower index, as the kernel). Chunks keep the [chunk, M] int32 matrix near 64 MiB.
    const int64_t chunk = std::max<int64_t>(1, (int64_t(16) << 20) / std::max<int64_t>(M, 1));
    for (int64_t q0 = 0; q0 < Q; q0 += chunk) {
      const at::Tensor qq = qc.narrow(0, q0, std::min(chunk, Q - q0));
      at::Tensor d = at::empty({qq.size(0), M}, qc.options().dtype(at::kInt));
      launch_distance(qq, bc, d);
      auto [values, order] = at::sort(d, /*stable=*/true, /*dim=*/1, /*descending=*/false);
      dist.narrow(0, q0, qq.size(0)).copy_(values.narrow(1, 0, k));
      idx.narrow(0, q0, qq.size(0)).copy_(order.narrow(1, 0, k));
    }
    return {dist, idx};
  }
  const unsigned grid = unsigned(std::min<int64_t>(Q, kMaxBlocks));
  const size_t smem = size_t(topk_shared_bytes(W, kTopkThreads));
  hamming_topk_kernel<<<grid, kTopkThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
      words_of(qc), words_of(bc), Q, M, W, k, dist.mutable_data_ptr<int32_t>(),
      idx.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dist, idx};
}

at::Tensor hamming_consecutive_cuda(const at::Tensor& codes) {
  check_codes(codes, "codes");
  const c10::cuda::CUDAGuard guard(codes.device());
  const at::Tensor cc = codes.contiguous();
  const int64_t n = std::max<int64_t>(cc.size(0) - 1, 0);
  at::Tensor out = at::empty({n}, cc.options().dtype(at::kInt));
  if (n == 0) return out;
  hamming_consecutive_kernel<<<grid_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      words_of(cc), out.mutable_data_ptr<int32_t>(), n, cc.size(1));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(activation_hash, CUDA, m) {
  m.impl("hamming_distance", &hamming_distance_cuda);
  m.impl("hamming_topk", &hamming_topk_cuda);
  m.impl("hamming_consecutive", &hamming_consecutive_cuda);
}

}  // namespace activation_hash::cuda
