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
from activation_hash.collisions import (CollisionReport, Groups, _group_sorted,
                                        _split_clashes)
from activation_hash.layout import Layout
from activation_hash.ops import fingerprint128
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

def _owner(fp0: torch.Tensor, world: int) -> torch.Tensor:
    """The rank that owns a fingerprint: its high 32 bits, scaled to [0, world)."""
    hi = (fp0 >> 32) & 0xFFFFFFFF
    return (hi * world) >> 32


class _LocalGroups:
    """Exact grouping of this rank's rows (by one fingerprint level), and its records."""

    def __init__(self, fp: torch.Tensor, rows: torch.Tensor, offset: int,
                 labels: torch.Tensor | None):
        n = rows.shape[0]
        dev = rows.device
        verify = rows if rows.shape[1] else None
        g = _group_sorted(fp[:, 0].contiguous(), verify)
        self.g = g
        gid_sorted = torch.cumsum(g.new, 0) - 1
        U = int(gid_sorted[-1]) + 1 if n else 0
        self.gid = torch.empty_like(gid_sorted)
        self.gid[g.perm] = gid_sorted  # local group of each row
        first = g.perm[g.new]           # a row of each group
        gidx = g.perm + offset
        rep = torch.full((U,), _I64_MAX, dtype=torch.int64, device=dev)
        rep.scatter_reduce_(0, gid_sorted, gidx, reduce="amin")
        count = torch.bincount(gid_sorted, minlength=U)
        rec = torch.empty(U, _REC, dtype=torch.int64, device=dev)
        rec[:, 0:2] = fp[first]
        rec[:, 2] = rep
        rec[:, 3] = count
        if labels is not None:
            lab = labels.to(dev)[g.perm]
            lo = torch.full((U,), _I64_MAX, dtype=torch.int64, device=dev)
            hi = torch.full((U,), -_I64_MAX - 1, dtype=torch.int64, device=dev)
            lo.scatter_reduce_(0, gid_sorted, lab, reduce="amin")
            hi.scatter_reduce_(0, gid_sorted, lab, reduce="amax")
            rec[:, 4], rec[:, 5] = lo, hi
        else:
            rec[:, 4:6] = 0
        self.rec = rec
        self.rep = rep
        self.offset = offset

    def members(self, reps: np.ndarray) -> dict[int, np.ndarray]:
        """Global indices of the members of the local groups whose smallest index is in reps."""
        if not len(reps):
            return {}
        rep_np = self.rep.cpu().numpy()
        want = np.isin(rep_np, reps)
        if not want.any():
            return {}
        gid = self.gid.cpu().numpy()
        sel = want[gid]
        rows = np.nonzero(sel)[0]
        owner_rep = rep_np[gid[rows]]
        out = {}
        order = np.argsort(owner_rep, kind="stable")
        rows, owner_rep = rows[order], owner_rep[order]
        cuts = np.flatnonzero(np.diff(owner_rep)) + 1
        for part_rows, part_rep in zip(np.split(rows, cuts), np.split(owner_rep, cuts)):
            out[int(part_rep[0])] = part_rows.astype(np.int64) + self.offset
        return out


