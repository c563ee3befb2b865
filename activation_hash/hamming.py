"""Hamming distances and exact K-NN over packed codes (our popcount kernels).

Accepts a CodeBook (anything with ``.codes``), an int64 tensor ``[N, W]``, a numpy int64 array,
or a ``(codes, labels)`` tuple. Distances are int32, indices int64 (rows of the base).

>>> d, idx = hamming_topk(test_cb, train_cb, k=9)   # [Q, 9] each, ascending, ties -> lower idx
"""
from __future__ import annotations

import numbers

import torch

from activation_hash import ops
from activation_hash.codes import as_codes
from activation_hash.memory import check_fits

__all__ = ["hamming_distance", "hamming_topk", "hamming_consecutive"]


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
    check_fits(4 * a.shape[0] * b.shape[0], f"the int32 distance matrix {a.shape[0]} x "
               f"{b.shape[0]}", "use hamming_topk(a, b, k) for the nearest rows (it streams the "
               "base: no matrix), or pass a in row blocks", a.device)
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
    if isinstance(k, numbers.Integral) and 0 < k <= b.shape[0]:  # k is checked by the op
        check_fits(24 * q.shape[0] * int(k), f"the top-{k} of {q.shape[0]} queries (int32 distances "
                   f"+ int64 indices, and their concatenation)", "pass the queries in batches "
                   "(hamming_topk(queries[i:j], base, k)), or hamming_topk_out_of_core("
                   "queries, store, k) for a base on disk", q.device)
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
