// CPU kernel of fingerprint128: at::parallel_for over rows, each row's words in order
// (activation_hash/fingerprint.h). The two hash streams of a row are independent chains, so
// the scalar loop keeps two multiplies in flight per word; it runs at memory speed for the
// code widths we see (a SIMD version across rows would need 64-bit multiplies and strided
// gathers and was not worth it), so there is one kernel for every ISA.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "activation_hash/fingerprint.h"

namespace activation_hash::cpu {
namespace {

// Checks shared with the CUDA binding are repeated there (host code, no shared .cpp).
std::vector<int64_t> checked_ends(const at::Tensor& codes, const at::OptionalIntArrayRef& ends) {
  TORCH_CHECK_TYPE(codes.scalar_type() == at::kLong,
                   "codes must be int64 packed words [N, W], got ", codes.scalar_type());
  TORCH_CHECK_VALUE(codes.dim() == 2, "codes must be 2-D [N, W], got shape ", codes.sizes());
  const int64_t W = codes.size(1);
  if (!ends.has_value()) return {W};
  std::vector<int64_t> e(ends->begin(), ends->end());
  int64_t prev = 0;
  for (int64_t v : e) {
    TORCH_CHECK_VALUE(prev <= v && v <= W, "ends must be non-decreasing word counts in [0, ", W,
                      "], got ", *ends);
    prev = v;
  }
  return e;
}

constexpr int64_t kGrainWords = 1 << 14;

at::Tensor fingerprint128_cpu(const at::Tensor& codes, at::OptionalIntArrayRef ends) {
  const std::vector<int64_t> e = checked_ends(codes, ends);
  const at::Tensor c = codes.contiguous();
  const int64_t N = c.size(0), W = c.size(1), P = static_cast<int64_t>(e.size());
  at::Tensor out = ends.has_value() ? at::empty({N, P, 2}, c.options())
                                    : at::empty({N, 2}, c.options());
  if (N == 0 || P == 0) return out;
  const int64_t* cp = c.const_data_ptr<int64_t>();
  int64_t* op = out.mutable_data_ptr<int64_t>();
  const int64_t* ep = e.data();
  const int64_t grain = std::max<int64_t>(1, kGrainWords / std::max<int64_t>(W, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) fp::fingerprint_row(cp, W, ep, P, r, op);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(activation_hash, CPU, m) {
  m.impl("fingerprint128", &fingerprint128_cpu);
}

}  // namespace activation_hash::cpu
