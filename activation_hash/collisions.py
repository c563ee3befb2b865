"""Exact collision counting: how many samples share a neural code (a linear region).

:func:`count_collisions` groups N codes exactly: one kernel pass (the ``fingerprint_key`` op, CPU
and CUDA) hashes each row to 64 bits and puts the row index in the low bits, and one value
sort of those keys puts rows of equal hash next to each other; every candidate group is then
verified against the full rows, and a group whose rows differ (a hash clash) is split by
exact lexicographic grouping of its rows. So a clash costs time, never correctness.
Everything runs in torch ops on the codes' device (the sort is torch's on the GPU); no Python
loop over groups. The per-layer profile fingerprints every layer prefix in the same pass
(``fingerprint128`` with prefix ends).

The redundancy ratio is the paper's ``(N - U) / N`` with U distinct codes.
:class:`CollisionCounter` keeps only the fingerprints (16 bytes per sample) for runs that need
the statistics but not the codes.

Example::

    rep = count_collisions(cb, per_layer=True)
    rep.redundancy, rep.n_distinct, rep.occupancy, rep.per_layer
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from activation_hash.codes import CodeBook, as_codes, as_labels
from activation_hash.layout import Layout
from activation_hash.ops import fingerprint128, fingerprint_key
from activation_hash.validation import check_int

__all__ = ["CollisionReport", "count_collisions", "collisions", "CollisionCounter",
           "group_codes", "Groups"]

_VERIFY_WORDS = 1 << 24  # words compared per step of the verification (bounds its memory)


class Groups:
    """Samples grouped by equal code.

    ``perm`` int64 ``[N]``: sample indices ordered so that each group is contiguous;
    ``new`` bool ``[N]``: True where a group begins in ``perm``. Derived (computed on demand):
    :meth:`shared`, where each group of 2 samples or more begins and its size (cheap: no
    tensor of size U), and :meth:`group_ids`.
    """

    def __init__(self, perm: torch.Tensor, new: torch.Tensor):
        self.perm, self.new = perm, new
        self._shared = None

    @property
    def n(self) -> int:
        return self.perm.shape[0]

    def shared(self):
        """``(starts, counts, dup, group)`` of the shared groups: where each begins in
        ``perm`` and its size, the positions that are not a group's first, and the shared
        group (index into starts) each of them belongs to."""
        if self._shared is None:
            new = self.new
            head = new.clone()
            if head.shape[0]:
                head[:-1] &= ~new[1:]
                head[-1] = False
            starts = head.nonzero().squeeze(1)
            dup = (~new).nonzero().squeeze(1)
            group = torch.searchsorted(starts, dup, right=True) - 1
            counts = torch.bincount(group, minlength=starts.shape[0]) + 1
            self._shared = (starts, counts, dup, group)
        return self._shared

    @property
    def n_groups(self) -> int:
        return self.n - self.shared()[2].shape[0]

    def group_ids(self) -> torch.Tensor:
        """Group of each sample, int64 ``[N]`` (groups numbered in sorted order)."""
        gid_sorted = torch.cumsum(self.new, 0) - 1
        out = torch.empty_like(gid_sorted)
        out[self.perm] = gid_sorted
        return out


_MAX_FALSE_PAIRS = 1e5  # expected pairs of distinct keys sharing their high bits (see below)


def _index_bits(N: int) -> int | None:
    """Low key bits that number N rows, or None when too few high bits would be left: the
    expected number of distinct keys equal above those bits, N^2 / 2^(65 - b), must stay
    small (each such pair is split by the exact verification, which costs time)."""
    b = max(1, (N - 1).bit_length())
    if b >= 48 or N * N / 2.0 ** (65 - b) > _MAX_FALSE_PAIRS:
        return None
    return b


def _sort_packed(packed: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys whose low ``b`` bits hold the row index -> (sorted high bits, permutation), with a
    single value sort (in place on the CPU: numpy's SIMD sort)."""
    if packed.device.type == "cpu":
        packed.numpy().sort(kind="quicksort")
    else:
        packed = torch.sort(packed)[0]
    perm = packed & ((1 << b) - 1)
    packed >>= b
    return packed, perm


