"""Python face of the compiled ops: loading, fake (meta) implementations, autograd.

Every op lives in ``torch.ops.activation_hash`` (schemas in csrc/ops.cpp). When the compiled
extension cannot be loaded, the functions here run the pure-PyTorch versions of
:mod:`activation_hash.reference` instead, after one warning; :func:`backend` tells which.
Set ``ACTIVATION_HASH_REQUIRE_EXTENSION=1`` to make a missing extension an error, and
``ACTIVATION_HASH_BACKEND=reference`` to use the reference even when the extension is built.
"""
from __future__ import annotations

import os
import warnings

import torch

from activation_hash import reference
from activation_hash.layout import units_per_sample, words_for_bits
from activation_hash.validation import check_int

try:
    if os.environ.get("ACTIVATION_HASH_BACKEND") == "reference":
        raise ImportError("ACTIVATION_HASH_BACKEND=reference")
    from activation_hash import _C  # noqa: F401  (registers torch.ops.activation_hash.*)

    _LOAD_ERROR: Exception | None = None
except ImportError as err:
    _LOAD_ERROR = err
    if os.environ.get("ACTIVATION_HASH_REQUIRE_EXTENSION") == "1":
        raise ImportError(
            "activation_hash: the compiled extension was required "
            "(ACTIVATION_HASH_REQUIRE_EXTENSION=1) but could not be loaded") from err
    warnings.warn(
        f"activation_hash: compiled extension not available ({err}); using the pure-PyTorch "
        "reference kernels, which are correct but slower. Build it with `make build`.",
        RuntimeWarning, stacklevel=2)

HAS_EXTENSION = _LOAD_ERROR is None


def backend() -> str:
    """``"extension"`` when the compiled kernels are in use, else ``"reference"``."""
    return "extension" if HAS_EXTENSION else "reference"


_ISA_CAPS = ("scalar", "avx2", "avx512")
if os.environ.get("ACTIVATION_HASH_ISA", "scalar") not in _ISA_CAPS:
    warnings.warn(f"ACTIVATION_HASH_ISA={os.environ['ACTIVATION_HASH_ISA']!r} is none of "
                  f"{', '.join(_ISA_CAPS)}: ignored (the kernels are not capped)",
                  RuntimeWarning, stacklevel=2)


def cpu_isa() -> str:
    """The CPU kernel level chosen at run time: ``"avx512"`` (AVX-512 F/BW/DQ/VL),
    ``"avx2"`` or ``"scalar"`` (``"reference"`` without the extension); capped by
    ``ACTIVATION_HASH_ISA=scalar|avx2|avx512``, read once per process."""
    return torch.ops.activation_hash.cpu_isa() if HAS_EXTENSION else "reference"


def cpu_kernels() -> dict[str, str]:
    """The kernel family of each CPU op group at this level, e.g. ``{"hamming": "avx2",
    "pack": "avx512", "fingerprint": "avx512"}`` on an AVX-512 CPU without VPOPCNTDQ (the
    AVX-512 Hamming kernels need it); ``{}`` without the extension."""
    if not HAS_EXTENSION:
        return {}
    return dict(kv.split("=") for kv in torch.ops.activation_hash.cpu_kernels().split())


def cuda_built() -> bool:
    """Whether the extension holds CUDA kernels (registered for the CUDA dispatch key)."""
    return HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key(
        "activation_hash::pack_signs", "CUDA")


# ---- fake implementations (shapes only), for torch.compile and meta tensors -------------

