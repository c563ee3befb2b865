"""Pure-PyTorch versions of every op: the test oracle, and the fallback without the extension.

Each function has the same arguments, results and errors as the compiled op of the same name
(``torch.ops.activation_hash.<name>``). Bit layout (docs/design.md): bit j of a row lives in
int64 word j // 64 at bit j % 64; padding bits are 0. As little-endian bytes this is
``np.packbits(bits, bitorder="little")``.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from activation_hash.layout import WORD_BITS, units_per_sample, words_for_bits

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

if sys.byteorder != "little":  # the int64 <-> byte views below assume it
    raise ImportError("activation_hash supports little-endian hosts only")


def check_activation(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"{name} must have a batch dimension [B, ...], got a 0-dim tensor")


def check_words(words: torch.Tensor, batch: int, n: int, name: str = "words") -> None:
    if not isinstance(words, torch.Tensor) or words.dtype != torch.int64:
        got = words.dtype if isinstance(words, torch.Tensor) else type(words).__name__
        raise TypeError(f"{name} must be int64 packed words, got {got}")
    if words.dim() != 2:
        raise ValueError(f"{name} must be 2-D [B, W], got shape {list(words.shape)}")
    want = [batch, words_for_bits(n)]
    if list(words.shape) != want:
        raise ValueError(f"{name} must have shape {want} for {batch} samples of {n} units, "
                         f"got {list(words.shape)}")


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool ``[B, n]`` -> int64 words ``[B, ceil(n / 64)]``."""
    B, n = bits.shape
    W = words_for_bits(n)
    if W == 0:  # no bits: a [B, 0] view cannot be reinterpreted as int64
        return torch.zeros(B, 0, dtype=torch.int64, device=bits.device)
    padded = torch.zeros(B, W * WORD_BITS, dtype=torch.uint8, device=bits.device)
    padded[:, :n] = bits
    weights = (1 << torch.arange(8, device=bits.device, dtype=torch.int32)).to(torch.uint8)
    packed = (padded.view(B, W * 8, 8) * weights).sum(-1, dtype=torch.int32).to(torch.uint8)
    return packed.view(torch.int64).reshape(B, W)


def pack_signs(x: torch.Tensor) -> torch.Tensor:
    """x ``[B, ...]`` float -> int64 ``[B, ceil(n / 64)]``, bit j = ``x[b].flatten()[j] > 0``."""
    check_activation(x)
    return pack_bits(x.reshape(x.shape[0], units_per_sample(x)) > 0)


