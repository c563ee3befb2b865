"""Neural codes of a dataset: :func:`extract_codes` and the :class:`CodeBook` that holds them.

A :class:`CodeBook` is a table of packed codes, int64 ``[N, W]`` (bit layout of
shared/DESIGN.md: each layer's block starts on a word, padding bits are 0), with its
:class:`~activation_hash.layout.Layout`, optional int64 labels and sample ids ``[N]``, and a
metadata dict. It slices by samples (``cb[idx]``) and by layers (:meth:`CodeBook.select_layers`),
converts to bits and to bytes (FAISS), and saves to / loads from the on-disk store of
:mod:`activation_hash.store` (memory-mapped).

Example::

    cb = extract_codes(model, loader)          # eval mode, in order, every sample
    cb.codes.shape, cb.layout.names, cb.labels.shape
    cb.save("run/train_codes")
    cb = CodeBook.load("run/train_codes")      # memory-mapped
"""
from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from activation_hash import store as _store
from activation_hash.layout import Layout
from activation_hash.nn import record
from activation_hash.ops import unpack_bits

__all__ = ["CodeBook", "extract_codes", "as_codes", "model_fingerprint"]


def _as_index_vector(x, n: int, name: str) -> torch.Tensor | None:
    """Labels / ids: anything integer of length n -> int64 CPU-or-same-device tensor [n]."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integers, got a numpy array of {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x).astype(np.int64, copy=False))
    elif isinstance(x, (list, tuple)):
        x = torch.as_tensor(x, dtype=torch.int64) if len(x) else torch.zeros(0, dtype=torch.int64)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, a numpy array or a list of integers, "
                        f"got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers (bool is refused), got {x.dtype}")
    if x.dim() != 1 or x.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}] (one per code), got {list(x.shape)}")
    return x.to(torch.int64)


class CodeBook:
    """Packed neural codes of N samples.

    Args:
        codes: int64 ``[N, W]`` with ``W == layout.total_words`` (CPU or CUDA).
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
        self.codes = codes
        self.layout = layout
        self.labels = _as_index_vector(labels, codes.shape[0], "labels")
        self.ids = _as_index_vector(ids, codes.shape[0], "ids")
        self.meta = dict(meta or {})

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
        lo = self.layout
        parts = [unpack_bits(self.codes[:, o:o + w], n)
                 for o, w, n in zip(lo.word_offsets, lo.words_per_layer, lo.units)]
        if not parts:
            return torch.zeros(len(self), 0, dtype=torch.bool, device=self.device)
        return torch.cat(parts, dim=1)

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
        return CodeBook(pick(self.codes), self.layout, pick(self.labels), pick(self.ids),
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
        return CodeBook(self.codes[:, cols.to(self.device)], layout, self.labels, self.ids,
                        self.meta)

    def truncate(self, n_layers: int) -> "CodeBook":
        """The code of the first ``n_layers`` layers (a prefix of each row, no copy)."""
        if isinstance(n_layers, bool) or not isinstance(n_layers, int):
            raise TypeError(f"n_layers must be an int, got {type(n_layers).__name__}")
        if not 0 <= n_layers <= len(self.layout):
            raise ValueError(f"n_layers must be in [0, {len(self.layout)}], got {n_layers}")
        lo = self.layout
        layout = Layout(lo.names[:n_layers], lo.shapes[:n_layers])
        return CodeBook(self.codes[:, :layout.total_words], layout, self.labels, self.ids,
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
        return CodeBook(torch.cat([b.codes for b in books]), first.layout, cat("labels"),
                        cat("ids"), first.meta)

    def to(self, device) -> "CodeBook":
        """A copy on ``device`` (codes, labels and ids)."""
        mv = (lambda t: None if t is None else t.to(device))
        return CodeBook(mv(self.codes), self.layout, mv(self.labels), mv(self.ids), self.meta)

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
    def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = False) -> "CodeBook":
        """Read a store written by :meth:`save` or :func:`extract_codes` (``store=``).

        With ``mmap`` the arrays are memory-mapped copy-on-write (no copy at load): reads come
        from the file, and writing into the tensors (``cb.codes[0, 0] = 1``) works but changes
        private memory of this process only, never the file; use :meth:`save` to persist.
        Without ``mmap`` the arrays are read into memory.

        An incomplete store (interrupted extraction) raises
        :class:`activation_hash.store.IncompleteStoreError`. ``verify=False`` (default, cheap)
        checks only that each file's size, dtype and shape match the manifest;
        ``verify=True`` also reads every file and checks its sha256 against the manifest.
        """
        data = _store.read(path, mmap=mmap, verify=verify)
        layout = Layout.from_dict(data.layout)
        arrays = data.arrays
        codes = arrays.get("codes")
        if codes is None:
            raise ValueError(f"{path} holds no 'codes' array, only {sorted(arrays)}")
        t = (lambda a: None if a is None else torch.from_numpy(a))  # writable: copy-on-write
        return cls(t(codes), layout, t(arrays.get("labels")), t(arrays.get("ids")), data.meta)


def _check_labels(y, n: int | None, name: str) -> torch.Tensor:
    """Class labels: integer (not bool), 1-D, ``n`` of them -> int64 tensor (same device)."""
    if isinstance(y, np.ndarray):
        if y.dtype.kind not in "iu":
            raise TypeError(f"{name} must be integer class labels, got a numpy array of {y.dtype}")
        y = torch.from_numpy(np.ascontiguousarray(y))
    elif not isinstance(y, torch.Tensor):
        try:
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be integer class labels, got "
                            f"{type(y).__name__}") from err
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"{name} must be integer class labels (bool is refused), got {y.dtype}")
    if y.dim() != 1 or (n is not None and y.shape[0] != n):
        want = "[B]" if n is None else f"[{n}]"
        raise ValueError(f"{name} must be 1-D class labels of shape {want}, got shape "
                         f"{list(y.shape)}")
    return y.to(torch.int64)


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
        labels = _check_labels(labels, x.shape[0], f"{name}: labels")
    return x, labels