if HAS_EXTENSION:
    _ops = torch.ops.activation_hash

    def _words_like(x: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0], words_for_bits(units_per_sample(x))), dtype=torch.int64)

    @torch.library.register_fake("activation_hash::pack_signs")
    def _pack_signs_fake(x):
        reference.check_activation(x)
        return _words_like(x)

    @torch.library.register_fake("activation_hash::relu_pack")
    def _relu_pack_fake(x, negative_slope):
        reference.check_activation(x)
        return torch.empty_like(x), _words_like(x)

    @torch.library.register_fake("activation_hash::relu_mask_backward")
    def _relu_mask_backward_fake(grad_y, words, negative_slope):
        reference.check_activation(grad_y, "grad_y")
        return torch.empty_like(grad_y, memory_format=torch.contiguous_format)

    @torch.library.register_fake("activation_hash::unpack_bits")
    def _unpack_bits_fake(words, n):
        return words.new_empty((words.shape[0], n), dtype=torch.bool)

    # Autograd of relu_pack / relu_mask_backward is registered in C++ (csrc/autograd.cpp).

    @torch.library.register_fake("activation_hash::fingerprint128")
    def _fingerprint128_fake(codes, ends=None):
        ends = reference.check_fingerprint_args(codes, ends)
        if ends is None:
            return codes.new_empty((codes.shape[0], 2), dtype=torch.int64)
        return codes.new_empty((codes.shape[0], len(ends), 2), dtype=torch.int64)

    @torch.library.register_fake("activation_hash::fingerprint_key")
    def _fingerprint_key_fake(codes, index_bits):
        reference.check_key_args(codes, index_bits)
        return codes.new_empty((codes.shape[0],), dtype=torch.int64)

    @torch.library.register_fake("activation_hash::hamming_distance")
    def _hamming_distance_fake(a, b):
        reference.check_code_pair(a, b, "a", "b")
        return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.int32)

    @torch.library.register_fake("activation_hash::hamming_topk")
    def _hamming_topk_fake(queries, base, k):
        reference.check_code_pair(queries, base, "queries", "base")
        return (queries.new_empty((queries.shape[0], k), dtype=torch.int32),
                queries.new_empty((queries.shape[0], k), dtype=torch.int64))

    @torch.library.register_fake("activation_hash::hamming_consecutive")
    def _hamming_consecutive_fake(codes):
        reference.check_codes(codes, "codes")
        n = codes.shape[0]
        return codes.new_empty((torch.sym_max(n - 1, 0),), dtype=torch.int32)

    if hasattr(_ops, "split_pieces"):
        @torch.library.register_fake("activation_hash::split_pieces")
        def _split_pieces_fake(first_dir, group_ptr, flip_ptr, flip_unit, flip_coef, weight_t,
                               start_value, lo, hi, seg_ptr, negative_slope, tol, max_pieces,
                               last, first_out):
            reference.check_split_args(first_dir, group_ptr, flip_ptr, flip_unit, flip_coef,
                                       weight_t, start_value, lo, hi, seg_ptr, tol, max_pieces)
            reference.check_first_out(first_out, 0 if last else lo.shape[0], first_dir.shape[1])
            ctx = torch.library.get_ctx()
            C, FC = ctx.new_dynamic_size(), ctx.new_dynamic_size()
            n, P = first_dir.shape[1], lo.shape[0]
            i64 = dict(dtype=torch.int64)
            return (lo.new_empty((P + 1,), **i64), lo.new_empty((C,)), lo.new_empty((C,)),
                    lo.new_empty((C, words_for_bits(n)), **i64),
                    start_value.new_empty((0 if last else start_value.shape[0], n)),
                    lo.new_empty((C + 1,), **i64), lo.new_empty((FC,), **i64),
                    lo.new_empty((FC,)))

    if hasattr(_ops, "repeated_in_runs"):
        @torch.library.register_fake("activation_hash::repeated_in_runs")
        def _repeated_in_runs_fake(keys, run_ptr):
            return keys.new_empty((torch.library.get_ctx().new_dynamic_size(),))

HAS_SPLIT = HAS_EXTENSION and hasattr(torch.ops.activation_hash, "split_pieces")
HAS_RUNS = HAS_EXTENSION and hasattr(torch.ops.activation_hash, "repeated_in_runs")


class _ReferenceReluPack(torch.autograd.Function):
    """Fallback autograd for relu_pack without the extension (also saves only the words)."""

    @staticmethod
    def forward(ctx, x, negative_slope):
        y, words = reference.relu_pack(x, negative_slope)
        ctx.save_for_backward(words)
        ctx.negative_slope = negative_slope
        ctx.mark_non_differentiable(words)
        return y, words

    @staticmethod
    def backward(ctx, grad_y, grad_words):
        (words,) = ctx.saved_tensors
        return reference.relu_mask_backward(grad_y, words, ctx.negative_slope), None


# ---- the public functions ----------------------------------------------------------------

