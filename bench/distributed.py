"""Distributed and out-of-core collisions and K-NN (activation_hash.distributed / .outofcore).

Cases:
  * collisions: N x 1024-bit codes, 1% planted duplicates (half of them across the two
    shards), count_collisions in 1 process vs count_collisions_distributed on 2 gloo
    processes (each holding half the rows), every process with 1 torch thread: the ranks are
    the unit of parallelism here (2 cores). Reports are asserted identical.
  * K-NN: base M x 256-bit, Q queries, k = 10: hamming_topk in 1 process vs
    hamming_topk_distributed on 2 processes (base split in halves, queries replicated), 1
    thread each; results asserted identical.
  * bytes exchanged per sample (collisions) / per query (K-NN): what the ranks sent to each
    other, all ranks together (activation_hash.distributed.last_exchange).
  * out of core: count_collisions / hamming_topk on a store read into memory vs
    count_collisions_out_of_core / hamming_topk_out_of_core on the same store with a
    memory_budget of a quarter of its size (--threads torch threads for both).

Ratios: one_process (collisions), one_process_knn: 1-process seconds / 2-process seconds;
in_memory (collisions), in_memory_knn: in-memory seconds / out-of-core seconds. Timing:
interleaved rounds (bench/common.py), medians; the 1-process and 2-process runs of a round
happen back to back inside the same spawned processes (rank 1 waits in a barrier while rank 0
runs the 1-process baseline).
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu_only, median, parse_args, timeit_interleaved, write_json  # noqa: E402


def planted(n, words, seed=0, cross=True):
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(-2**63, 2**63 - 1, (n, words), generator=g, dtype=torch.int64)
    k = n // 100
    src = torch.randint(n, (k,), generator=g)
    dst = torch.randperm(n, generator=g)[:k]
    c[dst] = c[src]
    return c


def _worker(rank, world, port, cfg, out):
    import torch.distributed as dist

    import activation_hash.distributed as ahd
    from activation_hash.collisions import count_collisions
    from activation_hash.hamming import hamming_topk

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        codes = planted(cfg["n"], cfg["words"], seed=1)
        labels = torch.arange(cfg["n"]) % 10
        lo, hi = ahd.shard_range(cfg["n"], rank, world)
        mine, my_labels = codes[lo:hi].clone(), labels[lo:hi].clone()
        g = torch.Generator().manual_seed(2)
        base = torch.randint(-2**63, 2**63 - 1, (cfg["m"], 4), generator=g, dtype=torch.int64)
        q = torch.randint(-2**63, 2**63 - 1, (cfg["q"], 4), generator=g, dtype=torch.int64)
        blo, bhi = ahd.shard_range(cfg["m"], rank, world)
        my_base = base[blo:bhi].clone()
        if rank != 0:
            del codes, base
        t = {"one_col": [], "two_col": [], "one_knn": [], "two_knn": []}
        checks = {}

        def timed(key, fn, solo):
            dist.barrier()
            t0 = time.perf_counter()
            r = fn() if (not solo or rank == 0) else None
            el = time.perf_counter() - t0
            dist.barrier()
            if rank == 0:
                t[key].append(el if solo else None)
            return r, el

        for rnd in range(cfg["repeat"] + 1):  # round 0 is the warm-up
            one, _ = timed("one_col", lambda: count_collisions(codes, labels), True)
            dist.barrier()
            t0 = time.perf_counter()
            two = ahd.count_collisions_distributed(mine, my_labels)
            dist.barrier()
            el = time.perf_counter() - t0
            sent = ahd.last_exchange().total
            if rank == 0:
                t["two_col"].append(el)
                checks["col"] = one.to_dict() == two.to_dict()
            one_k, _ = timed("one_knn", lambda: hamming_topk(q, base, 10), True)
            dist.barrier()
            t0 = time.perf_counter()
            two_k = ahd.hamming_topk_distributed(q, my_base, 10)
            dist.barrier()
            el = time.perf_counter() - t0
            sent_k = ahd.last_exchange().total
            if rank == 0:
                t["two_knn"].append(el)
                checks["knn"] = torch.equal(one_k[0], two_k[0]) and torch.equal(one_k[1],
                                                                               two_k[1])
        sent_all = [torch.zeros(2, dtype=torch.int64) for _ in range(world)]
        dist.all_gather(sent_all, torch.tensor([sent, sent_k]))
        if rank == 0:
            t = {k: v[1:] for k, v in t.items()}  # drop the warm-up round
            out.put({"times": t, "checks": checks,
                     "sent": [int(sum(s[0] for s in sent_all)), int(sum(s[1] for s in sent_all))]})
    finally:
        dist.destroy_process_group()


def run_world(cfg):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, cfg, out)) for r in range(2)]
    for p in procs:
        p.start()
    res = out.get(timeout=1800)
    for p in procs:
        p.join(timeout=60)
    return res


def main():
    args = parse_args(__doc__.splitlines()[0])
    cpu_only(args, "distributed", "gloo processes on this machine's cores")
    from activation_hash import outofcore as ooc
    from activation_hash.codes import CodeBook
    from activation_hash.collisions import count_collisions
    from activation_hash.hamming import hamming_topk
    from activation_hash.layout import Layout

    quick = args.quick
    cfg = {"n": 1_000_000 if quick else 4_000_000, "words": 16,
           "m": 400_000 if quick else 2_000_000, "q": 1000 if quick else 2000,
           "repeat": 3 if quick else 5}
    res = run_world(cfg)
    assert res["checks"] == {"col": True, "knn": True}, res["checks"]
    t = res["times"]
    results = [
        {"label": f"collisions 1 process ({cfg['n']} x {64 * cfg['words']} bit)",
         "seconds": median(t["one_col"])},
        {"label": "collisions 2 processes", "seconds": median(t["two_col"]),
         "bytes_per_sample": res["sent"][0] / cfg["n"]},
        {"label": f"knn 1 process ({cfg['m']} x 256 bit, {cfg['q']} queries, k=10)",
         "seconds": median(t["one_knn"])},
        {"label": "knn 2 processes", "seconds": median(t["two_knn"]),
         "bytes_per_query": res["sent"][1] / cfg["q"]},
    ]
    ratios = {"one_process": median(t["one_col"]) / median(t["two_col"]),
              "one_process_knn": median(t["one_knn"]) / median(t["two_knn"])}

    # out of core: a store 4x the budget
    n_ooc = 1_000_000 if quick else 4_000_000
    words = 16
    tmp = tempfile.mkdtemp(prefix="ah-bench-ooc-")
    try:
        path = os.path.join(tmp, "codes")
        codes = planted(n_ooc, words, seed=3)
        CodeBook(codes, Layout(("x",), ((64 * words,),)), torch.arange(n_ooc) % 10).save(path)
        del codes
        store_bytes = n_ooc * words * 8
        budget = store_bytes // 4
        g = torch.Generator().manual_seed(4)
        q = torch.randint(-2**63, 2**63 - 1, (200 if quick else 500, words), generator=g,
                          dtype=torch.int64)
        want = {}

        def in_mem():
            cb = CodeBook.load(path, mmap=False)
            want["col"] = count_collisions(cb).to_dict()

        def out_core():
            got = ooc.count_collisions_out_of_core(path, memory_budget=budget)
            assert got.to_dict() == want["col"]

        def in_mem_knn():
            cb = CodeBook.load(path, mmap=False)
            want["knn"] = hamming_topk(q, cb.codes, 10)

        def out_core_knn():
            d, i = ooc.hamming_topk_out_of_core(q, path, 10, memory_budget=budget)
            assert torch.equal(d, want["knn"][0]) and torch.equal(i, want["knn"][1])

        tt = timeit_interleaved({"in": in_mem, "ooc": out_core, "in_knn": in_mem_knn,
                                 "ooc_knn": out_core_knn}, repeat=3 if quick else 5)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results += [
        {"label": f"collisions in memory (store {store_bytes >> 20} MiB, load included)",
         "seconds": median(tt["in"])},
        {"label": f"collisions out of core (budget {budget >> 20} MiB)",
         "seconds": median(tt["ooc"])},
        {"label": f"knn in memory ({q.shape[0]} queries, k=10, load included)",
         "seconds": median(tt["in_knn"])},
        {"label": "knn out of core", "seconds": median(tt["ooc_knn"])},
    ]
    ratios["in_memory"] = median(tt["in"]) / median(tt["ooc"])
    ratios["in_memory_knn"] = median(tt["in_knn"]) / median(tt["ooc_knn"])
    cfg.update(n_ooc=n_ooc, ooc_words=words, ooc_budget=budget, ooc_store_bytes=store_bytes,
               process_threads=1, world=2)
    write_json(args.json, "distributed", cfg, results, ratios)


if __name__ == "__main__":
    main()