def _sort_keys(key: torch.Tensor, exact: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sorted key classes, perm)``: ``perm`` orders the samples so that equal keys are
    adjacent, and ``sk[i] == sk[i + 1]`` marks a possibly-shared key there.

    Fast path: the row index replaces the low ``b = bit_length(N - 1)`` bits of each
    (uniformly random) key, and one value sort yields both the order and the permutation.
    Keys equal in the high ``64 - b`` bits but different in the low ones become candidates
    too; the caller's verification splits them. Otherwise (``exact``: no verification
    follows; huge N): torch.sort of the key.
    """
    N = key.shape[0]
    b = None if exact else _index_bits(N)
    if b is None:
        return torch.sort(key)
    packed = torch.bitwise_and(key, -(1 << b))
    packed |= torch.arange(N, dtype=torch.int64, device=key.device)
    return _sort_packed(packed, b)


def _group_sorted(key: torch.Tensor | None, verify: torch.Tensor | None,
                  presorted: tuple[torch.Tensor, torch.Tensor] | None = None) -> Groups:
    """Group rows by ``key`` (int64 [N]; or ``presorted`` = (sorted key classes, perm)), then
    split groups whose ``verify`` rows ([N, K]) differ, exactly. Equal rows of ``verify``
    with equal keys end up in one group."""
    ref_t = key if key is not None else presorted[1]
    N = ref_t.shape[0]
    dev = ref_t.device
    if N == 0:
        return Groups(torch.zeros(0, dtype=torch.int64, device=dev),
                      torch.zeros(0, dtype=torch.bool, device=dev))
    sk, perm = presorted if presorted is not None else _sort_keys(key, exact=verify is None)
    new = torch.ones(N, dtype=torch.bool, device=dev)
    torch.ne(sk[1:], sk[:-1], out=new[1:])
    del sk
    g = Groups(perm, new)
    if verify is not None and verify.shape[1] > 0:
        starts, counts, dup, group = g.shared()
        if dup.numel():
            first = starts[group]
            step = max(1, _VERIFY_WORDS // verify.shape[1])
            mismatch = torch.zeros(dup.shape[0], dtype=torch.bool, device=dev)
            for lo in range(0, dup.shape[0], step):
                a = verify[perm[dup[lo:lo + step]]]
                b = verify[perm[first[lo:lo + step]]]
                mismatch[lo:lo + step] = (a != b).any(dim=1)
            if bool(mismatch.any()):
                _split_clashes(perm, new, starts, counts, group[mismatch], verify)
                g = Groups(perm, new)
    return g


def _split_clashes(perm, new, starts, counts, bad_groups, verify) -> None:
    """Exact regrouping (in place) of the shared groups ``bad_groups`` (indices into
    ``starts``/``counts``) whose rows are not all equal.

    Their members (contiguous runs of positions) are grouped by (run, full row) with
    torch.unique; since the run number leads, each group's members stay in its own run.
    """
    dev = perm.device
    bad = torch.unique(bad_groups)
    g_start, lens = starts[bad], counts[bad]
    run = torch.repeat_interleave(torch.arange(bad.shape[0], device=dev), lens)
    offset = torch.arange(run.shape[0], device=dev) - (torch.cumsum(lens, 0) - lens)[run]
    pos = g_start[run] + offset
    rows = verify[perm[pos]]
    keyed = torch.cat([run.unsqueeze(1), rows], dim=1)
    _, inv = torch.unique(keyed, dim=0, return_inverse=True)
    inv_sorted, order = torch.sort(inv, stable=True)
    perm[pos] = perm[pos][order]
    sub_new = torch.ones_like(inv_sorted, dtype=torch.bool)
    sub_new[1:] = inv_sorted[1:] != inv_sorted[:-1]
    new[pos] = sub_new


def group_codes(codes: torch.Tensor, fingerprints: torch.Tensor | None = None) -> Groups:
    """Exact grouping of the rows of ``codes`` (int64 ``[N, W]``) by equality.

    ``fingerprints`` (int64 ``[N, 2]``, from ``fingerprint128``) may be given when already at
    hand; any values are accepted (even constant ones): rows are always verified.
    """
    codes, _ = as_codes(codes)
    return _group_codes(codes, fingerprints)


def _group_codes(codes: torch.Tensor, fingerprints: torch.Tensor | None = None) -> Groups:
    """:func:`group_codes` on checked int64 codes ``[N, W]``."""
    W = codes.shape[1]
    if W == 0:
        key = torch.zeros(codes.shape[0], dtype=torch.int64, device=codes.device)
        return _group_sorted(key, None)
    if fingerprints is None:
        b = _index_bits(codes.shape[0])
        if b is not None:  # one kernel pass gives the packed sort key directly
            return _group_sorted(None, codes, _sort_packed(fingerprint_key(codes, b), b))
        fingerprints = fingerprint128(codes)
    return _group_sorted(fingerprints[:, 0], codes)


_PROFILE_CHUNK_ROWS = 1 << 16     # rows per fingerprint128 call of the profile
_PROFILE_CHUNK_WORDS = 1 << 18    # words compared per step of its verification (2 MB)


class _PrefixRows:
    """Rows ``(group id, words [o, e))`` of the samples, gathered on indexing: what the
    refinement of a layer verifies (an exact split of a hash clash needs nothing else)."""

    def __init__(self, gid, codes, o, e):
        self.gid, self.codes, self.o, self.e = gid, codes, o, e

    def __getitem__(self, idx):
        g = (torch.zeros(idx.shape[0], dtype=torch.int64, device=idx.device)
             if self.gid is None else self.gid[idx])
        return torch.cat([g.unsqueeze(1), self.codes[idx, self.o:self.e]], dim=1)


def _refine(key: torch.Tensor, gid: torch.Tensor | None, codes: torch.Tensor, o: int,
            e: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split the groups ``gid`` (None: one group) of the samples by their words ``[o, e)``.

    ``key`` (int64 ``[N]``, consumed: it becomes the returned group ids) is a hash of each
    sample's whole prefix ``[0, e)``, so one value sort by it makes equal prefixes adjacent;
    each sample is then verified against its neighbour in the sorted order on (group id,
    words ``[o, e)``) only, never on the whole prefix, and a hash clash is split exactly.
    Returns ``(perm, new, gid_sorted)``: the order, where a group begins in it, and the new
    group id at each sorted position (in ``key``'s memory)."""
    N = key.shape[0]
    dev = key.device
    b = _index_bits(N)
    if b is None:  # huge N: a (value, index) sort
        sk, perm = torch.sort(key)
        key.copy_(sk)
        del sk
    else:
        key &= -(1 << b)
        for lo in range(0, N, _PROFILE_CHUNK_ROWS):  # the row index in the low bits
            hi = min(N, lo + _PROFILE_CHUNK_ROWS)
            key[lo:hi] |= torch.arange(lo, hi, dtype=torch.int64, device=dev)
        key, perm = _sort_packed(key, b)
    new = torch.ones(N, dtype=torch.bool, device=dev)
    torch.ne(key[1:], key[:-1], out=new[1:])
    step = max(1, _PROFILE_CHUNK_WORDS // (e - o))
    bad = []  # sorted positions equal in hash to their neighbour, not in (group, words)
    for lo in range(1, N, step):
        hi = min(N, lo + step)
        pos = (~new[lo:hi]).nonzero().squeeze(1) + lo
        if pos.numel():
            a, z = perm[pos], perm[pos - 1]
            diff = (codes[a, o:e] != codes[z, o:e]).any(dim=1)
            if gid is not None:
                diff |= gid[a] != gid[z]
            if bool(diff.any()):
                bad.append(pos[diff])
    _number_groups(new, key)
    if bad:  # hash clashes: split the groups holding them exactly, then renumber
        bad_groups = torch.unique(key[torch.cat(bad)])
        starts = torch.searchsorted(key, bad_groups)
        counts = torch.searchsorted(key, bad_groups, right=True) - starts
        _split_clashes(perm, new, starts, counts,
                       torch.arange(bad_groups.shape[0], device=dev),
                       _PrefixRows(gid, codes, o, e))
        _number_groups(new, key)
    return perm, new, key


def _number_groups(new: torch.Tensor, out: torch.Tensor) -> None:
    """out <- cumsum(new) - 1, in place (cumsum of a bool tensor into an int64 out= would
    first make an int64 copy of it)."""
    out.copy_(new)
    out.cumsum_(0)
    out -= 1


def layer_profile(codes: torch.Tensor, layout: Layout) -> tuple[list[tuple[str, float]], Groups]:
    """Redundancy of the codes truncated after each layer, and the exact grouping of the full
    codes (``layout.total_words`` must equal the codes' width).

    One pass of ``fingerprint128`` (in chunks of rows) hashes every layer prefix; the groups
    are then refined layer by layer: layer l splits the groups of layers ``< l`` by its own
    words (``_refine``). Peak extra memory per sample (CPU): 8 bytes per layer with new words
    for the prefix hashes, each freed once its layer is done (it becomes that layer's group
    ids), plus 8 (group ids of the previous layer) + 8 (the permutation) + 1 (the group
    starts) bytes: at most 17 + 8 L; the codes are never copied.
    """
    N, W = codes.shape
    dev = codes.device
    ends = [o + w for o, w in zip(layout.word_offsets, layout.words_per_layer)]
    if N == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return [(name, 0.0) for name in layout.names], Groups(empty, empty.bool())
    cuts = sorted({e for e in ends if e > 0})
    keys = {e: torch.empty(N, dtype=torch.int64, device=dev) for e in cuts}
    for lo in range(0, N, _PROFILE_CHUNK_ROWS):
        hi = min(N, lo + _PROFILE_CHUNK_ROWS)
        fp = fingerprint128(codes[lo:hi], cuts)
        for p, e in enumerate(cuts):
            keys[e][lo:hi] = fp[:, p, 0]
        del fp
    gid = None  # group of each sample for the prefix so far (None: all in one)
    perm = new = None
    n_groups, done, profile = 1, 0, []
    for name, e in zip(layout.names, ends):
        if e > done:
            perm = new = None  # free the previous layer's order first
            perm, new, gid_sorted = _refine(keys.pop(e), gid, codes, done, e)
            n_groups = int(gid_sorted[-1]) + 1
            if gid is None:
                gid = torch.empty(N, dtype=torch.int64, device=dev)
            gid.index_copy_(0, perm, gid_sorted)
            del gid_sorted
            done = e
        profile.append((name, (N - n_groups) / N))
    del gid
    if done < W:  # the layout does not reach the last word (cannot happen for a CodeBook)
        return profile, _group_codes(codes)
    if perm is None:  # no layer has words: every code is the same
        perm = torch.arange(N, dtype=torch.int64, device=dev)
        new = torch.zeros(N, dtype=torch.bool, device=dev)
        new[0] = True
    return profile, Groups(perm, new)


@dataclass
class CollisionReport:
    """Statistics of codes shared by several samples.

    Attributes:
        n: samples N.
        n_distinct: distinct codes U (occupied regions).
        redundancy: ``(N - U) / N`` (0.0 when N = 0).
        unique_fraction: fraction of samples alone in their region.
        occupancy: ``{k: number of regions holding exactly k samples}``.
        n_shared_regions: regions holding 2 samples or more.
        largest_groups: sample indices (sorted int64 tensors) of the largest shared regions,
            largest first; regions of equal size are ordered by their smallest sample index
            (deterministic: among regions tied at the cut-off size, those whose smallest
            sample index is lowest are listed).
        mixed_regions / mixed_samples: (with labels) shared regions holding more than one
            class, and the samples in them; None without labels.
        per_layer: ``[(layer name, redundancy of the code truncated after that layer)]``.
        exact: False when computed from fingerprints only (:class:`CollisionCounter`).
    """

    n: int
    n_distinct: int
    redundancy: float
    unique_fraction: float
    occupancy: dict[int, int]
    n_shared_regions: int
    largest_groups: list[torch.Tensor] = field(default_factory=list)
    mixed_regions: int | None = None
    mixed_samples: int | None = None
    per_layer: list[tuple[str, float]] | None = None
    exact: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n, "n_distinct": self.n_distinct, "redundancy": self.redundancy,
            "unique_fraction": self.unique_fraction,
            "occupancy": {str(k): v for k, v in sorted(self.occupancy.items())},
            "n_shared_regions": self.n_shared_regions,
            "largest_groups": [g.tolist() for g in self.largest_groups],
            "mixed_regions": self.mixed_regions, "mixed_samples": self.mixed_samples,
            "per_layer": None if self.per_layer is None else [[n, r] for n, r in self.per_layer],
            "exact": self.exact,
        }


