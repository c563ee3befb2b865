"""Extraction: the neural codes of every sample of a dataset, in order, into a
:class:`~activation_hash.codes.CodeBook` or a resumable on-disk store.

- :func:`extract_codes`: runs the model in eval mode over the data (never shuffled or
  dropped), records every ReLU-like site (:mod:`activation_hash.record`), and returns codes
  in memory or streams them into :mod:`activation_hash.store` chunks.
- :func:`model_fingerprint`: the digest of a model's weights that a store records, so that a
  resume into another model is refused.

Example::

    cb = extract_codes(model, loader)                      # CodeBook, codes int64 [N, W]
    cb = extract_codes(model, loader, store="run/codes")   # streamed to disk, resumable
"""
from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from activation_hash import store as _store
from activation_hash.codes import CodeBook, as_labels
from activation_hash.layout import Layout
from activation_hash.memory import check_fits
from activation_hash.record import record
from activation_hash.validation import check_int

__all__ = ["extract_codes", "model_fingerprint", "data_len"]

_TARGETS_HINT = ("; extract_codes keeps integer class labels [B] only: pass labels=False to "
                 "ignore the targets")
_STORE_HINT = "pass store=DIR to extract_codes(...): chunks on disk, returned memory-mapped"


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
        return x, as_labels(y, None, "the batch's labels")
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


def data_len(data) -> int | None:
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


