"""Readers of dataset files from elsewhere (IDX, CIFAR-10 batches): every malformed file is
refused with a ValueError naming it (never another exception: ``bench/fuzz.py`` checks), and
no file runs code (the CIFAR python batches go through a restricted unpickler)."""
from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["RefusedPickleError", "read_idx", "load_cifar_batch", "check_labels"]

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (raw, or gzip when the name ends in ``.gz``) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        try:
            raw = f.read()
        except (EOFError, gzip.BadGzipFile, zlib.error) as err:  # a corrupt or cut .gz
            raise ValueError(f"{path} is not a readable gzip file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (magic bytes {raw[:4]!r}; expected "
                         f"00 00 <type in {sorted(_IDX_TYPES)}> <ndim>)")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {head})")
    shape = struct.unpack(f">{ndim}I", raw[4:head])
    need = math.prod(shape) * dtype.itemsize  # Python ints: no int64 overflow
    if len(raw) - head != need:
        raise ValueError(f"{path}: IDX header says shape {shape} ({need} data bytes), "
                         f"file has {len(raw) - head}")
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(shape).astype(dtype.newbyteorder("="))



def check_labels(y: np.ndarray, n_classes: int, path) -> None:
    """ValueError naming the file when a label is outside ``[0, n_classes)``."""
    if y.dtype.kind not in "iu":
        raise ValueError(f"{path}: labels must be integers, got dtype {y.dtype}")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        bad = int(np.flatnonzero((y < 0) | (y >= n_classes))[0])
        raise ValueError(f"{path}: label {int(y[bad])} at index {bad} is outside [0, "
                         f"{n_classes}) (a corrupt or foreign label file)")


# ---- CIFAR-10 -------------------------------------------------------------------------------

class RefusedPickleError(pickle.UnpicklingError, ValueError):
    """A CIFAR python batch that is refused: a global outside numpy's array reconstruction, or
    no pickle at all (truncated, malformed). A ValueError too: a user error, not a crash."""


_MAX_ELEMENTS = 1 << 31  # an array element count no CIFAR batch comes near (50,000 x 3072)


def _plain_dtype(dt) -> np.dtype:
    """``dt`` as a numpy dtype, if it is a plain bool/int/uint/float one; else refused."""
    try:
        dt = np.dtype(dt)
    except (TypeError, ValueError) as err:
        raise RefusedPickleError(f"refusing dtype {dt!r} ({err})") from None
    if dt.kind not in "biuf" or dt.hasobject or dt.itemsize > 16:
        raise RefusedPickleError(f"refusing dtype {dt}: a CIFAR batch holds only bool, integer "
                                 f"and float arrays")
    return dt


def _checked_shape(shape) -> tuple:
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise RefusedPickleError(f"refusing array shape {shape!r}")
    if math.prod(shape) > _MAX_ELEMENTS:
        raise RefusedPickleError(f"refusing array shape {shape}: over {_MAX_ELEMENTS} elements")
    return shape


def _new_dtype(obj, align=False, copy=False):
    return _plain_dtype(obj)


def _reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise RefusedPickleError(f"refusing an array of type {subtype!r}")
    return np.ndarray(_checked_shape(shape), _plain_dtype(dtype))


