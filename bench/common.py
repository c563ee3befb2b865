"""Shared helpers of the benchmarks: timing, argument parsing, the JSON result file.

JSON written by every bench (docs/design.md, "Benchmark results"): ``{"name", "config",
"results": [{"label", "seconds", ...}], "ratios": {...}}``, each ratio = baseline seconds /
our seconds, keyed by the baseline's name.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable

import torch


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    p.add_argument("--json", metavar="PATH", help="write results to this JSON file")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    return args


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
                       warmup: int = 1) -> dict[str, list[float]]:
    """Like :func:`timeit` for several functions at once, timed in rounds (each round calls
    every function once, in turn): a slow spell of a noisy machine then hits them all alike
    instead of whichever happened to run during it."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(times: list[float]) -> float:
    return statistics.median(times)


def machine() -> dict:
    import activation_hash as ah

    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_isa": ah.ops.cpu_isa(), "backend": ah.backend(),
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
