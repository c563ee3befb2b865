// Argument checks shared by the CPU and CUDA bindings (host code only). They raise
// TypeError (TORCH_CHECK_TYPE) or ValueError (TORCH_CHECK_VALUE) naming what was given.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "activation_hash/bits.h"

namespace activation_hash {

// x must be a floating tensor [B, ...] with at least one dimension.
inline void check_activation(const at::Tensor& x, const char* name) {
  const auto st = x.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
                   name, " must be float32, float64, float16 or bfloat16, got ", st);
  TORCH_CHECK_VALUE(x.dim() >= 1, name,
                    " must have a batch dimension [B, ...], got a 0-dim tensor");
}

// Per-sample size n of x [B, ...] (also when B == 0).
inline int64_t units_per_sample(const at::Tensor& x) {
  int64_t n = 1;
  for (int64_t d = 1; d < x.dim(); ++d) n *= x.size(d);
  return n;
}

// words must be int64 [B, ceil(n / 64)].
inline void check_words(const at::Tensor& words, int64_t batch, int64_t n, const char* name) {
  TORCH_CHECK_TYPE(words.scalar_type() == at::kLong, name, " must be int64 packed words, got ",
                   words.scalar_type());
  TORCH_CHECK_VALUE(words.dim() == 2, name, " must be 2-D [B, W], got shape ", words.sizes());
  TORCH_CHECK_VALUE(words.size(0) == batch && words.size(1) == words_for_bits(n), name,
                    " must have shape [", batch, ", ", words_for_bits(n), "] for ", batch,
                    " samples of ", n, " units, got ", words.sizes());
}

}  // namespace activation_hash
