// Launches of the Hamming kernels (hamming_distance.cuh, hamming_topk.cuh) and their
// registration for the CUDA key. The kernels' comments give their designs and bounds.
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
#include "cuda/hamming_distance.cuh"
#include "cuda/hamming_topk.cuh"
#include "cuda/launch.h"

namespace activation_hash::cuda {
namespace {

const uint64_t* words_of(const at::Tensor& t) {
  return reinterpret_cast<const uint64_t*>(t.const_data_ptr<int64_t>());
}

unsigned capped_grid(int64_t blocks) {
  return unsigned(std::min<int64_t>(std::max<int64_t>(blocks, 1), kMaxBlocks));
}

template <int kW>
void launch_distance_tiles(const uint64_t* a, const uint64_t* b, int32_t* out, int64_t N,
                           int64_t M, int64_t W) {
  const int64_t tiles = ((N + kDistTile - 1) / kDistTile) * ((M + kDistTile - 1) / kDistTile);
  hamming_distance_tile_kernel<kW>
      <<<capped_grid(tiles), kDistThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(a, b, out, N,
                                                                                    M, W);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// out [N, M] int32 (contiguous) = distances of a [N, W] and b [M, W] (contiguous), N, M > 0.
void launch_distance(const at::Tensor& a, const at::Tensor& b, at::Tensor& out) {
  const int64_t N = a.size(0), M = b.size(0), W = a.size(1);
  int32_t* o = out.mutable_data_ptr<int32_t>();
  if (std::min(N, M) <= kFewMax) {  // matrix-vector shapes: one pass over the long side
    const bool few_b = M <= N;      // b is the short side (M = 1: probes._nnz)
    const int64_t n = few_b ? N : M;
    const int G = lane_group(W);
    hamming_distance_few_kernel<<<grid_for((n + 32 / G - 1) / (32 / G) * 32), kThreads, 0,
                                  c10::cuda::getCurrentCUDAStream()>>>(
        few_b ? words_of(a) : words_of(b), n, few_b ? words_of(b) : words_of(a),
        int(few_b ? M : N), W, o, few_b ? M : 1, few_b ? 1 : M);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  switch (W) {
    case 1: return launch_distance_tiles<1>(words_of(a), words_of(b), o, N, M, W);
    case 2: return launch_distance_tiles<2>(words_of(a), words_of(b), o, N, M, W);
    case 4: return launch_distance_tiles<4>(words_of(a), words_of(b), o, N, M, W);
    case 8: return launch_distance_tiles<8>(words_of(a), words_of(b), o, N, M, W);
    case 16: return launch_distance_tiles<16>(words_of(a), words_of(b), o, N, M, W);
    default: return launch_distance_tiles<0>(words_of(a), words_of(b), o, N, M, W);
  }
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

// The single-pass top-k (hamming_topk.cuh) with kW words; false when its shared memory does not
// fit the device (the caller falls back to distances + sort).
template <int kW>
bool launch_topk(const at::Tensor& qc, const at::Tensor& bc, int64_t k, at::Tensor& dist,
                 at::Tensor& idx) {
  const int64_t Q = qc.size(0), M = bc.size(0), W = qc.size(1);
  int device = 0, sms = 0, smem_optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int64_t smem = topk_shared_bytes(k, topk_chunk(kW, W));
  if (smem > smem_optin) return false;
  auto* kernel = &hamming_topk_tile_kernel<kW>;
  if (smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(smem)));
  const TopkPlan plan = topk_plan(Q, M, sms, /*min_tiles=*/8);
  const int64_t slices = plan.slices, qtiles = (Q + kTopkQueries - 1) / kTopkQueries;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor partial;
  if (slices > 1) partial = at::empty({Q * slices * k}, qc.options().dtype(at::kLong));
  kernel<<<capped_grid(qtiles * slices), kTopkThreads, size_t(smem), stream>>>(
      words_of(qc), words_of(bc), Q, M, W, k, slices, plan.slice_rows,
      dist.mutable_data_ptr<int32_t>(), idx.mutable_data_ptr<int64_t>(),
      slices > 1 ? reinterpret_cast<uint64_t*>(partial.mutable_data_ptr<int64_t>()) : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (slices > 1) {
    hamming_topk_merge_kernel<<<grid_for(Q * slices * k), kThreads, 0, stream>>>(
        reinterpret_cast<const uint64_t*>(partial.const_data_ptr<int64_t>()), Q, slices, k,
        dist.mutable_data_ptr<int32_t>(), idx.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return true;
}

bool launch_topk_any(const at::Tensor& qc, const at::Tensor& bc, int64_t k, at::Tensor& dist,
                     at::Tensor& idx) {
  switch (qc.size(1)) {
    case 1: return launch_topk<1>(qc, bc, k, dist, idx);
    case 2: return launch_topk<2>(qc, bc, k, dist, idx);
    case 4: return launch_topk<4>(qc, bc, k, dist, idx);
    case 8: return launch_topk<8>(qc, bc, k, dist, idx);
    case 16: return launch_topk<16>(qc, bc, k, dist, idx);
    default: return launch_topk<0>(qc, bc, k, dist, idx);
  }
}

std::tuple<at::Tensor, at::Tensor> hamming_topk_cuda(const at::Tensor& queries,
                                                     const at::Tensor& base, int64_t k) {
  check_code_pair(queries, base, "queries", "base");
  const int64_t Q = queries.size(0), M = base.size(0);
  check_k(k, M);
  const c10::cuda::CUDAGuard guard(queries.device());
  const at::Tensor qc = queries.contiguous(), bc = base.contiguous();
  at::Tensor dist = at::empty({Q, k}, qc.options().dtype(at::kInt));
  at::Tensor idx = at::empty({Q, k}, qc.options().dtype(at::kLong));
  if (Q == 0 || k == 0) return {dist, idx};
  if (k <= kTopkMaxK && M <= INT_MAX && launch_topk_any(qc, bc, k, dist, idx))
    return {dist, idx};
  // Large k (or a base of 2^31 rows or more): distances of a chunk of queries at a time, then a
  // stable sort (ties to the lower index, as the kernel). Chunks keep the [chunk, M] int32
  // matrix near 64 MiB.
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

at::Tensor hamming_consecutive_cuda(const at::Tensor& codes) {
  check_codes(codes, "codes");
  const c10::cuda::CUDAGuard guard(codes.device());
  const at::Tensor cc = codes.contiguous();
  const int64_t n = std::max<int64_t>(cc.size(0) - 1, 0), W = cc.size(1);
  at::Tensor out = at::empty({n}, cc.options().dtype(at::kInt));
  if (n == 0) return out;
  const int per = 32 / lane_group(W);  // pairs per warp and step
  hamming_consecutive_kernel<<<grid_for((n + per - 1) / per * 32), kThreads, 0,
                               c10::cuda::getCurrentCUDAStream()>>>(
      words_of(cc), out.mutable_data_ptr<int32_t>(), n, W);
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
