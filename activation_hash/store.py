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
import hashlib
import json
import math
import os
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from activation_hash.fileio import (LockedError, atomic_open, atomic_write_json, exclusive_lock,
                                    fsync_dir, lock_held)
from activation_hash.validation import check_bool, check_int

FORMAT = "activation-hash-store"
VERSION = 1
MANIFEST = "manifest.json"
CHUNK_BYTES = 64 << 20  # default chunk size of an extraction
BLOCK_BYTES = 16 << 20  # checksum block: verified in parallel on read

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


class _HashingFile:
    """File object that hashes what is written (np.lib.format writes through it)."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0
        self.blocks: list[str] = []
        self._b, self._bn = hashlib.sha256(), 0

    def write(self, b) -> int:
        mv = memoryview(b).cast("B")
        self.h.update(mv)
        self.n += mv.nbytes
        pos = 0
        while pos < mv.nbytes:  # per-block hashes, for parallel verification
            take = min(BLOCK_BYTES - self._bn, mv.nbytes - pos)
            self._b.update(mv[pos:pos + take])
            self._bn += take
            pos += take
            if self._bn == BLOCK_BYTES:
                self.blocks.append(self._b.hexdigest())
                self._b, self._bn = hashlib.sha256(), 0
        return self.f.write(mv)

    def block_hashes(self) -> list[str]:
        return self.blocks + ([self._b.hexdigest()] if self._bn else [])


def _write_npy(path: str, parts: list[np.ndarray], shape: tuple, dtype: np.dtype) -> dict:
    """Write the row-concatenation of ``parts`` as one .npy (atomically); its manifest entry."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(s) for s in shape)}
    with atomic_open(path, "wb", tmp=path + ".tmp") as raw:  # <name>.tmp: resume knows it
        f = _HashingFile(raw)
        np.lib.format.write_array_header_2_0(f, header)
        for p in parts:
            p = np.ascontiguousarray(p, dtype=dtype)
            if p.size:
                f.write(p.reshape(-1).view(np.uint8))
    return {"file": os.path.basename(path), "shape": list(header["shape"]),
            "dtype": np.dtype(dtype).str, "bytes": f.n, "sha256": f.h.hexdigest(),
            "block_bytes": BLOCK_BYTES, "blocks": f.block_hashes()}


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(8 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def _hash_ok(path: str, entry: dict) -> bool:
    """Whether the file's bytes have the manifest's hashes: its blocks, hashed on threads
    (hashlib releases the GIL), or the whole-file sha256 for entries without blocks."""
    blocks, bb = entry.get("blocks"), entry.get("block_bytes")
    if blocks is None:
        return _sha256_file(path) == entry["sha256"]
    fd = os.open(path, os.O_RDONLY)
    try:
        def one(i):
            h = hashlib.sha256()
            off, end = i * bb, min((i + 1) * bb, entry["bytes"])
            while off < end:
                b = os.pread(fd, min(8 << 20, end - off), off)
                if not b:
                    return False
                h.update(b)
                off += len(b)
            return h.hexdigest() == blocks[i]
        workers = max(1, min(len(blocks), os.cpu_count() or 1, 8))
        if workers == 1:
            return all(one(i) for i in range(len(blocks)))
        with ThreadPoolExecutor(workers) as ex:
            return all(ex.map(one, range(len(blocks))))
    finally:
        os.close(fd)


def _entry_ok(root: str, entry: dict, check_hash: bool = True) -> bool:
    path = os.path.join(root, entry["file"])
    try:
        if os.path.getsize(path) != entry["bytes"]:
            return False
    except OSError:
        return False
    return not check_hash or _hash_ok(path, entry)


def _manifest_path(root) -> str:
    return os.path.join(os.fspath(root), MANIFEST)


def exists(path) -> bool:
    """Whether ``path`` is a store directory (finished or not)."""
    return os.path.isfile(_manifest_path(path))


def _load_manifest(path) -> dict:
    mp = _manifest_path(path)
    if not os.path.isfile(mp):
        if os.path.isdir(os.fspath(path)):
            raise ValueError(f"{os.fspath(path)!r} is not a code store: no {MANIFEST} in it")
        raise FileNotFoundError(f"no code store at {os.fspath(path)!r}")
    with open(mp, "rb") as f:
        try:
            m = json.loads(f.read().decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise ValueError(f"{mp} is not valid JSON ({err})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ValueError(f"{mp} is not an activation-hash store manifest "
                         f"(format {m.get('format') if isinstance(m, dict) else None!r})")
    if m.get("version") != VERSION:
        raise ValueError(f"{mp}: store version {m.get('version')!r}, this package reads {VERSION}")
    _check_manifest(m, mp)
    return m


_ARRAY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _is_int(v, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _check_manifest(m: dict, mp: str) -> None:
    """ValueError naming the first field of a manifest that is not as this module writes it
    (types, counts, dtypes, and chunk file names: only the store's own)."""
    def bad(what):
        raise ValueError(f"{mp}: corrupt manifest: {what}")
    if not isinstance(m.get("complete"), bool):
        bad(f"'complete' must be true or false, got {m.get('complete')!r}")
    if not _is_int(m.get("rows")):
        bad(f"'rows' must be an integer >= 0, got {m.get('rows')!r}")
    if not isinstance(m.get("meta", {}), dict):
        bad(f"'meta' must be an object, got {type(m.get('meta')).__name__}")
    lay = m.get("layout")
    if lay is not None:
        if not (isinstance(lay, dict) and isinstance(lay.get("names"), list) and
                isinstance(lay.get("shapes"), list) and len(lay["names"]) == len(lay["shapes"])
                and all(isinstance(n, str) for n in lay["names"]) and
                all(isinstance(sh, list) and all(_is_int(d) for d in sh) for sh in lay["shapes"])):
            bad("'layout' must be {\"names\": [str, ...], \"shapes\": [[int, ...], ...]} of "
                "one length")
    elif m["complete"]:
        bad("a complete store needs a 'layout'")
    arrays = m.get("arrays")
    if arrays is None:
        if m["complete"] or m.get("chunks"):
            bad("'arrays' is missing")
        arrays = {}
    if not isinstance(arrays, dict):
        bad(f"'arrays' must be an object, got {type(arrays).__name__}")
    for name, spec in arrays.items():
        if not _ARRAY_NAME.fullmatch(name):
            bad(f"array name {name!r} (letters, digits and _ only)")
        if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str) and
                isinstance(spec[1], list) and all(_is_int(d) for d in spec[1])):
            bad(f"arrays[{name!r}] must be [dtype, [row shape]], got {spec!r}")
        try:
            dt = np.dtype(spec[0])
        except TypeError:
            dt = None
        if dt is None or dt.kind not in "biuf" or dt.str != spec[0]:
            bad(f"arrays[{name!r}] dtype {spec[0]!r} (a numeric dtype string such as '<i8')")
    chunks = m.get("chunks")
    if not isinstance(chunks, list):
        bad(f"'chunks' must be a list, got {type(chunks).__name__}")
    total = 0
    for k, ch in enumerate(chunks):
        if not (isinstance(ch, dict) and _is_int(ch.get("rows")) and
                isinstance(ch.get("files"), dict)):
            bad(f"chunk {k} must be {{\"rows\": int, \"files\": {{...}}}}")
        if set(ch["files"]) != set(arrays):
            bad(f"chunk {k} holds files of {sorted(ch['files'])}, the store's arrays are "
                f"{sorted(arrays)}")
        for name, e in ch["files"].items():
            dtype, tail = arrays[name]
            if not isinstance(e, dict):
                bad(f"chunk {k} file entry of {name!r} must be an object")
            f = e.get("file")
            if f not in (f"{name}.npy", f"{name}-{k:06d}.npy"):
                bad(f"chunk {k} names file {f!r} for {name!r}; a store reads only its own files "
                    f"({name}.npy or {name}-{k:06d}.npy), never paths elsewhere")
            if e.get("shape") != [ch["rows"], *tail] or e.get("dtype") != dtype:
                bad(f"chunk {k} {f}: shape {e.get('shape')!r} / dtype {e.get('dtype')!r}, "
                    f"expected {[ch['rows'], *tail]} / {dtype!r}")
            data = math.prod(e["shape"]) * np.dtype(dtype).itemsize
            if not _is_int(e.get("bytes")) or not 0 < e["bytes"] - data <= 65536 + 16:
                bad(f"chunk {k} {f}: 'bytes' {e.get('bytes')!r} does not fit a .npy of "
                    f"{data} data bytes")
            if not (isinstance(e.get("sha256"), str) and _HEX64.fullmatch(e["sha256"])):
                bad(f"chunk {k} {f}: 'sha256' must be 64 hex digits")
            if "blocks" in e:
                bb, bl = e.get("block_bytes"), e["blocks"]
                if not (_is_int(bb, 1) and isinstance(bl, list) and
                        len(bl) == -(-e["bytes"] // bb) and
                        all(isinstance(h, str) and _HEX64.fullmatch(h) for h in bl)):
                    bad(f"chunk {k} {f}: 'blocks' must be the sha256 of each 'block_bytes' block")
        total += ch["rows"]
    if total != m["rows"]:
        bad(f"'rows' is {m['rows']} but the chunks hold {total}")


LOCK = ".lock"


def lock(path, what: str | None = None):
    """The exclusive lock of the store at ``path``: the file ``<path>/.lock`` (the directory is
    created if needed; context manager; see the module docstring)."""
    return exclusive_lock(os.path.join(os.fspath(path), LOCK), what or f"store {os.fspath(path)!r}")


def is_complete(path) -> bool:
    return exists(path) and bool(_load_manifest(path).get("complete"))


def manifest(path) -> dict:
    """The manifest dict of the store at ``path`` (finished or not)."""
    return _load_manifest(path)


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
    _load_manifest(root)  # a missing store raises before the lock creates a directory
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
    m = _load_manifest(root)
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
            m = _load_manifest(self.root)
            if m.get("complete"):
                raise ValueError(f"store {self.root!r} is complete already: nothing to resume")
            good = []
            for ch in m["chunks"]:
                if all(_entry_ok(self.root, e) for e in ch["files"].values()):
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
            files[name] = _write_npy(os.path.join(self.root, f"{name}-{k:06d}.npy"), parts,
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
                files[name] = _write_npy(os.path.join(self.root, f"{name}.npy"), parts,
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
    ms = [(os.fspath(p), _load_manifest(p)) for p in parts]
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
            files[name] = _write_npy(os.path.join(w.root, f"{name}.npy"), arrs, (rows, *tail),
                                     np.dtype(dtype))
        fsync_dir(w.root)
        w.m.update(rows=rows, chunks=[{"rows": rows, "files": files}], complete=True)
        _write_manifest(w.root, w.m)


def _npy_header(path: str, e: dict) -> None:
    """ValueError unless the .npy header of ``path`` declares the manifest's dtype and shape
    (read before any data is mapped or allocated: a hostile header cannot size an array)."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                           np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
        except (ValueError, OSError, SyntaxError, TypeError) as err:
            raise ValueError(f"{path}: not a valid .npy file ({err})") from None
        offset = f.tell()
    if list(shape) != e["shape"] or dtype.str != e["dtype"] or fortran or \
            offset + math.prod(shape) * dtype.itemsize != e["bytes"]:
        raise ValueError(f"{path} holds {dtype} {list(shape)}{' (Fortran order)' if fortran else ''}"
                         f", the manifest says {e['dtype']} {e['shape']}")


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
    m = _load_manifest(root)
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
            if not _entry_ok(root, e, check_hash=False):
                raise ValueError(f"store {root!r}: file {e['file']} does not match the manifest "
                                 f"(missing, or its size differs)")
            _npy_header(fp, e)
            if verify and not _hash_ok(fp, e):
                raise ValueError(f"store {root!r}: file {e['file']} does not match the manifest "
                                 f"(corrupt: its sha256 differs; verify=False skips the check)")
            a = np.load(fp, mmap_mode="c" if mmap else None, allow_pickle=False)
            parts.append(a)
        arrays[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return StoreData(arrays, m["layout"], m.get("meta", {}), m["rows"])
