"""Shared helpers of the benchmarks: timing, argument parsing, the JSON result file.

JSON written by every bench (docs/design.md, "Benchmark results"): ``{"name", "config", "results": [{"label",
"seconds", ...}], "ratios": {...}}``, each ratio = baseline seconds / our seconds, keyed by
the baseline's name. ``config`` records the machine: torch, threads, the CPU model, the ISA
the kernels were capped at (``isa``, from ``--isa``) and the one they ran (``cpu_isa``,
``cpu_kernels``).

``--device cpu|cuda`` runs a bench's device suite (benches of the CUDA kernels: relu_pack,
hamming_knn, collisions, record) on that device: every timing synchronizes the device, and
``copy_bandwidth`` ratios compare the bytes an op moves with a device-to-device copy measured
in the same run. ``--smoke``: the smallest sizes and one timing round, to test the plumbing
(tests/gpu/run.sh --device cpu); its figures are not results.

``--isa scalar|avx2|avx512`` (or several, comma-separated, or ``all``: every ISA this CPU has)
runs the bench once per ISA, each in a subprocess with ``ACTIVATION_HASH_ISA`` set (the
kernels are chosen once per process). With one ISA the JSON is that run's; with several it is
``{"name", "config", "runs": {isa: run's JSON}, "ratios": {isa: ratios}}`` (ISAs this CPU
lacks are listed under ``config.skipped_isas``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

# numpy's OpenBLAS threads busy-wait about 0.1 s after each call (THREAD_TIMEOUT 2^28 cycles):
# on 2 cores they took half the machine from whatever a bench timed next (segment_regions ran
# 2x slower right after the numpy counter). 2^4 cycles: they sleep at once. Read when OpenBLAS
# loads, so before numpy is imported.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import torch  # noqa: E402

ISAS = ("scalar", "avx2", "avx512")
_CHILD = "ACTIVATION_HASH_BENCH_CHILD"  # set in the per-ISA subprocesses
_NO_SUCH_ISA = 3                        # exit status of a child whose ISA this CPU lacks


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
               ) -> argparse.Namespace:
    """The options every bench takes; ``extra(parser)`` adds a bench's own."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if extra is not None:
        extra(p)
    p.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    p.add_argument("--json", metavar="PATH", help="write results to this JSON file")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--isa", metavar="ISA",
                   help="cap the CPU kernels at this ISA: scalar, avx2 or avx512; several "
                        "(comma-separated) or 'all' run one subprocess each")
    p.add_argument("--device", metavar="DEV",
                   help="run the device suite on this device (cpu, cuda, cuda:1)")
    p.add_argument("--smoke", action="store_true",
                   help="smallest sizes, one round: tests the plumbing, figures are not results")
    args = p.parse_args()
    if args.smoke:
        args.quick = True
    if args.device is not None:
        try:
            dev = torch.device(args.device)
        except RuntimeError:
            p.error(f"--device takes cpu, cuda or cuda:N, got {args.device!r}")
        if dev.type not in ("cpu", "cuda"):
            p.error(f"--device takes cpu, cuda or cuda:N, got {args.device!r}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            p.error(f"--device {args.device}: torch sees no CUDA device "
                    f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
        args.device = dev
    if args.isa:
        isas = _isa_list(args.isa, p)
        if os.environ.get(_CHILD) != "1":
            sys.exit(_run_per_isa(isas, args.json))
        _check_child_isa(isas[0])
    torch.set_num_threads(args.threads)
    return args


def _isa_list(spec: str, p: argparse.ArgumentParser) -> list[str]:
    isas = list(ISAS) if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in isas if s not in ISAS]
    if bad or not isas:
        p.error(f"--isa takes {', '.join(ISAS)} (comma-separated) or all, got {spec!r}")
    return isas


def _check_child_isa(isa: str) -> None:
    import activation_hash as ah

    got = ah.ops.cpu_isa()
    if got != isa:
        print(f"ISA {isa} not available here: the kernels run {got} "
              f"(ACTIVATION_HASH_ISA={os.environ.get('ACTIVATION_HASH_ISA')})", flush=True)
        sys.exit(_NO_SUCH_ISA)


def _child_argv(isa: str, json_path: str) -> list[str]:
    """This script's arguments without --isa / --json, then the child's own."""
    out, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a in ("--isa", "--json"):
            skip = True
            continue
        if a.startswith("--isa=") or a.startswith("--json="):
            continue
        out.append(a)
    return [sys.executable, os.path.abspath(sys.argv[0])] + out + ["--isa", isa,
                                                                   "--json", json_path]


def _run_per_isa(isas: list[str], json_path: str | None) -> int:
    docs, skipped = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for isa in isas:
            path = os.path.join(tmp, f"{isa}.json")
            env = {**os.environ, "ACTIVATION_HASH_ISA": isa, _CHILD: "1"}
            print(f"==== ISA {isa} ====", flush=True)
            rc = subprocess.run(_child_argv(isa, path), env=env).returncode
            if rc == _NO_SUCH_ISA:
                skipped.append(isa)
                continue
            if rc != 0:
                return rc
            with open(path) as f:
                docs[isa] = json.load(f)
    if not docs:
        print(f"none of the ISAs {isas} is available on this CPU")
        return 1
    if len(isas) == 1:
        doc = docs[isas[0]]
    else:
        first = next(iter(docs.values()))
        doc = {"name": first["name"],
               "config": {"isas": list(docs), "skipped_isas": skipped, **cpu_model()},
               "runs": docs, "ratios": {isa: d["ratios"] for isa, d in docs.items()}}
        for isa, d in docs.items():
            for k, v in d["ratios"].items():
                print(f"ratio [{isa}] {k:<40} {v:10.2f}")
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