def relu_pack(x: torch.Tensor, negative_slope: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x -> (ReLU or LeakyReLU of x, pack_signs(x))."""
    check_activation(x)
    y = torch.relu(x) if negative_slope == 0.0 else F.leaky_relu(x, negative_slope)
    return y, pack_signs(x)


def unpack_bits(words: torch.Tensor, n: int) -> torch.Tensor:
    """int64 words ``[B, W]`` -> bool ``[B, n]``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if isinstance(words, torch.Tensor) and words.dim() != 2:
        raise ValueError(f"words must be 2-D [B, W], got shape {list(words.shape)}")
    check_words(words, words.shape[0] if isinstance(words, torch.Tensor) else 0, n)
    B, W = words.shape
    as_bytes = words.contiguous().view(torch.uint8).reshape(B, W * 8, 1)
    shifts = torch.arange(8, device=words.device, dtype=torch.uint8)
    bits = ((as_bytes >> shifts) & 1).reshape(B, W * WORD_BITS)
    return bits[:, :n].to(torch.bool)


def relu_mask_backward(grad_y: torch.Tensor, words: torch.Tensor,
                       negative_slope: float) -> torch.Tensor:
    """grad_y ``[B, ...]``, words ``[B, W]`` -> grad_x: grad_y where the bit is 1, else
    ``grad_y * negative_slope`` (0 for slope 0)."""
    check_activation(grad_y, "grad_y")
    n = units_per_sample(grad_y)
    check_words(words, grad_y.shape[0], n)
    on = unpack_bits(words, n).reshape(grad_y.shape)
    off = torch.zeros_like(grad_y) if negative_slope == 0.0 else grad_y * negative_slope
    return torch.where(on, grad_y, off).contiguous()


# ---- fingerprint128 -------------------------------------------------------------------------
# Two independent 64-bit streams over the words of a row (uint64 arithmetic, wrapping; torch's
# int64 multiply, add and left shift wrap the same way). Per word w, for stream s:
#     k = rotl(w * M[s], R1[s]) * N[s];   h = rotl(h ^ k, R2[s]) * 5 + D[s]
# starting from h = SEED[s]; a prefix of m words is finalised as fmix(h ^ m) with
#     fmix(h): h ^= h >> 32; h *= F1; h ^= h >> 29; h *= F2; h ^= h >> 32   (logical shifts).
# csrc/include/activation_hash/fingerprint.h is the same function in C++/CUDA.
FP_M = (0xE71B9592244ECECB, 0xFF3F3F8CFE53B313)
FP_N = (0x3FCB4B70F79A7FFD, 0xE427F474114D9FCF)
FP_SEED = (0x3BCE14AB261DB1D5, 0x15D25341EDC5FE85)
FP_D = (0x2A438F2A3172F443, 0x23EB71643AC5C727)
FP_R1 = (31, 33)
FP_R2 = (27, 29)
FP_F1 = 0xF4A3CC3052800E05
FP_F2 = 0x09C9C31AE2F93909


def _s64(u: int) -> int:
    """A uint64 constant as the int64 with the same bits."""
    return u - (1 << 64) if u >= 1 << 63 else u


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _rotl(x: torch.Tensor, r: int) -> torch.Tensor:
    return (x << r) | _shr(x, 64 - r)


def _fmix(h: torch.Tensor) -> torch.Tensor:
    h = h ^ _shr(h, 32)
    h = h * _s64(FP_F1)
    h = h ^ _shr(h, 29)
    h = h * _s64(FP_F2)
    return h ^ _shr(h, 32)


def check_fingerprint_args(codes: torch.Tensor, ends) -> list[int] | None:
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.int64:
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise TypeError(f"codes must be int64 packed words [N, W], got {got}")
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D [N, W], got shape {list(codes.shape)}")
    if ends is None:
        return None
    ends = [int(e) for e in ends]
    W = codes.shape[1]
    prev = 0
    for e in ends:
        if not prev <= e <= W:
            raise ValueError(f"ends must be non-decreasing word counts in [0, {W}], got {ends}")
        prev = e
    return ends


def fingerprint128(codes: torch.Tensor, ends=None) -> torch.Tensor:
    """128-bit fingerprint of each row. codes int64 ``[N, W]`` -> int64 ``[N, 2]``; with
    ``ends`` (non-decreasing word counts) -> ``[N, len(ends), 2]``, entry p the fingerprint of
    the prefix ``codes[:, :ends[p]]`` (all prefixes in one pass over the words)."""
    ends_l = check_fingerprint_args(codes, ends)
    want = [codes.shape[1]] if ends_l is None else ends_l
    N = codes.shape[0]
    out = torch.empty(N, len(want), 2, dtype=torch.int64, device=codes.device)
    h = [torch.full((N,), _s64(FP_SEED[s]), dtype=torch.int64, device=codes.device)
         for s in range(2)]
    p = 0
    for j in range(max(want, default=0) + 1):
        while p < len(want) and want[p] == j:
            for s in range(2):
                out[:, p, s] = _fmix(h[s] ^ j)
            p += 1
        if j == codes.shape[1] or p == len(want):
            break
        w = codes[:, j]
        for s in range(2):
            k = _rotl(w * _s64(FP_M[s]), FP_R1[s]) * _s64(FP_N[s])
            h[s] = _rotl(h[s] ^ k, FP_R2[s]) * 5 + _s64(FP_D[s])
    return out[:, 0] if ends_l is None else out


# ---- Hamming distances -----------------------------------------------------------------------

# popcount of every byte value
_BYTE_POPCOUNT = torch.tensor([bin(v).count("1") for v in range(256)], dtype=torch.int32)


def check_codes(codes: torch.Tensor, name: str) -> None:
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.int64:
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise TypeError(f"{name} must be int64 packed words [N, W], got dtype {got}")
    if codes.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, W] packed words, got shape {list(codes.shape)}")


