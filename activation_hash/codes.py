"""Packed neural codes of N samples: the :class:`CodeBook`, and :func:`as_codes`, the one
adapter of code inputs for everything that analyses codes.

A :class:`CodeBook` is a table of packed codes, int64 ``[N, W]`` (bit layout of
docs/design.md: each layer's block starts on a word, padding bits are 0), with its
:class:`~activation_hash.layout.Layout`, optional int64 labels and sample ids ``[N]``, and a
metadata dict. It slices by samples (``cb[idx]``) and by layers (:meth:`CodeBook.select_layers`),
converts to bits and to bytes (FAISS), and saves to / loads from the on-disk store of
:mod:`activation_hash.store` (memory-mapped). Codes come from
:func:`activation_hash.extract.extract_codes`; this module never imports the recorder.

Example::

    cb = CodeBook(codes, layout, labels)       # codes int64 [N, layout.total_words]
    cb.codes.shape, cb.layout.names, cb.labels.shape
    cb.save("run/train_codes")
    cb = CodeBook.load("run/train_codes")      # memory-mapped
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np
import torch

from activation_hash import store as _store
from activation_hash.layout import Layout
from activation_hash.memory import check_fits
from activation_hash.ops import unpack_bits
from activation_hash.validation import check_int

__all__ = ["CodeBook", "as_codes", "as_labels", "unpack_codes"]


def as_labels(y, n: int | None, name: str = "labels", kind: str = "class labels",
              ) -> torch.Tensor:
    """The one validator of per-sample integer vectors (labels, ids).

    ``y``: a torch tensor, numpy array or list of integers (bool, float and complex are
    refused: TypeError), 1-D with ``n`` entries when ``n`` is given (ValueError otherwise).
    Returns int64 ``[n]`` on ``y``'s device (numpy arrays shared when already int64).
    """
    if isinstance(y, np.ndarray):
        if y.dtype.kind not in "iu":
            raise TypeError(f"{name} must be integer {kind} (bool, float and complex are "
                            f"refused), got a numpy array of {y.dtype}")
        y = torch.from_numpy(np.ascontiguousarray(y).astype(np.int64, copy=False))
    elif isinstance(y, (list, tuple)) and not y:
        y = torch.zeros(0, dtype=torch.int64)
    elif not isinstance(y, torch.Tensor):
        try:
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be integer {kind} (a tensor, numpy array or list), "
                            f"got {type(y).__name__}") from err
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"{name} must be integer {kind} (bool, float and complex are refused), "
                        f"got dtype {y.dtype}")
    if y.dim() != 1 or (n is not None and y.shape[0] != n):
        want = "[B]" if n is None else f"[{n}]"
        raise ValueError(f"{name} must be 1-D {kind} of shape {want}, got shape "
                         f"{list(y.shape)}" + ("" if n is None else " (one per code)"))
    return y.to(torch.int64)


def unpack_codes(codes: torch.Tensor, layout: Layout) -> torch.Tensor:
    """int64 ``[N, layout.total_words]`` -> bool ``[N, layout.total_bits]`` (layer after layer,
    padding dropped). Refused (MemoryLimitError) when the bools would not fit in memory."""
    check_fits(2 * codes.shape[0] * layout.total_bits,
               f"unpacking {codes.shape[0]} codes x {layout.total_bits} bits into bools",
               "unpack a slice of rows at a time (unpack_codes(cb.codes[i:j], cb.layout)), or "
               "work on the packed words (hamming_*, count_collisions take them)", codes.device)
    parts = [unpack_bits(codes[:, o:o + w], n)
             for o, w, n in zip(layout.word_offsets, layout.words_per_layer, layout.units)]
    if not parts:
        return torch.zeros(codes.shape[0], 0, dtype=torch.bool, device=codes.device)
    return torch.cat(parts, dim=1)


class CodeBook:
    """Packed neural codes of N samples.

    Args:
        codes: int64 ``[N, W]`` with ``W == layout.total_words`` (CPU or CUDA); the padding
            bits of each layer's last word must be 0 (ValueError otherwise: they would count
            in collisions and Hamming distances).
        layout: where each layer's bits live in a row.
        labels: optional integer labels ``[N]`` (stored as int64; float, bool and 2-D labels
            are refused with TypeError / ValueError).
        ids: optional integer sample ids ``[N]`` (e.g. dataset indices).
        meta: optional JSON-serialisable dict (model name, dataset, split, ...).
    """

    def __init__(self, codes: torch.Tensor, layout: Layout, labels=None, ids=None,
                 meta: dict | None = None):
        if not isinstance(layout, Layout):
            raise TypeError(f"layout must be an activation_hash.layout.Layout, "
                            f"got {type(layout).__name__}")
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"codes must be an int64 torch.Tensor [N, W], got {type(codes).__name__}")
        if codes.dtype != torch.int64:
            raise TypeError(f"codes must be int64 packed words [N, W], got {codes.dtype}")
        if codes.dim() != 2 or codes.shape[1] != layout.total_words:
            raise ValueError(f"codes must have shape [N, {layout.total_words}] for this layout "
                             f"({layout.total_bits} bits), got {list(codes.shape)}")
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
        _check_padding(codes, layout)
        self._init(codes, layout, labels, ids, meta)

    def _init(self, codes, layout, labels, ids, meta) -> None:
        self.codes = codes
        self.layout = layout
        n = codes.shape[0]
        self.labels = None if labels is None else as_labels(labels, n, "labels")
        self.ids = None if ids is None else as_labels(ids, n, "ids", "sample ids")
        self.meta = dict(meta or {})

    @classmethod
    def _of(cls, codes, layout, labels=None, ids=None, meta=None) -> "CodeBook":
        """A CodeBook of codes taken from a checked one (slices, layers, devices): the padding
        check is not repeated."""
        cb = cls.__new__(cls)
        cb._init(codes, layout, labels, ids, meta)
        return cb

    # -- shape
    def __len__(self) -> int:
        return self.codes.shape[0]

    @property
    def n_bits(self) -> int:
        """Real bits per code (``layout.total_bits``, padding excluded)."""
        return self.layout.total_bits

    @property
    def n_words(self) -> int:
        return self.codes.shape[1]

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def __repr__(self) -> str:
        return (f"CodeBook(n={len(self)}, layers={len(self.layout)}, bits={self.n_bits}, "
                f"words={self.n_words}, labels={self.labels is not None}, device={self.device})")

    # -- views
    def bits(self) -> torch.Tensor:
        """Unpacked codes, bool ``[N, n_bits]`` (layer after layer, padding dropped)."""
        return unpack_codes(self.codes, self.layout)

    def as_bytes(self) -> np.ndarray:
        """Codes as C-contiguous numpy uint8 ``[N, 8 * W]`` (little-endian words: each layer's
        block equals ``np.packbits(bits, bitorder="little")`` padded to whole words). FAISS
        binary indexes take this."""
        c = self.codes.detach().cpu().contiguous().numpy()
        return np.ascontiguousarray(c.view(np.uint8).reshape(c.shape[0], 8 * c.shape[1]))

    # -- selection
    def _take(self, idx) -> "CodeBook":
        def pick(t):
            if t is None:
                return None
            i = idx.to(t.device) if isinstance(idx, torch.Tensor) else idx
            return t[i]
        return CodeBook._of(pick(self.codes), self.layout, pick(self.labels), pick(self.ids),
                            self.meta)

    def __getitem__(self, idx) -> "CodeBook":
        """Samples ``idx`` (int, slice, int/bool tensor or array, list) as a new CodeBook."""
        n = len(self)
        if isinstance(idx, (bool, np.bool_)):
            raise TypeError("a CodeBook is indexed by samples (int, slice, index or bool mask), "
                            "got a bool")
        if isinstance(idx, (int, np.integer)):
            i = int(idx)
            if not -n <= i < n:
                raise IndexError(f"sample {i} out of range for {n} codes")
            i %= n
            return self._take(slice(i, i + 1))
        if isinstance(idx, slice):
            return self._take(idx)
        if isinstance(idx, (list, tuple, np.ndarray)):
            idx = torch.as_tensor(np.asarray(idx))
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"a CodeBook is indexed by int, slice, index tensor or bool mask, "
                            f"got {type(idx).__name__}")
        if idx.dtype == torch.bool:
            if idx.shape != (n,):
                raise ValueError(f"a bool mask must have shape [{n}], got {list(idx.shape)}")
            return self._take(idx)
        if idx.dtype.is_floating_point or idx.dim() != 1:
            raise TypeError(f"an index tensor must be 1-D integer, got {idx.dtype} "
                            f"{list(idx.shape)}")
        idx = idx.to(torch.int64)
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise IndexError(f"sample indices must be in [-{n}, {n}), got "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        return self._take(idx)

    def select_layers(self, layers: Iterable[int | str]) -> "CodeBook":
        """The codes of some layers only (names or indices, in the order given)."""
        if isinstance(layers, (str, int)):
            layers = [layers]
        layout, cols = self.layout.select(list(layers))
        return CodeBook._of(self.codes[:, cols.to(self.device)], layout, self.labels, self.ids,
                            self.meta)

    def truncate(self, n_layers: int) -> "CodeBook":
        """The code of the first ``n_layers`` layers (a prefix of each row, no copy)."""
        n_layers = check_int(n_layers, "n_layers", min=0, max=len(self.layout))
        lo = self.layout
        layout = Layout(lo.names[:n_layers], lo.shapes[:n_layers])
        return CodeBook._of(self.codes[:, :layout.total_words], layout, self.labels, self.ids,
                            self.meta)

    @staticmethod
    def concat(books: Sequence["CodeBook"]) -> "CodeBook":
        """Samples of several CodeBooks of the same layout, one after the other."""
        books = list(books)
        if not books:
            raise ValueError("CodeBook.concat needs at least one CodeBook, got none")
        for b in books:
            if not isinstance(b, CodeBook):
                raise TypeError(f"CodeBook.concat takes CodeBooks, got {type(b).__name__}")
        first = books[0]
        for b in books[1:]:
            if b.layout != first.layout:
                raise ValueError(f"CodeBook.concat needs one layout, got {list(first.layout.names)}"
                                 f" and {list(b.layout.names)} (or different shapes)")
            if b.device != first.device:
                raise ValueError(f"CodeBook.concat needs one device, got {first.device} and "
                                 f"{b.device}")

        def cat(attr):
            parts = [getattr(b, attr) for b in books]
            if all(p is None for p in parts):
                return None
            if any(p is None for p in parts):
                raise ValueError(f"CodeBook.concat: some CodeBooks have {attr} and some do not")
            return torch.cat(parts)
        return CodeBook._of(torch.cat([b.codes for b in books]), first.layout, cat("labels"),
                            cat("ids"), first.meta)

    def to(self, device) -> "CodeBook":
        """A copy on ``device`` (codes, labels and ids)."""
        mv = (lambda t: None if t is None else t.to(device))
        return CodeBook._of(mv(self.codes), self.layout, mv(self.labels), mv(self.ids), self.meta)

    # -- disk
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write to the store directory ``path`` (manifest + .npy files, checksummed)."""
        arrays = {"codes": self.codes.detach().cpu().contiguous().numpy()}
        if self.labels is not None:
            arrays["labels"] = self.labels.cpu().numpy()
        if self.ids is not None:
            arrays["ids"] = self.ids.cpu().numpy()
        _store.write(path, arrays, layout=self.layout.to_dict(), meta=self.meta,
                     overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> "CodeBook":
        """Read a store written by :meth:`save` or by
        :func:`~activation_hash.extract.extract_codes` (``store=``).

        With ``mmap`` the arrays are memory-mapped copy-on-write (no copy at load): reads come
        from the file, and writing into the tensors (``cb.codes[0, 0] = 1``) works but changes
        private memory of this process only, never the file; use :meth:`save` to persist.
        Without ``mmap`` the arrays are read into memory.

        An incomplete store (interrupted extraction) raises
        :class:`activation_hash.store.IncompleteStoreError`. Every file's size, dtype and
        shape are checked against the manifest, and with ``verify`` (the default) its
        checksums too (per-block sha256, hashed on threads: a flipped byte raises ValueError);
        ``verify=False`` skips the hashing. Codes with padding bits set raise ValueError.
        """
        data = _store.read(path, mmap=mmap, verify=verify)
        try:
            layout = Layout.from_dict(data.layout)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{os.fspath(path)}: corrupt manifest: bad layout ({err})") from None
        arrays = data.arrays
        codes = arrays.get("codes")
        if codes is None:
            raise ValueError(f"{path} holds no 'codes' array, only {sorted(arrays)}")
        t = (lambda a: None if a is None else torch.from_numpy(a))  # writable: copy-on-write
        return cls(t(codes), layout, t(arrays.get("labels")), t(arrays.get("ids")), data.meta)


def _check_padding(codes: torch.Tensor, layout: Layout) -> None:
    """ValueError when a padding bit (past a layer's units in its last word) is set."""
    cols, masks = [], []
    for o, w, n in zip(layout.word_offsets, layout.words_per_layer, layout.units):
        if n % 64:
            cols.append(o + w - 1)
            masks.append(-(1 << (n % 64)))  # the bits n % 64 .. 63 as a signed int64
    if not cols or codes.shape[0] == 0:
        return
    m = torch.tensor(masks, dtype=torch.int64, device=codes.device)
    bad = (codes[:, cols] & m) != 0
    if bool(bad.any()):
        r, c = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"codes have padding bits set (row {r}, word {cols[c]}: the last word of "
                         f"layer {_layer_of(layout, cols[c])!r}, past its units); padding bits "
                         f"must be 0, or they would count in collisions and Hamming distances")


