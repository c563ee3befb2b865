"""Pure-PyTorch versions of every op: the test oracle, and the fallback without the extension.

Each function has the same arguments, results and errors as the compiled op of the same name
(``torch.ops.activation_hash.<name>``). Bit layout (docs/design.md): bit j of a row lives in
int64 word j // 64 at bit j % 64; padding bits are 0. As little-endian bytes this is
``np.packbits(bits, bitorder="little")``.
"""
from __future__ import annotations

import math
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


# ---- regions: one layer of the layer-by-layer segment walk (csrc/cpu/regions.cpp) --------

def _check_offsets(ptr: torch.Tensor, total: int, name: str) -> None:
    if ptr[0] != 0:
        raise ValueError(f"{name}[0] must be 0, got {int(ptr[0])}")
    if (ptr[1:] < ptr[:-1]).any():
        raise ValueError(f"{name} must not decrease")
    if ptr[-1] != total:
        raise ValueError(f"{name}[-1] must be {total}, got {int(ptr[-1])}")


def check_split_args(first_dir, group_ptr, flip_ptr, flip_unit, flip_coef, weight_t,
                     start_value, lo, hi, seg_ptr, tol, max_pieces) -> None:
    """The shape and dtype checks of :func:`split_pieces` (also its fake's)."""
    for name, t, dtype, dim in (("first_dir", first_dir, torch.float64, 2),
                                ("weight_t", weight_t, torch.float64, 2),
                                ("start_value", start_value, torch.float64, 2),
                                ("group_ptr", group_ptr, torch.int64, 1),
                                ("flip_ptr", flip_ptr, torch.int64, 1),
                                ("flip_unit", flip_unit, torch.int64, 1),
                                ("flip_coef", flip_coef, torch.float64, 1),
                                ("lo", lo, torch.float64, 1), ("hi", hi, torch.float64, 1),
                                ("seg_ptr", seg_ptr, torch.int64, 1)):
        if not isinstance(t, torch.Tensor) or t.dtype != dtype:
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"{name} must be {dtype}, got {got}")
        if t.dim() != dim:
            raise ValueError(f"{name} must be {dim}-D, got shape {list(t.shape)}")
        if t.device.type not in ("cpu", "meta"):
            raise ValueError(f"{name} must be on the CPU, got {t.device}")
    n, P = first_dir.shape[1], lo.shape[0]
    if group_ptr.shape[0] != first_dir.shape[0] + 1:
        raise ValueError(f"group_ptr must have {first_dir.shape[0] + 1} entries (groups + 1), "
                         f"got {group_ptr.shape[0]}")
    if hi.shape[0] != P:
        raise ValueError(f"lo and hi must have one length, got {P} and {hi.shape[0]}")
    if flip_ptr.shape[0] != P + 1:
        raise ValueError(f"flip_ptr must have {P + 1} entries (pieces + 1), got "
                         f"{flip_ptr.shape[0]}")
    if flip_coef.shape[0] != flip_unit.shape[0]:
        raise ValueError(f"flip_unit and flip_coef must have one length, got "
                         f"{flip_unit.shape[0]} and {flip_coef.shape[0]}")
    if weight_t.shape[1] != n:
        raise ValueError(f"weight_t must be [n_in, {n}] (the layer's weight transposed), got "
                         f"shape {list(weight_t.shape)}")
    if list(start_value.shape) != [seg_ptr.shape[0] - 1, n]:
        raise ValueError(f"start_value must be [segments, {n}] = [{seg_ptr.shape[0] - 1}, {n}],"
                         f" got shape {list(start_value.shape)}")
    if seg_ptr.shape[0] < 1:
        raise ValueError("seg_ptr must have segments + 1 >= 1 entries")
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be finite and >= 0, got {tol}")
    if max_pieces < 1:
        raise ValueError(f"max_pieces must be >= 1, got {max_pieces}")


def check_first_out(t, rows: int, n: int) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float64:
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"first_out must be torch.float64, got {got}")
    if list(t.shape) != [rows, n]:
        raise ValueError(f"first_out must have shape [{rows}, {n}], got {list(t.shape)}")
    if not t.is_contiguous():
        raise ValueError("first_out must be contiguous")


def _masked(v: torch.Tensor, on: torch.Tensor, slope: float) -> torch.Tensor:
    return torch.where(on, v, v * slope if slope != 0.0 else torch.zeros_like(v))


