"""Exact collision counting over the shards of a process group (see the package docstring)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from activation_hash.codes import CodeBook, as_codes, as_labels
from activation_hash.collisions import CollisionReport
from activation_hash.grouping import MAX_FALSE_PAIRS, group_sorted, largest_first, where_true
from activation_hash.layout import Layout
from activation_hash.ops import fingerprint128
from activation_hash.validation import check_int
from activation_hash.distributed.collisions_keys import keyed_counts, merge_parts, owner_of
from activation_hash.distributed.comm import _I64_MAX, _REC, _Comm, _set_last

# -------------------------------------------------------------------------- collisions

class _LocalGroups:
    """Exact grouping of this rank's rows, and one record per group: ``(key0, key1, smallest
    global index, count, label min, label max)``, keyed by ``fp`` (a 128-bit fingerprint
    ``[n, 2]``): the generic path (per-layer prefixes, or index bits too many for the fast
    path of collisions_keys.py)."""

    def __init__(self, rows: torch.Tensor, offset: int, labels: torch.Tensor | None, *,
                 fp: torch.Tensor):
        n = rows.shape[0]
        dev = rows.device
        verify = rows if rows.shape[1] else None
        g = group_sorted(fp[:, 0].contiguous(), verify)
        self.g, self.offset = g, offset
        starts = where_true(g.new)
        U = starts.shape[0]
        first = g.perm[starts]
        count = torch.diff(starts, append=torch.tensor([n], device=dev))
        rec = torch.empty(U, _REC, dtype=torch.int64, device=dev)
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


def _merge_level(comm: _Comm, local: _LocalGroups, rows: torch.Tensor,
                 offsets: torch.Tensor) -> _Merged:
    """Route the local group records to their owners; merge them exactly there: records of
    equal keys (another rank's group of the same code, or a clash) get their rows fetched
    (one per record) and compared in full."""
    rec = local.rec
    dev = rec.device
    world = comm.world
    if world > 1:
        dest = owner_of(rec[:, 0], 64, world)
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
    eq &= got[1:, 1] == got[:-1, 1]  # 128-bit keys
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
        mg = group_sorted(got[run_idx, 0].contiguous(), fetched.contiguous()).group_ids()
    else:  # rows of no words are all equal
        mg = torch.zeros(run_idx.shape[0], dtype=torch.int64, device=dev)
    M = int(mg.max()) + 1 if mg.numel() else 0
    rs = got[run_idx]
    size, low, lo, hi = merge_parts(mg, M, rs[:, 3], rs[:, 2], rs[:, 4], rs[:, 5])
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
    """The index bits of the fast path shared by every rank, or None (see index_bits): keys
    of ``64 - b`` bits must keep the expected pairs of distinct codes with equal keys small."""
    b = max(1, (int(sizes.max()) - 1).bit_length())
    if b >= 48 or N * N / 2.0 ** (65 - b) > MAX_FALSE_PAIRS:
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
            merged = _merge_level(comm, local, codes[:, :e], offsets)
            U_l = int(comm.all_reduce_sum(torch.tensor([merged.n_groups]))[0])
            profile.append((layout.names[li], (N - U_l) / N if N else 0.0))
    b = _fast_bits(sizes, N) if W else None
    lab = labels if with_labels else None
    if b is not None:  # full rows: 8 bytes per local group on the wire (collisions_keys.py)
        kc, share = keyed_counts(comm, codes, offset, lab, b, top)
        rep = _reduce_keyed(comm, kc, share, N, top, with_labels)
    else:
        fp = fps[:, -1] if ends else fingerprint128(codes)
        local = _LocalGroups(codes, offset, lab, fp=fp)
        merged = _merge_level(comm, local, codes, offsets)
        rep = _reduce_report(comm, local, merged, N, top, with_labels)
    if per_layer:
        rep.per_layer = profile
    _set_last(comm.stats)
    return rep


def _reduce_keyed(comm: _Comm, kc, share: dict, N: int, top: int,
                  with_labels: bool) -> CollisionReport:
    """The report from every rank's share of :func:`keyed_counts`."""
    occ = {k: v for k, v in enumerate(torch.bincount(share["sizes"]).cpu().tolist()) if v} \
        if share["sizes"].numel() else {}
    if share["n_alone"]:
        occ[1] = share["n_alone"]
    parts = comm.all_gather_object((share["n_groups"], occ, *share["mixed"], share["cands"]))
    return _report_of(comm, parts, N, top, with_labels, kc.members)


def _report_of(comm: _Comm, parts: list, N: int, top: int, with_labels: bool,
               members) -> CollisionReport:
    """The report from every rank's ``(n_groups, occupancy, mixed regions, mixed samples,
    candidates)``; ``members(reps)`` gives the members this rank holds of the local groups
    ``reps`` of the chosen largest groups."""
    U = sum(p[0] for p in parts)
    total_occ: dict[int, int] = {}
    for p in parts:
        for k, v in p[1].items():
            total_occ[k] = total_occ.get(k, 0) + v
    all_c = [c for p in parts for c in p[4]]
    all_c.sort(key=lambda c: (-c[0], c[1]))
    chosen = all_c[:top]
    mine = members([r for c in chosen for r in c[2]]) if chosen else {}
    gathered = comm.all_gather_object(mine) if chosen else []
    largest = []
    for c in chosen:
        got = [g[r] for g in gathered for r in _rep_ids(c[2]) if r in g]
        largest.append(torch.from_numpy(np.sort(np.concatenate(got))))
    alone = total_occ.get(1, 0)
    return CollisionReport(
        n=N, n_distinct=U, redundancy=(N - U) / N if N else 0.0,
        unique_fraction=alone / N if N else 0.0, occupancy=dict(sorted(total_occ.items())),
        n_shared_regions=U - alone, largest_groups=largest,
        mixed_regions=sum(p[2] for p in parts) if with_labels else None,
        mixed_samples=sum(p[3] for p in parts) if with_labels else None, exact=True)


def _rep_ids(reps) -> list[int]:
    """Smallest global indices of a candidate's local groups (``(rep, key)`` pairs or
    plain indices)."""
    return [r[0] if isinstance(r, tuple) else int(r) for r in reps]


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
            o = largest_first(s_sh, l_sh)[:top]
            for gi in shared[o].tolist():
                cands.append((int(size[gi]), int(m.low[gi]), m.reps(gi)))
    parts = comm.all_gather_object((m.n_groups, occupancy, mixed_r, mixed_s, cands))
    return _report_of(comm, parts, N, top, with_labels,
                      lambda reps: local.members(np.asarray(reps, dtype=np.int64)))