def _layer_of(layout: Layout, word: int) -> str:
    for name, o, w in zip(layout.names, layout.word_offsets, layout.words_per_layer):
        if o <= word < o + w:
            return name
    return "?"


def as_codes(x, name: str = "codes") -> tuple[torch.Tensor, torch.Tensor | None]:
    """The one adapter of code inputs: ``(codes int64 [N, W], labels int64 [N] or None)``.

    ``x`` may be a :class:`CodeBook` (or any object with ``.codes`` and optionally
    ``.labels``), an int64 torch tensor ``[N, W]``, an int64 numpy array ``[N, W]`` (shared
    when C-contiguous, else copied), or a ``(codes, labels)`` tuple whose codes are any of
    those; the tuple's labels win (``(codebook, None)``: no labels). Labels must be integer
    (bool, float and complex are refused), 1-D, one per code. Errors name ``name``.
    """
    labels = None
    if isinstance(x, tuple):
        if len(x) != 2:
            raise ValueError(f"{name}: a tuple must be (codes, labels), got {len(x)} items")
        x, labels = x
        if isinstance(x, tuple):
            raise TypeError(f"{name}: the codes of a (codes, labels) tuple cannot be a tuple")
        x, _ = as_codes(x, name)
    elif isinstance(x, CodeBook) or hasattr(x, "codes"):
        labels = getattr(x, "labels", None)
        x = x.codes
    if isinstance(x, np.ndarray):
        if x.dtype != np.int64:
            raise TypeError(f"{name} must hold int64 packed words [N, W], got a numpy array of "
                            f"{x.dtype}")
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D [N, W] packed words, got shape {list(x.shape)}")
        x = torch.from_numpy(np.require(x, requirements=["C", "W"]))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a CodeBook, an int64 tensor or numpy array [N, W], or a "
                        f"(codes, labels) tuple, got {type(x).__name__}")
    if x.dtype != torch.int64:
        raise TypeError(f"{name} must hold int64 packed words [N, W], got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, W] packed words, got shape {list(x.shape)}")
    if labels is not None:
        labels = as_labels(labels, x.shape[0], f"{name}: labels")
    return x, labels
