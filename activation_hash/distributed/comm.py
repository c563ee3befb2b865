"""The process group and the exchanges of the distributed functions: torchrun environment,
contiguous shards, all_to_all / all_gather helpers and the bytes they move."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from activation_hash.validation import check_int


_I64_MAX = (1 << 63) - 1
_REC = 6  # record columns: fp0, fp1, smallest global index, count, label min, label max


# -------------------------------------------------------------------------- process group

def is_distributed(group=None) -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def init_from_env(backend: str | None = None, timeout_s: float | None = None) -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and return
    ``(rank, world_size)``.

    A group already initialised (the caller's own ``init_process_group``) is used as it is;
    without ``WORLD_SIZE`` in the environment nothing is initialised and ``(0, 1)`` is
    returned (a plain single-process run). ``backend`` defaults to NCCL when CUDA is available,
    else gloo; with NCCL the CUDA device ``LOCAL_RANK`` is made current.
    """
    import datetime

    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    kw = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
    dist.init_process_group(backend, init_method="env://", **kw)
    return dist.get_rank(), dist.get_world_size()


def _rank_world(group) -> tuple[int, int]:
    import torch.distributed as dist

    if not is_distributed():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _comm_device(group) -> torch.device:
    import torch.distributed as dist

    if is_distributed() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[lo, hi)``: the contiguous share of ``n`` samples of ``rank`` among ``world`` ranks
    (sizes differ by at most one, the larger ones first; a rank may get 0 when n < world)."""
    n, world = check_int(n, "n", min=0), check_int(world, "world", min=1)
    rank = check_int(rank, "rank", min=0, max=world - 1)
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


@dataclass
class ExchangeStats:
    """Bytes this rank sent to other ranks (itself excluded) in the last distributed call."""

    records: int = 0     # collisions: routed group records
    rows: int = 0        # collisions: rows fetched for verification (and requests)
    gather: int = 0      # object gathers (reductions, largest groups) and K-NN results

    @property
    def total(self) -> int:
        return self.records + self.rows + self.gather


_last = [ExchangeStats()]


def last_exchange() -> ExchangeStats:
    """What the last distributed call on this rank sent to other ranks (bytes)."""
    return _last[0]


def _set_last(stats: ExchangeStats) -> None:
    _last[0] = stats


class _Comm:
    """The collectives of one call, on the backend's device, counting bytes sent."""

    def __init__(self, group):
        self.group = group
        self.rank, self.world = _rank_world(group)
        self.dev = _comm_device(group)
        self.stats = ExchangeStats()

    def all_gather_int(self, values: list[int]) -> torch.Tensor:
        """[world, len(values)] int64 (CPU)."""
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.int64, device=self.dev)
        if self.world == 1:
            return t.unsqueeze(0).cpu()
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t, group=self.group)
        self.stats.gather += t.numel() * 8 * (self.world - 1)
        return torch.stack(out).cpu()

    def all_gather_object(self, obj, kind: str = "gather") -> list:
        import pickle

        import torch.distributed as dist

        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        setattr(self.stats, kind, getattr(self.stats, kind) +
                len(pickle.dumps(obj)) * (self.world - 1))
        return out

    def all_to_all(self, t: torch.Tensor, dest_counts: torch.Tensor, kind: str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``t`` (sorted by destination, ``dest_counts[r]`` rows for rank r) to their
        ranks; returns the rows received, in source-rank order, and how many came from each."""
        import torch.distributed as dist

        if self.world == 1:
            return t, dest_counts.to(torch.int64).cpu()
        dest_counts = dest_counts.to(torch.int64).cpu().contiguous()
        recv_counts = torch.empty_like(dest_counts, device=self.dev)
        dist.all_to_all_single(recv_counts, dest_counts.to(self.dev), group=self.group)
        recv_counts = recv_counts.cpu()
        tail = tuple(t.shape[1:])
        out = torch.empty((int(recv_counts.sum()),) + tail, dtype=t.dtype, device=self.dev)
        row_bytes = t.element_size() * int(np.prod(tail)) if tail else t.element_size()
        sent = int(dest_counts.sum()) - int(dest_counts[self.rank])
        setattr(self.stats, kind, getattr(self.stats, kind) + sent * row_bytes + 8 * self.world)
        if row_bytes == 0:
            return out, recv_counts
        dist.all_to_all_single(out, t.to(self.dev).contiguous(), recv_counts.tolist(),
                               dest_counts.tolist(), group=self.group)
        return out, recv_counts

    def all_gather_rows(self, t: torch.Tensor, counts: list[int], kind: str = "gather"
                        ) -> torch.Tensor:
        """The rows of every rank (``counts[r]`` rows on rank r), concatenated in rank order."""
        import torch.distributed as dist

        if self.world == 1:
            return t
        big = max(counts)
        pad = torch.zeros((big,) + tuple(t.shape[1:]), dtype=t.dtype, device=self.dev)
        pad[:t.shape[0]] = t.to(self.dev)
        out = [torch.empty_like(pad) for _ in range(self.world)]
        if pad.numel():
            dist.all_gather(out, pad, group=self.group)
        setattr(self.stats, kind, getattr(self.stats, kind) +
                pad.numel() * pad.element_size() * (self.world - 1))
        return torch.cat([o[:c] for o, c in zip(out, counts)]).cpu()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if self.world == 1:
            return t
        t = t.to(self.dev)
        dist.all_reduce(t, group=self.group)
        self.stats.gather += t.numel() * t.element_size() * (self.world - 1)
        return t.cpu()
