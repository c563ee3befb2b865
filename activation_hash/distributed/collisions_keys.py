"""The fast path of :func:`count_collisions_distributed`: 8 bytes per local group on the wire.

Full rows, every rank with the same index bits ``b`` (the single-process fast path):

1. each rank groups its rows exactly (the ``fingerprint_key`` sort and a full-row check of
   equal keys); a local group's key is the high ``64 - b`` bits of its rows' fingerprint;
2. the keys of the local groups go to the rank that owns their top bits (``all_to_all``,
   8 bytes each; sorted keys are already grouped by owner); the owner merges the sorted runs
   it received and finds the keys that came twice (*cross* keys: from two ranks, or from a
   clash split on one), and sends them to every rank (they are few);
3. only the local groups of cross keys travel again, with their counts, smallest index,
   label range and one row: the owner groups them by (key, row) exactly;
4. every other local group is a global group as it is: each rank counts those itself.

The report is then reduced as in the generic path. Step 2 is the only per-sample exchange.
"""
from __future__ import annotations

import numpy as np
import torch

from activation_hash.grouping import Groups, group_sorted, largest_first, select, sort_packed
from activation_hash.ops import fingerprint_key, repeated_in_runs
from activation_hash.distributed.comm import _I64_MAX, _Comm

__all__ = ["owner_of", "merge_parts", "KeyedCounts", "keyed_counts"]


def owner_of(key: torch.Tensor, free_bits: int, world: int) -> torch.Tensor:
    """The rank that owns a key (a signed value of ``free_bits`` significant bits): its top
    16 bits, scaled to [0, world); non-decreasing in the key, so that keys sorted on a rank
    are already grouped by owner."""
    top = ((key >> (free_bits - 16)) + 32768) & 0xFFFF
    return (top * world) >> 16


class KeyedCounts:
    """What one rank keeps after the exchange to answer for the largest groups: its local
    groups (``g``: permutation and group starts in key order), the sorted keys ``sk`` and its
    global offset."""

    def __init__(self, g: Groups, sk: torch.Tensor, offset: int):
        self.g, self.sk, self.offset = g, sk, offset

    def members(self, wanted: list[tuple[int, int]]) -> dict[int, np.ndarray]:
        """Sorted global indices of the local groups ``(smallest global index, key)`` that
        this rank holds."""
        out = {}
        n = self.g.n
        lo_i, hi_i = self.offset, self.offset + n
        for rep, key in wanted:
            if not lo_i <= rep < hi_i:
                continue
            s = int(torch.searchsorted(self.sk, torch.tensor([key]))[0])
            e = int(torch.searchsorted(self.sk, torch.tensor([key]), right=True)[0])
            at = int((self.g.perm[s:e] == rep - self.offset).nonzero()[0, 0])
            starts = self.g.new[s:e].nonzero().squeeze(1).tolist() + [e - s]
            start = max(t for t in starts if t <= at)   # position 0 of a key range is a start
            end = min(t for t in starts if t > at)
            start, end = s + start, s + end
            out[rep] = np.sort(self.g.perm[start:end].cpu().numpy()) + self.offset
        return out


