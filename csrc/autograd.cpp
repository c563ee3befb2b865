// Autograd of the differentiable ops, in C++ so that a forward call costs no Python.
//
// relu_pack saves only its packed words for backward (1 bit per unit). relu_mask_backward is
// linear in grad_y, so its own gradient is the same op: double backward works too.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace activation_hash {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> call_relu_pack(const at::Tensor& x, double slope) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("activation_hash::relu_pack", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, double)>();
  return op.call(x, slope);
}

at::Tensor call_mask_backward(const at::Tensor& grad_y, const at::Tensor& words, double slope) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("activation_hash::relu_mask_backward", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double)>();
  return op.call(grad_y, words, slope);
}

class MaskBackward : public torch::autograd::Function<MaskBackward> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_y,
                            const at::Tensor& words, double slope) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({words});
    ctx->saved_data["slope"] = slope;
    return call_mask_backward(grad_y, words, slope);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor words = ctx->get_saved_variables()[0];
    const double slope = ctx->saved_data["slope"].toDouble();
    return {MaskBackward::apply(grads[0], words, slope), at::Tensor(), at::Tensor()};
  }
};

class ReluPack : public torch::autograd::Function<ReluPack> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, double slope) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [y, words] = call_relu_pack(x, slope);
    ctx->save_for_backward({words});
    ctx->saved_data["slope"] = slope;
    ctx->mark_non_differentiable({words});
    return {y, words};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor words = ctx->get_saved_variables()[0];
    const double slope = ctx->saved_data["slope"].toDouble();
    return {MaskBackward::apply(grads[0], words, slope), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> relu_pack_autograd(const at::Tensor& x, double slope) {
  if (!(at::GradMode::is_enabled() && x.requires_grad())) {
    // Nothing to record: skip the autograd node (about 2 us a call, which is 10-20% of a
    // relu_pack of 1 MB), as PyTorch's own autograd kernels do.
    at::AutoDispatchBelowADInplaceOrView below;
    return call_relu_pack(x, slope);
  }
  auto out = ReluPack::apply(x, slope);
  return {out[0], out[1]};
}

at::Tensor mask_backward_autograd(const at::Tensor& grad_y, const at::Tensor& words,
                                  double slope) {
  return MaskBackward::apply(grad_y, words, slope);
}

}  // namespace

TORCH_LIBRARY_IMPL(activation_hash, Autograd, m) {
  m.impl("relu_pack", &relu_pack_autograd);
  m.impl("relu_mask_backward", &mask_backward_autograd);
}

}  // namespace activation_hash
