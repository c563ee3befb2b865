"""Coverage-guided fuzzing (atheris / libFuzzer) of every reader of outside files.

    python bench/fuzz.py --seconds 20 --json bench/results/fuzz.json [--readers idx,config]

One subprocess per reader (``bench/fuzz_targets.py`` lists them and what each may raise):
``atheris.Setup`` + ``Fuzz`` with ``-max_total_time=SECONDS``, ``-timeout=10`` (an input
running longer is a hang), ``-rss_limit_mb=4096``, the package's modules instrumented for
coverage, the corpus seeded with valid files, hostile ones and malicious pickles. A crash is
any exception other than the reader's expected ones, a sentinel firing (code from the input
ran; a file outside a store was deleted), a hang, a signal or the memory limit: libFuzzer
saves the input under ``bench/results/fuzz-crashes/<reader>-crash-*`` and stops that reader.

JSON (``bench/common.py``'s layout): one result per reader with ``inputs`` (executions
libFuzzer reports), ``crashes`` (must be 0), ``code_executions`` (must be 0), ``errors``
(the distinct expected errors seen: ``Type: first line``, numbers elided, with counts) and
``rc``; ``ratios`` is empty (nothing is timed against a baseline). ``--quick``: 3 s a reader.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CRASHES = os.path.join(HERE, "results", "fuzz-crashes")
_CHILD = "ACTIVATION_HASH_FUZZ_CHILD"


def child(name: str, seconds: int, work: str) -> None:
    """Fuzz one reader in this process (never returns: libFuzzer exits)."""
    import importlib

    import atheris
    for m in ("numpy", "torch"):  # not instrumented: only our code is
        importlib.import_module(m)
    sys.path.insert(0, HERE)
    with atheris.instrument_imports(include=["activation_hash"]):
        for m in ("codes", "store", "manifest", "index", "experiments.readers",
                  "experiments.config", "experiments.report", "experiments.sweep", "cli"):
            importlib.import_module(f"activation_hash.{m}")
    import fuzz_targets as ft

    target = ft.TARGETS[name](os.path.join(work, "target"))
    target.fresh()
    corpus = os.path.join(work, "corpus")
    os.makedirs(corpus, exist_ok=True)
    for i, s in enumerate(target.seeds):
        with open(os.path.join(corpus, f"seed-{i}"), "wb") as f:
            f.write(s)
    errors: dict = {}
    seen_file = os.path.join(work, "errors.jsonl")

    def test_one(data: bytes) -> None:
        before = len(errors)
        try:
            ft.one(target, data, errors)
        except ft.Crash as err:
            if "code from the input ran" in str(err):
                with open(os.path.join(work, "executions"), "a") as f:
                    f.write("1\n")
            raise
        if len(errors) > before:  # libFuzzer exits without running Python's atexit
            with open(seen_file, "a") as f:
                for msg in list(errors)[before:]:
                    f.write(json.dumps(msg) + "\n")

    os.makedirs(CRASHES, exist_ok=True)
    argv = [sys.argv[0], f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=4096",
            "-print_final_stats=1", f"-artifact_prefix={os.path.join(CRASHES, name)}-",
            "-max_len=65536", corpus]
    atheris.Setup(argv, test_one)
    atheris.Fuzz()


def fuzz_one(name: str, seconds: int) -> dict:
    with tempfile.TemporaryDirectory() as work:
        before = set(os.listdir(CRASHES)) if os.path.isdir(CRASHES) else set()
        env = {**os.environ, _CHILD: "1", "PYTHONPATH": os.pathsep.join(
            [ROOT, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--seconds",
               str(seconds), "--work", work]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True,
                               timeout=seconds + 120)
            rc, log = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            rc, log = "timeout", (e.stderr or b"").decode(errors="replace")
        took = time.perf_counter() - t0
        stat = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
        done = re.findall(r"#(\d+)\s+(?:DONE|pulse|NEW|REDUCE|INITED)", log)
        inputs = int(stat.group(1)) if stat else (int(done[-1]) if done else 0)
        errors = []
        if os.path.exists(os.path.join(work, "errors.jsonl")):
            with open(os.path.join(work, "errors.jsonl")) as f:
                errors = [json.loads(line) for line in f]
        execs = 0
        if os.path.exists(os.path.join(work, "executions")):
            execs = len(open(os.path.join(work, "executions")).read().split())
        marker = os.path.join(work, "target", "case", "PWNED")
        execs += os.path.exists(marker)
        new = sorted(set(os.listdir(CRASHES)) - before) if os.path.isdir(CRASHES) else []
        crashes = len(new) + (rc not in (0,) and not new)
        if crashes:
            tail = log[-3000:]
            print(f"---- {name}: crash (rc {rc}) ----\n{tail}", flush=True)
        return {"label": name, "seconds": took, "inputs": inputs, "crashes": int(crashes),
                "code_executions": int(execs), "rc": rc, "crash_files": new,
                "n_errors": len(set(errors)), "errors": sorted(set(errors))[:60]}


def main() -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--seconds", type=int, default=None)
    pre.add_argument("--readers", default=None)
    pre.add_argument("--child", default=None)
    pre.add_argument("--work", default=None)
    extra, rest = pre.parse_known_args()
    if extra.child and os.environ.get(_CHILD) == "1":
        child(extra.child, extra.seconds or 5, extra.work)
        return 0
    sys.argv = [sys.argv[0]] + rest
    sys.path.insert(0, HERE)
    from common import cpu_only, parse_args, write_json

    import fuzz_targets as ft

    args = parse_args(__doc__.split("\n\n")[0] + "\n--seconds N: per reader (default 20); "
                      "--readers a,b: a subset of " + ", ".join(ft.TARGETS))
    cpu_only(args, "fuzz", "it fuzzes the file readers")
    seconds = extra.seconds or (3 if args.quick else 20)
    names = extra.readers.split(",") if extra.readers else list(ft.TARGETS)
    bad = [n for n in names if n not in ft.TARGETS]
    if bad:
        print(f"unknown readers {bad}; known: {list(ft.TARGETS)}", file=sys.stderr)
        return 2
    results = []
    for name in names:
        r = fuzz_one(name, seconds)
        results.append(r)
        print(f"{name:<16} inputs {r['inputs']:>8}  crashes {r['crashes']}  code executions "
              f"{r['code_executions']}  distinct errors {r['n_errors']}", flush=True)
    config = {"seconds_per_reader": seconds, "readers": names,
              "total_inputs": sum(r["inputs"] for r in results),
              "total_crashes": sum(r["crashes"] for r in results),
              "total_code_executions": sum(r["code_executions"] for r in results)}
    write_json(args.json, "fuzz", config, results, {})
    return 1 if config["total_crashes"] or config["total_code_executions"] else 0


if __name__ == "__main__":
    sys.exit(main())
