"""Exact collision counting: how many samples share a neural code (a linear region).

:func:`count_collisions` groups N codes exactly: one kernel pass (the ``fingerprint_key`` op, CPU
and CUDA) hashes each row to 64 bits and puts the row index in the low bits, and one value
sort of those keys puts rows of equal hash next to each other; every candidate group is then
verified against the full rows, and a group whose rows differ (a hash clash) is split by
exact lexicographic grouping of its rows. So a clash costs time, never correctness.
Everything runs in torch ops on the codes' device (the sort is torch's on the GPU); no Python
loop over groups. The per-layer profile fingerprints every layer prefix in the same pass
(``fingerprint128`` with prefix ends). The grouping itself lives in
:mod:`activation_hash.grouping`; this module turns groups into statistics.

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
from activation_hash.memory import check_fits
from activation_hash.grouping import (Groups, group_codes, group_rows, group_sorted,
                                      largest_first, layer_profile)
from activation_hash.ops import fingerprint128
from activation_hash.validation import check_int

__all__ = ["CollisionReport", "count_collisions", "collisions", "CollisionCounter",
           "make_report", "group_codes", "Groups", "layer_profile"]


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


def make_report(g: Groups, labels: torch.Tensor | None, top: int, exact: bool) -> CollisionReport:
    """The statistics of a grouping ``g`` of N samples (``labels``: int64 ``[N]`` or None;
    ``top``: how many of the largest groups to list; ``exact``: whether ``g`` was verified
    against the full codes, or groups equal fingerprints only)."""
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
        big = cand[largest_first(counts[cand], lowest)[:k]]
        s_l, c_l = starts[big].tolist(), counts[big].tolist()
        largest = [torch.sort(g.perm[s:s + c])[0].cpu() for s, c in zip(s_l, c_l)]
    mixed_regions = mixed_samples = None
    if labels is not None:
        mixed = g.mixed(labels)
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
    L = len(layout) if per_layer and layout is not None else 0
    check_fits((48 + 8 * L) * codes.shape[0], f"grouping {codes.shape[0]} codes (sort keys, "
               f"permutation, group ids{', per layer' if L else ''})", "count in batches with "
               "CollisionCounter (update() per batch), or count_collisions_out_of_core(store, "
               "memory_budget=...) over a store", codes.device)
    if not per_layer:
        return make_report(group_rows(codes), labels, top, exact=True)
    if layout is None:
        raise ValueError("per_layer=True needs the layer layout: pass a CodeBook or layout=")
    if layout.total_words != codes.shape[1]:
        raise ValueError(f"layout has {layout.total_words} words per code, codes have "
                         f"{codes.shape[1]}")
    profile, full = layer_profile(codes, layout)
    rep = make_report(full, labels, top, exact=True)
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
            return make_report(group_sorted(torch.zeros(0, dtype=torch.int64), None), None,
                           self.top, exact=False)
        if len(self._fps) > 1:  # compact the state (same bytes, fewer tensors)
            self._fps = [torch.cat(self._fps)]
            if self._labels:
                self._labels = [torch.cat(self._labels)]
        fp = self._fps[0]
        g = group_sorted(fp[:, 0], fp)
        return make_report(g, self._labels[0] if self._labels else None, self.top, exact=False)
