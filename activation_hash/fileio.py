"""Atomic file writes: every file the package writes goes through here.

Each writer puts the data in a temporary file in the target's own directory (same file system,
so the rename is atomic), flushes and fsyncs it, then ``os.replace``-s it onto the target. A
reader (or a rerun after a crash) sees the old file or the complete new one, never a torn one.
If anything fails before the rename, the temporary file is removed and the target is left as
it was.

- :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_write_json`: whole
  contents at once.
- :func:`atomic_open`: a file object to stream into (``"w"`` or ``"wb"``).
- :func:`atomic_path`: a temporary path for writers that want a file name (``torch.save``,
  ``Figure.savefig``); it replaces the target when the block ends without an error.
- :func:`fsync_dir`: make the renames in a directory durable (callers that need it).
- :func:`exclusive_lock`: one writer at a time on a store or sweep directory (``filelock``);
  a second one gets :class:`LockedError`, one line naming the holder.

Temporary files are named ``.<name>.<pid>.<random>.tmp`` next to the target unless the caller
names one (``tmp=``; the code store keeps its own ``<name>.tmp`` names, which its resume
recognizes). Files get the usual permissions (``0o666`` less the umask), as with ``open``.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import IO, Iterator

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_open",
           "atomic_path", "fsync_dir", "exclusive_lock", "lock_held", "LockedError"]


def fsync_dir(path) -> None:
    """fsync the directory ``path`` (so renames in it survive a power loss); a no-op where the
    platform cannot open or fsync a directory."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _discard(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)


@contextlib.contextmanager
def atomic_path(path, *, tmp=None) -> Iterator[Path]:
    """A temporary path to write ``path``'s new contents to; on leaving the block without an
    error it is fsynced and renamed onto ``path``, on an error it is removed.

    For writers that take a file name (``torch.save(obj, tmp)``, ``fig.savefig(tmp, format=...)``;
    give the format explicitly: the temporary name ends in ``.tmp``)."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else _temp_for(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", *, tmp=None, encoding: str | None = "utf-8",
                fsync: bool = True) -> Iterator[IO]:
    """Open a temporary file for ``path`` (``mode`` ``"w"``: text in ``encoding``, ``"wb"``:
    bytes); when the block ends it is flushed, fsynced and renamed onto ``path`` (removed on
    an error instead). ``fsync=False``: no fsync (still atomic for a killed process; for
    files that are rewritten very often and whose loss in a power cut is handled)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    # a generated name is new (exclusive create); a caller-given one may be a dead run's leftover
    create = "w" if tmp is not None else "x"
    tmp = Path(tmp) if tmp is not None else _temp_for(path)
    kw = {"encoding": encoding} if mode == "w" else {}
    try:
        with open(tmp, create + mode[1:], **kw) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def atomic_write_bytes(path, data: bytes, *, tmp=None) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb", tmp=tmp) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path, text: str, *, encoding: str = "utf-8", tmp=None,
                      fsync: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically (``encoding``, default UTF-8); returns the path."""
    with atomic_open(path, "w", tmp=tmp, encoding=encoding, fsync=fsync) as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path, obj, *, indent: int | None = 1, default=None, tmp=None,
                      fsync: bool = True, **dumps_kwargs) -> Path:
    """Write ``json.dumps(obj, indent=indent, default=default, **dumps_kwargs)`` to ``path``
    atomically; returns the path. The text is made before anything is written, so an object
    that cannot be serialized leaves no file behind."""
    text = json.dumps(obj, indent=indent, default=default, **dumps_kwargs)
    return atomic_write_text(path, text, tmp=tmp, fsync=fsync)


# ---- one writer at a time -----------------------------------------------------------------

class LockedError(RuntimeError):
    """Another process (or another writer of this one) holds the lock of a store or sweep."""


_HELD: dict[str, int] = {}  # lock file -> depth, for nested locks of one process


def lock_held(lock_file) -> bool:
    """Whether this process holds the :func:`exclusive_lock` of ``lock_file``."""
    return bool(_HELD.get(os.path.abspath(os.fspath(lock_file))))


@contextlib.contextmanager
def exclusive_lock(lock_file, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (a ``filelock.FileLock``) for the block.

    Never waits: when another process holds it, raises :class:`LockedError` with one line
    naming ``what`` and the holder (pid, host, start time, command line, read from
    ``<lock_file>.holder``). Nested calls of one process on the same file are re-entrant.
    The lock is released when the block ends, and by the OS when the process dies (kill -9
    leaves no stale lock: ``flock`` locks die with their process)."""
    import filelock
    import socket
    import sys
    import time

    key = os.path.abspath(os.fspath(lock_file))
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield
        finally:
            if _HELD.get(key):
                _HELD[key] -= 1
        return
    holder = key + ".holder"
    os.makedirs(os.path.dirname(key) or ".", exist_ok=True)
    lock = filelock.FileLock(key, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        try:
            with open(holder) as f:
                h = json.load(f)
            who = (f"pid {h.get('pid')} on {h.get('host')} since {h.get('since')} "
                   f"({h.get('cmd')})")
        except (OSError, ValueError, AttributeError):
            who = "another process"
        raise LockedError(f"{what} is locked by {who}: one writer at a time; wait for it to "
                          f"finish or stop it (lock file {key})") from None
    _HELD[key] = 1
    try:
        with contextlib.suppress(OSError):
            atomic_write_json(holder, {"pid": os.getpid(), "host": socket.gethostname(),
                                       "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                                       "cmd": " ".join(sys.argv)[:200]}, indent=None)
        yield
    finally:
        _HELD.pop(key, None)
        with contextlib.suppress(OSError):
            os.remove(holder)
        lock.release()