def _report(g: Groups, labels: torch.Tensor | None, top: int, exact: bool) -> CollisionReport:
    n = g.n
    starts, counts, dup, group = g.shared()
    U = n - dup.shape[0]
    shared = starts.shape[0]
    alone = U - shared
    occupancy = {1: alone} if alone else {}
    if shared:
        occ = torch.bincount(counts).cpu().tolist()
        occupancy.update({k: v for k, v in enumerate(occ) if v})
    largest: list[torch.Tensor] = []
    if top and shared:
        k = min(top, shared)
        # candidates: every region at least as large as the k-th largest (ties included)
        cut = torch.topk(counts, k).values[-1]
        cand = (counts >= cut).nonzero().squeeze(1)
        lowest = g.perm[starts[cand]].clone()  # smallest sample index of each candidate
        in_cand = torch.full((shared,), -1, dtype=torch.int64, device=counts.device)
        in_cand[cand] = torch.arange(cand.shape[0], device=counts.device)
        sel = in_cand[group]
        ok = sel >= 0
        lowest.scatter_reduce_(0, sel[ok], g.perm[dup[ok]], reduce="amin")
        order = torch.sort(lowest, stable=True).indices  # then by size: stable sort on -count
        order = order[torch.sort(-counts[cand][order], stable=True).indices]
        big = cand[order[:k]]
        s_l, c_l = starts[big].tolist(), counts[big].tolist()
        largest = [torch.sort(g.perm[s:s + c])[0].cpu() for s, c in zip(s_l, c_l)]
    mixed_regions = mixed_samples = None
    if labels is not None:
        labels = labels.to(g.perm.device)
        head = labels[g.perm[starts]]
        differs = (labels[g.perm[dup]] != head[group]).to(torch.int64)
        per_group = torch.zeros(shared, dtype=torch.int64, device=labels.device)
        per_group.index_add_(0, group, differs)
        mixed = per_group > 0
        mixed_regions = int(mixed.sum())
        mixed_samples = int(counts[mixed].sum())
    return CollisionReport(
        n=n, n_distinct=U, redundancy=(n - U) / n if n else 0.0,
        unique_fraction=alone / n if n else 0.0, occupancy=dict(sorted(occupancy.items())),
        n_shared_regions=shared, largest_groups=largest, mixed_regions=mixed_regions,
        mixed_samples=mixed_samples, exact=exact)


