"""K-NN and range search over packed codes with the FAISS binary indexes.

``CodeIndex(kind, device)`` wraps one of

=============  ==========================  =================================================
kind           FAISS index                 parameters (keyword arguments of CodeIndex)
=============  ==========================  =================================================
``flat``       IndexBinaryFlat             exact; the only kind FAISS runs on a GPU
``hash``       IndexBinaryHash             ``hash_bits`` (default min(d, 20)), ``nflip`` (2)
``multihash``  IndexBinaryMultiHash        ``nhash`` (4), ``hash_bits`` (min(d // nhash, 20)),
                                           ``nflip`` (2)
``ivf``        IndexBinaryIVF              ``nlist`` (default ~4 sqrt(N) of the first add,
                                           which also trains it), ``nprobe`` (8)
``hnsw``       IndexBinaryHNSW             ``M`` (32), ``ef_search`` (64),
                                           ``ef_construction`` (40)
=============  ==========================  =================================================

Codes are int64 words ``[N, W]``; FAISS gets their little-endian bytes (``8 W`` bytes,
``d = 64 W`` bits; padding bits are 0 so they change no distance).

Every parameter is checked before FAISS sees it (TypeError / ValueError naming it): ``hash_bits``
in ``[1, 64]`` and ``<= d`` (multihash: ``nhash * hash_bits <= d``), ``nflip`` in ``[0,
hash_bits]``, ``nhash`` in ``[1, 64]``, ``nlist`` in ``[1, N of the first add]``, ``nprobe >=
1``, ``M`` in ``[2, 512]``, ``ef_search`` and ``ef_construction`` in ``[1, 2**20]``,
``gpu_id >= 0``. (Unchecked, FAISS aborts the process for ``M=0``, crashes for ``M=1`` and
never returns for ``nflip < 0``.)

Files: :meth:`CodeIndex.save` writes the FAISS file and a JSON sidecar (``<path>.json``) with
the kind, parameters, sizes and the file's byte count and sha256; :meth:`CodeIndex.load`
checks the checksum before FAISS parses the file (``verify=False`` skips it) and that the
file's index class is the sidecar's ``kind``.

Devices: ``device="auto"`` uses a GPU when ``faiss.get_num_gpus() > 0`` and the kind is flat,
else the CPU; ``"cpu"``; ``"cuda"`` / ``"cuda:N"`` raises ValueError when FAISS sees no GPU
(a GPU index is never built without one: that aborts the process). A CPU copy of the index is
always kept (save, range search, and k above FAISS's GPU limit of 2048, which is searched on
that copy); the GPU copy is made from it on the first search after an add.

Results are torch tensors: ``search`` -> (dist int32 ``[Q, k]``, ids int64 ``[Q, k]``), with
``ids == -1`` and ``dist == 2**31 - 1`` where fewer than k rows were found (approximate kinds,
or k > len(index)); ``range_search`` -> (lims int64 ``[Q + 1]``, dist int32, ids int64): the
rows of query i at distance **< radius** (FAISS's convention) are ``ids[lims[i]:lims[i+1]]``.
Ties in ``search`` are ordered as FAISS orders them (use :func:`activation_hash.hamming.
hamming_topk` for ties broken by lower index).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import torch

from activation_hash.codes import CodeBook, as_codes
from activation_hash.fileio import atomic_path, atomic_write_json
from activation_hash.layout import Layout
from activation_hash.validation import check_bool, check_int

__all__ = ["CodeIndex", "GPU_K_LIMIT", "KINDS"]

KINDS = ("flat", "hash", "multihash", "ivf", "hnsw")
GPU_K_LIMIT = 2048  # FAISS GPU k-selection limit
_PARAMS = {"flat": set(), "hash": {"hash_bits", "nflip"}, "multihash": {"nhash", "hash_bits", "nflip"},
           "ivf": {"nlist", "nprobe"}, "hnsw": {"M", "ef_search", "ef_construction"}}
_FORMAT = 2  # 2: the sidecar has "bytes" and "sha256" of the index file
_CLASSES = {"flat": "IndexBinaryFlat", "hash": "IndexBinaryHash",
            "multihash": "IndexBinaryMultiHash", "ivf": "IndexBinaryIVF",
            "hnsw": "IndexBinaryHNSW"}
MISSING_DIST = 2**31 - 1  # dist of a missing result (ids == -1)
_LIMITS = {"hash_bits": (1, 64), "nflip": (0, 64), "nhash": (1, 64), "nlist": (1, None),
           "nprobe": (1, None), "M": (2, 512), "ef_search": (1, 1 << 20),
           "ef_construction": (1, 1 << 20), "gpu_id": (0, None)}


def _check_params(kind: str, params: dict) -> dict:
    """Each parameter an int in its range (see the module docstring); ``nflip <= hash_bits``
    when both are given."""
    out = {k: check_int(v, k, min=_LIMITS[k][0], max=_LIMITS[k][1]) for k, v in params.items()}
    if "nflip" in out and "hash_bits" in out and out["nflip"] > out["hash_bits"]:
        raise ValueError(f"nflip must be an integer in [0, hash_bits={out['hash_bits']}], "
                         f"got {out['nflip']}")
    return out


def _faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("activation_hash.index needs FAISS: pip install faiss-cpu "
                          "(or the [gpu] extra for faiss-gpu)") from err
    return faiss


def _sha256(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(8 << 20), b""):
            h.update(b)
    return h.hexdigest()


def _num_gpus(faiss) -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def to_bytes(codes) -> np.ndarray:
    """int64 words ``[N, W]`` (or a CodeBook) -> C-contiguous uint8 ``[N, 8 W]`` (FAISS input).

    The bytes are those of :meth:`activation_hash.codes.CodeBook.as_bytes`, the one
    implementation of that layout (bare words are wrapped in a one-layer CodeBook)."""
    if isinstance(codes, CodeBook):
        return codes.as_bytes()
    c, _ = as_codes(codes, "codes")
    return CodeBook(c, Layout(("codes",), ((64 * c.shape[1],),))).as_bytes()


class CodeIndex:
    """A FAISS binary index over packed codes (see the module docstring for kinds/params).

    >>> index = CodeIndex("flat").add(train_cb)
    >>> dist, ids = index.search(test_cb, k=10)
    """

    def __init__(self, kind: str = "flat", device: str = "auto", **params: Any):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        unknown = set(params) - _PARAMS[kind] - {"gpu_id"}
        if unknown:
            raise ValueError(f"unknown parameters for kind={kind!r}: {sorted(unknown)}; "
                             f"expected some of {sorted(_PARAMS[kind])}")
        self.kind = kind
        self.params = _check_params(kind, params)
        self.device = self._resolve_device(device)
        self.n_words: int | None = None
        self._cpu = None
        self._gpu = None
        self._gpu_res = None
        self._gpu_stale = True

    # ---- devices -----------------------------------------------------------------------
    def _resolve_device(self, device: str) -> str:
        if not isinstance(device, str):
            device = str(device)
        faiss = _faiss()
        if device == "cpu":
            return "cpu"
        if device == "auto":
            # Count GPUs only for the one kind FAISS can place there.
            return "cuda" if self.kind == "flat" and _num_gpus(faiss) > 0 else "cpu"
        if device == "cuda" or device.startswith("cuda:"):
            n = _num_gpus(faiss)
            if n == 0:
                raise ValueError(f"device={device!r} but FAISS sees no GPU "
                                 "(faiss.get_num_gpus() == 0; faiss-cpu installed?)")
            if self.kind != "flat":
                raise ValueError(f"FAISS has no GPU version of kind={self.kind!r}; use "
                                 "kind='flat' or device='cpu'")
            gpu_id = int(device.split(":")[1]) if ":" in device else int(self.params.get("gpu_id", 0))
            if not 0 <= gpu_id < n:
                raise ValueError(f"device={device!r} but FAISS sees {n} GPU(s)")
            self.params["gpu_id"] = gpu_id
            return "cuda"
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")

    def _gpu_index(self):
        if self._gpu is None or self._gpu_stale:
            faiss = _faiss()
            if _num_gpus(faiss) == 0:  # never build a GPU index without a GPU
                raise RuntimeError("FAISS sees no GPU any more; cannot use device='cuda'")
            if self._gpu_res is None:
                self._gpu_res = faiss.StandardGpuResources()
            self._gpu = faiss.index_binary_cpu_to_gpu(self._gpu_res,
                                                      int(self.params.get("gpu_id", 0)), self._cpu)
            self._gpu_stale = False
        return self._gpu

    # ---- building ----------------------------------------------------------------------
    @property
    def d(self) -> int | None:
        """Bits per code as FAISS sees them (64 W)."""
        return None if self.n_words is None else 64 * self.n_words

    def __len__(self) -> int:
        return 0 if self._cpu is None else int(self._cpu.ntotal)

    def _make(self, n_words: int, train: np.ndarray):
        faiss = _faiss()
        d = 64 * n_words
        p = self.params
        if self.kind == "flat":
            return faiss.IndexBinaryFlat(d)
        if self.kind == "hash":
            b = p.get("hash_bits", min(d, 20))
            if b > d:
                raise ValueError(f"hash_bits must be an integer in [1, d={d}] (the bits of a "
                                 f"code), got {b}")
            nflip = p.get("nflip", min(2, b))
            if nflip > b:
                raise ValueError(f"nflip must be an integer in [0, hash_bits={b}], got {nflip}")
            p["hash_bits"], p["nflip"] = b, nflip
            index = faiss.IndexBinaryHash(d, b)
            index.nflip = nflip
            return index
        if self.kind == "multihash":
            nhash = p.get("nhash", 4)
            b = p.get("hash_bits", min(d // nhash, 20))
            if b < 1 or nhash * b > d:
                raise ValueError(f"multihash needs 1 <= hash_bits and nhash * hash_bits <= d={d}, "
                                 f"got nhash={nhash}, hash_bits={b}")
            nflip = p.get("nflip", min(2, b))
            if nflip > b:
                raise ValueError(f"nflip must be an integer in [0, hash_bits={b}], got {nflip}")
            p["nhash"], p["hash_bits"], p["nflip"] = nhash, b, nflip
            index = faiss.IndexBinaryMultiHash(d, nhash, b)
            index.nflip = nflip
            return index
        if self.kind == "ivf":
            n = train.shape[0]
            nlist = int(p.setdefault("nlist", max(1, min(n, int(4 * math.sqrt(n))))))
            if not 1 <= nlist <= max(n, 1):
                raise ValueError(f"ivf needs 1 <= nlist <= the first add's size ({n}), got {nlist}")
            quantizer = faiss.IndexBinaryFlat(d)
            index = faiss.IndexBinaryIVF(quantizer, d, nlist)
            index.own_fields = True
            quantizer.this.disown()
            index.train(train)
            index.nprobe = int(p.setdefault("nprobe", min(8, nlist)))
            return index
        index = faiss.IndexBinaryHNSW(d, int(p.setdefault("M", 32)))
        index.hnsw.efConstruction = int(p.setdefault("ef_construction", 40))
        index.hnsw.efSearch = int(p.setdefault("ef_search", 64))
        return index

    def _apply_search_params(self) -> None:
        """Search-time settings FAISS may not keep in its file."""
        p, index = self.params, self._cpu
        if self.kind in ("hash", "multihash") and "nflip" in p:
            index.nflip = int(p["nflip"])
        elif self.kind == "ivf" and "nprobe" in p:
            index.nprobe = int(p["nprobe"])
        elif self.kind == "hnsw" and "ef_search" in p:
            index.hnsw.efSearch = int(p["ef_search"])

    def add(self, codes) -> "CodeIndex":
        """Append codes (CodeBook, int64 ``[N, W]`` tensor or (codes, labels)); their ids are
        0, 1, ... in the order added. The first add fixes W (and trains an ivf index)."""
        c, _ = as_codes(codes, "codes")
        if self.n_words is not None and c.shape[1] != self.n_words:
            raise ValueError(f"codes must have {self.n_words} words per row like the index, got "
                             f"shape {list(c.shape)}")
        x = to_bytes(c)
        if self._cpu is None:
            if c.shape[1] == 0:
                raise ValueError("codes have 0 words per row: nothing to index")
            if self.kind == "ivf" and c.shape[0] == 0:
                raise ValueError("kind='ivf' trains on the first add, which is empty")
            self.n_words = int(c.shape[1])
            self._cpu = self._make(self.n_words, x)
        if x.shape[0]:
            self._cpu.add(x)
            self._gpu_stale = True
        return self

    def _queries(self, q) -> np.ndarray:
        if self._cpu is None:
            raise ValueError("the index is empty: call add() first")
        c, _ = as_codes(q, "queries")
        if c.shape[1] != self.n_words:
            raise ValueError(f"queries must have {self.n_words} words per row like the index, "
                             f"got shape {list(c.shape)}")
        return to_bytes(c)

    # ---- searching ---------------------------------------------------------------------
    def search(self, queries, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """k nearest rows of each query: (dist int32 ``[Q, k]``, ids int64 ``[Q, k]``)."""
        k = check_int(k, "k", min=1)
        x = self._queries(queries)
        use_gpu = self.device == "cuda" and k <= GPU_K_LIMIT
        index = self._gpu_index() if use_gpu else self._cpu
        D, I = index.search(x, k)
        D, I = np.array(D, dtype=np.int32), np.asarray(I, dtype=np.int64)
        D[I < 0] = MISSING_DIST  # hnsw marks them -2**31; one marker for every kind
        return torch.from_numpy(D), torch.from_numpy(I)

    def range_search(self, queries, radius: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows at distance < radius of each query (on the CPU copy): (lims int64 ``[Q + 1]``,
        dist int32 ``[lims[-1]]``, ids int64 ``[lims[-1]]``); query i's rows are
        ``lims[i]:lims[i + 1]``."""
        radius = check_int(radius, "radius", min=0)
        if self.kind == "hnsw":
            raise ValueError("FAISS has no range search for kind='hnsw'; use 'flat' or 'ivf'")
        x = self._queries(queries)
        lims, D, I = self._cpu.range_search(x, radius)
        return (torch.from_numpy(np.asarray(lims, dtype=np.int64)),
                torch.from_numpy(np.asarray(D).astype(np.int32)),
                torch.from_numpy(np.asarray(I, dtype=np.int64)))

    # ---- files -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """``path``: the FAISS index (faiss.write_index_binary); ``path + ".json"``: kind,
        parameters, words per row, rows, and the index file's size and sha256. Both are
        written atomically (the index first)."""
        if self._cpu is None:
            raise ValueError("the index is empty: nothing to save")
        path = os.fspath(path)
        with atomic_path(path) as tmp:
            _faiss().write_index_binary(self._cpu, os.fspath(tmp))
            size, digest = os.path.getsize(tmp), _sha256(tmp)
        meta = {"format": _FORMAT, "kind": self.kind, "params": self.params,
                "n_words": self.n_words, "ntotal": len(self), "bytes": size, "sha256": digest}
        atomic_write_json(path + ".json", meta, indent=2)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", *,
             verify: bool = True) -> "CodeIndex":
        """An index written by :meth:`save` (device chosen again, as in the constructor).

        The sidecar is validated, the file's size and (``verify``, the default) sha256 are
        checked before FAISS reads it, and the index FAISS reads must be of the sidecar's
        ``kind`` with its ``d`` and ``ntotal``: ValueError otherwise."""
        path = os.fspath(path)
        verify = check_bool(verify, "verify")
        side = path + ".json"
        if not os.path.exists(side):
            raise ValueError(f"{side} is missing: not an index written by CodeIndex.save")
        try:
            with open(side) as f:
                meta = json.load(f)
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{side} is not valid JSON ({err})") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("kind") not in KINDS:
            raise ValueError(f"{side} is not a CodeIndex sidecar of format {_FORMAT}")
        params = meta.get("params", {})
        n_words, ntotal = meta.get("n_words"), meta.get("ntotal")
        if not isinstance(params, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= lo
                for v, lo in ((n_words, 1), (ntotal, 0), (meta.get("bytes"), 0))) or not (
                isinstance(meta.get("sha256"), str) and len(meta["sha256"]) == 64):
            raise ValueError(f"{side}: corrupt sidecar (params must be an object; n_words, "
                             f"ntotal and bytes integers; sha256 64 hex digits)")
        params = {k: v for k, v in params.items() if k != "gpu_id"}
        try:
            index = cls(meta["kind"], device=device, **params)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{side}: bad parameters ({err})") from None
        if not os.path.isfile(path) or os.path.getsize(path) != meta["bytes"]:
            raise ValueError(f"{path} does not match its sidecar (missing, or not "
                             f"{meta['bytes']} bytes)")
        if verify and _sha256(path) != meta["sha256"]:
            raise ValueError(f"{path} is corrupt: its sha256 differs from the sidecar's "
                             f"(verify=False skips the check)")
        faiss = _faiss()
        # every vector FAISS reads is stored in the file: none can be larger than it (a
        # hostile size field would otherwise allocate without bound); FAISS releases before
        # 2026 lack the cap (then only their own checks apply)
        capped = hasattr(faiss, "set_deserialization_vector_byte_limit")
        if capped:
            limit = faiss.get_deserialization_vector_byte_limit()
            faiss.set_deserialization_vector_byte_limit(min(limit, 2 * meta["bytes"] + 4096))
        try:
            cpu = faiss.read_index_binary(path)
        except (RuntimeError, MemoryError) as err:  # FAISS's checks; a huge declared size
            raise ValueError(f"{path} is not a binary index FAISS can read "
                             f"({type(err).__name__}: {_first_line(err)})") from None
        finally:
            if capped:
                faiss.set_deserialization_vector_byte_limit(limit)
        if type(cpu).__name__ != _CLASSES[meta["kind"]]:
            raise ValueError(f"{path} holds a {type(cpu).__name__}, its sidecar says kind="
                             f"{meta['kind']!r} ({_CLASSES[meta['kind']]})")
        index._cpu = cpu
        index.n_words = n_words
        if index._cpu.d != 64 * index.n_words or index._cpu.ntotal != ntotal:
            raise ValueError(f"{path} does not match its sidecar (d={index._cpu.d}, "
                             f"ntotal={index._cpu.ntotal}; sidecar {meta})")
        for k in ("hash_bits", "nhash", "nlist"):  # the structure FAISS read must be the sidecar's
            got = {"hash_bits": getattr(cpu, "b", None), "nhash": getattr(cpu, "nhash", None),
                   "nlist": getattr(cpu, "nlist", None)}[k]
            if k in index.params and got is not None and int(got) != index.params[k]:
                raise ValueError(f"{path}: the index has {k}={got}, its sidecar {index.params[k]}")
        index._apply_search_params()
        return index

    def __repr__(self) -> str:
        return f"CodeIndex(kind={self.kind!r}, device={self.device!r}, n={len(self)}, d={self.d})"


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[-1 if lines and lines[0].startswith("Error in") and len(lines) > 1 else 0][:300] \
        if lines else type(err).__name__