def _tensor(x, name: str, fn: str, want: str) -> None:
    """TypeError naming the argument when it is not a tensor (instead of the op schema's
    multi-line RuntimeError)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor ({want}), got {type(x).__name__}")


# The ops called once per activation per forward pass (a recorded model's, a converted one's)
# have eager entry points of their own (csrc/eager.cpp): on a 64 x 64 input right after a forward
# pass, relu_pack cost about 6 us through `_ops.relu_pack.default(...)`, whose arguments go
# through the schema to a boxed call. The entries call the same op through the dispatcher, but
# see no __torch_function__: they are used for a plain torch.Tensor with no TorchFunctionMode
# on, outside torch.compile (which traces the overload); everything else calls the overload.
if HAS_EXTENSION:
    _PACK_SIGNS, _RELU_PACK = _ops.pack_signs.default, _ops.relu_pack.default
    from activation_hash._C import pack_signs_eager as _pack_signs_eager
    from activation_hash._C import relu_pack_eager as _relu_pack_eager
_is_compiling = torch.compiler.is_compiling
_function_mode_on = getattr(torch._C, "_is_torch_function_mode_enabled", lambda: True)
_Tensor = torch.Tensor


def pack_signs(x: torch.Tensor) -> torch.Tensor:
    """Packed signs of a batch. x ``[B, ...]`` float -> int64 ``[B, ceil(n / 64)]`` where n is
    the per-sample size and bit j is ``x[b].flatten()[j] > 0`` (logical C order, any memory
    format; -0.0 and NaN give 0)."""
    if not HAS_EXTENSION:
        _tensor(x, "x", "pack_signs", "float [B, ...]")
        return reference.pack_signs(x)
    if type(x) is _Tensor and not (_is_compiling() or _function_mode_on()):
        return _pack_signs_eager(x)
    _tensor(x, "x", "pack_signs", "float [B, ...]")
    return _PACK_SIGNS(x)


def relu_pack(x: torch.Tensor, negative_slope: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU (``negative_slope == 0``) or LeakyReLU of x and its packed signs, in one pass.

    Returns ``(y, words)``: y like ``torch.relu(x)`` / ``F.leaky_relu(x, negative_slope)``
    (same values, same memory format), words as :func:`pack_signs`. Differentiable in x;
    autograd saves only the words for backward.
    """
    negative_slope = float(negative_slope)
    if not HAS_EXTENSION:
        _tensor(x, "x", "relu_pack", "float [B, ...]")
        return _ReferenceReluPack.apply(x, negative_slope)
    if type(x) is _Tensor and not (_is_compiling() or _function_mode_on()):
        return _relu_pack_eager(x, negative_slope)
    _tensor(x, "x", "relu_pack", "float [B, ...]")
    return _RELU_PACK(x, negative_slope)


def relu_mask_backward(grad_y: torch.Tensor, words: torch.Tensor,
                       negative_slope: float = 0.0) -> torch.Tensor:
    """Gradient through a ReLU/LeakyReLU from its packed signs. grad_y ``[B, ...]``, words
    ``[B, W]`` -> grad_x ``[B, ...]`` (contiguous)."""
    _tensor(grad_y, "grad_y", "relu_mask_backward", "float [B, ...]")
    _tensor(words, "words", "relu_mask_backward", "int64 [B, W]")
    negative_slope = float(negative_slope)
    if HAS_EXTENSION:
        return _ops.relu_mask_backward.default(grad_y, words, negative_slope)
    return reference.relu_mask_backward(grad_y, words, negative_slope)


