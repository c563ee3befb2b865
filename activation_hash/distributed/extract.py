"""Sharded, resumable extraction into per-rank store parts, joined into one store."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from activation_hash import store as _store
from activation_hash.codes import CodeBook
from activation_hash.validation import check_int
from activation_hash.distributed.comm import _rank_world, is_distributed, shard_range

# -------------------------------------------------------------------------- extraction

@dataclass
class DistributedCodes:
    """What :func:`extract_codes_distributed` returns on each rank."""

    codebook: CodeBook   # this rank's rows (memory-mapped from its store part)
    offset: int          # global index of its first row
    n: int               # samples of all ranks
    store: str | None    # the joined store (None when join=False)


def _part_path(store, rank: int, world: int) -> str:
    return os.path.join(os.fspath(store) + ".parts", f"rank-{rank:05d}-of-{world:05d}")


def _slice_data(data, lo: int, hi: int):
    from torch.utils.data import DataLoader, Subset

    if isinstance(data, torch.Tensor):
        return data[lo:hi]
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        y = data[1]
        return data[0][lo:hi], (y[lo:hi] if hasattr(y, "__getitem__") else y)
    if isinstance(data, DataLoader):
        return DataLoader(Subset(data.dataset, range(lo, hi)), batch_size=data.batch_size or 1,
                          shuffle=False, drop_last=False, num_workers=data.num_workers,
                          collate_fn=data.collate_fn, pin_memory=data.pin_memory)
    return Subset(data, range(lo, hi))


def _data_size(data) -> int:
    from activation_hash.extract import data_len

    n = data_len(data)
    if n is None:
        raise TypeError("extract_codes_distributed needs data of known length (a tensor, a "
                        "map-style Dataset or a DataLoader over one), not an IterableDataset")
    return n


def extract_codes_distributed(model, data, *, store, rank: int | None = None,
                              world_size: int | None = None, group=None, join: bool = True,
                              keep_parts: bool = False, **kwargs) -> DistributedCodes:
    """Each rank extracts its contiguous share (:func:`shard_range`) of ``data`` into its own
    store part ``<store>.parts/rank-RRRRR-of-WWWWW`` (with :func:`extract_codes`: resumable,
    refusing other inputs); then (``join``) rank 0 joins the parts, in rank order, into one
    store at ``store`` that ``CodeBook.load`` reads in dataset order, and deletes the parts
    unless ``keep_parts``.

    Every rank needs the whole ``data`` object (a tensor, ``(inputs, labels)``, a map-style
    Dataset or a DataLoader over one; only its share is read). ``rank``/``world_size`` default
    to the process group's (or 0 / 1 without one); without a process group, call
    :func:`join_parts` once every rank has finished. ``kwargs`` go to
    :func:`~activation_hash.extract.extract_codes` (``layers``, ``batch_size``, ``device``,
    ``chunk_rows``, ``labels``, ``progress``, ``resume``, ``overwrite``, ``meta``).
    A rank killed mid-way is resumed by running the same call again (every rank).
    """
    import torch.distributed as dist

    from activation_hash.extract import extract_codes

    r0, w0 = _rank_world(group)
    rank = r0 if rank is None else check_int(rank, "rank", min=0)
    world = w0 if world_size is None else check_int(world_size, "world_size", min=1)
    if rank >= world:
        raise ValueError(f"rank {rank} out of range for world_size {world}")
    n = _data_size(data)
    lo, hi = shard_range(n, rank, world)
    kwargs.setdefault("progress", False)
    root = os.fspath(store)
    if _store.is_complete(root):  # joined already (a rerun): read this rank's rows from it
        whole = CodeBook.load(root)
        if len(whole) != n:
            raise ValueError(f"store {root!r} holds {len(whole)} rows, the data {n} samples")
        if is_distributed() and w0 > 1:
            dist.barrier(group=group)
        return DistributedCodes(whole[lo:hi], lo, n, root)
    part = _part_path(root, rank, world)
    os.makedirs(os.path.dirname(part), exist_ok=True)
    meta = dict(kwargs.pop("meta", None) or {})
    meta["shard"] = {"rank": rank, "world": world, "lo": lo, "hi": hi, "n": n}
    cb = extract_codes(model, _slice_data(data, lo, hi), store=part, meta=meta, **kwargs)
    if not join:
        return DistributedCodes(cb, lo, n, None)
    if is_distributed() and w0 > 1:
        dist.barrier(group=group)
        if rank == 0:
            join_parts(root, world, keep_parts=True)
        dist.barrier(group=group)
        if not keep_parts and rank == 0:
            _remove_parts(root, world)
        if is_distributed():
            dist.barrier(group=group)
    else:
        join_parts(root, world, keep_parts=keep_parts)
    whole = CodeBook.load(root)
    return DistributedCodes(whole[lo:hi], lo, n, root)


def _remove_parts(root: str, world: int) -> None:
    for r in range(world):
        p = _part_path(root, r, world)
        if _store.exists(p):
            _store.remove(p)
    try:
        os.rmdir(root + ".parts")
    except OSError:
        pass


def join_parts(store, world: int, *, keep_parts: bool = False) -> None:
    """Join the complete parts ``<store>.parts/rank-*-of-<world>`` into one store at ``store``
    (rows in rank order, one streamed copy; a crash mid-way leaves no complete store, and the
    join can be run again)."""
    root = os.fspath(store)
    parts = [_part_path(root, r, world) for r in range(world)]
    for p in parts:
        if not _store.is_complete(p):
            raise _store.IncompleteStoreError(f"store part {p!r} is not complete: rerun the "
                                              f"extraction of its rank")
    metas = [_store.manifest(p) for p in parts]
    if not _store.is_complete(root):
        if _store.exists(root):
            _store.remove(root)
        _store.concat(parts, root, meta={"parts": [m.get("meta", {}) for m in metas]})
    if not keep_parts:
        _remove_parts(root, world)
