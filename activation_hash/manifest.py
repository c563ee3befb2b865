"""The store's manifest and its files' checksums (the format :mod:`activation_hash.store`
writes and reads; see its docstring and docs/design.md).

:func:`load_manifest` reads and validates ``manifest.json`` (:func:`check_manifest` names the
first field that is not as the writer makes it); :func:`write_npy` writes one ``.npy`` array
file atomically and returns its manifest entry (size, sha256, per-block sha256);
:func:`entry_ok`, :func:`hash_ok` and :func:`check_npy_header` check a file against its entry.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tokenize
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from activation_hash.fileio import atomic_open

__all__ = ["FORMAT", "VERSION", "MANIFEST", "BLOCK_BYTES", "manifest_path", "load_manifest",
           "check_manifest", "write_npy", "hash_ok", "entry_ok", "check_npy_header"]

FORMAT = "activation-hash-store"
VERSION = 1
MANIFEST = "manifest.json"
BLOCK_BYTES = 16 << 20  # checksum block: verified in parallel on read


def manifest_path(root) -> str:
    return os.path.join(os.fspath(root), MANIFEST)


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


def write_npy(path: str, parts: list[np.ndarray], shape: tuple, dtype: np.dtype) -> dict:
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


def hash_ok(path: str, entry: dict) -> bool:
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


def entry_ok(root: str, entry: dict, check_hash: bool = True) -> bool:
    path = os.path.join(root, entry["file"])
    try:
        if os.path.getsize(path) != entry["bytes"]:
            return False
    except OSError:
        return False
    return not check_hash or hash_ok(path, entry)


def load_manifest(path) -> dict:
    mp = manifest_path(path)
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
    check_manifest(m, mp)
    return m


_ARRAY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _is_int(v, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def check_manifest(m: dict, mp: str) -> None:
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


def check_npy_header(path: str, e: dict) -> None:
    """ValueError unless the .npy header of ``path`` declares the manifest's dtype and shape
    (read before any data is mapped or allocated: a hostile header cannot size an array)."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                           np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
        except (ValueError, OSError, SyntaxError, TypeError, tokenize.TokenError, RecursionError,
                MemoryError) as err:  # numpy parses the header dict with the tokenizer
            raise ValueError(f"{path}: not a valid .npy file ({type(err).__name__}: "
                             f"{err})") from None
        offset = f.tell()
    if list(shape) != e["shape"] or dtype.str != e["dtype"] or fortran or \
            offset + math.prod(shape) * dtype.itemsize != e["bytes"]:
        raise ValueError(f"{path} holds {dtype} {list(shape)}{' (Fortran order)' if fortran else ''}"
                         f", the manifest says {e['dtype']} {e['shape']}")