def _merge_level(comm: _Comm, local: _LocalGroups, rows: torch.Tensor, offsets: torch.Tensor):
    """Route the local group records to their owners and merge them exactly there.

    Returns ``(rec, g)``: the records this rank owns and their exact Groups (one group per
    distinct code among all ranks' rows that this rank owns)."""
    rec = local.rec
    dev = rec.device
    world = comm.world
    dest = _owner(rec[:, 0], world)
    order = torch.sort(dest, stable=True).indices
    counts = torch.bincount(dest, minlength=world)
    got = comm.all_to_all(rec[order], counts, "records")[0].to(dev)
    R = got.shape[0]  # may be 0: this rank still takes part in every collective below
    # order the records by smallest global index: local positions then follow global order
    got = got[torch.sort(got[:, 2]).indices]
    g = _group_sorted(got[:, 0].contiguous(), got[:, 0:2].contiguous())
    starts, gcounts, dup, group = g.shared()
    # every record of a shared fingerprint group is another rank's code, or a clash: fetch
    # one row per record of those groups and compare the full rows
    if dup.numel():
        need = g.perm[torch.cat([starts, dup])]
    else:
        need = dup
    need_reps = got[need, 2]
    src = torch.searchsorted(offsets[1:].to(dev), need_reps, right=True)
    order = torch.sort(src, stable=True).indices
    need, need_reps, src = need[order], need_reps[order], src[order]
    req_counts = torch.bincount(src, minlength=world)
    req, recv_from = comm.all_to_all(need_reps, req_counts, "rows")
    # answer the requests made to this rank (the rows of those global indices), in the order
    # of the requesting ranks: the replies come back in the order of the requests
    req = req.to(rows.device)
    answer = rows[req - local.offset] if req.numel() else rows[:0]
    fetched = comm.all_to_all(answer, recv_from, "rows")[0].to(dev)
    if need.numel():
        K = rows.shape[1]
        cls = torch.full((R, 1), -1, dtype=torch.int64, device=dev)
        if K:
            sub = _group_sorted(got[need, 0].contiguous(), fetched.contiguous())
            cls[need, 0] = sub.group_ids()
        else:
            cls[need, 0] = 0
        first = starts[group]
        mismatch = cls[g.perm[dup], 0] != cls[g.perm[first], 0]
        if bool(mismatch.any()):
            perm, new = g.perm.clone(), g.new.clone()
            _split_clashes(perm, new, starts, gcounts, group[mismatch], cls)
            g = Groups(perm, new)
    return got, g


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
    if per_layer:  # every rank needs one layout (an empty shard may have none)
        lays = comm.all_gather_object(None if layout is None or not n_local else
                                      layout.to_dict())
        given = [d for d in lays if d is not None]
        if given and (layout is None or not n_local):
            layout = Layout.from_dict(given[0])
    if with_labels and labels is None:  # an empty shard without labels
        labels = torch.zeros(0, dtype=torch.int64, device=codes.device)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes, 0)])
    N = int(offsets[-1])
    offset = int(offsets[comm.rank])

    ends: list[int] = []
    if per_layer:
        if layout is None:
            raise ValueError("per_layer=True needs the layer layout: pass a CodeBook or layout=")
        if layout.total_words != W and n_local:
            raise ValueError(f"layout has {layout.total_words} words per code, codes have {W}")
        ends = [o + w for o, w in zip(layout.word_offsets, layout.words_per_layer)]
    fps = fingerprint128(codes, ends + [W]) if ends else fingerprint128(codes).unsqueeze(1)

    profile = []
    for li, e in enumerate(ends):
        local = _LocalGroups(fps[:, li], codes[:, :e], offset, None)
        _, g = _merge_level(comm, local, codes[:, :e], offsets)
        U_l = int(comm.all_reduce_sum(torch.tensor([g.n_groups], dtype=torch.int64))[0])
        profile.append((layout.names[li], (N - U_l) / N if N else 0.0))

    local = _LocalGroups(fps[:, -1], codes, offset, labels if with_labels else None)
    got, g = _merge_level(comm, local, codes, offsets)
    rep = _reduce_report(comm, local, got, g, N, top, with_labels)
    if per_layer:
        rep.per_layer = profile
    _last = comm.stats
    return rep


def _reduce_report(comm: _Comm, local: _LocalGroups, got: torch.Tensor, g: Groups, N: int,
                   top: int, with_labels: bool) -> CollisionReport:
    dev = got.device
    R = got.shape[0]
    gid_sorted = torch.cumsum(g.new, 0) - 1 if R else torch.zeros(0, dtype=torch.int64,
                                                                     device=dev)
    M = int(gid_sorted[-1]) + 1 if R else 0
    recs = got[g.perm] if R else got
    size = torch.zeros(M, dtype=torch.int64, device=dev).index_add_(0, gid_sorted, recs[:, 3])
    low = torch.full((M,), _I64_MAX, dtype=torch.int64, device=dev)
    low.scatter_reduce_(0, gid_sorted, recs[:, 2], reduce="amin")
    occ = torch.bincount(size).cpu().tolist() if M else []
    occupancy = {k: v for k, v in enumerate(occ) if v}
    mixed_r = mixed_s = 0
    if with_labels and M:
        lo = torch.full((M,), _I64_MAX, dtype=torch.int64, device=dev)
        hi = torch.full((M,), -_I64_MAX - 1, dtype=torch.int64, device=dev)
        lo.scatter_reduce_(0, gid_sorted, recs[:, 4], reduce="amin")
        hi.scatter_reduce_(0, gid_sorted, recs[:, 5], reduce="amax")
        mixed = (lo != hi) & (size > 1)
        mixed_r, mixed_s = int(mixed.sum()), int(size[mixed].sum())
    # this owner's candidates for the largest groups: (size, smallest index, member reps)
    cands = []
    if top and M:
        shared = (size > 1).nonzero().squeeze(1)
        if shared.numel():
            k = min(top, shared.numel())
            s_sh, l_sh = size[shared], low[shared]
            o = torch.sort(l_sh, stable=True).indices
            o = o[torch.sort(-s_sh[o], stable=True).indices][:k]
            pick = shared[o]
            starts = g.new.nonzero().squeeze(1)
            ends_ = torch.cat([starts[1:], torch.tensor([R], device=dev)])
            for gi in pick.tolist():
                reps = recs[starts[gi]:ends_[gi], 2].cpu().numpy()
                cands.append((int(size[gi]), int(low[gi]), reps))
    parts = comm.all_gather_object((M, occupancy, mixed_r, mixed_s, cands))
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
        members = [m[r] for m in gathered for r in c[2].tolist() if r in m]
        largest.append(torch.from_numpy(np.sort(np.concatenate(members))))
    alone = total_occ.get(1, 0)
    shared_n = U - alone
    return CollisionReport(
        n=N, n_distinct=U, redundancy=(N - U) / N if N else 0.0,
        unique_fraction=alone / N if N else 0.0, occupancy=dict(sorted(total_occ.items())),
        n_shared_regions=shared_n, largest_groups=largest,
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