def merge_parts(mg: torch.Tensor, M: int, count: torch.Tensor, low: torch.Tensor,
                lab_lo: torch.Tensor, lab_hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Groups ``0 .. M-1`` made of parts (``mg``: the group of each part): the total count,
    the smallest index and the label range of each, from those of its parts."""
    dev = mg.device
    size = torch.zeros(M, dtype=torch.int64, device=dev).index_add_(0, mg, count)
    out_low = torch.full((M,), _I64_MAX, dtype=torch.int64, device=dev)
    out_low.scatter_reduce_(0, mg, low, reduce="amin")
    lo = torch.full((M,), _I64_MAX, dtype=torch.int64, device=dev)
    lo.scatter_reduce_(0, mg, lab_lo, reduce="amin")
    hi = torch.full((M,), -_I64_MAX - 1, dtype=torch.int64, device=dev)
    hi.scatter_reduce_(0, mg, lab_hi, reduce="amax")
    return size, out_low, lo, hi


def _owner_bounds(free_bits: int, world: int, dev) -> torch.Tensor:
    """Smallest key each rank owns (``world + 1`` values; the last one above every key): the
    cut points of sorted keys between owners, without computing every key's owner."""
    r = torch.arange(world + 1, dtype=torch.int64, device=dev)
    top = (r * 65536 + world - 1) // world          # ceil: owner_of(key) >= r from here
    return (top - 32768) << (free_bits - 16)


def keyed_counts(comm: _Comm, codes: torch.Tensor, offset: int, labels: torch.Tensor | None,
                 b: int, top: int) -> tuple[KeyedCounts, dict]:
    """Steps 1-4 of the module docstring on this rank's rows. Returns the local state and
    this rank's share of the report: ``n_groups``, ``sizes`` (int64 tensor of the sizes of
    its global groups of 2 samples or more), ``n_alone``, ``mixed`` (groups, samples) and its
    ``top`` candidates ``cands`` for the largest groups: ``(size, smallest index, [(rep,
    key)])``. Only the keys (8 bytes per local group, sorted) leave every rank; everything
    else is about the few groups of keys seen twice."""
    n, dev = codes.shape[0], codes.device
    world, free = comm.world, 64 - b
    sk, perm = sort_packed(fingerprint_key(codes, b), b)
    g = group_sorted(None, codes, (sk, perm))
    s_starts, s_counts, dup, _ = g.shared()    # local groups of 2 samples or more
    # 2. one key per local group (sorted) to its owner; the owners find the keys that came
    #    twice (from two ranks, or a clash split on one) and send them to every rank
    gkey = select(sk, g.new)
    cuts = torch.searchsorted(gkey, _owner_bounds(free, world, dev))
    cuts[0], cuts[-1] = 0, gkey.shape[0]
    recv, came = comm.all_to_all(gkey, torch.diff(cuts), "records")
    recv = recv.to(dev)
    cross = recv[:0]
    if world > 1 and recv.numel() > 1:  # one sorted run from each rank
        run_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(came, 0)])
        cross = repeated_in_runs(recv, run_ptr.to(recv.device))
    mine_cross = torch.unique(comm.all_to_all(
        cross.repeat(world), torch.full((world,), cross.shape[0], dtype=torch.int64),
        "records")[0].to(dev))
    # 3. the local groups of cross keys travel with their counts, labels and one row
    pos = _expand(torch.searchsorted(sk, mine_cross),
                  torch.searchsorted(sk, mine_cross, right=True))  # their samples, sorted
    at = g.new[pos].nonzero().squeeze(1)       # each key range starts a group
    xs = pos[at]                               # sorted positions of the cross groups' starts
    x_count = torch.diff(at, append=torch.tensor([pos.shape[0]], device=dev))
    x_first = g.perm[xs]                       # members are in index order: first = min
    W = codes.shape[1]
    rec = torch.empty(xs.shape[0], 5 + W, dtype=torch.int64, device=dev)
    rec[:, 0], rec[:, 1], rec[:, 2] = sk[xs], x_count, x_first + offset
    if labels is not None:  # (also on an empty shard: groups it owns may be mixed)
        labels = labels.to(dev)
        gid = torch.repeat_interleave(torch.arange(xs.shape[0], device=dev), x_count)
        lab = labels[g.perm[pos]]
        rec[:, 3] = lab[at]
        rec[:, 4] = lab[at]
        rec[:, 3].scatter_reduce_(0, gid, lab, reduce="amin")
        rec[:, 4].scatter_reduce_(0, gid, lab, reduce="amax")
    else:
        rec[:, 3:5] = 0
    rec[:, 5:] = codes[x_first]
    got = comm.all_to_all(rec, torch.bincount(owner_of(rec[:, 0], free, world),
                                              minlength=world), "rows")[0].to(dev)
    # 4. this rank's share: its final local groups, and the merged groups it owns
    if xs.numel() and s_starts.numel():
        hit = torch.searchsorted(xs, s_starts).clamp_(max=xs.shape[0] - 1)
        s_final = xs[hit] != s_starts
    else:
        s_final = torch.ones(s_starts.shape[0], dtype=torch.bool, device=dev)
    n_local = n - dup.shape[0]
    share = {"n_groups": n_local - xs.shape[0],
             "n_alone": n_local - s_starts.shape[0] - int((x_count == 1).sum())}
    fs = s_starts[s_final]
    sizes, lows, keys = [s_counts[s_final]], [g.perm[fs] + offset], sk[fs]
    mixed_r = mixed_s = 0
    if labels is not None and fs.numel():
        mx = g.mixed(labels)[s_final]
        mixed_r, mixed_s = int(mx.sum()), int(sizes[0][mx].sum())
    parts_of = None
    if got.shape[0]:
        mg = group_sorted(got[:, 0].contiguous(), got[:, 5:].contiguous()).group_ids()
        M = int(mg.max()) + 1
        size, low, lo, hi = merge_parts(mg, M, got[:, 1], got[:, 2], got[:, 3], got[:, 4])
        share["n_groups"] += M
        share["n_alone"] += int((size == 1).sum())
        shared = (size > 1).nonzero().squeeze(1)
        sizes.append(size[shared])
        lows.append(low[shared])
        if labels is not None:
            mx = lo[shared] != hi[shared]
            mixed_r, mixed_s = mixed_r + int(mx.sum()), mixed_s + int(size[shared][mx].sum())
        parts_of = (mg, got[:, 2], got[:, 0], shared)
    share["sizes"] = torch.cat(sizes)
    share["mixed"] = (mixed_r, mixed_s)
    share["cands"] = _candidates(torch.cat(sizes), torch.cat(lows), fs.shape[0], keys,
                                 parts_of, top)
    return KeyedCounts(g, sk, offset), share


def _expand(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The positions of the ranges ``[lo[i], hi[i])`` (sorted, disjoint), concatenated."""
    lens = hi - lo
    if not lens.numel():
        return lo
    start = torch.repeat_interleave(lo - (torch.cumsum(lens, 0) - lens), lens)
    return start + torch.arange(start.shape[0], device=lo.device)


def _candidates(size, low, n_final, final_keys, parts_of, top) -> list[tuple]:
    """This rank's ``top`` largest groups (ties: smallest index): ``(size, smallest index,
    [(rep, key) of its local groups])``. Entries below ``n_final`` are final local groups
    (one part: itself), the others merged groups (``parts_of``: group of each received
    record, their reps and keys, and the merged group of each entry)."""
    if not top or not size.numel():
        return []
    o = largest_first(size, low)[:top]
    out = []
    for i in o.tolist():
        if i < n_final:
            parts = [(int(low[i]), int(final_keys[i]))]
        else:
            mg, reps, keys, shared = parts_of
            at = (mg == shared[i - n_final]).nonzero().squeeze(1)
            parts = list(zip(reps[at].tolist(), keys[at].tolist()))
        out.append((int(size[i]), int(low[i]), parts))
    return out