def count_collisions(codes_or_codebook, labels=None, *, per_layer: bool = False,
                     top: int = 10, layout: Layout | None = None) -> CollisionReport:
    """Exact collision statistics of N codes.

    Args:
        codes_or_codebook: a :class:`~activation_hash.codes.CodeBook`, int64 codes ``[N, W]``
            (CPU or CUDA) or a ``(codes, labels)`` tuple.
        labels: int labels ``[N]`` (default: the CodeBook's): enables ``mixed_regions``.
        per_layer: also the redundancy of the code truncated after each layer (needs a
            CodeBook or ``layout``); one fingerprint pass gives every prefix.
        top: how many of the largest shared regions to list.

    Returns:
        a :class:`CollisionReport`.
    """
    codes, own_labels = as_codes(codes_or_codebook)
    if isinstance(codes_or_codebook, CodeBook) and layout is None:
        layout = codes_or_codebook.layout
    if labels is None:
        labels = own_labels
    else:
        labels = as_labels(labels, codes.shape[0], "labels")
    top = check_int(top, "top", min=0)
    if not per_layer:
        return _report(_group_codes(codes), labels, top, exact=True)
    if layout is None:
        raise ValueError("per_layer=True needs the layer layout: pass a CodeBook or layout=")
    if layout.total_words != codes.shape[1]:
        raise ValueError(f"layout has {layout.total_words} words per code, codes have "
                         f"{codes.shape[1]}")
    profile, full = layer_profile(codes, layout)
    rep = _report(full, labels, top, exact=True)
    rep.per_layer = profile
    return rep


