"""activation_hash.distributed on 2 and 3 gloo processes against the single-process oracles
(count_collisions, hamming_topk, extract_codes): identical results, not just runs.

Each launch spawns the ranks once and runs several cases in them (a launch costs a few
seconds of imports); the oracles are computed here, in the test process."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import activation_hash.distributed as ahd
import activation_hash.distributed.collisions as ahd_collisions
import activation_hash.distributed.collisions_keys as ahd_keys
import activation_hash.distributed.extract as ahd_extract
from activation_hash.codes import CodeBook
from activation_hash.collisions import count_collisions
from activation_hash.extract import extract_codes
from activation_hash.hamming import hamming_topk
from activation_hash.layout import Layout

LAYOUT = Layout(("a", "b", "c"), ((70,), (3,), (64,)))  # 2 + 1 + 1 words


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world, fn, args, timeout=60):
    """Run ``fn(rank, world, *args)`` on ``world`` gloo ranks; its return values by rank."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _port()
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, out))
             for r in range(world)]
    for p in procs:
        p.start()
    got = {}
    try:
        for _ in procs:
            rank, ok, val = out.get(timeout=timeout)
            assert ok, f"rank {rank} failed:\n{val}"
            got[rank] = val
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return [got[r] for r in range(world)]


def _entry(rank, world, port, fn, args, out):
    import traceback

    import torch.distributed as dist

    torch.set_num_threads(1)
    if os.environ.get("AH_TEST_DUMP"):
        import faulthandler
        faulthandler.dump_traceback_later(float(os.environ["AH_TEST_DUMP"]), exit=True)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        out.put((rank, True, fn(rank, world, *args)))
    except BaseException:
        out.put((rank, False, traceback.format_exc()))
    finally:
        dist.destroy_process_group()


def _codes(n, seed, low=True, dup_from=None):
    """Codes [n, 4] of LAYOUT; low-entropy words (many collisions at every layer) or random
    words with duplicates planted from the first half into the second half (other ranks)."""
    g = torch.Generator().manual_seed(seed)
    if low:
        c = torch.stack([torch.randint(0, 3, (n,), generator=g),
                         torch.randint(0, 2, (n,), generator=g),
                         torch.randint(0, 4, (n,), generator=g),
                         torch.randint(0, 3, (n,), generator=g)], 1)
    else:
        c = torch.randint(-2**63, 2**63 - 1, (n, 4), generator=g, dtype=torch.int64)
        src = torch.randint(0, n // 2, (n // 5,), generator=g)
        dst = n // 2 + torch.randperm(n - n // 2, generator=g)[:n // 5]
        c[dst] = c[src]
        c[dst[:5], 3] ^= 1  # equal first layers, different last one
        c[:, 1] &= (1 << 6) - 1  # padding bits are 0 (layer a: 70 units, layer b: 3)
        c[:, 2] &= (1 << 3) - 1
    return c


def _splits(n, sizes):
    cuts = np.cumsum([0] + list(sizes))
    assert cuts[-1] == n
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]


def _fake_fp(c, ends=None):
    """A degenerate fingerprint: 3 values for every prefix, so that distinct codes clash
    (within and across ranks) and every fingerprint is owned by few ranks."""
    def one(x):
        v = (x.sum(1) % 3) if x.shape[1] else torch.zeros(x.shape[0], dtype=torch.int64)
        return torch.stack([v << 40, v], 1)
    if ends is None:
        return one(c)
    return torch.stack([one(c[:, :e]) for e in ends], 1)


COLLISION_CASES = {
    # name: (n, codes kwargs, shard sizes per world, labels?, top)
    "low": (300, {"seed": 1, "low": True}, {2: [110, 190], 3: [0, 180, 120]}, True, 12),
    "planted": (400, {"seed": 2, "low": False}, {2: [200, 200], 3: [150, 0, 250]}, True, 10),
    "nolabels": (250, {"seed": 3, "low": True}, {2: [250, 0], 3: [1, 1, 248]}, False, 3),
}


def _fake_key(c, b):
    """fingerprint_key with the degenerate fingerprint: 3 values above the index bits."""
    return (_fake_fp(c)[:, 1] << 45) | torch.arange(c.shape[0], dtype=torch.int64)


