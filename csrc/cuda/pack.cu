// Launches of the pack kernels (pack.cuh, pack_cl.cuh) and their registration for the CUDA
// dispatch key. Which kernel runs:
//   - contiguous x: pack_words_kernel on [B, n] rows, vector path when rows are 16-byte aligned;
//   - 4-D channels_last / 5-D channels_last_3d x (not also contiguous):
//     pack_channels_last_kernel, one pass, y in the same layout;
//   - any other strides: a contiguous copy, the row kernel, y copied back into x's layout.
// relu_mask_backward and unpack_bits return contiguous results (the op's contract) from
// contiguous inputs (grad_y of other layouts is copied first).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "activation_hash/checks.h"
#include "cuda/pack.cuh"
#include "cuda/pack_cl.cuh"

namespace activation_hash::cuda {
namespace {

// Calls f(D{}) with the raw-bit element type of st (dtype.cuh).
template <typename F>
void with_element_type(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kFloat: return f(F32{});
    case at::kDouble: return f(F64{});
    case at::kHalf: return f(F16{});
    case at::kBFloat16: return f(BF16{});
    default: TORCH_CHECK(false, "activation_hash: unexpected dtype ", st);
  }
}

template <typename D>
const typename D::raw_t* raw_in(const at::Tensor& t) {
  return static_cast<const typename D::raw_t*>(t.const_data_ptr());
}
template <typename D>
typename D::raw_t* raw_out(at::Tensor* t) {
  return t == nullptr ? nullptr : static_cast<typename D::raw_t*>(t->mutable_data_ptr());
}

bool is_channels_last(const at::Tensor& x) {
  if (x.is_contiguous()) return false;
  return (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
         (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d));
}

// words [B, W] of x (and y = activation of x when kWriteY); x is contiguous or channels_last.
template <bool kWriteY, bool kLeaky>
void launch_pack(const at::Tensor& x, at::Tensor* y, at::Tensor& words, double slope) {
  const int64_t B = x.size(0), n = units_per_sample(x), W = words.size(1);
  if (words.numel() == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  with_element_type(x.scalar_type(), [&](auto d) {
    using D = decltype(d);
    using op_t = typename D::op_t;
    const auto* xp = raw_in<D>(x);
    auto* yp = raw_out<D>(y);
    if (is_channels_last(x)) {
      const int64_t C = x.size(1), S = n / C;
      if (channels_last_needs_zeroed_words(S)) words.zero_();
      auto* wp = reinterpret_cast<unsigned long long*>(words.mutable_data_ptr<int64_t>());
      const dim3 grid = channels_last_grid(B, C, S);
      if (channels_last_vector_ok<D>(C, xp, yp))
        pack_channels_last_kernel<D, kWriteY, kLeaky, true>
            <<<grid, kClThreads, 0, stream>>>(xp, yp, wp, B, C, S, op_t(slope));
      else
        pack_channels_last_kernel<D, kWriteY, kLeaky, false>
            <<<grid, kClThreads, 0, stream>>>(xp, yp, wp, B, C, S, op_t(slope));
    } else {
      auto* hp = reinterpret_cast<uint32_t*>(words.mutable_data_ptr<int64_t>());
      const dim3 grid = rows_grid(B, row_chunks<D>(n));
      if (rows_vector_ok<D>(n, xp, yp))
        pack_words_kernel<D, kWriteY, kLeaky, true>
            <<<grid, kRowThreads, 0, stream>>>(xp, yp, hp, B, n, W, op_t(slope));
      else
        pack_words_kernel<D, kWriteY, kLeaky, false>
            <<<grid, kRowThreads, 0, stream>>>(xp, yp, hp, B, n, W, op_t(slope));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor new_words(const at::Tensor& x) {
  return at::empty({x.size(0), words_for_bits(units_per_sample(x))},
                   x.options().dtype(at::kLong));
}

at::Tensor pack_signs_cuda(const at::Tensor& x) {
  check_activation(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = is_channels_last(x) ? x : x.contiguous();
  at::Tensor words = new_words(xc);
  launch_pack<false, false>(xc, nullptr, words, 0.0);
  return words;
}

std::tuple<at::Tensor, at::Tensor> relu_pack_cuda(const at::Tensor& x, double negative_slope) {
  check_activation(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const bool direct = x.is_contiguous() || is_channels_last(x);
  const at::Tensor xc = direct ? x : x.contiguous();
  // y in x's layout: contiguous or channels_last from the kernel itself, others copied back.
  at::Tensor y = at::empty_like(xc, direct ? at::MemoryFormat::Preserve
                                           : at::MemoryFormat::Contiguous);
  at::Tensor words = new_words(xc);
  if (negative_slope != 0.0) launch_pack<true, true>(xc, &y, words, negative_slope);
  else launch_pack<true, false>(xc, &y, words, 0.0);
  if (!direct) {
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
  const int64_t B = gc.size(0), n = units_per_sample(gc);
  check_words(words, B, n, "words");
  TORCH_CHECK_VALUE(words.device() == grad_y.device(), "words is on ", words.device(),
                    " but grad_y is on ", grad_y.device());
  const at::Tensor wc = words.contiguous();
  at::Tensor gx = at::empty_like(gc, at::MemoryFormat::Contiguous);
  if (gc.numel() == 0) return gx;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  with_element_type(gc.scalar_type(), [&](auto d) {
    using D = decltype(d);
    using op_t = typename D::op_t;
    const auto* gp = raw_in<D>(gc);
    auto* op = raw_out<D>(&gx);
    const auto* hp = reinterpret_cast<const uint32_t*>(wc.const_data_ptr<int64_t>());
    const dim3 grid = rows_grid(B, row_chunks<D>(n));
    const int64_t W = wc.size(1);
    const bool vec = rows_vector_ok<D>(n, gp, op);
    const op_t s = op_t(negative_slope);
    auto go = [&](auto kernel) {
      kernel<<<grid, kRowThreads, 0, stream>>>(gp, hp, op, B, n, W, s);
    };
    if (negative_slope != 0.0) {
      if (vec) go(mask_backward_kernel<D, true, true>);
      else go(mask_backward_kernel<D, true, false>);
    } else {
      if (vec) go(mask_backward_kernel<D, false, true>);
      else go(mask_backward_kernel<D, false, false>);
    }
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
  if (bits.numel() == 0) return bits;
  const auto* qp = reinterpret_cast<const uint16_t*>(wc.const_data_ptr<int64_t>());
  auto* bp = reinterpret_cast<uint8_t*>(bits.mutable_data_ptr<bool>());
  const int64_t B = wc.size(0), W = wc.size(1);
  const dim3 grid = rows_grid(B, (n + kUnpackChunk - 1) / kUnpackChunk);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (unpack_vector_ok(n, bp))
    unpack_bits_kernel<true><<<grid, kRowThreads, 0, stream>>>(qp, bp, B, n, W);
  else
    unpack_bits_kernel<false><<<grid, kRowThreads, 0, stream>>>(qp, bp, B, n, W);
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