collisions = count_collisions  # the name of earlier releases


class CollisionCounter:
    """Streaming collision statistics (torchmetrics style): ``update`` per batch, ``compute``.

    Keeps only the 128-bit fingerprint of each code (16 bytes per sample; plus 8 bytes when
    labels are given), never the codes, so the result rests on the fingerprints alone: two
    different codes with the same 128-bit fingerprint would be counted as one. For N samples
    the probability of any such clash is at most ``N * (N - 1) / 2 / 2**128 < N**2 / 2**129``
    (birthday bound, fingerprints modelled as uniform): below 1e-24 for N = 1e7 and below 3e-15
    for N = 1e12. Use :func:`count_collisions` when the codes fit (it verifies full rows).

    ``largest_groups`` hold indices in update order (the i-th sample seen is i).
    ``merge(other)`` appends another counter's samples after this one's; ``sync()`` gathers
    the samples of every rank of a ``torch.distributed`` run (rank order) onto each rank, once:
    a second ``sync()`` with no ``update``/``merge`` in between changes nothing.

    Example::

        counter = CollisionCounter()
        for batch in batches:
            counter.update(codes_of(batch), labels)
        rep = counter.compute()
    """

    def __init__(self, top: int = 10):
        self.top = check_int(top, "top", min=0)
        self.reset()

    def reset(self) -> None:
        self._fps: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._with_labels: bool | None = None
        self._width: int | None = None
        self._synced = False  # the state already holds every rank's samples
        self.n = 0

    def update(self, codes, labels=None) -> None:
        """Add a batch: a CodeBook, int64 codes ``[B, W]`` or ``(codes, labels)``. Every
        batch must have the width (words per row) of the first; invalid input raises before
        anything is added."""
        c, own = as_codes(codes)
        lab = own if labels is None else as_labels(labels, c.shape[0], "labels")
        if self._width is not None and c.shape[1] != self._width:
            raise ValueError(f"CollisionCounter: codes of {c.shape[1]} words per row, earlier "
                             f"ones had {self._width} (one counter counts one code width)")
        has = lab is not None
        if self._with_labels is not None and self._with_labels != has:
            raise ValueError("CollisionCounter: give labels with every update or with none")
        if self._fps and c.device != self._fps[0].device:
            raise ValueError(f"CollisionCounter: codes on {c.device}, earlier ones on "
                             f"{self._fps[0].device}")
        fp = fingerprint128(c)
        self._width = c.shape[1]
        self._with_labels = has
        self._fps.append(fp)
        if has:
            self._labels.append(lab.to(c.device))
        self.n += c.shape[0]
        self._synced = False

    def merge(self, other: "CollisionCounter") -> "CollisionCounter":
        """Add the samples of ``other`` (after this counter's); returns self."""
        if not isinstance(other, CollisionCounter):
            raise TypeError(f"merge takes a CollisionCounter, got {type(other).__name__}")
        if other.n and self.n and self._with_labels != other._with_labels:
            raise ValueError("CollisionCounter.merge: one counter has labels, the other not")
        if self._width is not None and other._width is not None and self._width != other._width:
            raise ValueError(f"CollisionCounter.merge: codes of {self._width} and of "
                             f"{other._width} words per row")
        if self._with_labels is None:
            self._with_labels = other._with_labels
        if self._width is None:
            self._width = other._width
        self._fps += other._fps
        self._labels += other._labels
        self.n += other.n
        self._synced = False
        return self

    def sync(self, group=None) -> "CollisionCounter":
        """Gather the samples of every rank of a ``torch.distributed`` run onto every rank
        (rank order: rank 0's samples first); then ``compute()`` gives the global statistics.
        No-op outside an initialised process group, and when already synced (no ``update`` or
        ``merge`` since the last ``sync``; every rank must agree on that). Returns self."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or self._synced:
            return self
        world = dist.get_world_size(group)
        dev = self._fps[0].device if self._fps else torch.device("cpu")
        if dist.get_backend(group) == "nccl":
            dev = torch.device("cuda", torch.cuda.current_device())
        fp = torch.cat(self._fps).to(dev) if self._fps else torch.zeros(0, 2, dtype=torch.int64,
                                                                        device=dev)
        flags = torch.tensor([fp.shape[0], 1 if self._with_labels else 0,
                              1 if self._with_labels is False else 0,
                              -1 if self._width is None else self._width], device=dev)
        all_flags = [torch.zeros_like(flags) for _ in range(world)]
        dist.all_gather(all_flags, flags, group=group)
        sizes = [int(f[0]) for f in all_flags]
        if any(int(f[1]) for f in all_flags) and any(int(f[2]) for f in all_flags):
            raise ValueError("CollisionCounter.sync: some ranks have labels and some do not")
        with_labels = any(int(f[1]) for f in all_flags)
        widths = {int(f[3]) for f in all_flags} - {-1}
        if len(widths) > 1:
            raise ValueError(f"CollisionCounter.sync: ranks counted codes of different widths "
                             f"{sorted(widths)}")
        big = max(sizes)

        def gather(t: torch.Tensor) -> torch.Tensor:
            pad = torch.zeros((big,) + tuple(t.shape[1:]), dtype=t.dtype, device=dev)
            pad[:t.shape[0]] = t
            parts = [torch.empty_like(pad) for _ in range(world)]
            dist.all_gather(parts, pad, group=group)
            return torch.cat([p[:s] for p, s in zip(parts, sizes)])

        all_fp = gather(fp)
        labels = None
        if with_labels:
            lab = torch.cat(self._labels).to(dev) if self._labels else torch.zeros(
                0, dtype=torch.int64, device=dev)
            labels = gather(lab)
        self.reset()
        self._fps = [all_fp]
        self._labels = [labels] if labels is not None else []
        self._with_labels = with_labels if sum(sizes) else None
        self._width = widths.pop() if widths else None
        self.n = all_fp.shape[0]
        self._synced = True
        return self

    @property
    def state_bytes(self) -> int:
        """Bytes of state held: 16 per sample (+ 8 with labels)."""
        return sum(t.numel() * t.element_size() for t in self._fps + self._labels)

    def compute(self) -> CollisionReport:
        if not self._fps:
            return _report(_group_sorted(torch.zeros(0, dtype=torch.int64), None), None,
                           self.top, exact=False)
        if len(self._fps) > 1:  # compact the state (same bytes, fewer tensors)
            self._fps = [torch.cat(self._fps)]
            if self._labels:
                self._labels = [torch.cat(self._labels)]
        fp = self._fps[0]
        g = _group_sorted(fp[:, 0], fp)
        return _report(g, self._labels[0] if self._labels else None, self.top, exact=False)