def check_code_pair(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    check_codes(a, na)
    check_codes(b, nb)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{na} and {nb} must have the same number of words per row, got {na} "
                         f"of shape {list(a.shape)} and {nb} of shape {list(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"{na} is on {a.device} but {nb} is on {b.device}")


def _popcount_rows(x: torch.Tensor) -> torch.Tensor:
    """int64 [..., W] -> int32 [...]: popcount of each row, through a byte table."""
    if x.numel() == 0:  # an empty tensor may keep strides that forbid the byte view
        return torch.zeros(x.shape[:-1], dtype=torch.int32, device=x.device)
    lut = _BYTE_POPCOUNT.to(x.device)
    by = x.contiguous().view(torch.uint8).to(torch.int64)
    return lut[by].sum(-1, dtype=torch.int32)


def hamming_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a int64 ``[N, W]``, b int64 ``[M, W]`` -> int32 ``[N, M]``: popcount of ``a[i] ^ b[j]``."""
    check_code_pair(a, b, "a", "b")
    N, M = a.shape[0], b.shape[0]
    out = torch.empty(N, M, dtype=torch.int32, device=a.device)
    step = max(1, (1 << 22) // max(1, M * max(1, a.shape[1])))  # rows of a per chunk
    for i in range(0, N, step):
        out[i:i + step] = _popcount_rows(a[i:i + step, None, :] ^ b[None, :, :])
    return out


def hamming_topk(queries: torch.Tensor, base: torch.Tensor,
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """queries ``[Q, W]``, base ``[M, W]`` -> (dist int32 ``[Q, k]``, idx int64 ``[Q, k]``): the
    k nearest base rows, ascending by (distance, index) (a stable sort: ties -> lower index)."""
    check_code_pair(queries, base, "queries", "base")
    M = base.shape[0]
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k > M:
        raise ValueError(f"k must be <= the number of base rows ({M}), got k={k}")
    d = hamming_distance(queries, base)
    values, idx = torch.sort(d, dim=1, stable=True)
    return values[:, :k].contiguous(), idx[:, :k].contiguous()


def hamming_consecutive(codes: torch.Tensor) -> torch.Tensor:
    """codes ``[N, W]`` -> int32 ``[max(N - 1, 0)]``: distance of row i to row i + 1."""
    check_codes(codes, "codes")
    if codes.shape[0] < 2:
        return torch.empty(0, dtype=torch.int32, device=codes.device)
    return _popcount_rows(codes[1:] ^ codes[:-1])


def check_key_args(codes: torch.Tensor, index_bits: int) -> None:
    check_fingerprint_args(codes, None)
    if isinstance(index_bits, bool) or not isinstance(index_bits, int) or \
            not 0 <= index_bits <= 62:
        raise ValueError(f"index_bits must be an int in [0, 62], got {index_bits!r}")
    if codes.shape[0] > 1 << index_bits:
        raise ValueError(f"index_bits={index_bits} cannot number {codes.shape[0]} rows "
                         f"(at most 2^index_bits)")


def fingerprint_key(codes: torch.Tensor, index_bits: int) -> torch.Tensor:
    """Sort key of each row: codes int64 ``[N, W]`` -> int64 ``[N]``, the first half of
    :func:`fingerprint128` with its low ``index_bits`` bits replaced by the row index."""
    check_key_args(codes, index_bits)
    low = (1 << index_bits) - 1
    rows = torch.arange(codes.shape[0], dtype=torch.int64, device=codes.device)
    return (fingerprint128(codes)[:, 0] & ~low) | rows
