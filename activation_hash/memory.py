"""Memory guards: refuse an allocation that cannot fit before making it (layer 0).

:func:`check_fits` compares the bytes an operation is about to allocate (codes ``N x W x 8``,
a distance matrix ``N x M x 4``, a dense unpack ``N x bits``) with the memory available, and
raises :class:`MemoryLimitError` naming what does not fit and the streaming or store option
that avoids it, instead of letting the allocation fail half-way, swap the machine to a halt,
or get the process killed by the OOM killer.

Available memory (:func:`available_bytes`), host: ``MemAvailable`` of ``/proc/meminfo``,
lowered to the cgroup's remaining ``memory.max`` (cgroup v2) where that is smaller; on a
system without ``/proc/meminfo`` (not Linux) nothing is checked. CUDA tensors:
``torch.cuda.mem_get_info`` of their device. ``ACTIVATION_HASH_MEMORY_BYTES=<bytes>``
overrides the host figure (tests; ``0`` or a negative value switches the guards off).
Without it, requests under :data:`UNCHECKED_BELOW` (64 MiB) are not checked (no file read).
"""
from __future__ import annotations

import os

__all__ = ["MemoryLimitError", "ENV", "available_bytes", "check_fits", "format_bytes"]

ENV = "ACTIVATION_HASH_MEMORY_BYTES"
# Requests below this size are not checked against the system's figure: reading it costs
# about 25 us (/proc/meminfo, the cgroup files), more than many small calls of the guarded
# ops themselves. With ENV set, every request is checked (tests use tiny limits).
UNCHECKED_BELOW = 64 << 20


class MemoryLimitError(MemoryError, ValueError):
    """An allocation was refused before it was made: it would not fit in available memory.

    A :class:`MemoryError` (what a failed allocation raises) and a :class:`ValueError` (the
    request is too large for this machine: the CLI reports it in one line)."""


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _meminfo() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_left() -> int | None:
    """Bytes left under this process's cgroup v2 ``memory.max`` (None: no limit or no v2)."""
    try:
        with open("/proc/self/cgroup") as f:
            rel = next((ln.split(":", 2)[2].strip() for ln in f if ln.startswith("0::")), None)
        if rel is None:
            return None
        base = os.path.join("/sys/fs/cgroup", rel.lstrip("/"))
        with open(os.path.join(base, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(base, "memory.current")) as f:
            used = int(f.read().strip())
        try:  # page cache the kernel reclaims on demand is not used memory
            with open(os.path.join(base, "memory.stat")) as f:
                used -= next((int(ln.split()[1]) for ln in f if ln.startswith("inactive_file ")), 0)
        except (OSError, ValueError, IndexError):
            pass
        return max(0, int(limit) - used)
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def available_bytes(device=None) -> int | None:
    """Bytes an allocation on ``device`` (default: host memory) can take now; None when it
    cannot be told (then no guard refuses anything)."""
    dev = getattr(device, "type", None) or (str(device).split(":")[0] if device else "cpu")
    if dev == "cuda":
        import torch

        try:
            free = int(torch.cuda.mem_get_info(device)[0])
            # what torch's caching allocator holds but does not use is free for torch too
            return free + int(torch.cuda.memory_reserved(device) -
                              torch.cuda.memory_allocated(device))
        except (RuntimeError, AssertionError, ValueError):
            return None
    if dev != "cpu":
        return None
    env = os.environ.get(ENV)
    if env is not None and env.strip():
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"{ENV} must be an integer number of bytes, got {env!r}") from None
        return n if n > 0 else None
    free = _meminfo()
    left = _cgroup_left()
    if free is None:
        return left
    return free if left is None else min(free, left)


def check_fits(nbytes: int, what: str, hint: str, device=None) -> None:
    """:class:`MemoryLimitError` when ``nbytes`` (about to be allocated on ``device``) exceed
    the available memory: ``"<what> needs X but only Y are available; <hint>"``."""
    nbytes = int(nbytes)
    if nbytes <= 0 or (nbytes < UNCHECKED_BELOW and not os.environ.get(ENV, "").strip()):
        return
    avail = available_bytes(device)
    if avail is None or nbytes <= avail:
        return
    where = "GPU memory" if str(getattr(device, "type", device)).startswith("cuda") else "memory"
    raise MemoryLimitError(f"{what} needs {format_bytes(nbytes)} but only {format_bytes(avail)} "
                           f"of {where} are available; {hint}")
