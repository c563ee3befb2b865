"""Crash loops: kill -9 at random points of extraction, store writes and sweeps, then resume.

    python bench/kill_loops.py --kills 50 --json bench/results/kill_loops.json [--targets extract]

Per target, ``--kills N`` times: start a child process doing the work into one directory,
wait until it has started working (it prints ``go`` after its imports), SIGKILL it after a
random delay (uniform in ``[0, span]``, ``span`` about the length of the whole job), then
check what is on disk is readable or refused cleanly; at the end one more child finishes the
job, and the result must equal an uninterrupted run's bit for bit:

- ``extract``: ``extract_codes(model, (x, y), store=DIR, resume=True)`` (small chunks):
  codes, labels and the collision count equal the in-memory extraction's;
- ``writer``: ``store.Writer(resume=True)`` appending rows then ``finish()``: the arrays
  equal the rows written;
- ``save``: ``CodeBook.save(DIR, overwrite=True)`` over an existing store: after every kill
  the store is still readable and equal to the CodeBook (the old one was the same), and
  after the last save too;
- ``sweep``: ``run_sweep`` over 6 widths (digits, 1 epoch): the rows equal an uninterrupted
  sweep's, timings (``t_*``) excepted.

A kill that lands after the child finished counts as ``finished_before_kill`` (no kill). JSON
(``bench/common.py``'s layout): per target ``kills`` (delivered and survived), ``finished_
before_kill``, ``results_changed`` (0), ``results_lost`` (0), ``seconds``; no ratios.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
N_ROWS = 4000
WIDTHS = [2, 3, 4, 5, 6, 7]
SWEEP = {"factors": {"width": WIDTHS}, "data": {"name": "digits", "n_train": 120, "n_test": 40},
         "train": {"epochs": 1}, "probes": "knn"}


def _model_and_data():
    import torch
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 96), nn.ReLU(), nn.Linear(96, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_ROWS, 16, generator=g)
    return model, x, torch.arange(N_ROWS) % 10


def _rows(lo: int, hi: int):
    import numpy as np
    rng = np.random.default_rng(7)
    codes = rng.integers(-2**62, 2**62, size=(N_ROWS, 3), dtype=np.int64)
    return {"codes": codes[lo:hi], "labels": (np.arange(N_ROWS) % 5)[lo:hi]}


def _book():
    import torch

    from activation_hash.codes import CodeBook
    from activation_hash.layout import Layout
    a = _rows(0, N_ROWS)
    return CodeBook(torch.from_numpy(a["codes"]), Layout(("a",), ((192,),)),
                    torch.from_numpy(a["labels"]))


# ---- the children -------------------------------------------------------------------------

def child(target: str, d: str) -> None:
    import torch
    torch.set_num_threads(1)
    from activation_hash import store
    from activation_hash.extract import extract_codes
    from activation_hash.experiments.sweep import SweepConfig, run_sweep
    print("go", flush=True)
    if target == "extract":
        model, x, y = _model_and_data()
        extract_codes(model, (x, y), store=os.path.join(d, "s"), resume=True, chunk_rows=100,
                      batch_size=50, progress=False)
    elif target == "writer":
        p = os.path.join(d, "s")
        if store.exists(p) and store.is_complete(p):
            return
        w = store.Writer(p, meta={"job": 1}, chunk_rows=200, resume=True)
        for lo in range(w.n_rows, N_ROWS, 50):
            w.append(_rows(lo, min(lo + 50, N_ROWS)), layout={"names": ["a"], "shapes": [[192]]})
        w.finish()
    elif target == "save":
        _book().save(os.path.join(d, "s"), overwrite=True)
    elif target == "sweep":
        run_sweep(SweepConfig(**SWEEP), os.path.join(d, "sw"), progress=False)


def _start(target: str, d: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", target,
                             "--dir", d], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(target: str, d: str) -> float:
    """Run the job to its end; the seconds it worked (after its imports)."""
    p = _start(target, d)
    p.stdout.readline()
    t0 = time.perf_counter()
    _, err = p.communicate(timeout=600)
    took = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{target}: the resuming run failed (rc {p.returncode}):\n{err[-3000:]}")
    return took


# ---- checks ---------------------------------------------------------------------------------

def _expected(target: str, tmp: str):
    if target == "extract":
        from activation_hash.collisions import count_collisions
        from activation_hash.extract import extract_codes
        model, x, y = _model_and_data()
        cb = extract_codes(model, (x, y), batch_size=50, progress=False)
        return cb, count_collisions(cb).n_distinct
    if target in ("writer", "save"):
        return _book()
    ref = os.path.join(tmp, "reference")
    os.makedirs(ref)
    _finish("sweep", ref)
    return _sweep_rows(ref)


def _sweep_rows(d: str) -> list[dict]:
    from activation_hash.experiments.sweep import load_results
    return [{k: v for k, v in r.items() if not k.startswith("t_")}
            for r in load_results(os.path.join(d, "sw"))]


def _same_book(cb, ref) -> bool:
    import torch
    return (torch.equal(cb.codes, ref.codes) and torch.equal(cb.labels, ref.labels)
            and cb.layout == ref.layout)


def _check_between(target: str, d: str, ref) -> bool:
    """After a kill: is what is on disk sound? (False: a result was changed or lost.)"""
    from activation_hash import store
    from activation_hash.codes import CodeBook
    if target == "save":  # the old store (the same book) must stay readable
        return _same_book(CodeBook.load(os.path.join(d, "s")), ref)
    if target in ("extract", "writer"):
        p = os.path.join(d, "s")
        if store.exists(p) and store.is_complete(p):
            cb = CodeBook.load(p)
            want = ref[0] if target == "extract" else ref
            return _same_book(cb, want)
        return True  # incomplete: refused by readers, resumable
    for f in os.listdir(os.path.join(d, "sw", "points")) if os.path.isdir(
            os.path.join(d, "sw", "points")) else []:
        json.loads(open(os.path.join(d, "sw", "points", f)).read())  # every point file whole
    return True


def _check_end(target: str, d: str, ref) -> bool:
    from activation_hash.codes import CodeBook
    from activation_hash.collisions import count_collisions
    if target == "extract":
        cb = CodeBook.load(os.path.join(d, "s"))
        return _same_book(cb, ref[0]) and count_collisions(cb).n_distinct == ref[1]
    if target in ("writer", "save"):
        return _same_book(CodeBook.load(os.path.join(d, "s")), ref)
    return _sweep_rows(d) == ref


def loop(target: str, kills: int, seed: int = 0) -> dict:
    """``kills`` SIGKILLs of ``target`` at random delays, then a last run to the end."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ref = _expected(target, tmp)
        d = os.path.join(tmp, "run")
        os.makedirs(d)
        span = _finish(target, d)  # an uninterrupted job's length: the kills land within it
        if target != "save":  # save: that store is the one to overwrite
            shutil.rmtree(d)
            os.makedirs(d)
        delivered = early = changed = 0
        for _ in range(kills):
            p = _start(target, d)
            assert p.stdout.readline().strip() == "go", p.stderr.read()[-2000:]
            time.sleep(rng.uniform(0, span))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                delivered += 1
            else:
                early += 1
            _, err = p.communicate()
            if p.returncode not in (0, -signal.SIGKILL):
                raise RuntimeError(f"{target}: the child failed (rc {p.returncode}):\n"
                                   f"{err[-3000:]}")
            changed += not _check_between(target, d, ref)
            if target in ("extract", "writer", "sweep") and p.returncode == 0:
                shutil.rmtree(d)  # finished: start again, so later kills land mid-job
                os.makedirs(d)
        _finish(target, d)
        lost = 0 if _check_end(target, d, ref) else 1
    return {"label": target, "seconds": time.perf_counter() - t0, "kills": delivered,
            "finished_before_kill": early, "results_changed": changed, "results_lost": lost}


