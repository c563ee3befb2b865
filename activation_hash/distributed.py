"""torch.distributed versions of extraction, exact collision counting and Hamming K-NN.

Every function works inside any initialised process group (the user's own
``init_process_group`` program, or ``torchrun`` through :func:`init_from_env`), gloo on CPUs or
NCCL on GPUs; every rank of the group must call it, with its own shard of the samples. Global
sample ``i`` is row ``i - offset[r]`` of rank ``r``, ranks in order (rank 0's rows first), as
:func:`shard_range` splits a dataset and :func:`extract_codes_distributed` extracts it.

- :func:`count_collisions_distributed`: the report of
  :func:`~activation_hash.collisions.count_collisions` over the concatenated shards, exactly
  (largest groups in global indices, ties, mixed-class regions, occupancy, per-layer profile).
  Each rank groups its own rows exactly, routes one record per local group (128-bit
  fingerprint, smallest global index, count, label range: 48 bytes) to the rank that owns the
  fingerprint's high bits (``all_to_all_single``), which merges them by fingerprint; the rows of
  the candidate groups spanning ranks (one row per rank and group) are fetched and compared in
  full, so a fingerprint clash costs time, never correctness. No rank holds all N rows or all
  N fingerprints.
- :func:`hamming_topk_distributed`: each rank holds a shard of the base; local top-k merged
  into the global top-k, ties by global index (equal to :func:`~activation_hash.hamming.hamming_topk`
  over the whole base).
- :func:`extract_codes_distributed`: each rank extracts a contiguous share of the data into
  its own store part (resumable per rank; no sample dropped or repeated, unlike
  ``DistributedSampler``'s padding); rank 0 joins the parts into one store that
  :meth:`CodeBook.load <activation_hash.codes.CodeBook.load>` reads in dataset order.

Example (``torchrun --nproc-per-node 2 script.py``)::

    from activation_hash import distributed as ahd
    ahd.init_from_env()
    part = ahd.extract_codes_distributed(model, dataset, store="run/codes")
    rep = ahd.count_collisions_distributed(part.codebook, per_layer=True)
    d, idx = ahd.hamming_topk_distributed(queries, part.codebook, k=10)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from activation_hash import store as _store
from activation_hash.codes import CodeBook, as_codes, as_labels
from activation_hash.collisions import (_MAX_FALSE_PAIRS, CollisionReport, _group_sorted,
                                        _sort_packed)
from activation_hash.layout import Layout
from activation_hash.ops import fingerprint128, fingerprint_key
from activation_hash.validation import check_int

__all__ = ["init_from_env", "is_distributed", "shard_range", "count_collisions_distributed",
           "hamming_topk_distributed", "extract_codes_distributed", "join_parts",
           "DistributedCodes", "ExchangeStats", "last_exchange"]

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


_last = ExchangeStats()


def last_exchange() -> ExchangeStats:
    """What the last call of this module on this rank sent to other ranks (bytes)."""
    return _last


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


# -------------------------------------------------------------------------- collisions

def _owner(key: torch.Tensor, free_bits: int, world: int) -> torch.Tensor:
    """The rank that owns a key (a signed value of ``free_bits`` significant bits): its top
    16 bits, scaled to [0, world); non-decreasing in the key, so that keys sorted on a rank
    are already grouped by owner."""
    top = ((key >> (free_bits - 16)) + 32768) & 0xFFFF
    return (top * world) >> 16


class _LocalGroups:
    """Exact grouping of this rank's rows, and one record per group: ``(key0, key1, smallest
    global index, count, label min, label max)``.

    Fast path (``b`` given: full rows, every rank with the same ``b``): the ``fingerprint_key``
    sort of :func:`~activation_hash.collisions.count_collisions`; the key is the sorted high
    ``64 - b`` bits of the row's 64-bit fingerprint (equal rows have equal keys on every
    rank) and ``key1`` is 0. Otherwise ``fp`` (a 128-bit fingerprint ``[n, 2]``) is the key.
    """

    def __init__(self, rows: torch.Tensor, offset: int, labels: torch.Tensor | None, *,
                 b: int | None = None, fp: torch.Tensor | None = None):
        n = rows.shape[0]
        dev = rows.device
        verify = rows if rows.shape[1] else None
        if b is not None:
            sk, perm = _sort_packed(fingerprint_key(rows, b), b)
            g = _group_sorted(None, verify, (sk, perm))
        else:
            sk = None
            g = _group_sorted(fp[:, 0].contiguous(), verify)
        self.g, self.offset = g, offset
        starts = g.new.nonzero().squeeze(1)
        U = starts.shape[0]
        first = g.perm[starts]
        count = torch.diff(starts, append=torch.tensor([n], device=dev))
        rec = torch.empty(U, _REC, dtype=torch.int64, device=dev)
        if sk is not None:
            rec[:, 0] = sk[starts]
            rec[:, 1] = 0
            rec[:, 2] = first + offset  # members of a group are in index order: first = min
        else:
            rec[:, 0:2] = fp[first]
            gid_sorted = torch.cumsum(g.new, 0) - 1
            rep = torch.full((U,), _I64_MAX, dtype=torch.int64, device=dev)
            rep.scatter_reduce_(0, gid_sorted, g.perm + offset, reduce="amin")
            rec[:, 2] = rep
        rec[:, 3] = count
        if labels is not None and U:
            labels = labels.to(dev)
            lab = labels[first]
            lo, hi = lab.clone(), lab.clone()
            s_starts, _, dup, group = g.shared()
            if dup.numel():  # label range of the groups of 2 rows or more
                u = torch.searchsorted(starts, s_starts)[group]
                ld = labels[g.perm[dup]]
                lo.scatter_reduce_(0, u, ld, reduce="amin")
                hi.scatter_reduce_(0, u, ld, reduce="amax")
            rec[:, 4], rec[:, 5] = lo, hi
        else:
            rec[:, 4:6] = 0
        self.rec, self.starts = rec, starts

    def members(self, reps: np.ndarray) -> dict[int, np.ndarray]:
        """Global indices of the members of the local groups whose smallest index is in reps."""
        if not len(reps) or not self.rec.shape[0]:
            return {}
        rep = self.rec[:, 2].cpu().numpy()
        out = {}
        for u in np.nonzero(np.isin(rep, reps))[0].tolist():
            s, c = int(self.starts[u]), int(self.rec[u, 3])
            out[int(rep[u])] = np.sort(self.g.perm[s:s + c].cpu().numpy()) + self.offset
        return out


@dataclass
class _Merged:
    """The exact groups owned by one rank: size, smallest global index, label range, and the
    records (smallest indices of local groups) that make each up."""

    size: torch.Tensor
    low: torch.Tensor
    lab_lo: torch.Tensor
    lab_hi: torch.Tensor
    n_single: int              # groups 0 .. n_single - 1 are one local group each (of
                               # 2 samples or more)
    run_reps: torch.Tensor     # records of the other groups: their smallest index ...
    run_group: torch.Tensor    # ... and their group (>= n_single)
    n_alone: int = 0           # further groups of one sample, not listed above

    @property
    def n_groups(self) -> int:
        return self.size.shape[0] + self.n_alone

    def reps(self, gi: int) -> np.ndarray:
        if gi < self.n_single:
            return np.array([int(self.low[gi])], dtype=np.int64)
        return self.run_reps[self.run_group == gi].cpu().numpy()


def _merge_level(comm: _Comm, local: _LocalGroups, rows: torch.Tensor, offsets: torch.Tensor,
                 free_bits: int) -> _Merged:
    """Route the local group records to their owners; merge them exactly there: records of
    equal keys (another rank's group of the same code, or a clash) get their rows fetched
    (one per record) and compared in full."""
    rec = local.rec
    dev = rec.device
    world = comm.world
    if world > 1:
        dest = _owner(rec[:, 0], free_bits, world)
        if dest.numel() > 1 and not bool((dest[1:] >= dest[:-1]).all()):
            order = torch.sort(dest, stable=True).indices
            rec, dest = rec[order], dest[order]
        got = comm.all_to_all(rec, torch.bincount(dest, minlength=world), "records")[0].to(dev)
    else:
        got = rec
    R = got.shape[0]  # may be 0: this rank still takes part in every collective below
    k0 = got[:, 0].contiguous()
    if R > 1 and not bool((k0[1:] >= k0[:-1]).all()):
        # timsort: on the fast path the received runs are sorted already
        order = torch.from_numpy(np.argsort(k0.cpu().numpy(), kind="stable")).to(dev)
        got = got[order]
        k0 = got[:, 0].contiguous()
    eq = k0[1:] == k0[:-1]
    if free_bits == 64:  # the generic path: 128-bit keys
        eq &= got[1:, 1] == got[:-1, 1]
    in_run = torch.zeros(R, dtype=torch.bool, device=dev)
    in_run[1:] |= eq
    in_run[:-1] |= eq
    run_idx = in_run.nonzero().squeeze(1)   # records sharing a key with another one
    need_reps = got[run_idx, 2]
    src = torch.searchsorted(offsets[1:].to(dev), need_reps, right=True)
    o = torch.sort(src, stable=True).indices
    run_idx, need_reps, src = run_idx[o], need_reps[o], src[o]
    req, recv_from = comm.all_to_all(need_reps, torch.bincount(src, minlength=world), "rows")
    # answer the requests made to this rank, in the order of the requesting ranks: the
    # replies come back in the order of the requests
    req = req.to(rows.device)
    answer = rows[req - local.offset] if req.numel() else rows[:0]
    fetched = comm.all_to_all(answer, recv_from, "rows")[0].to(dev)
    if rows.shape[1] and run_idx.numel():
        mg = _group_sorted(got[run_idx, 0].contiguous(), fetched.contiguous()).group_ids()
    else:  # rows of no words are all equal
        mg = torch.zeros(run_idx.shape[0], dtype=torch.int64, device=dev)
    M = int(mg.max()) + 1 if mg.numel() else 0
    rs = got[run_idx]
    size = torch.zeros(M, dtype=torch.int64, device=dev).index_add_(0, mg, rs[:, 3])
    low = torch.full((M,), _I64_MAX, dtype=torch.int64, device=dev)
    low.scatter_reduce_(0, mg, rs[:, 2], reduce="amin")
    lo = torch.full((M,), _I64_MAX, dtype=torch.int64, device=dev)
    lo.scatter_reduce_(0, mg, rs[:, 4], reduce="amin")
    hi = torch.full((M,), -_I64_MAX - 1, dtype=torch.int64, device=dev)
    hi.scatter_reduce_(0, mg, rs[:, 5], reduce="amax")
    # records alone with their key are one group each: only their counts matter, except
    # for the (few) that hold 2 samples or more
    single = ~in_run
    cnt = got[:, 3]
    big = (single & (cnt > 1)).nonzero().squeeze(1)
    sb = got[big]
    return _Merged(torch.cat([sb[:, 3], size]), torch.cat([sb[:, 2], low]),
                   torch.cat([sb[:, 4], lo]), torch.cat([sb[:, 5], hi]), sb.shape[0],
                   rs[:, 2], mg + sb.shape[0], int(single.sum()) - sb.shape[0])


def _fast_bits(sizes: torch.Tensor, N: int) -> int | None:
    """The index bits of the fast path shared by every rank, or None (see _index_bits): keys
    of ``64 - b`` bits must keep the expected pairs of distinct codes with equal keys small."""
    b = max(1, (int(sizes.max()) - 1).bit_length())
    if b >= 48 or N * N / 2.0 ** (65 - b) > _MAX_FALSE_PAIRS:
        return None
    return b


def count_collisions_distributed(codes_or_codebook, labels=None, *, per_layer: bool = False,
                                 top: int = 10, layout: Layout | None = None,
                                 group=None) -> CollisionReport:
    """:func:`~activation_hash.collisions.count_collisions` over the rows of every rank.

    Every rank of ``group`` calls it with its own shard (a CodeBook, int64 codes ``[n_r, W]``
    or ``(codes, labels)``; a shard may be empty); global sample indices number the shards in
    rank order. Returns the same report on every rank, equal to ``count_collisions`` of the
    concatenation (largest groups in global indices; same ties). Outside a process group it is
    ``count_collisions`` on the one shard. :func:`last_exchange` tells the bytes sent.
    """
    global _last
    codes, own_labels = as_codes(codes_or_codebook)
    if isinstance(codes_or_codebook, CodeBook) and layout is None:
        layout = codes_or_codebook.layout
    labels = own_labels if labels is None else as_labels(labels, codes.shape[0], "labels")
    top = check_int(top, "top", min=0)
    comm = _Comm(group)
    n_local, W = codes.shape
    info = comm.all_gather_int([n_local, W, 1 if labels is not None else 0])
    sizes = info[:, 0]
    nonempty = sizes > 0
    if len(set(info[nonempty, 1].tolist())) > 1:
        raise ValueError(f"count_collisions_distributed: ranks hold codes of different widths "
                         f"{sorted(set(info[nonempty, 1].tolist()))}")
    has_labels = info[nonempty, 2]
    if has_labels.numel() and int(has_labels.min()) != int(has_labels.max()):
        raise ValueError("count_collisions_distributed: some ranks have labels and some not")
    with_labels = bool(has_labels.numel()) and bool(int(has_labels.max()))
    if bool(nonempty.any()) and n_local == 0:  # an empty shard takes the others' width
        W = int(info[nonempty, 1][0])
        codes = torch.zeros(0, W, dtype=torch.int64, device=codes.device)
    if with_labels and labels is None:  # an empty shard without labels
        labels = torch.zeros(0, dtype=torch.int64, device=codes.device)
    if per_layer:  # every rank needs one layout (an empty shard may have none)
        lays = comm.all_gather_object(None if layout is None or not n_local else
                                      layout.to_dict())
        given = [d for d in lays if d is not None]
        if given and (layout is None or not n_local):
            layout = Layout.from_dict(given[0])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes, 0)])
    N = int(offsets[-1])
    offset = int(offsets[comm.rank])

    ends: list[int] = []
    if per_layer:
        if layout is None:
            raise ValueError("per_layer=True needs the layer layout: pass a CodeBook or layout=")
        if layout.total_words != W:
            raise ValueError(f"layout has {layout.total_words} words per code, codes have {W}")
        ends = [o + w for o, w in zip(layout.word_offsets, layout.words_per_layer)]
    profile = []
    if ends:
        fps = fingerprint128(codes, ends + [W])
        for li, e in enumerate(ends):
            local = _LocalGroups(codes[:, :e], offset, None, fp=fps[:, li])
            merged = _merge_level(comm, local, codes[:, :e], offsets, 64)
            U_l = int(comm.all_reduce_sum(torch.tensor([merged.n_groups]))[0])
            profile.append((layout.names[li], (N - U_l) / N if N else 0.0))
    b = _fast_bits(sizes, N) if W else None
    lab = labels if with_labels else None
    if b is not None:
        local = _LocalGroups(codes, offset, lab, b=b)
        free = 64 - b
    else:
        fp = fps[:, -1] if ends else fingerprint128(codes)
        local = _LocalGroups(codes, offset, lab, fp=fp)
        free = 64
    merged = _merge_level(comm, local, codes, offsets, free)
    rep = _reduce_report(comm, local, merged, N, top, with_labels)
    if per_layer:
        rep.per_layer = profile
    _last = comm.stats
    return rep


def _reduce_report(comm: _Comm, local: _LocalGroups, m: _Merged, N: int, top: int,
                   with_labels: bool) -> CollisionReport:
    size = m.size
    occupancy: dict[int, int] = {}
    if size.numel():
        occupancy = {k: v for k, v in enumerate(torch.bincount(size).cpu().tolist()) if v}
    if m.n_alone:
        occupancy[1] = occupancy.get(1, 0) + m.n_alone
    mixed_r = mixed_s = 0
    if with_labels and size.numel():
        mixed = (m.lab_lo != m.lab_hi) & (size > 1)
        mixed_r, mixed_s = int(mixed.sum()), int(size[mixed].sum())
    cands = []  # this owner's candidates for the largest groups: (size, smallest index, reps)
    if top:
        shared = (size > 1).nonzero().squeeze(1)
        if shared.numel():
            s_sh, l_sh = size[shared], m.low[shared]
            o = torch.sort(l_sh, stable=True).indices
            o = o[torch.sort(-s_sh[o], stable=True).indices][:top]
            for gi in shared[o].tolist():
                cands.append((int(size[gi]), int(m.low[gi]), m.reps(gi)))
    parts = comm.all_gather_object((m.n_groups, occupancy, mixed_r, mixed_s, cands))
    U = sum(p[0] for p in parts)
    total_occ: dict[int, int] = {}
    for p in parts:
        for k, v in p[1].items():
            total_occ[k] = total_occ.get(k, 0) + v
    all_c = [c for p in parts for c in p[4]]
    all_c.sort(key=lambda c: (-c[0], c[1]))
    chosen = all_c[:top]
    need = np.concatenate([c[2] for c in chosen]) if chosen else np.zeros(0, np.int64)
    mine = local.members(need)
    gathered = comm.all_gather_object(mine) if chosen else []
    largest = []
    for c in chosen:
        members = [g[r] for g in gathered for r in c[2].tolist() if r in g]
        largest.append(torch.from_numpy(np.sort(np.concatenate(members))))
    alone = total_occ.get(1, 0)
    return CollisionReport(
        n=N, n_distinct=U, redundancy=(N - U) / N if N else 0.0,
        unique_fraction=alone / N if N else 0.0, occupancy=dict(sorted(total_occ.items())),
        n_shared_regions=U - alone, largest_groups=largest,
        mixed_regions=sum(p[2] for p in parts) if with_labels else None,
        mixed_samples=sum(p[3] for p in parts) if with_labels else None, exact=True)


# -------------------------------------------------------------------------- K-NN

def _merge_topk(dists: list[torch.Tensor], idxs: list[torch.Tensor], k: int):
    """Merge per-shard top-k lists (each sorted by (distance, index), shards in index order)
    into the global top-k: a stable sort by distance keeps equal distances in index order."""
    d = torch.cat(dists, dim=1)
    i = torch.cat(idxs, dim=1)
    order = torch.sort(d, dim=1, stable=True).indices[:, :k]
    return torch.gather(d, 1, order), torch.gather(i, 1, order)


def hamming_topk_distributed(queries, base_shard, k: int, *, shard_queries: bool = False,
                             group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact K-NN over a base split across ranks: equal to
    :func:`~activation_hash.hamming.hamming_topk` on the concatenated base (indices global, in
    rank order; equal distances by lower global index).

    Every rank passes its own base shard (``[m_r, W]``, may be empty). With
    ``shard_queries=False`` every rank passes the same queries and gets every result; with
    ``shard_queries=True`` each rank passes its own queries and gets their results (the
    queries are gathered, every rank searches its shard, the results go back to the query's
    rank). ``k`` may be up to the total base size.
    """
    global _last
    from activation_hash import ops

    q, _ = as_codes(queries, "queries")
    b, _ = as_codes(base_shard, "base")
    k = check_int(k, "k", min=0)
    comm = _Comm(group)
    info = comm.all_gather_int([b.shape[0], q.shape[0], q.shape[1]])
    sizes = info[:, 0]
    M = int(sizes.sum())
    if k > M:
        raise ValueError(f"k={k} exceeds the {M} base rows of all ranks")
    offset = int(sizes[:comm.rank].sum())
    W = q.shape[1]
    if b.shape[0] and b.shape[1] != W:
        raise ValueError(f"queries have {W} words per row, the base {b.shape[1]}")
    dev = q.device
    if shard_queries and comm.world > 1:
        qs = info[:, 1]
        qq = comm.all_gather_rows(q, qs.tolist()).to(b.device if b.shape[0] else dev)
    else:
        qs = None
        qq = q.to(b.device) if b.shape[0] else q
    kk = min(k, b.shape[0])
    Q = qq.shape[0]
    d = torch.full((Q, k), torch.iinfo(torch.int32).max, dtype=torch.int32)
    i = torch.full((Q, k), _I64_MAX, dtype=torch.int64)
    if kk:
        dl, il = ops.hamming_topk(qq, b, kk)
        d[:, :kk], i[:, :kk] = dl.cpu(), il.cpu() + offset
    if comm.world == 1:
        _last = comm.stats
        return d.to(dev), i.to(dev)
    packed = torch.cat([d.to(torch.int64), i], dim=1)  # [Q, 2k]
    if shard_queries:
        recv = comm.all_to_all(packed, qs, "gather")[0]  # my queries' rows from every rank
        parts = recv.cpu().view(comm.world, q.shape[0], 2 * k)
    else:
        parts = comm.all_gather_rows(packed, [Q] * comm.world).view(comm.world, Q, 2 * k)
    dd = [p[:, :k].to(torch.int32) for p in parts]
    ii = [p[:, k:] for p in parts]
    out = _merge_topk(dd, ii, k)
    _last = comm.stats
    return out[0].to(dev), out[1].to(dev)


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
    from torch.utils.data import DataLoader, IterableDataset

    if isinstance(data, torch.Tensor):
        return data.shape[0]
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return data[0].shape[0]
    ds = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(ds, IterableDataset):
        raise TypeError("extract_codes_distributed needs data of known length (a tensor, a "
                        "map-style Dataset or a DataLoader over one), not an IterableDataset")
    return len(ds)


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