def cpu_only(args: argparse.Namespace, name: str, why: str) -> None:
    """Exit with a clear line when a CPU-only bench is given ``--device`` other than cpu."""
    if args.device is not None and args.device.type != "cpu":
        sys.exit(f"bench {name} runs on the CPU only ({why}); --device {args.device} is for "
                 f"relu_pack, hamming_knn, collisions and record")


def synced(fn: Callable[[], object], device: torch.device | None) -> Callable[[], object]:
    """``fn`` followed by a synchronization of ``device`` (CUDA kernels run asynchronously:
    a timing must wait for them)."""
    if device is None or device.type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize(device)
        return out
    return run


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 28, repeat: int = 9) -> float:
    """Bytes per second of a device-to-device copy on ``device``: ``nbytes`` read and
    ``nbytes`` written per copy (so the figure counts both), median of ``repeat``."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    t = median(timeit(synced(lambda: dst.copy_(src), device), repeat=repeat, warmup=2))
    return 2 * nbytes / t


def timeit(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def timeit_interleaved(fns: dict[str, Callable[[], object]], repeat: int = 5,
                       warmup: int = 1, number: int | str = 1,
                       seconds: float = 2e-3) -> dict[str, list[float]]:
    """Like :func:`timeit` for several functions at once, timed in rounds (each round calls
    every function once, in turn, starting one further each round): a slow spell of a noisy
    machine then hits them all alike instead of whichever happened to run during it. A timing
    is ``number`` calls (the seconds per call are kept); ``number="auto"``: per function, as
    many calls as take about ``seconds`` (1 for slow ones), for calls of a few microseconds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    calls = {name: calls_per_timing(fn, seconds) if number == "auto" else int(number)
             for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeat):
        # round r starts with function r mod len: each one follows each other one alike
        # (the state one call leaves, the heap's above all, does not always fall on the same)
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, n = fns[name], calls[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t0) / n)
    return times


def calls_per_timing(fn: Callable[[], object], seconds: float = 2e-3) -> int:
    """How many calls of ``fn`` make a timing of about ``seconds`` (1 for slow calls)."""
    fn()
    t0 = time.perf_counter()
    fn()
    return max(1, min(1000, int(seconds / max(time.perf_counter() - t0, 1e-7))))


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def steady_heap(trim: int = 1 << 30, mmap: int = 1 << 25) -> str:
    """Keep freed memory in this process's heap instead of returning it to the OS (glibc:
    ``mallopt``; fixed thresholds also stop glibc's adjusting them as it runs; 32 MiB is the
    largest mmap threshold every glibc accepts). With the defaults, each large forward pass on
    the CPU maps its activations afresh and page-faults on them: the ResNet of bench/record.py
    then takes 29-44 ms a batch, varying by process, instead of 20 ms. What this process's
    heap is, for the JSON config: ``"steady"``, or ``"default"`` where the C library is not
    glibc or refused a threshold."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_TRIM_THRESHOLD, trim) and libc.mallopt(_M_MMAP_THRESHOLD, mmap)
    except (OSError, AttributeError):  # no mallopt: not glibc
        return "default"
    return "steady" if ok else "default"


def median(times: list[float]) -> float:
    return statistics.median(times)


def cpu_model() -> dict:
    """The CPU model and the vector features that the kernels dispatch on."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    wanted = ["popcnt", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl",
              "avx512_vpopcntdq"]
    return {"cpu_model": model, "cpu_flags": [f for f in wanted if f in flags]}


def machine() -> dict:
    import activation_hash as ah

    kernels = (torch.ops.activation_hash.cpu_kernels() if ah.backend() == "extension"
               and hasattr(torch.ops.activation_hash, "cpu_kernels") else "reference")
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "isa": os.environ.get("ACTIVATION_HASH_ISA"), "cpu_isa": ah.ops.cpu_isa(),
            "cpu_kernels": kernels, "backend": ah.backend(), **cpu_model(),
            "machine": platform.machine(), "cpus": os.cpu_count()}


def write_json(path: str | None, name: str, config: dict, results: list[dict],
               ratios: dict) -> dict:
    """Print a table of the results and ratios, and write the JSON file when a path is given."""
    doc = {"name": name, "config": {**config, **machine()}, "results": results, "ratios": ratios}
    for r in results:
        extra = {k: v for k, v in r.items() if k not in ("label", "seconds")}
        print(f"{r['label']:<48} {r['seconds'] * 1e3:10.2f} ms  {extra if extra else ''}")
    for k, v in ratios.items():
        print(f"ratio {k:<42} {v:10.2f}")
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(doc, f, indent=2)
    return doc