def _tensor_digest(h, t) -> None:
    """Feed a tensor's dtype, shape and every byte to the hash (CPU copies one slab at a
    time, so a GPU tensor is never copied whole)."""
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(t))
    t = t.detach()
    h.update(f"{t.dtype}{list(t.shape)};".encode())
    if not t.numel():
        return
    flat = t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    step = max(1, (64 << 20) // flat.element_size())
    for lo in range(0, flat.numel(), step):
        part = flat[lo:lo + step].cpu().contiguous()
        if part.dtype == torch.bool:
            part = part.to(torch.uint8)
        h.update(part.view(torch.uint8).numpy().data)


def _files_digest(h, root) -> bool:
    """Feed the files under ``root`` to the hash: relative name, size, mtime and a sample of
    their content (first and last 64 KiB). False when there is no such directory or file."""
    root = os.fspath(root)
    if os.path.isfile(root):
        paths = [root]
    elif os.path.isdir(root):
        paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    else:
        return False
    for p in paths[:100000]:
        st = os.stat(p)
        h.update(f"{os.path.relpath(p, root)}:{st.st_size}:{st.st_mtime_ns};".encode())
        with open(p, "rb") as f:
            h.update(f.read(65536))
            if st.st_size > 131072:
                f.seek(-65536, os.SEEK_END)
                h.update(f.read(65536))
    return True


def _data_fingerprint(data) -> str | None:
    """sha256 of the data when it is cheap to hash, else None (then resume trusts the
    sample count only):

    - tensors, numpy arrays, ``(inputs, labels)`` tuples, ``TensorDataset`` (also inside a
      DataLoader or a ``Subset`` of one, with the subset's indices): every byte;
    - datasets (or a DataLoader's) with a ``root`` directory or file (torchvision style):
      each file's name, size, mtime and first and last 64 KiB, plus the dataset's class
      name and length.
    """
    from torch.utils.data import DataLoader, Subset, TensorDataset

    h = hashlib.sha256()
    ds = data.dataset if isinstance(data, DataLoader) else data
    prefix = []
    while isinstance(ds, Subset):
        prefix.append(torch.as_tensor(np.asarray(ds.indices, dtype=np.int64)))
        ds = ds.dataset
    if isinstance(ds, (torch.Tensor, np.ndarray)):
        parts = [ds]
    elif isinstance(ds, tuple) and len(ds) == 2 and isinstance(ds[0], torch.Tensor):
        parts = [ds[0], ds[1] if isinstance(ds[1], torch.Tensor) else np.asarray(ds[1])]
    elif isinstance(ds, TensorDataset):
        parts = list(ds.tensors)
    else:
        root = getattr(ds, "root", None)
        if not isinstance(root, (str, os.PathLike)):
            return None
        h.update(f"{type(ds).__qualname__}:{data_len(ds)};".encode())
        for t in prefix:
            _tensor_digest(h, t)
        return h.hexdigest() if _files_digest(h, root) else None
    for t in prefix + parts:
        _tensor_digest(h, t)
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's ``state_dict``: every entry's name, dtype, shape and raw bytes, in
    order (so permuted weights, a changed buffer or another dtype all give another digest).
    Costs one read of the weights (copied to the CPU a slab at a time)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(f"{k}:".encode())
        if isinstance(v, torch.Tensor):
            _tensor_digest(h, v)
        else:
            h.update(repr(v).encode())
    return h.hexdigest()


def _extraction_record(model, data, layers) -> dict:
    return {"n": data_len(data), "layers": None if layers is None else [
                v if isinstance(v, str) else int(v) for v in
                ([layers] if isinstance(layers, (str, int)) else list(layers))],
            "model": model_fingerprint(model), "data": _data_fingerprint(data)}


def _check_record(path, stored: dict, want: dict, rows: int, complete: bool) -> None:
    """ValueError when a store was made from other data, layers or model than this call's."""
    got = stored.get("extraction") if isinstance(stored, dict) else None
    diffs = []
    if isinstance(got, dict):
        for k, what in (("n", "samples"), ("layers", "layers"), ("model", "model weights"),
                        ("data", "data")):
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
        model: the network (its ReLU-like units are recorded, see :func:`activation_hash.record.record`).
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
            :func:`model_fingerprint` (sha256 of the state_dict bytes) and a hash of the data
            where that is cheap (every byte of tensors, arrays and TensorDatasets; name, size,
            mtime and sampled content of the files of a dataset with a ``root``), and any
            difference (or a complete store of another size) raises ValueError. The store is
            locked while this runs: a second extraction into it raises
            :class:`~activation_hash.fileio.LockedError`.
        overwrite: with ``store``, discard an existing store (its own files) and start afresh.
        chunk_rows: rows per chunk file of the store (default: about 64 MiB per chunk).
        meta: metadata kept with the CodeBook (and in the store's manifest); its key
            ``"extraction"`` is set by this function (see ``resume``).
        labels: keep the data's labels (they must be integer class labels ``[B]``; other
            targets raise TypeError / ValueError). False ignores the targets.

    Returns:
        a :class:`CodeBook` (codes on the CPU) with labels when the data has them.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    batch_size = check_int(batch_size, "batch_size", min=1)
    device = _model_device(model) if device is None else torch.device(device)
    meta = dict(meta or {})

    if store is None:
        return _extract(model, data, layers, batch_size, device, progress, None, resume,
                        overwrite, chunk_rows, meta, labels)
    with _store.lock(store, f"store {os.fspath(store)!r}"):
        return _extract(model, data, layers, batch_size, device, progress, store, resume,
                        overwrite, chunk_rows, meta, labels)


def _extract(model, data, layers, batch_size, device, progress, store, resume, overwrite,
             chunk_rows, meta, labels) -> CodeBook:
    from tqdm.auto import tqdm

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
                code = got[0]  # one forward call, one batch of codes
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
                    if not codes_out:  # 2 copies: the batches and their concatenation
                        check_fits(16 * (data_len(data) or 0) * code.shape[1], f"the codes of "
                                   f"{data_len(data)} samples x {code.shape[1]} words", _STORE_HINT)
                    codes_out.append(code)
                    if lab is not None:
                        labels_out.append(lab)
    finally:
        for m, training in modes.items():
            m.train(training)
        if writer is not None and not writer.m.get("complete"):
            writer.close()  # an error: the store stays incomplete and resumable

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