def unpack_bits(words: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_signs`: int64 words ``[B, W]`` -> bool ``[B, n]``."""
    _tensor(words, "words", "unpack_bits", "int64 [B, W]")
    return _ops.unpack_bits(words, int(n)) if HAS_EXTENSION else reference.unpack_bits(words, n)


def fingerprint_key(codes: torch.Tensor, index_bits: int) -> torch.Tensor:
    """Sort key of each code row: int64 ``[N, W]`` -> int64 ``[N]``, the first 64 bits of
    :func:`fingerprint128` with the low ``index_bits`` bits replaced by the row index
    (``N <= 2**index_bits``). One value sort of the keys groups the rows whose fingerprints
    agree above those bits, and the low bits of the sorted keys are the permutation."""
    _tensor(codes, "codes", "fingerprint_key", "int64 [N, W]")
    if HAS_EXTENSION:
        return _ops.fingerprint_key(codes, int(index_bits))
    return reference.fingerprint_key(codes, index_bits)


def fingerprint128(codes: torch.Tensor, ends=None) -> torch.Tensor:
    """128-bit fingerprint of each code row, as two int64 halves (reference.py gives the hash).

    codes int64 ``[N, W]`` -> int64 ``[N, 2]``. With ``ends`` (non-decreasing word counts in
    ``[0, W]``) -> ``[N, len(ends), 2]``: the fingerprints of the prefixes ``codes[:, :e]``,
    all computed in one read of the codes (used for per-layer collision profiles).
    """
    _tensor(codes, "codes", "fingerprint128", "int64 [N, W]")
    if HAS_EXTENSION:
        return _ops.fingerprint128(codes, None if ends is None else [int(e) for e in ends])
    return reference.fingerprint128(codes, ends)


# ---- Hamming distances (csrc/cpu/hamming.cpp, csrc/cuda/hamming.cu) ----------------------

def hamming_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamming distances of packed codes: a int64 ``[N, W]``, b int64 ``[M, W]`` -> int32
    ``[N, M]`` (popcount of ``a[i] ^ b[j]``; padding bits are 0 so they add nothing)."""
    _tensor(a, "a", "hamming_distance", "int64 [N, W]")
    _tensor(b, "b", "hamming_distance", "int64 [M, W]")
    if HAS_EXTENSION:
        return _ops.hamming_distance.default(a, b)
    return reference.hamming_distance(a, b)


def hamming_topk(queries: torch.Tensor, base: torch.Tensor,
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest base rows of each query, streaming over the base (no ``[Q, M]`` matrix).

    queries int64 ``[Q, W]``, base int64 ``[M, W]``, ``0 <= k <= M`` (``k > M`` raises
    ValueError) -> (dist int32 ``[Q, k]``, idx int64 ``[Q, k]``), ascending by distance; equal
    distances are ordered by base index, so the result equals a stable full sort.
    CPU: per-query heaps over L1-sized base tiles (AVX-512 VPOPCNTDQ / POPCNT / portable).
    CUDA: one pass over the base for 32 queries per block (sorted per-query lists, k <= 128),
    the base split into slices when the queries are few; larger k falls back to chunked
    distances + a stable sort.
    """
    _tensor(queries, "queries", "hamming_topk", "int64 [Q, W]")
    _tensor(base, "base", "hamming_topk", "int64 [M, W]")
    k = check_int(k, "k")  # its range is checked by the op (with the number of base rows)
    if HAS_EXTENSION:
        return _ops.hamming_topk.default(queries, base, k)
    return reference.hamming_topk(queries, base, k)


def hamming_consecutive(codes: torch.Tensor) -> torch.Tensor:
    """Distances between successive rows (walks): codes ``[N, W]`` -> int32
    ``[max(N - 1, 0)]``, element i = distance of row i to row i + 1."""
    _tensor(codes, "codes", "hamming_consecutive", "int64 [N, W]")
    if HAS_EXTENSION:
        return _ops.hamming_consecutive.default(codes)
    return reference.hamming_consecutive(codes)


# ---- regions (csrc/cpu/regions.cpp) --------------------------------------------------------

def split_pieces(first_dir, group_ptr, flip_ptr, flip_unit, flip_coef, weight_t, start_value,
                 lo, hi, seg_ptr, negative_slope: float, tol: float, max_pieces: int,
                 last: bool = False, first_out: torch.Tensor | None = None):
    """One ReLU-like layer of the layer-by-layer walk of MLP segments (CPU tensors, float64
    values, int64 offsets): every piece cut at its zero crossings, every child decided at its
    midpoint. Arguments and results: the schema's comment in csrc/ops.cpp; ``first_out``
    (float64 ``[P, n]``, ``[0, n]`` when ``last``; allocated when None) is written and
    returned first, then the op's eight results. activation_hash/regions_layers.py drives it."""
    if first_out is None:
        first_out = torch.empty((0 if last else lo.shape[0], first_dir.shape[1]),
                                dtype=torch.float64)
    args = (first_dir, group_ptr, flip_ptr, flip_unit, flip_coef, weight_t, start_value, lo,
            hi, seg_ptr, float(negative_slope), float(tol), check_int(max_pieces, "max_pieces"),
            bool(last), first_out)
    if HAS_SPLIT:
        return (first_out, *_ops.split_pieces.default(*args))
    return (first_out, *reference.split_pieces(*args))


# ---- runs (csrc/cpu/runs.cpp) --------------------------------------------------------------

def repeated_in_runs(keys: torch.Tensor, run_ptr: torch.Tensor) -> torch.Tensor:
    """keys int64 ``[n]`` made of sorted runs (``run_ptr`` int64 ``[R + 1]``) -> int64
    ``[K]``: the distinct values that occur more than once, ascending. CPU: the runs merged
    (O(n log R), no sort); other devices: a sort."""
    _tensor(keys, "keys", "repeated_in_runs", "int64 [n]")
    _tensor(run_ptr, "run_ptr", "repeated_in_runs", "int64 [R + 1]")
    if HAS_RUNS and keys.device.type == "cpu":
        return _ops.repeated_in_runs.default(keys, run_ptr)
    return reference.repeated_in_runs(keys, run_ptr)
