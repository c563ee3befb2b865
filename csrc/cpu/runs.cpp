// CPU kernel of repeated_in_runs: the keys that occur more than once in a concatenation of
// sorted runs (the keys each rank sent to their owner in the distributed collision count,
// activation_hash/distributed/collisions_keys.py). The runs are walked in merged order
// (two pointers for two runs, a heap of the run heads for more) and a value equal to the one
// before it is a repeat: O(n log R), no sort, no merged copy.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <functional>
#include <queue>
#include <utility>
#include <vector>

#include "activation_hash/checks.h"

namespace activation_hash::cpu {
namespace {

at::Tensor repeated_in_runs_cpu(const at::Tensor& keys, const at::Tensor& run_ptr) {
  check_1d(keys, at::kLong, "keys");
  check_1d(run_ptr, at::kLong, "run_ptr");
  TORCH_CHECK_VALUE(run_ptr.size(0) >= 1, "run_ptr must have runs + 1 >= 1 entries");
  const at::Tensor k = keys.contiguous(), rp = run_ptr.contiguous();
  const int64_t n = k.size(0), R = rp.size(0) - 1;
  const int64_t* ptr = rp.const_data_ptr<int64_t>();
  check_offsets(ptr, R, n, "run_ptr");
  const int64_t* src = k.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r)
    for (int64_t i = ptr[r] + 1; i < ptr[r + 1]; ++i)
      TORCH_CHECK_VALUE(src[i - 1] <= src[i], "run ", r, " of keys is not sorted (at ", i, ")");
  // walk the runs in merged order without writing the merge (no array of n: fresh pages
  // cost about 1 us each here); a value equal to the one before it repeats
  std::vector<int64_t> out;
  bool have_prev = false;
  int64_t prev = 0;
  auto visit = [&](int64_t v) {
    if (have_prev && v == prev) {
      if (out.empty() || out.back() != v) out.push_back(v);
    }
    prev = v, have_prev = true;
  };
  if (R <= 2) {
    int64_t i = 0, ie = R >= 1 ? ptr[1] : 0, j = ie, je = R == 2 ? ptr[2] : ie;
    while (i < ie && j < je) {  // branch-free: random keys make the comparison unpredictable
      const int64_t x = src[i], y = src[j];
      const bool take_x = x <= y;
      visit(take_x ? x : y);
      i += take_x;
      j += !take_x;
    }
    while (i < ie) visit(src[i++]);
    while (j < je) visit(src[j++]);
  } else {  // a min-heap of the runs' heads
    using Head = std::pair<int64_t, int64_t>;  // (value, position)
    std::priority_queue<Head, std::vector<Head>, std::greater<Head>> heads;
    std::vector<int64_t> end_of(n + 1, 0);
    for (int64_t r = 0; r < R; ++r)
      if (ptr[r] < ptr[r + 1]) heads.emplace(src[ptr[r]], ptr[r]), end_of[ptr[r]] = ptr[r + 1];
    while (!heads.empty()) {
      const auto [v, at] = heads.top();
      heads.pop();
      visit(v);
      if (at + 1 < end_of[at]) heads.emplace(src[at + 1], at + 1), end_of[at + 1] = end_of[at];
    }
  }
  at::Tensor res = at::empty({int64_t(out.size())}, k.options());
  if (!out.empty())
    std::memcpy(res.mutable_data_ptr<int64_t>(), out.data(), out.size() * sizeof(int64_t));
  return res;
}

}  // namespace

TORCH_LIBRARY_IMPL(activation_hash, CPU, m) { m.impl("repeated_in_runs", &repeated_in_runs_cpu); }

}  // namespace activation_hash::cpu
