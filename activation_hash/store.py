"""On-disk store of code tables: a directory of .npy files and a JSON manifest.

Layout of a store directory::

    manifest.json        {"format", "version", "complete", "layout", "meta", "arrays",
                          "rows", "chunks": [{"rows", "files": {name: {"file", "shape",
                          "dtype", "bytes", "sha256", "block_bytes", "blocks"}}}]}
    codes-000000.npy     chunk files while an extraction runs (rows in order) ...
    codes.npy            ... merged into one file per array when a store of several chunks
                         finishes; a store of exactly one chunk keeps codes-000000.npy
    labels.npy           (optional) one row per code, likewise

Checksums: each file's size, sha256 and the sha256 of each ``block_bytes`` block (``blocks``)
are computed while it is written. :func:`read` checks every file's size and ``.npy`` header
(dtype, shape) against the manifest before it maps the file, and by default (``verify=True``)
re-hashes the blocks, several at a time on threads: a flipped byte raises ValueError.

Manifests are validated before use (a corrupt one raises ValueError naming the field); chunk
file names must be the store's own (``<array>.npy`` / ``<array>-NNNNNN.npy``: no directories,
no ``..``, nothing absolute), so a manifest can never make a store read or delete a file
outside its directory.

Crash safety: every file is written under a temporary name, fsynced and renamed; the manifest
is rewritten the same way after each chunk, and says ``"complete": true`` only after the last
chunk and the merge are on disk. A store cut short (kill -9, power loss) therefore has
``complete: false``: :func:`read` refuses it with :class:`IncompleteStoreError`, and a
:class:`Writer` opened with ``resume=True`` keeps the chunks whose size and sha256 verify and
continues after them; it deletes only the store's own files (``manifest.json.tmp``, array
files ``<name>.npy``, ``<name>-NNNNNN.npy`` and their ``.tmp``), never others. ``write(...,
overwrite=True)`` writes the new store into a sibling temporary directory and swaps it in by
renames, so a crash leaves the old store readable; a failed write removes what it created.

One writer at a time: a :class:`Writer` (and :func:`write`, :func:`remove`, :func:`concat`)
holds an exclusive lock, the file ``<store>.lock`` next to the directory
(:func:`activation_hash.fileio.exclusive_lock`); a second writer gets
:class:`~activation_hash.fileio.LockedError` naming the holder. Reads take no lock.

Reads use ``np.load(mmap_mode="c", allow_pickle=False)``: copy-on-write memory maps (writes
stay in process memory), no pickles.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from activation_hash.fileio import (LockedError, atomic_write_json, exclusive_lock,
                                    fsync_dir, lock_held)
from activation_hash.manifest import (FORMAT, MANIFEST, VERSION, check_npy_header,
                                      entry_ok, hash_ok, load_manifest, manifest_path,
                                      write_npy)
from activation_hash.validation import check_bool, check_int

CHUNK_BYTES = 64 << 20  # default chunk size of an extraction

__all__ = ["IncompleteStoreError", "LockedError", "Writer", "StoreData", "write", "read",
           "exists", "is_complete", "manifest", "remove", "concat", "lock"]

_KNOWN_ARRAYS = ("codes", "labels", "ids")


class IncompleteStoreError(ValueError):
    """The store was not finished (its writer was interrupted): never read as complete."""


@dataclass
class StoreData:
    """What :func:`read` returns: the arrays (memory-mapped or in memory) and the manifest's
    layout dict and meta dict."""

    arrays: dict[str, np.ndarray]
    layout: dict
    meta: dict
    rows: int


def exists(path) -> bool:
    """Whether ``path`` is a store directory (finished or not)."""
    return os.path.isfile(manifest_path(path))


LOCK = ".lock"


def lock(path, what: str | None = None):
    """The exclusive lock of the store at ``path``: the file ``<path>/.lock`` (the directory is
    created if needed; context manager; see the module docstring)."""
    return exclusive_lock(os.path.join(os.fspath(path), LOCK), what or f"store {os.fspath(path)!r}")


def is_complete(path) -> bool:
    return exists(path) and bool(load_manifest(path).get("complete"))


def manifest(path) -> dict:
    """The manifest dict of the store at ``path`` (finished or not)."""
    return load_manifest(path)


def _own_file(name: str, arrays) -> bool:
    """Whether a file name is one the store writes (arrays, chunks, temporaries)."""
    if name in (MANIFEST, MANIFEST + ".tmp", LOCK, LOCK + ".holder"):
        return True
    names = set(_KNOWN_ARRAYS) | set(arrays or ())
    alt = "|".join(re.escape(n) for n in sorted(names))
    return re.fullmatch(rf"(?:{alt})(?:-\d{{6}})?\.npy(?:\.tmp)?", name) is not None


def remove(path) -> None:
    """Delete the store at ``path``: its own files only (see :func:`_own_file`), then the
    directory when nothing else is left in it."""
    root = os.fspath(path)
    load_manifest(root)  # a missing store raises before the lock creates a directory
    outer = lock_held(os.path.join(root, LOCK))
    with lock(root):
        _remove(root)
    if not outer:  # ours alone: the lock file goes too (a caller's lock keeps it)
        for name in (LOCK + ".holder", LOCK):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(root, name))
        with contextlib.suppress(OSError):
            os.rmdir(root)


def _remove(root: str) -> None:
    m = load_manifest(root)
    os.remove(os.path.join(root, MANIFEST))  # first: no half-deleted store looks valid
    fsync_dir(root)
    for name in os.listdir(root):
        if _own_file(name, m.get("arrays")) and name not in (LOCK, LOCK + ".holder") and \
                os.path.isfile(os.path.join(root, name)):
            os.remove(os.path.join(root, name))


def _write_manifest(root: str, m: dict) -> None:
    atomic_write_json(os.path.join(root, MANIFEST), m, indent=1,
                      tmp=os.path.join(root, MANIFEST + ".tmp"))
    fsync_dir(root)


class Writer:
    """Appends rows of named arrays (``codes``, ``labels``, ...) to a store, in chunks.

    ``append`` buffers rows and writes a chunk file per array every ``chunk_rows`` rows (each
    followed by a manifest update); ``finish`` writes the rest, merges the chunks into one
    file per array and marks the store complete. With ``resume=True`` on an unfinished store,
    the chunks that verify are kept and :attr:`n_rows` tells how many rows they hold. A new
    store needs an empty (or no) directory; ``others_ok`` accepts a directory holding files
    that are not a store's (e.g. after :func:`remove` left the user's files there).

    The writer holds the store's exclusive lock from construction until :meth:`finish` or
    :meth:`close` (it is a context manager; ``with Writer(...) as w:`` closes it on errors):
    a second writer raises :class:`LockedError` naming this one.
    """

    def __init__(self, path, *, meta: dict | None = None, chunk_rows: int | None = None,
                 resume: bool = False, others_ok: bool = False):
        self.root = os.fspath(path)
        self.chunk_rows = None if chunk_rows is None else check_int(chunk_rows, "chunk_rows", min=1)
        resume = check_bool(resume, "resume")
        _check_json(meta, "meta")
        self._buf: dict[str, list[np.ndarray]] = {}
        self._buf_rows = 0
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(lock(self.root))
        try:
            self._open(meta, resume, others_ok)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the lock (without finishing: the store stays incomplete, resumable)."""
        self._lock.close()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def _open(self, meta, resume: bool, others_ok: bool) -> None:
        if exists(self.root):
            if not resume:
                raise ValueError(f"store {self.root!r} already exists (resume=False)")
            m = load_manifest(self.root)
            if m.get("complete"):
                raise ValueError(f"store {self.root!r} is complete already: nothing to resume")
            good = []
            for ch in m["chunks"]:
                if all(entry_ok(self.root, e) for e in ch["files"].values()):
                    good.append(ch)
                else:
                    break
            m["chunks"] = good
            m["rows"] = sum(ch["rows"] for ch in good)
            if meta:
                m["meta"] = {**m.get("meta", {}), **meta}
            self.m = m
            keep = {e["file"] for ch in good for e in ch["files"].values()} | {MANIFEST, LOCK,
                                                                               LOCK + ".holder"}
            for name in os.listdir(self.root):  # partial chunks, temporaries of the dead run
                if name not in keep and _own_file(name, m.get("arrays")) and \
                        os.path.isfile(os.path.join(self.root, name)):
                    os.remove(os.path.join(self.root, name))
            _write_manifest(self.root, self.m)
        else:
            if os.path.exists(self.root) and (not os.path.isdir(self.root) or any(
                    (not others_ok or _own_file(n, None)) and n not in (LOCK, LOCK + ".holder")
                    for n in os.listdir(self.root))):
                raise ValueError(f"{self.root!r} exists and is not an empty directory or a "
                                 f"code store")
            os.makedirs(self.root, exist_ok=True)
            self.m = {"format": FORMAT, "version": VERSION, "complete": False, "layout": None,
                      "meta": dict(meta or {}), "arrays": None, "rows": 0, "chunks": []}
            _write_manifest(self.root, self.m)

    @property
    def n_rows(self) -> int:
        """Rows on disk (verified chunks) plus rows buffered."""
        return self.m["rows"] + self._buf_rows

    @property
    def layout(self) -> dict | None:
        return self.m["layout"]

    def append(self, arrays: dict[str, np.ndarray], *, layout: dict | None = None) -> None:
        """Add rows: ``arrays`` maps names to arrays with the same number of rows."""
        rows = {a.shape[0] for a in arrays.values()}
        if len(rows) != 1:
            raise ValueError(f"arrays must have one number of rows, got "
                             f"{ {k: v.shape for k, v in arrays.items()} }")
        if layout is not None:
            if self.m["layout"] is None:
                self.m["layout"] = layout
            elif layout != self.m["layout"]:
                raise ValueError(f"rows of layout {layout} appended to a store of layout "
                                 f"{self.m['layout']}")
        spec = {k: [np.dtype(v.dtype).str, list(v.shape[1:])] for k, v in arrays.items()}
        if self.m["arrays"] is None:
            self.m["arrays"] = spec
        elif spec != self.m["arrays"]:
            raise ValueError(f"these rows hold arrays {spec}, the store holds {self.m['arrays']}")
        for k, v in arrays.items():
            self._buf.setdefault(k, []).append(np.asarray(v))
        self._buf_rows += rows.pop()
        limit = self.chunk_rows
        if limit is None:
            row_bytes = sum(max(1, int(np.prod(s)) * np.dtype(d).itemsize)
                            for d, s in self.m["arrays"].values())
            limit = max(1, CHUNK_BYTES // row_bytes)
        if self._buf_rows >= limit:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one chunk (one file per array) and record it."""
        if not self._buf_rows:
            return
        k = len(self.m["chunks"])
        files = {}
        for name, parts in self._buf.items():
            dtype, tail = self.m["arrays"][name]
            files[name] = write_npy(os.path.join(self.root, f"{name}-{k:06d}.npy"), parts,
                                     (self._buf_rows, *tail), np.dtype(dtype))
        fsync_dir(self.root)
        self.m["chunks"].append({"rows": self._buf_rows, "files": files})
        self.m["rows"] += self._buf_rows
        self._buf, self._buf_rows = {}, 0
        _write_manifest(self.root, self.m)

    def finish(self, *, empty: dict[str, tuple[str, list[int]]] | None = None) -> None:
        """Write what is buffered, merge the chunks into one file per array, mark complete.

        ``empty`` gives ``{name: (dtype, row shape)}`` for a store that received no rows.
        """
        self.flush()
        if self.m["arrays"] is None:
            self.m["arrays"] = {k: [np.dtype(d).str, list(s)] for k, (d, s) in
                                (empty or {}).items()}
        if self.m["layout"] is None:
            self.m["layout"] = {"names": [], "shapes": []}
        chunks = self.m["chunks"]
        if len(chunks) != 1:  # merge (or create the empty arrays)
            files = {}
            for name, (dtype, tail) in self.m["arrays"].items():
                parts = [np.load(os.path.join(self.root, ch["files"][name]["file"]),
                                 mmap_mode="r", allow_pickle=False) for ch in chunks]
                files[name] = write_npy(os.path.join(self.root, f"{name}.npy"), parts,
                                         (self.m["rows"], *tail), np.dtype(dtype))
            old = [e["file"] for ch in chunks for e in ch["files"].values()]
            self.m["chunks"] = [{"rows": self.m["rows"], "files": files}]
        else:
            old = []
        self.m["complete"] = True
        _write_manifest(self.root, self.m)
        for name in old:
            os.remove(os.path.join(self.root, name))
        self.close()


def _check_json(meta, name: str) -> None:
    """TypeError / ValueError before anything is written when ``meta`` is no JSON object."""
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise TypeError(f"{name} must be a dict of JSON values, got {type(meta).__name__}")
    try:
        json.dumps(meta, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must hold JSON values only (str, numbers, bools, None, lists, "
                        f"dicts): {err}") from None


def write(path, arrays: dict[str, np.ndarray], *, layout: dict, meta: dict | None = None,
          overwrite: bool = False) -> None:
    """Write a complete store holding ``arrays`` (one file each) in one go.

    With ``overwrite`` an existing store is replaced crash-safely: the new one is written to a
    sibling temporary directory, then renames swap it in (old -> ``.old-*``, new -> path) and
    the old one is deleted; if anything fails before the swap the old store is untouched.
    """
    root = os.fspath(path).rstrip(os.sep) or os.sep
    _check_json(meta, "meta")
    overwrite = check_bool(overwrite, "overwrite")
    new_dir = not os.path.exists(root)
    try:
        with lock(root):
            _write(root, arrays, layout, meta, overwrite)
    except BaseException:
        if new_dir and not exists(root):  # the lock made the directory: remove it again
            shutil.rmtree(root, ignore_errors=True)
        raise


def _write(root: str, arrays, layout, meta, overwrite: bool) -> None:
    replace = exists(root)
    if replace and not overwrite:
        raise ValueError(f"store {root!r} already exists; pass overwrite=True to replace it")
    tag = uuid.uuid4().hex[:8]
    target = f"{root}.tmp-{tag}" if replace else root
    created = not os.path.exists(target) or (not replace and set(os.listdir(target)) <= {
        LOCK, LOCK + ".holder"})
    try:
        w = Writer(target, meta=meta, chunk_rows=1 << 62)
        with w:
            if next(iter(arrays.values())).shape[0]:
                w.append(arrays, layout=layout)
            else:
                w.m["layout"] = layout
            w.finish(empty={k: (v.dtype, list(v.shape[1:])) for k, v in arrays.items()})
    except BaseException:
        if replace or created:  # remove what this call created, nothing else
            shutil.rmtree(target, ignore_errors=True)
        elif exists(target):
            with contextlib.suppress(OSError, ValueError):
                _remove(target)
        raise
    if replace:
        old = f"{root}.old-{tag}"
        os.rename(root, old)
        os.rename(target, root)
        fsync_dir(os.path.dirname(os.path.abspath(root)))
        shutil.rmtree(old, ignore_errors=True)


def concat(parts, path, *, meta: dict | None = None) -> None:
    """Write one complete store at ``path`` holding the rows of the complete stores ``parts``
    one after the other (one streamed copy per array; parts without rows are skipped, the
    others must hold the same arrays and layout). Crash-safe like :class:`Writer`: the
    manifest says complete only after every file is on disk."""
    ms = [(os.fspath(p), load_manifest(p)) for p in parts]
    for p, m in ms:
        if not m.get("complete"):
            raise IncompleteStoreError(f"store {p!r} is incomplete: cannot concatenate it")
    full = [(p, m) for p, m in ms if m["rows"]] or ms[:1]
    if not full:
        raise ValueError("concat needs at least one store")
    spec, layout = full[0][1]["arrays"], full[0][1]["layout"]
    for p, m in full[1:]:
        if m["arrays"] != spec or m["layout"] != layout:
            raise ValueError(f"store {p!r} holds arrays {m['arrays']} of layers "
                             f"{m['layout']['names']}, the first {spec} of {layout['names']}")
    with Writer(path, meta=meta) as w:
        w.m["arrays"], w.m["layout"] = spec, layout
        rows = sum(m["rows"] for _, m in full)
        files = {}
        for name, (dtype, tail) in spec.items():
            arrs = [read(p, mmap=True).arrays[name] for p, _ in full]
            files[name] = write_npy(os.path.join(w.root, f"{name}.npy"), arrs, (rows, *tail),
                                     np.dtype(dtype))
        fsync_dir(w.root)
        w.m.update(rows=rows, chunks=[{"rows": rows, "files": files}], complete=True)
        _write_manifest(w.root, w.m)


def read(path, *, mmap: bool = True, verify: bool = True) -> StoreData:
    """The arrays of a complete store (memory-mapped copy-on-write with ``mmap``: writable
    arrays whose writes never reach the file).

    Raises :class:`IncompleteStoreError` for a store whose writer did not finish, and
    ValueError for a corrupt manifest, or when a file's size or ``.npy`` header (dtype, shape)
    differs from the manifest, or, with ``verify`` (the default), its checksums: every block
    is re-hashed (on threads; about the time of reading the files once, which also warms the
    page cache for the memory maps). ``verify=False`` skips the hashing only.
    """
    root = os.fspath(path)
    verify = check_bool(verify, "verify")
    m = load_manifest(root)
    if not m.get("complete"):
        raise IncompleteStoreError(
            f"store {root!r} is incomplete ({m.get('rows', 0)} rows in {len(m.get('chunks', []))} "
            f"verified-on-write chunks): its writer was interrupted. Resume the extraction "
            f"(extract_codes(..., store=path, resume=True)) or delete it.")
    arrays: dict[str, Any] = {}
    for name in m["arrays"]:
        parts = []
        for ch in m["chunks"]:
            e = ch["files"][name]
            fp = os.path.join(root, e["file"])
            if not entry_ok(root, e, check_hash=False):
                raise ValueError(f"store {root!r}: file {e['file']} does not match the manifest "
                                 f"(missing, or its size differs)")
            check_npy_header(fp, e)
            if verify and not hash_ok(fp, e):
                raise ValueError(f"store {root!r}: file {e['file']} does not match the manifest "
                                 f"(corrupt: its sha256 differs; verify=False skips the check)")
            a = np.load(fp, mmap_mode="c" if mmap else None, allow_pickle=False)
            parts.append(a)
        arrays[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return StoreData(arrays, m["layout"], m.get("meta", {}), m["rows"])