def split_pieces(first_dir, group_ptr, flip_ptr, flip_unit, flip_coef, weight_t, start_value,
                 lo, hi, seg_ptr, negative_slope, tol, max_pieces, last, first_out):
    """One ReLU-like layer of the layer-by-layer walk of MLP segments: every piece cut at its
    zero crossings, every child decided at its midpoint. The contract (arguments, first_out
    written, the eight results) is the schema's comment in csrc/ops.cpp."""
    check_split_args(first_dir, group_ptr, flip_ptr, flip_unit, flip_coef, weight_t,
                     start_value, lo, hi, seg_ptr, tol, max_pieces)
    check_first_out(first_out, 0 if last else lo.shape[0], first_dir.shape[1])
    G, n = first_dir.shape
    P, S, F = lo.shape[0], seg_ptr.shape[0] - 1, flip_unit.shape[0]
    _check_offsets(group_ptr, P, "group_ptr")
    _check_offsets(flip_ptr, F, "flip_ptr")
    _check_offsets(seg_ptr, P, "seg_ptr")
    starts = set(group_ptr.tolist())
    for s in range(S):
        if seg_ptr[s] != seg_ptr[s + 1] and int(seg_ptr[s]) not in starts:
            raise ValueError(f"every segment must begin a group: seg_ptr[{s}] = "
                             f"{int(seg_ptr[s])} is not in group_ptr")
    if F and not ((flip_unit >= 0) & (flip_unit < weight_t.shape[0])).all():
        raise ValueError(f"flip_unit holds a unit that is not a row of weight_t "
                         f"({weight_t.shape[0]} rows)")
    slope = float(negative_slope)
    group_of = torch.repeat_interleave(torch.arange(G), group_ptr.diff())
    start_out = torch.zeros_like(start_value)
    child_count = torch.zeros(P, dtype=torch.int64)
    c_lo, c_hi, c_on, c_flips, c_unit, c_coef = [], [], [], [], [], []
    for s in range(S):
        p0, p1 = int(seg_ptr[s]), int(seg_ptr[s + 1])
        za, zb, children = start_value[s].clone(), None, 0
        for p in range(p0, p1):
            if p > p0:
                za = za + (lo[p] - lo[p - 1]) * zb
            if p in starts:
                zb = first_dir[group_of[p]].clone()
            else:
                for k in range(int(flip_ptr[p]), int(flip_ptr[p + 1])):
                    zb = zb + flip_coef[k] * weight_t[flip_unit[k]]
            tc = lo[p] - za / zb
            inside = ((tc > lo[p] + tol) & (tc < hi[p] - tol)).nonzero().squeeze(1)
            tv = torch.sort(tc[inside], stable=True).values
            keep = torch.ones_like(tv, dtype=torch.bool)
            keep[1:] = tv[1:] > tv[:-1] + tol
            edges = torch.cat([lo[p:p + 1], tv[keep], hi[p:p + 1]])
            child_count[p] = edges.shape[0] - 1
            children += edges.shape[0] - 1
            if children > max_pieces:
                raise ValueError(f"a segment has more than max_pieces={max_pieces} pieces; "
                                 f"raise max_pieces")
            prev = None
            for c in range(edges.shape[0] - 1):
                nl, nh = edges[c], edges[c + 1]
                ar = za + (nl - lo[p]) * zb
                on = ar + (0.5 * (nh - nl)) * zb > 0
                c_lo.append(nl)
                c_hi.append(nh)
                c_on.append(on)
                if last:
                    c_flips.append(0)
                elif c == 0:
                    first_out[p] = _masked(zb, on, slope)
                    if p == p0:
                        start_out[s] = _masked(ar, on, slope)
                    c_flips.append(0)
                else:
                    units = (on != prev).nonzero().squeeze(1)
                    sign = torch.where(on[units], torch.tensor(1.0 - slope, dtype=torch.float64),
                                       torch.tensor(slope - 1.0, dtype=torch.float64))
                    c_unit.append(units)
                    c_coef.append(sign * zb[units])
                    c_flips.append(units.shape[0])
                prev = on
    f64 = dict(dtype=torch.float64)
    child_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), child_count.cumsum(0)])
    flips_ptr = torch.cat([torch.zeros(1, dtype=torch.int64),
                           torch.tensor(c_flips, dtype=torch.int64).cumsum(0)])
    words = pack_bits(torch.stack(c_on)) if c_on else torch.zeros(0, words_for_bits(n),
                                                                   dtype=torch.int64)
    if last:
        start_out = start_out[:0]
    return (child_ptr, torch.stack(c_lo) if c_lo else torch.zeros(0, **f64),
            torch.stack(c_hi) if c_hi else torch.zeros(0, **f64), words, start_out,
            flips_ptr[:len(c_flips) + 1],
            torch.cat(c_unit) if c_unit else torch.zeros(0, dtype=torch.int64),
            torch.cat(c_coef) if c_coef else torch.zeros(0, **f64))


# ---- runs: repeated keys of sorted runs (csrc/cpu/runs.cpp) ------------------------------

def repeated_in_runs(keys: torch.Tensor, run_ptr: torch.Tensor) -> torch.Tensor:
    """keys int64 ``[n]`` made of sorted runs (``run_ptr`` ``[R + 1]``) -> int64 ``[K]``,
    the distinct values that occur more than once, ascending."""
    for name, t in (("keys", keys), ("run_ptr", run_ptr)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64:
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"{name} must be torch.int64, got {got}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {list(t.shape)}")
    if run_ptr.shape[0] < 1:
        raise ValueError("run_ptr must have runs + 1 >= 1 entries")
    _check_offsets(run_ptr, keys.shape[0], "run_ptr")
    for r in range(run_ptr.shape[0] - 1):
        run = keys[int(run_ptr[r]):int(run_ptr[r + 1])]
        if (run[1:] < run[:-1]).any():
            raise ValueError(f"run {r} of keys is not sorted")
    k = torch.sort(keys).values
    return torch.unique(k[1:][k[1:] == k[:-1]])
