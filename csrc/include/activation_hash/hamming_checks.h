// Argument checks of the Hamming ops, shared by the CPU and CUDA bindings (host code only).
// TypeError for a wrong dtype, ValueError for shapes, widths, devices and k.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "activation_hash/checks.h"

namespace activation_hash {

// a [N, W] and b [M, W]: same width, same device.
inline void check_code_pair(const at::Tensor& a, const at::Tensor& b, const char* na,
                            const char* nb) {
  check_codes(a, na);
  check_codes(b, nb);
  TORCH_CHECK_VALUE(a.size(1) == b.size(1), na, " and ", nb,
                    " must have the same number of words per row, got ", na, " of shape ",
                    a.sizes(), " and ", nb, " of shape ", b.sizes());
  TORCH_CHECK_VALUE(a.device() == b.device(), na, " is on ", a.device(), " but ", nb, " is on ",
                    b.device());
}

inline void check_k(int64_t k, int64_t m) {
  TORCH_CHECK_VALUE(k >= 0, "k must be >= 0, got ", k);
  TORCH_CHECK_VALUE(k <= m, "k must be <= the number of base rows (", m, "), got k=", k);
}

}  // namespace activation_hash