# ---- extraction ---------------------------------------------------------------------------

_TARGETS_HINT = ("; extract_codes keeps integer class labels [B] only: pass labels=False to "
                 "ignore the targets")


def _split_batch(batch, labels: bool = True) -> tuple[Any, torch.Tensor | None]:
    """A loader item -> (model input, int64 labels [B] or None). Targets that are not
    integer class labels raise (unless ``labels`` is False: then they are ignored)."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    x = y = None
    if isinstance(batch, (tuple, list)) and len(batch) >= 1:
        x = batch[0]
        y = batch[1] if len(batch) >= 2 else None
    elif isinstance(batch, dict):
        for k in ("x", "input", "inputs", "image", "images"):
            if k in batch:
                x = batch[k]
                y = batch.get("y", batch.get("label", batch.get("labels")))
                break
    if x is None:
        raise TypeError(f"a data batch must be a tensor, an (inputs, labels) tuple or a dict "
                        f"with 'x'/'input'/'image' keys, got {type(batch).__name__}")
    if y is None or not labels:
        return x, None
    try:
        return x, _check_labels(y, None, "the batch's labels")
    except (TypeError, ValueError) as err:
        raise type(err)(str(err) + _TARGETS_HINT) from err


def _batch_len(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.shape[0]
    if isinstance(x, (tuple, list)) and x:
        return _batch_len(x[0])
    raise TypeError(f"cannot tell the batch size of a {type(x).__name__}")


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


def _sequential_loader(data, batch_size: int, skip: int):
    """(iterable of batches, number of batches or None) over data in order, from sample skip."""
    from torch.utils.data import (BatchSampler, DataLoader, Dataset, IterableDataset,
                                  SequentialSampler, Subset, TensorDataset)

    if isinstance(data, torch.Tensor):
        data = TensorDataset(data)
        single = True
    elif isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        labels = data[1]
        if not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(np.asarray(labels))
        if labels.shape[:1] != data[0].shape[:1]:
            raise ValueError(f"data (inputs, labels): {data[0].shape[0]} inputs but labels of "
                             f"shape {list(labels.shape)}")
        data = TensorDataset(data[0], labels)
        single = False
    else:
        single = False

    if isinstance(data, TensorDataset):  # fast path: slices, no collate
        tensors = data.tensors
        n = tensors[0].shape[0]

        def gen():
            for lo in range(skip, n, batch_size):
                parts = tuple(t[lo:lo + batch_size] for t in tensors)
                yield parts[0] if single else parts
        return gen(), (max(n - skip, 0) + batch_size - 1) // batch_size

    if isinstance(data, DataLoader):
        loader = data
        ds = loader.dataset
        bs = loader.batch_sampler  # a custom batch_sampler may shuffle whatever .sampler is
        in_order = (type(bs) is BatchSampler and type(bs.sampler) is SequentialSampler
                    and not bs.drop_last and isinstance(loader.sampler, SequentialSampler))
        if isinstance(ds, IterableDataset):
            if loader.drop_last:
                raise ValueError("extract_codes keeps every sample, but this DataLoader over an "
                                 "IterableDataset has drop_last=True")
            return _skip_samples(iter(loader), skip), None
        if not in_order or skip:
            if not in_order:
                warnings.warn("extract_codes: the DataLoader may shuffle or drop samples (shuffle, "
                              "drop_last, a custom sampler or batch_sampler, or no batching); "
                              "iterating its dataset in order, every sample, instead",
                              RuntimeWarning, stacklevel=3)
            ds = Subset(ds, range(skip, len(ds))) if skip else ds
            loader = DataLoader(ds, batch_size=loader.batch_size or batch_size, shuffle=False,
                                drop_last=False, num_workers=loader.num_workers,
                                collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)
        return loader, len(loader)

    if isinstance(data, IterableDataset):
        loader = DataLoader(data, batch_size=batch_size)
        return _skip_samples(iter(loader), skip), None
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        ds = Subset(data, range(skip, len(data))) if skip else data
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, drop_last=False)
        return loader, len(loader)
    raise TypeError(f"data must be a DataLoader, a Dataset, a tensor or an (inputs, labels) "
                    f"tuple, got {type(data).__name__}")


def _skip_samples(batches: Iterator, skip: int) -> Iterator:
    """Drop the first ``skip`` samples of a stream of batches (resume of iterable data)."""
    for batch in batches:
        if skip > 0:
            try:
                x, y = _split_batch(batch)
            except (TypeError, ValueError):  # targets that are no labels (labels=False)
                x, y = _split_batch(batch, False)
            b = _batch_len(x)
            if b <= skip:
                skip -= b
                continue
            if not isinstance(x, torch.Tensor):
                raise ValueError("cannot resume in the middle of a batch of non-tensor inputs")
            batch = x[skip:] if y is None else (x[skip:], y[skip:])
            skip = 0
        yield batch


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _data_len(data) -> int | None:
    """Number of samples of ``data`` when it can be told cheaply (else None)."""
    from torch.utils.data import DataLoader, IterableDataset

    if isinstance(data, torch.Tensor):
        return data.shape[0]
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return data[0].shape[0]
    ds = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(ds, IterableDataset):
        return None
    try:
        return len(ds)
    except TypeError:
        return None


def _data_fingerprint(data) -> str | None:
    """sha256 of the first (up to 64) samples of tensor data (and labels); None otherwise."""
    if isinstance(data, torch.Tensor):
        parts = [data]
    elif isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        parts = [data[0], torch.as_tensor(np.asarray(data[1]) if not isinstance(
            data[1], torch.Tensor) else data[1])]
    else:
        return None
    h = hashlib.sha256()
    for t in parts:
        t = t[:64].detach().cpu().contiguous()
        h.update(f"{t.dtype}{list(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """Cheap fingerprint of a model's weights: sha256 of the name, dtype and shape of every
    parameter and buffer and of their sums (float64; one device sync in all)."""
    h = hashlib.sha256()
    sums = []
    for k, v in model.state_dict().items():
        if not isinstance(v, torch.Tensor):
            continue
        h.update(f"{k}:{v.dtype}:{list(v.shape)};".encode())
        v = v.detach()
        if v.is_complex():
            v = torch.view_as_real(v)
        sums.append(v.to(torch.float64).sum().reshape(1) if v.numel() else
                    torch.zeros(1, dtype=torch.float64, device=v.device))
    if sums:
        vals = torch.cat([s.to(sums[0].device) for s in sums]).cpu().numpy()
        h.update(np.round(vals, 6).tobytes())  # same weights, same sums (deterministic CPU sums)
    return h.hexdigest()


def _extraction_record(model, data, layers) -> dict:
    return {"n": _data_len(data), "layers": None if layers is None else [
                v if isinstance(v, str) else int(v) for v in
                ([layers] if isinstance(layers, (str, int)) else list(layers))],
            "model": model_fingerprint(model), "data": _data_fingerprint(data)}


def _check_record(path, stored: dict, want: dict, rows: int, complete: bool) -> None:
    """ValueError when a store was made from other data, layers or model than this call's."""
    got = stored.get("extraction") if isinstance(stored, dict) else None
    diffs = []
    if isinstance(got, dict):
        for k, what in (("n", "samples"), ("layers", "layers"), ("model", "model weights"),
                        ("data", "data (first samples)")):
            known = (k in got) if k == "layers" else (got.get(k) is not None and
                                                      want[k] is not None)
            if known and got[k] != want[k]:
                diffs.append(f"{what}: store {got[k]!r}, this call {want[k]!r}"
                             if k in ("n", "layers") else f"{what} differ")
    n = want["n"]
    if n is not None and (rows != n if complete else rows > n):
        diffs.append(f"the store holds {rows} rows, the data {n} samples")
    if diffs:
        raise ValueError(f"store {os.fspath(path)!r} was made from other inputs than this call ("
                         + "; ".join(diffs) + "): pass overwrite=True to replace it, or another "
                         "store path")


