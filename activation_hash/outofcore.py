"""Out-of-core collisions and K-NN over a code store larger than a memory budget.

- :func:`count_collisions_out_of_core`: the report of
  :func:`~activation_hash.collisions.count_collisions` on ``CodeBook.load(store)``, exactly,
  within ``memory_budget``. Pass 1 streams the store in tiles, fingerprints every row (every
  layer prefix with ``per_layer``) and appends ``(fingerprint, global index, label)`` records
  to bucket files on disk chosen by the fingerprint's high bits; pass 2 groups each bucket in
  memory, verifies its candidate groups against the full rows (read back from the store) and
  splits clashes exactly, then the per-bucket statistics are added up. The work directory
  records the progress after every tile and every bucket: a run killed mid-way resumes where
  it stopped.
- :func:`hamming_topk_out_of_core`: exact K-NN (equal to :func:`~activation_hash.hamming.hamming_topk`,
  ties by lower index) streaming base tiles from the memory-mapped store.

Memory: the store is read through read-only memory maps whose pages are dropped from the
process after each tile (``madvise(MADV_DONTNEED)``), so the resident set stays near the
budget whatever the store's size (the page cache is the kernel's, not the process's).

Example::

    rep = count_collisions_out_of_core("run/codes", memory_budget="2GB", per_layer=True)
    d, idx = hamming_topk_out_of_core(queries, "run/codes", k=10, memory_budget="2GB")
"""
from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import warnings

import numpy as np
import torch

from activation_hash import store as _store
from activation_hash.fileio import atomic_write_json
from activation_hash.codes import as_codes
from activation_hash.collisions import CollisionReport, make_report
from activation_hash.grouping import Groups, group_sorted, split_clashes
from activation_hash.layout import Layout
from activation_hash.ops import fingerprint128, hamming_topk
from activation_hash.validation import check_int

__all__ = ["parse_budget", "count_collisions_out_of_core", "hamming_topk_out_of_core"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20,
          "g": 2**30, "t": 2**40}
_REC_WORK = 160  # bytes of working memory per bucket record while a bucket is grouped


def parse_budget(budget) -> int:
    """``"2GB"`` (10^9), ``"512MiB"`` (2^20), ``"4G"`` (2^30) or an int of bytes -> bytes."""
    if isinstance(budget, (int, np.integer)) and not isinstance(budget, bool):
        b = int(budget)
    elif isinstance(budget, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", budget)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"memory_budget must look like '2GB', '512MiB' or a number of "
                             f"bytes, got {budget!r}")
        b = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    else:
        raise TypeError(f"memory_budget must be a str like '2GB' or an int, got "
                        f"{type(budget).__name__}")
    if b < 1 << 20:
        raise ValueError(f"memory_budget must be at least 1 MiB, got {b} bytes")
    return b