def _collisions_worker(rank, world, clash):
    res = {}
    if clash:  # "fast": the fingerprint_key path; "generic": 128-bit fingerprints throughout
        ahd_collisions.fingerprint128 = _fake_fp
        ahd_keys.fingerprint_key = _fake_key
        if clash == "generic":
            ahd_collisions._fast_bits = lambda *a: None
    for name, (n, kw, sizes, with_labels, top) in COLLISION_CASES.items():
        codes = _codes(n, **kw)
        labels = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(9))
        lo, hi = _splits(n, sizes[world])[rank]
        cb = CodeBook(codes[lo:hi], LAYOUT, labels[lo:hi] if with_labels else None)
        rep = ahd.count_collisions_distributed(cb, per_layer=True, top=top)
        res[name] = (rep.to_dict(), ahd.last_exchange().total)
        rep2 = ahd.count_collisions_distributed(cb.codes, top=0)
        res[name + "/plain"] = rep2.to_dict()
    return res


def _oracle_collisions():
    want = {}
    for name, (n, kw, _, with_labels, top) in COLLISION_CASES.items():
        codes = _codes(n, **kw)
        labels = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(9))
        cb = CodeBook(codes, LAYOUT, labels if with_labels else None)
        want[name] = count_collisions(cb, per_layer=True, top=top).to_dict()
        want[name + "/plain"] = count_collisions(codes, top=0).to_dict()
    return want


KNN = {"n": 90, "q": 17, "sizes": {2: [40, 50], 3: [30, 0, 60]}, "ks": [1, 7, 45, 90]}


def _knn_data():
    g = torch.Generator().manual_seed(5)
    base = torch.randint(0, 4, (KNN["n"], 2), generator=g)  # few distinct rows: many ties
    base[60:70] = base[0:10]                                   # equal rows in other shards
    q = torch.randint(0, 4, (KNN["q"], 2), generator=g)
    return base, q


def _knn_worker(rank, world):
    base, q = _knn_data()
    lo, hi = _splits(KNN["n"], KNN["sizes"][world])[rank]
    qlo, qhi = _splits(KNN["q"], [KNN["q"] - 5 * (world - 1)] + [5] * (world - 1))[rank]
    res = {}
    for k in KNN["ks"]:
        d, i = ahd.hamming_topk_distributed(q, base[lo:hi], k)
        res[("all", k)] = (d.tolist(), i.tolist())
        d, i = ahd.hamming_topk_distributed(q[qlo:qhi], base[lo:hi], k, shard_queries=True)
        res[("mine", k)] = (d.tolist(), i.tolist(), qlo, qhi)
    try:
        ahd.hamming_topk_distributed(q, base[lo:hi], KNN["n"] + 1)
        res["too_big"] = False
    except ValueError:
        res["too_big"] = True
    return res


def _check_knn(got):
    base, q = _knn_data()
    for res in got:
        assert res["too_big"]
        for k in KNN["ks"]:
            d, i = hamming_topk(q, base, k)
            assert res[("all", k)] == (d.tolist(), i.tolist()), k
            dm, im, qlo, qhi = res[("mine", k)]
            assert (dm, im) == (d[qlo:qhi].tolist(), i[qlo:qhi].tolist()), k


def _check_collisions(got, want):
    for res in got:
        for name, w in want.items():
            val = res[name][0] if isinstance(res[name], tuple) else res[name]
            assert val == w, name


def _all_worker(rank, world, clash, store=None):
    res = {"collisions": _collisions_worker(rank, world, clash), "knn": _knn_worker(rank, world)}
    if store is not None:  # 2 samples over 3 ranks: rank 2 extracts none
        res["extract"] = _extract_small_worker(rank, world, store, 2)
    return res


@pytest.mark.parametrize("world", [2, 3])
def test_collisions_and_knn_equal_single_process(world, tmp_path):
    """Duplicates planted across ranks, uneven shards, a rank with 0 rows (world 3), per-layer
    profile, mixed regions, largest groups with ties; K-NN with ties across shards; (world 3)
    extraction of 2 samples, rank 2 getting none."""
    store = str(tmp_path / "codes") if world == 3 else None
    got = _launch(world, _all_worker, (False, store))
    if store is not None:
        assert [g["extract"] for g in got] == [(0, 1), (1, 1), (2, 0)]
        want = extract_codes(_Net(), _data(2), progress=False)
        whole = CodeBook.load(store)
        assert torch.equal(whole.codes, want.codes) and torch.equal(whole.labels, want.labels)
    _check_collisions([g["collisions"] for g in got], _oracle_collisions())
    _check_knn([g["knn"] for g in got])
    # what was exchanged: records (48 bytes per local group) and rows, all counted
    assert all(g["collisions"]["planted"][1] > 0 for g in got)


