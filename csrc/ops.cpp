// The one place where the operator schemas of namespace `activation_hash` are declared, one
// block per op family (pack, fingerprint, hamming). Kernels register against these names in
// csrc/cpu/<family>.cpp (CPU) and csrc/cuda/<family>.cu (CUDA); csrc/README.md says how to
// add a family.
#include <Python.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "eager.h"
#include "recorder.h"

extern "C" {
// `import activation_hash._C` loads this shared library and so runs the registrations below;
// the module's own methods are the eager entry points of csrc/eager.cpp, and it holds the
// recorder's core (csrc/recorder.cpp).
__attribute__((visibility("default"))) PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                          activation_hash::eager_methods()};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr && !activation_hash::add_recorder_core(module)) Py_CLEAR(module);
  return module;
}
}

TORCH_LIBRARY(activation_hash, m) {
  // ---- pack (csrc/cpu/pack.cpp, csrc/cuda/pack.cu; autograd in csrc/autograd.cpp) ----
  // x [B, ...] float -> words int64 [B, ceil(n / 64)], bit j = x[b].flatten()[j] > 0.
  m.def("pack_signs(Tensor x) -> Tensor");
  // x [B, ...] -> (y = ReLU or LeakyReLU of x, same shape; words = pack_signs(x)).
  m.def("relu_pack(Tensor x, float negative_slope) -> (Tensor, Tensor)");
  // grad_y [B, ...], words [B, W] -> grad_x = grad_y where the bit is 1, else grad_y * slope.
  m.def("relu_mask_backward(Tensor grad_y, Tensor words, float negative_slope) -> Tensor");
  // words int64 [B, W] -> bool [B, n], the inverse of pack_signs on the first n bits.
  m.def("unpack_bits(Tensor words, int n) -> Tensor");
  // ---- end pack ----
  // ---- fingerprint (csrc/cpu/fingerprint.cpp, csrc/cuda/fingerprint.cu) ----
  // codes int64 [N, W] -> int64 [N, 2], a 128-bit fingerprint of each row
  // (activation_hash/fingerprint.h); with ends (non-decreasing word counts <= W): [N, P, 2],
  // the fingerprints of the prefixes codes[:, :ends[p]], all in one pass.
  m.def("fingerprint128(Tensor codes, int[]? ends=None) -> Tensor");
  // codes int64 [N, W] -> int64 [N]: the first half of fingerprint128 with its low index_bits
  // bits replaced by the row index (N <= 2^index_bits, index_bits in [0, 62]): a sort key.
  m.def("fingerprint_key(Tensor codes, int index_bits) -> Tensor");
  // ---- end fingerprint ----
  // ---- hamming (csrc/cpu/hamming.cpp, csrc/cuda/hamming.cu) ----
  // a int64 [N, W], b int64 [M, W] -> int32 [N, M], popcount(a[i] ^ b[j]).
  m.def("hamming_distance(Tensor a, Tensor b) -> Tensor");
  // queries [Q, W], base [M, W], 0 <= k <= M -> (dist int32 [Q, k], idx int64 [Q, k]): the k
  // nearest base rows of each query, ascending by (distance, index): ties -> lower index.
  m.def("hamming_topk(Tensor queries, Tensor base, int k) -> (Tensor, Tensor)");
  // codes [N, W] -> int32 [max(N - 1, 0)], distance of row i to row i + 1.
  m.def("hamming_consecutive(Tensor codes) -> Tensor");
  // ---- end hamming ----
  // ---- regions (csrc/cpu/regions.cpp; CPU only) ----
  // One ReLU-like layer (slope negative_slope) of the layer-by-layer walk of MLP segments, on
  // P pieces [lo, hi) (float64 [P]) of S segments (seg_ptr int64 [S + 1]) in G groups
  // (group_ptr [G + 1]; every segment begins a group). A piece's pre-activation is
  // za + (t - lo) zb over n units: zb = first_dir [G, n] for a group's first piece, else the
  // previous piece's zb + sum_k flip_coef[k] * weight_t[flip_unit[k]] (k in flip_ptr [P + 1];
  // weight_t [n_in, n]); za starts at start_value [S, n] and runs by za + (lo' - lo) zb.
  // Each piece is cut at its zero crossings in (lo + tol, hi - tol) (crossings within tol of
  // the previous one: one cut); each child is decided at its midpoint (z > 0: on). Writes
  // first_out [P, n]: the masked zb of each piece's first child (f * zb, f = 1 on, slope off),
  // and returns (child_ptr [P + 1], child_lo [C], child_hi [C], words int64 [C, ceil(n / 64)],
  // start_value' [S, n] (masked za at each segment's start), flip_ptr' [C + 1], flip_unit'
  // (units in [0, n)), flip_coef' (float64, (f_new - f_old) * zb)): the next layer's input
  // once first_out and start_value' went through its Linear. ValueError when a segment has
  // more than max_pieces children. last (no next layer): first_out is [0, n], start_value'
  // is [0, n] and there are no flips (flip_ptr' all 0).
  m.def("split_pieces(Tensor first_dir, Tensor group_ptr, Tensor flip_ptr, Tensor flip_unit, "
        "Tensor flip_coef, Tensor weight_t, Tensor start_value, Tensor lo, Tensor hi, "
        "Tensor seg_ptr, float negative_slope, float tol, int max_pieces, bool last, "
        "Tensor(a!) first_out) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
        "Tensor)");
  // ---- end regions ----
  // ---- runs (csrc/cpu/runs.cpp; CPU only) ----
  // keys int64 [n], R sorted runs (run_ptr int64 [R + 1], from 0 to n) -> int64 [K]: the
  // distinct values occurring more than once in keys, ascending.
  m.def("repeated_in_runs(Tensor keys, Tensor run_ptr) -> Tensor");
  // ---- end runs ----
  // Which CPU kernels run time dispatch chose: "avx512", "avx2" or "scalar".
  m.def("cpu_isa() -> str", [] { return std::string(activation_hash::cpu::isa_name()); });
  // The kernel family of each op group, "hamming=... pack=... fingerprint=..." (cpu/isa.h).
  m.def("cpu_kernels() -> str", [] { return activation_hash::cpu::kernel_names(); });
}
