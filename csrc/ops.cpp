// The one place where the operator schemas of namespace `activation_hash` are declared, one
// block per op family (pack, fingerprint, hamming). Kernels register against these names in
// csrc/cpu/<family>.cpp (CPU) and csrc/cuda/<family>.cu (CUDA); csrc/README.md says how to
// add a family.
#include <Python.h>
#include <torch/library.h>

#include "cpu/isa.h"

extern "C" {
// `import activation_hash._C` loads this shared library and so runs the registrations below.
__attribute__((visibility("default"))) PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
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
  // Which CPU kernels run time dispatch chose: "avx512", "avx2" or "scalar".
  m.def("cpu_isa() -> str", [] { return std::string(activation_hash::cpu::isa_name()); });
  // The kernel family of each op group, "hamming=... pack=... fingerprint=..." (cpu/isa.h).
  m.def("cpu_kernels() -> str", [] { return activation_hash::cpu::kernel_names(); });
}
