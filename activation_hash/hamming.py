"""Hamming distances and exact K-NN over packed codes (our popcount kernels).

Accepts a CodeBook (anything with ``.codes``), an int64 tensor ``[N, W]``, a numpy int64 array,
or a ``(codes, labels)`` tuple. Distances are int32, indices int64 (rows of the base).

>>> d, idx = hamming_topk(test_cb, train_cb, k=9)   # [Q, 9] each, ascending, ties -> lower idx
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from activation_hash import ops

__all__ = ["as_codes", "hamming_distance", "hamming_topk", "hamming_consecutive"]


def as_codes(x: Any, name: str = "codes") -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(codes int64 [N, W], labels int64 [N] or None)`` from a CodeBook-like object (with
    ``.codes`` and optionally ``.labels``), an int64 tensor / numpy array ``[N, W]``, or a
    ``(codes, labels)`` tuple."""
    labels = None
    if isinstance(x, tuple):
        if len(x) != 2:
            raise ValueError(f"{name}: a tuple must be (codes, labels), got {len(x)} items")
        x, labels = x
    elif hasattr(x, "codes"):
        labels = getattr(x, "labels", None)
        x = x.codes
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a CodeBook, an int64 tensor [N, W] or a (codes, labels) "
                        f"tuple, got {type(x).__name__}")
    if x.dtype != torch.int64:
        raise TypeError(f"{name} must hold int64 packed words [N, W], got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, W] packed words, got shape {list(x.shape)}")
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"{name}: labels must have shape [{x.shape[0]}], got "
                             f"{list(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"{name}: labels must be integers, got dtype {labels.dtype}")
        labels = labels.to(torch.int64)
    return x, labels


def _same_device(a: torch.Tensor, b: torch.Tensor, device, na: str, nb: str):
    if device is not None:
        device = torch.device(device)
        return a.to(device), b.to(device)
    if a.device != b.device:
        raise ValueError(f"{na} is on {a.device} but {nb} is on {b.device}; pass device=... "
                         "to move both")
    return a, b


def hamming_distance(a, b, *, device=None) -> torch.Tensor:
    """All pairwise distances: a ``[N, W]``, b ``[M, W]`` -> int32 ``[N, M]``.

    ``device``: move both operands there first (else they must be on the same device).
    """
    a, _ = as_codes(a, "a")
    b, _ = as_codes(b, "b")
    a, b = _same_device(a, b, device, "a", "b")
    return ops.hamming_distance(a, b)


def hamming_topk(queries, base, k: int, *, device=None, chunk: int | None = None,
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest base rows of every query, exact.

    queries ``[Q, W]``, base ``[M, W]``, ``0 <= k <= M`` -> (dist int32 ``[Q, k]``, idx int64
    ``[Q, k]``), ascending by distance, equal distances by lower base index (equals a stable
    full sort). ``k > M`` raises ValueError. The base is streamed: no ``[Q, M]`` matrix.
    ``chunk`` queries per kernel call (default: all at once on the CPU, 65536 on a GPU) bounds
    the working memory; ``progress`` shows a bar over the chunks.
    """
    q, _ = as_codes(queries, "queries")
    b, _ = as_codes(base, "base")
    q, b = _same_device(q, b, device, "queries", "base")
    if chunk is None:
        chunk = 65536 if q.is_cuda else max(1, q.shape[0])
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if q.shape[0] <= chunk:
        return ops.hamming_topk(q, b, k)
    starts = range(0, q.shape[0], chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="hamming_topk", unit="chunk")
    parts = [ops.hamming_topk(q[s:s + chunk], b, k) for s in starts]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def hamming_consecutive(codes) -> torch.Tensor:
    """Distances between successive rows (a walk): ``[N, W]`` -> int32 ``[max(N - 1, 0)]``."""
    c, _ = as_codes(codes, "codes")
    return ops.hamming_consecutive(c)