def main() -> int:
    import argparse
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--kills", type=int, default=None)
    pre.add_argument("--targets", default="extract,writer,save,sweep")
    pre.add_argument("--child", default=None)
    pre.add_argument("--dir", default=None)
    extra, rest = pre.parse_known_args()
    if extra.child:
        child(extra.child, extra.dir)
        return 0
    sys.argv = [sys.argv[0]] + rest
    sys.path.insert(0, HERE)
    from common import cpu_only, parse_args, write_json
    args = parse_args(__doc__.split("\n\n")[0] + "\n--kills N per target (default 50, "
                      "--quick 5); --targets a,b of extract, writer, save, sweep")
    cpu_only(args, "kill_loops", "it kills and resumes CPU runs")
    kills = extra.kills or (5 if args.quick else 50)
    results = []
    for t in extra.targets.split(","):
        r = loop(t, kills)
        results.append(r)
        print(f"{t:<8} kills {r['kills']:>3} (+{r['finished_before_kill']} finished first)  "
              f"changed {r['results_changed']}  lost {r['results_lost']}", flush=True)
    config = {"kills_per_target": kills, "targets": [r["label"] for r in results],
              "total_kills": sum(r["kills"] for r in results),
              "total_changed_or_lost": sum(r["results_changed"] + r["results_lost"]
                                           for r in results)}
    write_json(args.json, "kill_loops", config, results, {})
    return 1 if config["total_changed_or_lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
