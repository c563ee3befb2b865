"""Pure-PyTorch versions of every op: the test oracle, and the fallback without the extension.

Each function has the same arguments, results and errors as the compiled op of the same name
(``torch.ops.activation_hash.<name>``). Bit layout (shared/DESIGN.md): bit j of a row lives in
int64 word j // 64 at bit j % 64; padding bits are 0. As little-endian bytes this is
``np.packbits(bits, bitorder="little")``.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

WORD_BITS = 64
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

if sys.byteorder != "little":  # the int64 <-> byte views below assume it
    raise ImportError("activation_hash supports little-endian hosts only")


def words_for_bits(n: int) -> int:
    """Number of int64 words that hold ``n`` bits."""
    return (n + WORD_BITS - 1) // WORD_BITS


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


def units_per_sample(x: torch.Tensor) -> int:
    n = 1
    for s in x.shape[1:]:
        n *= s
    return n


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool ``[B, n]`` -> int64 words ``[B, ceil(n / 64)]``."""
    B, n = bits.shape
    W = words_for_bits(n)
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