def extract_codes(model: nn.Module, data, *, layers: Iterable[int | str] | None = None,
                  batch_size: int = 256, device=None, progress: bool = True,
                  store: str | os.PathLike | None = None, resume: bool = True,
                  overwrite: bool = False, chunk_rows: int | None = None,
                  meta: dict | None = None, labels: bool = True) -> CodeBook:
    """Neural codes of every sample of ``data``, in order.

    The model runs in eval mode under ``torch.no_grad()`` (each module's train/eval mode is
    restored afterwards); samples are never shuffled or dropped (a shuffling or ``drop_last``
    DataLoader is replaced by an in-order one over its dataset, with a warning). Augmenting
    transforms of the dataset are the caller's business.

    Args:
        model: the network (its ReLU-like units are recorded, see :func:`activation_hash.nn.record`).
        data: DataLoader, Dataset (items ``x`` or ``(x, label, ...)``), tensor ``[N, ...]`` or
            ``(inputs [N, ...], labels [N])``.
        layers: keep these layers only (names or indices into the recorded layout).
        batch_size: batch size when ``data`` is not a DataLoader.
        device: where the model runs (default: the device of its parameters).
        progress: show a tqdm progress bar.
        store: a directory: write the codes there in checksummed chunks as they come (for codes
            larger than memory) and return the CodeBook memory-mapped from it.
        resume: with ``store``, continue an interrupted extraction after its last intact chunk
            (a complete store is returned as it is); with False an existing store is an error.
            Either way the store must come from the same inputs: its manifest's
            ``meta["extraction"]`` records the number of samples, the ``layers`` argument, a
            :func:`model_fingerprint` and (tensor data) a hash of the first samples, and any
            difference (or a complete store of another size) raises ValueError.
        overwrite: with ``store``, discard an existing store (its own files) and start afresh.
        chunk_rows: rows per chunk file of the store (default: about 64 MiB per chunk).
        meta: metadata kept with the CodeBook (and in the store's manifest); its key
            ``"extraction"`` is set by this function (see ``resume``).
        labels: keep the data's labels (they must be integer class labels ``[B]``; other
            targets raise TypeError / ValueError). False ignores the targets.

    Returns:
        a :class:`CodeBook` (codes on the CPU) with labels when the data has them.
    """
    from tqdm.auto import tqdm

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = _model_device(model) if device is None else torch.device(device)
    meta = dict(meta or {})

    writer = None
    skip = 0
    if store is not None:
        record_ = _extraction_record(model, data, layers)
        meta["extraction"] = record_
        others_ok = False
        if _store.exists(store) and overwrite:
            _store.remove(store)  # the store's own files only
            others_ok = True
        if _store.exists(store):
            if not resume:
                raise ValueError(f"store {os.fspath(store)!r} already exists; pass resume=True "
                                 f"to continue or return it, overwrite=True, or remove it")
            m = _store.manifest(store)
            _check_record(store, m.get("meta", {}), record_, int(m.get("rows", 0)),
                          bool(m.get("complete")))
            if m.get("complete"):
                return CodeBook.load(store)
        writer = _store.Writer(store, meta=meta, chunk_rows=chunk_rows, resume=resume,
                               others_ok=others_ok)
        skip = writer.n_rows

    batches, total = _sequential_loader(data, batch_size, skip)
    modes = {m: m.training for m in model.modules()}
    rec = record(model, layers=layers, keep=False)
    codes_out: list[torch.Tensor] = []
    labels_out: list[torch.Tensor] = []
    any_labels: bool | None = None
    model.eval()
    try:
        with rec, torch.no_grad():
            bar = tqdm(batches, total=total, disable=not progress, desc="codes", unit="batch")
            for batch in bar:
                x, y = _split_batch(batch, labels)
                b = _batch_len(x)
                got: list[torch.Tensor] = []
                rec.on_batch = (lambda c, lo, got=got: got.append(c))
                model(_to(x, device))
                if not got:
                    raise ValueError("the model ran without any ReLU-like activation to record")
                code = torch.cat(got, dim=1) if len(got) > 1 else got[0]
                if code.shape[0] != b:
                    raise ValueError(f"the batch held {b} samples but the model recorded "
                                     f"{code.shape[0]} codes")
                code = code.cpu()
                has = y is not None
                if any_labels is None:
                    any_labels = has
                elif any_labels != has:
                    raise ValueError("some batches have labels and some do not")
                if has and y.shape[0] != b:
                    raise ValueError(f"a batch has {b} inputs but {y.shape[0]} labels")
                lab = y.cpu() if has else None  # int64 class labels (checked)
                if writer is not None:
                    arrays = {"codes": code.numpy()}
                    if lab is not None:
                        arrays["labels"] = lab.numpy()
                    writer.append(arrays, layout=rec.layout.to_dict())
                else:
                    codes_out.append(code)
                    if lab is not None:
                        labels_out.append(lab)
    finally:
        for m, training in modes.items():
            m.train(training)

    if writer is not None:
        if rec.layout is not None:
            _check_layout(writer, rec.layout)
        width = rec.layout.total_words if rec.layout is not None else 0
        writer.finish(empty={"codes": (np.int64, [width])})
        return CodeBook.load(store)
    layout = rec.layout if rec.layout is not None else Layout((), ())
    codes = (torch.cat(codes_out) if codes_out else
             torch.zeros(0, layout.total_words, dtype=torch.int64))
    labels = torch.cat(labels_out) if labels_out else None
    return CodeBook(codes, layout, labels, None, meta)


def _check_layout(writer: "_store.Writer", layout: Layout) -> None:
    if writer.layout is not None and Layout.from_dict(writer.layout) != layout:
        raise ValueError(f"the store holds codes of layers {writer.layout['names']}, this run "
                         f"recorded {list(layout.names)}")