class _StoreRows:
    """The rows of a complete store's arrays through read-only memory maps, chunk by chunk;
    :meth:`release` drops the mapped pages from the process's resident set."""

    def __init__(self, path):
        self.root = os.fspath(path)
        m = _store.manifest(self.root)
        if not m.get("complete"):
            raise _store.IncompleteStoreError(f"store {self.root!r} is incomplete")
        self.layout = Layout.from_dict(m["layout"])
        self.names = list(m["arrays"])
        self.maps: dict[str, list[np.ndarray]] = {k: [] for k in self.names}
        self.starts = [0]
        for ch in m["chunks"]:
            for k in self.names:
                e = ch["files"][k]
                a = np.load(os.path.join(self.root, e["file"]), mmap_mode="r",
                            allow_pickle=False)
                if list(a.shape) != e["shape"]:
                    raise ValueError(f"{e['file']}: shape {list(a.shape)}, manifest {e['shape']}")
                self.maps[k].append(a)
            self.starts.append(self.starts[-1] + ch["rows"])
        self.n = self.starts[-1]
        codes = self.maps["codes"]
        self.W = int(m["arrays"]["codes"][1][0])
        self.has_labels = "labels" in self.maps
        del codes

    def tiles(self, rows: int, start: int = 0):
        """(lo, hi) ranges of at most ``rows`` rows that never cross a chunk."""
        for c in range(len(self.starts) - 1):
            a, b = self.starts[c], self.starts[c + 1]
            for lo in range(max(a, start), b, rows):
                yield lo, min(lo + rows, b)

    def get(self, name: str, lo: int, hi: int) -> np.ndarray:
        c = int(np.searchsorted(self.starts, lo, side="right")) - 1
        s = self.starts[c]
        return self.maps[name][c][lo - s:hi - s]

    def take(self, name: str, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (any order) copied out."""
        order = np.argsort(idx, kind="stable")
        out = np.empty((idx.shape[0],) + self.maps[name][0].shape[1:], self.maps[name][0].dtype)
        sidx = idx[order]
        cs = np.searchsorted(self.starts, sidx, side="right") - 1
        for c in np.unique(cs):
            sel = cs == c
            out[order[sel]] = self.maps[name][c][sidx[sel] - self.starts[c]]
        return out

    def release(self) -> None:
        for arrs in self.maps.values():
            for a in arrs:
                mm = getattr(a, "_mmap", None)
                if mm is not None and hasattr(mm, "madvise"):
                    try:
                        mm.madvise(mmap.MADV_DONTNEED)
                    except (OSError, ValueError):
                        pass


class _LazyRows:
    """``verify`` for the collision internals: rows (bucket positions) read from the store."""

    def __init__(self, rows: _StoreRows, gidx: np.ndarray, width: int):
        self.rows, self.gidx, self.width = rows, gidx, width
        self.shape = (gidx.shape[0], width)

    def __getitem__(self, idx) -> torch.Tensor:
        i = idx.cpu().numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
        got = self.rows.take("codes", self.gidx[i])[:, :self.width]
        return torch.from_numpy(np.ascontiguousarray(got))


def _write_progress(path: str, obj) -> None:
    """The progress file, after every tile and bucket: atomic (a killed run reads the last
    one whole), compact (the C encoder) and not fsynced: a progress lost in a power cut reads
    as an older one or as unreadable (a fresh start), and a resume checks that every bucket
    file holds at least the bytes the progress recorded."""
    atomic_write_json(path, obj, indent=None, fsync=False)


def _verified_groups(rec: np.ndarray, rows: _StoreRows, width: int, step_rows: int) -> Groups:
    """Exact groups of a bucket's records (fp0, fp1, gidx[, label]) by their rows' first
    ``width`` words: grouped by the 128-bit fingerprint, then every member of a shared group
    compared with the group's first row (read from the store, ``step_rows`` rows at a time),
    clashes split exactly."""
    fp = torch.from_numpy(np.ascontiguousarray(rec[:, 0:2]))
    g = group_sorted(fp[:, 0].contiguous(), fp)
    if width == 0 or g.n == 0:
        return g
    starts, counts, dup, group = g.shared()
    if not dup.numel():
        return g
    lazy = _LazyRows(rows, rec[:, 2], width)
    first = starts[group]
    mismatch = torch.zeros(dup.shape[0], dtype=torch.bool)
    for lo in range(0, dup.shape[0], step_rows):
        a = lazy[g.perm[dup[lo:lo + step_rows]]]
        b = lazy[g.perm[first[lo:lo + step_rows]]]
        mismatch[lo:lo + step_rows] = (a != b).any(dim=1)
        rows.release()
    if bool(mismatch.any()):
        split_clashes(g.perm, g.new, starts, counts, group[mismatch], lazy)
        rows.release()
        g = Groups(g.perm, g.new)
    return g


def count_collisions_out_of_core(store, *, memory_budget="2GB", per_layer: bool = False,
                                 top: int = 10, labels: bool = True, work_dir=None,
                                 resume: bool = True, keep_work: bool = False,
                                 progress: bool = False) -> CollisionReport:
    """:func:`~activation_hash.collisions.count_collisions` of the store at ``store`` (exactly
    the same report), holding at most about ``memory_budget`` in memory.

    ``work_dir`` (default ``<store>.collisions-work``) holds the bucket files (24 bytes per
    sample and level, 32 at the last level with labels) and ``progress.json``; with ``resume``
    an interrupted run with the same settings continues there (else it starts afresh). It is
    deleted at the end unless ``keep_work``. ``labels=False`` ignores the store's labels.
    """
    budget = parse_budget(memory_budget)
    top = check_int(top, "top", min=0)
    rows = _StoreRows(store)
    N, W = rows.n, rows.W
    with_labels = labels and rows.has_labels
    layout = rows.layout
    ends = [o + w for o, w in zip(layout.word_offsets, layout.words_per_layer)] if per_layer else []
    widths = ends + [W]
    L = len(widths)
    work = os.fspath(work_dir) if work_dir is not None else os.fspath(store).rstrip(os.sep) + \
        ".collisions-work"
    tile_rows = max(1, (budget // 4) // (W * 8 + 40 * L + 64))
    nb = 1
    while N * _REC_WORK / nb > budget // 2:
        nb *= 2
    bits = nb.bit_length() - 1
    config = {"n": N, "w": W, "levels": widths, "labels": with_labels, "buckets": nb,
              "tile_rows": tile_rows, "store": os.path.abspath(os.fspath(store))}
    prog_path = os.path.join(work, "progress.json")
    prog = None
    if resume and os.path.isfile(prog_path):
        with open(prog_path) as f:
            try:
                prog = json.load(f)
            except json.JSONDecodeError:
                prog = None
        if prog is not None and prog.get("config") != config:
            prog = None
        if prog is not None and any(
                os.path.getsize(p) < size if os.path.exists(p) else size > 0
                for level, row in enumerate(prog["sizes"]) for b, size in enumerate(row)
                for p in [os.path.join(work, f"l{level:03d}-b{b:05d}.bin")]):
            prog = None  # bucket files shorter than recorded (lost writes): start afresh
    if prog is None:
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        prog = {"config": config, "tiles_done": 0, "rows_done": 0,
                "sizes": [[0] * nb for _ in range(L)], "done": {}}
        _write_progress(prog_path, prog)

    def bucket_file(level, b):
        return os.path.join(work, f"l{level:03d}-b{b:05d}.bin")

    # pass 1: fingerprints -> bucket files (resumed after the last recorded tile)
    if prog["rows_done"] < N:
        files = []
        for level in range(L):
            row = []
            for b in range(nb):
                path = bucket_file(level, b)
                f = open(path, "a+b")
                f.truncate(prog["sizes"][level][b])  # drop what a killed run wrote after
                f.seek(0, os.SEEK_END)
                row.append(f)
            files.append(row)
        try:
            for lo, hi in rows.tiles(tile_rows, prog["rows_done"]):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # read-only map, never written
                    codes = torch.from_numpy(rows.get("codes", lo, hi))
                fps = fingerprint128(codes, widths).numpy()  # [n, L, 2]
                del codes
                lab = rows.get("labels", lo, hi) if with_labels else None
                for level in range(L):
                    cols = 4 if (level == L - 1 and lab is not None) else 3
                    fl = fps[:, level]
                    rec = np.empty((hi - lo, cols), dtype=np.int64)
                    if bits:  # records in bucket order: a stable radix sort of the buckets
                        bucket = (fl[:, 0] >> (64 - bits)) & (nb - 1)
                        bucket = bucket.astype(np.uint16 if nb <= 1 << 16 else np.int64)
                        order = np.argsort(bucket, kind="stable")
                        cuts = np.concatenate([[0], np.cumsum(np.bincount(bucket, minlength=nb))])
                    else:
                        order, cuts = np.arange(hi - lo), np.array([0, hi - lo])
                    rec[:, 0:2] = fl[order]
                    rec[:, 2] = order + lo
                    if cols == 4:
                        rec[:, 3] = lab[order]
                    for b in range(nb):
                        if cuts[b + 1] > cuts[b]:
                            files[level][b].write(memoryview(rec[cuts[b]:cuts[b + 1]]))
                del fps, lab
                rows.release()
                for level in range(L):
                    for b in range(nb):
                        files[level][b].flush()
                        prog["sizes"][level][b] = files[level][b].tell()
                prog["rows_done"] = hi
                prog["tiles_done"] += 1
                _write_progress(prog_path, prog)
        finally:
            for row in files:
                for f in row:
                    f.close()

    # pass 2: bucket by bucket
    step_rows = max(1, (budget // 8) // max(1, W * 8))
    for level in range(L):
        cols = 4 if (level == L - 1 and with_labels) else 3
        for b in range(nb):
            key = f"{level}/{b}"
            if key in prog["done"]:
                continue
            path = bucket_file(level, b)
            rec = (np.fromfile(path, dtype=np.int64) if os.path.exists(path) else
                   np.zeros(0, np.int64)).reshape(-1, cols)
            g = _verified_groups(rec, rows, widths[level], step_rows)
            if level < L - 1:
                part = {"u": g.n_groups}
            else:
                lab = torch.from_numpy(np.ascontiguousarray(rec[:, 3])) if cols == 4 else None
                r = make_report(g, lab, top, exact=True)
                gidx = rec[:, 2]
                part = {"u": r.n_distinct, "occ": {str(k): v for k, v in r.occupancy.items()},
                        "mixed": [r.mixed_regions or 0, r.mixed_samples or 0],
                        "largest": [gidx[t.numpy()].tolist() for t in r.largest_groups]}
            del rec, g
            prog["done"][key] = part
            _write_progress(prog_path, prog)

    # add the buckets up
    parts = [prog["done"][f"{L - 1}/{b}"] for b in range(nb)]
    U = sum(p["u"] for p in parts)
    occ: dict[int, int] = {}
    for p in parts:
        for k, v in p["occ"].items():
            occ[int(k)] = occ.get(int(k), 0) + v
    cands = sorted((g for p in parts for g in p["largest"]), key=lambda g: (-len(g), g[0]))
    alone = occ.get(1, 0)
    rep = CollisionReport(
        n=N, n_distinct=U, redundancy=(N - U) / N if N else 0.0,
        unique_fraction=alone / N if N else 0.0, occupancy=dict(sorted(occ.items())),
        n_shared_regions=U - alone,
        largest_groups=[torch.tensor(g, dtype=torch.int64) for g in cands[:top]],
        mixed_regions=sum(p["mixed"][0] for p in parts) if with_labels else None,
        mixed_samples=sum(p["mixed"][1] for p in parts) if with_labels else None, exact=True)
    if per_layer:
        rep.per_layer = []
        for level, name in enumerate(layout.names):
            u = sum(prog["done"][f"{level}/{b}"]["u"] for b in range(nb))
            rep.per_layer.append((name, (N - u) / N if N else 0.0))
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return rep


def hamming_topk_out_of_core(queries, store, k: int, *, memory_budget="2GB"
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~activation_hash.hamming.hamming_topk` of ``queries`` against the codes of the
    store at ``store`` (exactly: equal distances by lower index), streaming base tiles of
    about half the budget from the memory-mapped store. The queries stay in memory."""
    budget = parse_budget(memory_budget)
    q, _ = as_codes(queries, "queries")
    q = q.cpu().contiguous()
    rows = _StoreRows(store)
    k = check_int(k, "k", min=0)
    if k > rows.n:
        raise ValueError(f"k={k} exceeds the {rows.n} rows of the store")
    if q.shape[1] != rows.W:
        raise ValueError(f"queries have {q.shape[1]} words per row, the store {rows.W}")
    Q = q.shape[0]
    state = 12 * Q * k * 3  # running and merged lists
    tile_rows = max(k, 1, (budget // 2 - state) // max(1, rows.W * 8))
    d = torch.zeros(Q, 0, dtype=torch.int32)
    i = torch.zeros(Q, 0, dtype=torch.int64)
    for lo, hi in rows.tiles(tile_rows):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only map: never written
            base = torch.from_numpy(rows.get("codes", lo, hi))
        kk = min(k, hi - lo)
        dt, it = hamming_topk(q, base, kk)
        del base
        rows.release()
        # running results hold lower indices: a stable sort by distance keeps index order
        d, i = torch.cat([d, dt], 1), torch.cat([i, it + lo], 1)
        order = torch.sort(d, dim=1, stable=True).indices[:, :k]
        d, i = torch.gather(d, 1, order), torch.gather(i, 1, order)
    return d, i
