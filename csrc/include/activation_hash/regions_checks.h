// Argument checks of split_pieces (host only): the piece lists of one stage of the
// layer-by-layer segment walk (activation_hash/regions_layers.py, docs/design.md section 2).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "activation_hash/checks.h"

namespace activation_hash {

// Shapes and dtypes of split_pieces' arguments (the offsets' contents are checked by the
// kernel on contiguous copies, with check_offsets).
inline void check_split_args(const at::Tensor& first_dir, const at::Tensor& group_ptr,
                             const at::Tensor& flip_ptr, const at::Tensor& flip_unit,
                             const at::Tensor& flip_coef, const at::Tensor& weight_t,
                             const at::Tensor& start_value, const at::Tensor& lo,
                             const at::Tensor& hi, const at::Tensor& seg_ptr, double tol,
                             int64_t max_pieces) {
  check_2d_double(first_dir, "first_dir");
  check_2d_double(weight_t, "weight_t");
  check_2d_double(start_value, "start_value");
  check_1d(group_ptr, at::kLong, "group_ptr");
  check_1d(flip_ptr, at::kLong, "flip_ptr");
  check_1d(flip_unit, at::kLong, "flip_unit");
  check_1d(flip_coef, at::kDouble, "flip_coef");
  check_1d(lo, at::kDouble, "lo");
  check_1d(hi, at::kDouble, "hi");
  check_1d(seg_ptr, at::kLong, "seg_ptr");
  const int64_t n = first_dir.size(1), P = lo.size(0);
  TORCH_CHECK_VALUE(group_ptr.size(0) == first_dir.size(0) + 1, "group_ptr must have ",
                    first_dir.size(0) + 1, " entries (groups + 1), got ", group_ptr.size(0));
  TORCH_CHECK_VALUE(hi.size(0) == P, "lo and hi must have one length, got ", P, " and ",
                    hi.size(0));
  TORCH_CHECK_VALUE(flip_ptr.size(0) == P + 1, "flip_ptr must have ", P + 1,
                    " entries (pieces + 1), got ", flip_ptr.size(0));
  TORCH_CHECK_VALUE(flip_coef.size(0) == flip_unit.size(0),
                    "flip_unit and flip_coef must have one length, got ", flip_unit.size(0),
                    " and ", flip_coef.size(0));
  TORCH_CHECK_VALUE(weight_t.size(1) == n, "weight_t must be [n_in, ", n,
                    "] (the layer's weight transposed), got shape ", weight_t.sizes());
  TORCH_CHECK_VALUE(start_value.size(1) == n && start_value.size(0) == seg_ptr.size(0) - 1,
                    "start_value must be [segments, ", n, "] = [", seg_ptr.size(0) - 1, ", ", n,
                    "], got shape ", start_value.sizes());
  TORCH_CHECK_VALUE(seg_ptr.size(0) >= 1, "seg_ptr must have segments + 1 >= 1 entries");
  TORCH_CHECK_VALUE(std::isfinite(tol) && tol >= 0, "tol must be finite and >= 0, got ", tol);
  TORCH_CHECK_VALUE(max_pieces >= 1, "max_pieces must be >= 1, got ", max_pieces);
}

// first_out (written by split_pieces) must be contiguous float64 [rows, n].
inline void check_first_out(const at::Tensor& t, int64_t rows, int64_t n) {
  check_2d_double(t, "first_out");
  TORCH_CHECK_VALUE(t.size(0) == rows && t.size(1) == n, "first_out must have shape [", rows,
                    ", ", n, "], got ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), "first_out must be contiguous");
}

}  // namespace activation_hash
