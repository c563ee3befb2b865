// Launches of the pack kernels (pack.cuh) and their registration for the CUDA dispatch key.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "activation_hash/checks.h"
#include "cuda/launch.h"
#include "cuda/pack.cuh"

namespace activation_hash::cuda {
namespace {

template <bool kWriteY, bool kLeaky>
void launch_pack(const at::Tensor& x, at::Tensor* y, at::Tensor& words, int64_t n,
                 double slope) {
  const int64_t tasks = words.numel();
  if (tasks == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pack", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    pack_words_kernel<scalar_t, opmath_t, kWriteY, kLeaky>
        <<<grid_for(tasks * 32), kThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), kWriteY ? y->mutable_data_ptr<scalar_t>() : nullptr,
            words.mutable_data_ptr<int64_t>(), n, words.size(1), tasks, opmath_t(slope));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor pack_signs_cuda(const at::Tensor& x) {
  check_activation(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const int64_t n = units_per_sample(xc);
  at::Tensor words = at::empty({xc.size(0), words_for_bits(n)}, xc.options().dtype(at::kLong));
  launch_pack<false, false>(xc, nullptr, words, n, 0.0);
  return words;
}

std::tuple<at::Tensor, at::Tensor> relu_pack_cuda(const at::Tensor& x, double negative_slope) {
  check_activation(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const int64_t n = units_per_sample(xc);
  at::Tensor y = at::empty_like(xc, at::MemoryFormat::Contiguous);
  at::Tensor words = at::empty({xc.size(0), words_for_bits(n)}, xc.options().dtype(at::kLong));
  if (negative_slope != 0.0) launch_pack<true, true>(xc, &y, words, n, negative_slope);
  else launch_pack<true, false>(xc, &y, words, n, 0.0);
  if (!x.is_contiguous()) {
    at::Tensor y_like = at::empty_like(x);
    y_like.copy_(y);
    y = y_like;
  }
  return {y, words};
}

at::Tensor relu_mask_backward_cuda(const at::Tensor& grad_y, const at::Tensor& words,
                                   double negative_slope) {
  check_activation(grad_y, "grad_y");
  const c10::cuda::CUDAGuard guard(grad_y.device());
  const at::Tensor gc = grad_y.contiguous();
  const int64_t n = units_per_sample(gc);
  check_words(words, gc.size(0), n, "words");
  TORCH_CHECK_VALUE(words.device() == grad_y.device(), "words is on ", words.device(),
                    " but grad_y is on ", grad_y.device());
  const at::Tensor wc = words.contiguous();
  at::Tensor gx = at::empty_like(gc, at::MemoryFormat::Contiguous);
  const int64_t total = gc.numel();
  if (total == 0) return gx;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gc.scalar_type(), "mask_bwd", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* op = gx.mutable_data_ptr<scalar_t>();
    if (negative_slope != 0.0)
      mask_backward_kernel<scalar_t, opmath_t, true><<<grid_for(total), kThreads, 0, stream>>>(
          gp, wc.const_data_ptr<int64_t>(), op, n, wc.size(1), total, opmath_t(negative_slope));
    else
      mask_backward_kernel<scalar_t, opmath_t, false><<<grid_for(total), kThreads, 0, stream>>>(
          gp, wc.const_data_ptr<int64_t>(), op, n, wc.size(1), total, opmath_t(0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gx;
}

at::Tensor unpack_bits_cuda(const at::Tensor& words, int64_t n) {
  TORCH_CHECK_VALUE(n >= 0, "n must be >= 0, got ", n);
  TORCH_CHECK_VALUE(words.dim() == 2, "words must be 2-D [B, W], got shape ", words.sizes());
  check_words(words, words.size(0), n, "words");
  const c10::cuda::CUDAGuard guard(words.device());
  const at::Tensor wc = words.contiguous();
  at::Tensor bits = at::empty({wc.size(0), n}, wc.options().dtype(at::kBool));
  const int64_t total = bits.numel();
  if (total == 0) return bits;
  unpack_bits_kernel<<<grid_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      wc.const_data_ptr<int64_t>(), bits.mutable_data_ptr<bool>(), n, wc.size(1), total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return bits;
}

}  // namespace

TORCH_LIBRARY_IMPL(activation_hash, CUDA, m) {
  m.impl("pack_signs", &pack_signs_cuda);
  m.impl("relu_pack", &relu_pack_cuda);
  m.impl("relu_mask_backward", &relu_mask_backward_cuda);
  m.impl("unpack_bits", &unpack_bits_cuda);
}

}  // namespace activation_hash::cuda