def test_collisions_forced_clashes_across_ranks():
    """A degenerate fingerprint (3 values): distinct codes clash within and across ranks and
    every verification path runs; the report is still exact."""
    want = _oracle_collisions()
    for path in ("fast", "generic"):
        got = _launch(2, _collisions_worker, (path,))
        _check_collisions(got, want)


def test_single_process_fallback():
    codes = _codes(200, seed=4)
    cb = CodeBook(codes, LAYOUT, torch.arange(200) % 2)
    assert ahd.count_collisions_distributed(cb, per_layer=True).to_dict() == \
        count_collisions(cb, per_layer=True).to_dict()
    base, q = _knn_data()
    d, i = ahd.hamming_topk_distributed(q, base, 9)
    d0, i0 = hamming_topk(q, base, 9)
    assert torch.equal(d, d0) and torch.equal(i, i0)
    assert [ahd.shard_range(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [ahd.shard_range(2, r, 3) for r in range(3)] == [(0, 1), (1, 2), (2, 2)]
    assert ahd.init_from_env() == (0, 1) or "WORLD_SIZE" in os.environ


# ------------------------------------------------------------------------------ extraction

class _Net(torch.nn.Module):
    """A small MLP; with ``die_after`` batches its rank exits abruptly (like kill -9)."""

    def __init__(self, die_after=None):
        super().__init__()
        torch.manual_seed(0)
        self.f = torch.nn.Sequential(torch.nn.Linear(5, 40), torch.nn.ReLU(),
                                     torch.nn.Linear(40, 20), torch.nn.ReLU())
        self.die_after = die_after
        self.seen = 0

    def forward(self, x):
        if self.die_after is not None and self.seen // 8 >= self.die_after:
            os._exit(3)
        self.seen += x.shape[0]
        return self.f(x)


def _data(n):
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, 5, generator=g), torch.randint(0, 4, (n,), generator=g)


def _extract_worker(rank, world, store, n, die_rank):
    net = _Net(die_after=3 if rank == die_rank else None)
    part = ahd.extract_codes_distributed(net, _data(n), store=store, batch_size=8,
                                         chunk_rows=8)
    return (part.offset, part.n, part.codebook.codes.tolist(), net.seen)


def test_extraction_killed_rank_resumes(tmp_path):
    store = str(tmp_path / "codes")
    n = 101
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _port()
    procs = [ctx.Process(target=_entry, args=(r, 2, port, _extract_worker,
                                              (store, n, 1), out)) for r in range(2)]
    for p in procs:
        p.start()
    procs[1].join(timeout=120)
    assert procs[1].exitcode == 3  # rank 1 died mid-extraction
    procs[0].join(timeout=5)       # rank 0 finished its part and waits for rank 1: end it
    if procs[0].is_alive():
        procs[0].kill()
        procs[0].join()
    part1 = ahd_extract._part_path(store, 1, 2)
    import activation_hash.store as st
    assert st.exists(part1) and not st.is_complete(part1) and st.manifest(part1)["rows"] == 24
    assert st.is_complete(ahd_extract._part_path(store, 0, 2)) and not st.exists(store)

    got = _launch(2, _extract_worker, (store, n, None))
    want = extract_codes(_Net(), _data(n), batch_size=8, progress=False)
    whole = CodeBook.load(store)
    assert torch.equal(whole.codes, want.codes) and torch.equal(whole.labels, want.labels)
    assert whole.layout == want.layout
    lo, hi = ahd.shard_range(n, 1, 2)
    assert got[0][3] == 0                 # rank 0's part was complete: nothing recomputed
    assert got[1][3] == (hi - lo) - 24    # rank 1 resumed after its 3 intact chunks
    for r, (off, total, codes, _) in enumerate(got):
        a, b = ahd.shard_range(n, r, 2)
        assert off == a and total == n and codes == want.codes[a:b].tolist()
    assert not os.path.exists(store + ".parts")
    # a rerun returns the joined store's shares at once (rank and world given: no group)
    for r in range(2):
        net = _Net()
        again = ahd.extract_codes_distributed(net, _data(n), store=store, rank=r, world_size=2)
        assert net.seen == 0 and again.codebook.codes.tolist() == got[r][2]


def _extract_small_worker(rank, world, store, n):
    part = ahd.extract_codes_distributed(_Net(), _data(n), store=store, batch_size=8)
    return (part.offset, len(part.codebook))
