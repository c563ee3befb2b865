// Argument checks shared by the CPU and CUDA bindings (host code only). They raise
// TypeError (TORCH_CHECK_TYPE) or ValueError (TORCH_CHECK_VALUE) naming what was given.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <c10/util/OptionalArrayRef.h>

#include <string>
#include <vector>

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

// "torch.int32" etc., as Python prints dtypes.
inline std::string torch_dtype_name(at::ScalarType st) {
  return "torch." + std::string(c10::getDtypeNames(st).first);
}

// A 1-D CPU tensor of dtype st.
inline void check_1d(const at::Tensor& t, at::ScalarType st, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == st, name, " must be ", torch_dtype_name(st), ", got ",
                   torch_dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.dim() == 1, name, " must be 1-D, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be on the CPU, got ", t.device());
}

// A 2-D CPU float64 tensor.
inline void check_2d_double(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kDouble, name, " must be torch.float64, got ",
                   torch_dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be 2-D, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be on the CPU, got ", t.device());
}

// ptr (contiguous int64 [n + 1]) must go from 0 to total without decreasing.
inline void check_offsets(const int64_t* ptr, int64_t n, int64_t total, const char* name) {
  TORCH_CHECK_VALUE(ptr[0] == 0, name, "[0] must be 0, got ", ptr[0]);
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_VALUE(ptr[i] <= ptr[i + 1], name, " must not decrease, got ", ptr[i], " then ",
                      ptr[i + 1], " at ", i);
  TORCH_CHECK_VALUE(ptr[n] == total, name, "[-1] must be ", total, ", got ", ptr[n]);
}

// codes must be int64 packed words [N, W].
inline void check_codes(const at::Tensor& codes, const char* name) {
  TORCH_CHECK_TYPE(codes.scalar_type() == at::kLong, name,
                   " must be int64 packed words [N, W], got dtype ",
                   torch_dtype_name(codes.scalar_type()));
  TORCH_CHECK_VALUE(codes.dim() == 2, name, " must be 2-D [N, W] packed words, got shape ",
                    codes.sizes());
}

// fingerprint128: codes [N, W] and the optional prefix ends (non-decreasing word counts
// <= W) -> the ends to hash ({W} when none are given).
inline std::vector<int64_t> checked_fingerprint_ends(const at::Tensor& codes,
                                                     at::OptionalIntArrayRef ends) {
  check_codes(codes, "codes");
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

// fingerprint_key: codes [N, W] and index_bits in [0, 62] with N <= 2^index_bits.
inline void check_fingerprint_key_args(const at::Tensor& codes, int64_t index_bits) {
  check_codes(codes, "codes");
  TORCH_CHECK_VALUE(index_bits >= 0 && index_bits <= 62, "index_bits must be in [0, 62], got ",
                    index_bits);
  TORCH_CHECK_VALUE(codes.size(0) <= (int64_t(1) << index_bits), "index_bits=", index_bits,
                    " cannot number ", codes.size(0), " rows (at most 2^index_bits)");
}

}  // namespace activation_hash
