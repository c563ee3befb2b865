"""Exact grouping of code rows by equality: the engine under :mod:`activation_hash.collisions`.

:func:`group_codes` sorts N rows by a 64-bit hash (the ``fingerprint_key`` op: hash in the high
bits, row index in the low bits, so one value sort gives the order) and verifies every
candidate group against the full rows; a group whose rows differ (a hash clash) is split by
exact lexicographic grouping (:func:`split_clashes`). :func:`layer_profile` groups the codes
truncated after each layer, refining the previous layer's groups layer by layer.
:func:`group_sorted` and :func:`sort_packed` are the pieces the out-of-core and distributed
counters reuse on keys they sorted themselves.
"""
from __future__ import annotations

import numpy as np
import torch

from activation_hash.codes import as_codes
from activation_hash.layout import Layout
from activation_hash.ops import fingerprint128, fingerprint_key

__all__ = ["Groups", "group_codes", "group_rows", "group_sorted", "sort_packed", "split_clashes",
           "index_bits", "layer_profile", "MAX_FALSE_PAIRS", "where_true", "select",
           "largest_first"]


# On the CPU, numpy's boolean indexing is several times faster than torch's (2M elements, one
# thread: nonzero 1.5 ms against 4.6, a mask selection 1.8 against 13): the grouping's
# per-sample masks go through numpy there (no copy: shared memory both ways).
def where_true(mask: torch.Tensor) -> torch.Tensor:
    """Positions of the True values of a bool ``[N]`` tensor, int64 ``[K]``."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().squeeze(1)


def select(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``t[mask]`` for a 1-D tensor and a bool mask of its length."""
    if t.device.type == "cpu" and not t.requires_grad:
        return torch.from_numpy(t.numpy()[mask.numpy()])
    return t[mask]

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
            starts = where_true(head)
            dup = where_true(~new)
            group = torch.searchsorted(starts, dup, right=True) - 1
            counts = torch.bincount(group, minlength=starts.shape[0]) + 1
            self._shared = (starts, counts, dup, group)
        return self._shared

    def mixed(self, labels: torch.Tensor) -> torch.Tensor:
        """bool ``[shared groups]``: whether each shared group (``shared()[0]``) holds two
        labels or more (``labels``: int64 ``[N]``, by sample)."""
        starts, _, dup, group = self.shared()
        labels = labels.to(self.perm.device)
        head = labels[self.perm[starts]]
        differs = (labels[self.perm[dup]] != head[group]).to(torch.int64)
        per_group = torch.zeros(starts.shape[0], dtype=torch.int64, device=labels.device)
        per_group.index_add_(0, group, differs)
        return per_group > 0

    @property
    def n_groups(self) -> int:
        return self.n - self.shared()[2].shape[0]

    def group_ids(self) -> torch.Tensor:
        """Group of each sample, int64 ``[N]`` (groups numbered in sorted order)."""
        gid_sorted = torch.cumsum(self.new, 0) - 1
        out = torch.empty_like(gid_sorted)
        out[self.perm] = gid_sorted
        return out


def largest_first(size: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """The order of groups by size, largest first, ties by the smallest sample index ``low``
    (the order of ``largest_groups`` in every collision report)."""
    order = torch.sort(low, stable=True).indices
    return order[torch.sort(-size[order], stable=True).indices]


MAX_FALSE_PAIRS = 1e5  # expected pairs of distinct keys sharing their high bits (see below)


def index_bits(N: int) -> int | None:
    """Low key bits that number N rows, or None when too few high bits would be left: the
    expected number of distinct keys equal above those bits, N^2 / 2^(65 - b), must stay
    small (each such pair is split by the exact verification, which costs time)."""
    b = max(1, (N - 1).bit_length())
    if b >= 48 or N * N / 2.0 ** (65 - b) > MAX_FALSE_PAIRS:
        return None
    return b


def sort_packed(packed: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
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
    b = None if exact else index_bits(N)
    if b is None:
        return torch.sort(key)
    packed = torch.bitwise_and(key, -(1 << b))
    packed |= torch.arange(N, dtype=torch.int64, device=key.device)
    return sort_packed(packed, b)


def group_sorted(key: torch.Tensor | None, verify: torch.Tensor | None,
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
                split_clashes(perm, new, starts, counts, group[mismatch], verify)
                g = Groups(perm, new)
    return g


def split_clashes(perm, new, starts, counts, bad_groups, verify) -> None:
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
    return group_rows(codes, fingerprints)


def group_rows(codes: torch.Tensor, fingerprints: torch.Tensor | None = None) -> Groups:
    """:func:`group_codes` on checked int64 codes ``[N, W]``."""
    W = codes.shape[1]
    if W == 0:
        key = torch.zeros(codes.shape[0], dtype=torch.int64, device=codes.device)
        return group_sorted(key, None)
    if fingerprints is None:
        b = index_bits(codes.shape[0])
        if b is not None:  # one kernel pass gives the packed sort key directly
            return group_sorted(None, codes, sort_packed(fingerprint_key(codes, b), b))
        fingerprints = fingerprint128(codes)
    return group_sorted(fingerprints[:, 0], codes)


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
    b = index_bits(N)
    if b is None:  # huge N: a (value, index) sort
        sk, perm = torch.sort(key)
        key.copy_(sk)
        del sk
    else:
        key &= -(1 << b)
        for lo in range(0, N, _PROFILE_CHUNK_ROWS):  # the row index in the low bits
            hi = min(N, lo + _PROFILE_CHUNK_ROWS)
            key[lo:hi] |= torch.arange(lo, hi, dtype=torch.int64, device=dev)
        key, perm = sort_packed(key, b)
    new = torch.ones(N, dtype=torch.bool, device=dev)
    torch.ne(key[1:], key[:-1], out=new[1:])
    step = max(1, _PROFILE_CHUNK_WORDS // (e - o))
    bad = []  # sorted positions equal in hash to their neighbour, not in (group, words)
    for lo in range(1, N, step):
        hi = min(N, lo + step)
        pos = where_true(~new[lo:hi]) + lo
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
        split_clashes(perm, new, starts, counts,
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
        return profile, group_rows(codes)
    if perm is None:  # no layer has words: every code is the same
        perm = torch.arange(N, dtype=torch.int64, device=dev)
        new = torch.zeros(N, dtype=torch.bool, device=dev)
        new[0] = True
    return profile, Groups(perm, new)