class _RestrictedUnpickler(pickle._Unpickler):
    """Admits only what numpy arrays need; every other global (a function, a class) raises.

    The array and dtype globals are replaced by checked versions, and BUILD (``__setstate__``)
    is admitted only for arrays and dtypes with plain states: an object array of a hostile
    shape is refused before numpy allocates it (the fuzzer once reached 4 GB that way). This is
    the pure-Python unpickler, for its BUILD hook; a batch is a handful of opcodes."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
                ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
                ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _new_dtype,
                ("numpy.core.numeric", "_frombuffer"): None,
                ("numpy._core.numeric", "_frombuffer"): None}

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode  # how protocol-2 pickles written by Python 3 store bytes
        if (module, name) in self._ALLOWED:
            checked = self._ALLOWED[(module, name)]
            return checked if checked is not None else super().find_class(module, name)
        raise RefusedPickleError(f"refusing to load global {module}.{name}: a CIFAR batch "
                                 f"holds only dicts, lists, bytes, str, int and numpy arrays")

    def load_build(self):
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.ndarray) and type(inst) is np.ndarray:
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                raise RefusedPickleError("refusing an array state that is not a 4/5-tuple")
            shape, dt = state[-4], state[-3]
            _checked_shape(shape)
            if not isinstance(dt, np.dtype):
                raise RefusedPickleError(f"refusing an array state with dtype {dt!r}")
            _plain_dtype(dt)
        elif isinstance(inst, np.dtype):
            if not isinstance(state, tuple) or len(state) < 5 or \
                    any(v is not None for v in state[2:5]):
                raise RefusedPickleError("refusing a dtype state with fields or subarrays")
        else:
            raise RefusedPickleError(f"refusing to set the state of a {type(inst).__name__}")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build

    def __init__(self, raw: bytes):
        super().__init__(io.BytesIO(raw), encoding="bytes")
        self._size = len(raw)

    def load_bytearray8(self):
        """BYTEARRAY8 allocates its declared length before reading: no more than the file."""
        n, = struct.unpack("<Q", self.read(8))
        if n > self._size:
            raise RefusedPickleError(f"a bytearray of {n} bytes in a file of {self._size}")
        b = bytearray(n)
        self.readinto(b)
        self.append(b)

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def _latin1_encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedPickleError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _check_plain(obj, depth: int = 0) -> None:
    if depth > 4:
        raise RefusedPickleError("CIFAR batch nested too deeply")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, depth + 1)
            _check_plain(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_plain(v, depth + 1)
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise RefusedPickleError(f"CIFAR batch holds an array of dtype {obj.dtype}")
    elif not isinstance(obj, (bytes, str, int, float)):
        raise RefusedPickleError(f"CIFAR batch holds a {type(obj).__name__}")


def load_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch: python pickle (restricted) or binary ``.bin``.

    Returns ``(images uint8 [n, 3, 32, 32], labels int64 [n])``.
    """
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".bin":
        rec = 1 + 3072
        if len(raw) % rec:
            raise ValueError(f"{path}: {len(raw)} bytes is not a multiple of the {rec}-byte "
                             f"CIFAR-10 binary record (1 label byte + 3072 pixel bytes)")
        a = np.frombuffer(raw, dtype=np.uint8).reshape(-1, rec)
        check_labels(a[:, 0], 10, path)
        return a[:, 1:].reshape(-1, 3, 32, 32).copy(), a[:, 0].astype(np.int64)
    try:
        obj = _RestrictedUnpickler(raw).load()
    except RefusedPickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError,
            IndexError, OverflowError, RecursionError, MemoryError, struct.error) as err:
        msg = (str(err).strip().splitlines() or [""])[0]
        if not msg and isinstance(err, EOFError):
            msg = "Ran out of input"  # the file ended inside the pickle
        raise RefusedPickleError(f"{path} is not a CIFAR-10 python batch: unpickling failed "
                                 f"({type(err).__name__}: {msg})") from None
    _check_plain(obj)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: a CIFAR python batch is a dict, got {type(obj).__name__}")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in d or "labels" not in d:
        raise ValueError(f"{path}: CIFAR batch needs keys 'data' and 'labels', has {sorted(d)}")
    try:
        data, labels = np.asarray(d["data"]), np.asarray(d["labels"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"{path}: CIFAR batch 'data'/'labels' are not arrays ({err})") from None
    if labels.ndim != 1:
        raise ValueError(f"{path}: CIFAR labels must be 1-D, got shape {labels.shape}")
    check_labels(labels, 10, path)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{path}: data {data.dtype} {data.shape} / labels {labels.shape}; "
                         f"expected uint8 [n, 3072] and [n]")
    return data.reshape(-1, 3, 32, 32), labels
