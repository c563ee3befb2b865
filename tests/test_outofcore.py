"""Out-of-core collisions and K-NN against count_collisions / hamming_topk in memory: the
same report and results, resumed after a kill, and the resident set under the budget."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import activation_hash.outofcore as ooc
from activation_hash import ops
from activation_hash.codes import CodeBook
from activation_hash.collisions import count_collisions
from activation_hash.hamming import hamming_topk
from activation_hash.layout import Layout

LAYOUT = Layout(("a", "b", "c"), ((70,), (3,), (64,)))  # 2 + 1 + 1 words


def _codes(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.stack([torch.randint(0, 40, (n,), generator=g),
                     torch.randint(0, 2, (n,), generator=g),
                     torch.randint(0, 4, (n,), generator=g),
                     torch.randint(0, 50, (n,), generator=g)], 1)
    return c, torch.randint(0, 3, (n,), generator=g)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ooc") / "codes")
    c, y = _codes(20000)
    CodeBook(c, LAYOUT, y).save(path)
    return path


def test_parse_budget():
    assert ooc.parse_budget("2GB") == 2 * 10**9
    assert ooc.parse_budget("512MiB") == 512 << 20
    assert ooc.parse_budget("1.5G") == int(1.5 * 2**30)
    assert ooc.parse_budget(1 << 21) == 1 << 21
    for bad in ("2 parsecs", "", "10"):
        with pytest.raises(ValueError):
            ooc.parse_budget(bad)
    with pytest.raises(TypeError):
        ooc.parse_budget(2.0)


def test_collisions_equal_in_memory(store, tmp_path):
    want = count_collisions(CodeBook.load(store), per_layer=True, top=7).to_dict()
    work = str(tmp_path / "work")
    got = ooc.count_collisions_out_of_core(store, memory_budget="1MiB", per_layer=True, top=7,
                                           work_dir=work, keep_work=True)
    prog = json.load(open(os.path.join(work, "progress.json")))
    assert prog["config"]["buckets"] >= 4 and prog["tiles_done"] >= 10  # really out of core
    assert got.to_dict() == want
    plain = ooc.count_collisions_out_of_core(store, memory_budget="64MiB", labels=False, top=0)
    assert plain.to_dict() == count_collisions(CodeBook.load(store).codes, top=0).to_dict()


def test_collisions_forced_clashes(store, monkeypatch):
    def fake(c, ends=None):  # 3 fingerprint values per prefix: distinct codes clash
        one = lambda x: torch.stack([(x.sum(1) % 3) << 62, x.sum(1) % 3], 1)  # noqa: E731
        return one(c) if ends is None else torch.stack([one(c[:, :e]) for e in ends], 1)
    monkeypatch.setattr(ooc, "fingerprint128", fake)
    want = count_collisions(CodeBook.load(store), per_layer=True).to_dict()
    assert ooc.count_collisions_out_of_core(store, memory_budget="1MiB",
                                            per_layer=True).to_dict() == want


def test_collisions_resume_after_kill(store, tmp_path, monkeypatch):
    want = count_collisions(CodeBook.load(store), per_layer=True).to_dict()
    work = str(tmp_path / "work")
    real = ooc.fingerprint128
    calls = []

    def dying(c, ends=None):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt  # killed in pass 1, after 5 tiles
        return real(c, ends)
    monkeypatch.setattr(ooc, "fingerprint128", dying)
    with pytest.raises(KeyboardInterrupt):
        ooc.count_collisions_out_of_core(store, memory_budget="1MiB", per_layer=True,
                                         work_dir=work)
    prog = json.load(open(os.path.join(work, "progress.json")))
    assert prog["tiles_done"] == 5
    tiles = -(-20000 // prog["config"]["tile_rows"])
    real_groups = ooc._verified_groups
    done = []

    def dying_groups(*a):
        done.append(1)
        if len(done) == 3:
            raise KeyboardInterrupt  # killed in pass 2, after 2 buckets
        return real_groups(*a)
    monkeypatch.setattr(ooc, "_verified_groups", dying_groups)
    with pytest.raises(KeyboardInterrupt):
        ooc.count_collisions_out_of_core(store, memory_budget="1MiB", per_layer=True,
                                         work_dir=work)
    assert len(calls) == 6 + tiles - 5  # pass 1 resumed after its 5 recorded tiles
    assert len(json.load(open(os.path.join(work, "progress.json")))["done"]) == 2
    monkeypatch.setattr(ooc, "_verified_groups", real_groups)
    got = ooc.count_collisions_out_of_core(store, memory_budget="1MiB", per_layer=True,
                                           work_dir=work)
    assert len(calls) == 6 + tiles - 5  # nothing fingerprinted again
    assert got.to_dict() == want and not os.path.exists(work)


def test_knn_equal_in_memory(tmp_path):
    g = torch.Generator().manual_seed(3)
    base = torch.randint(0, 4, (30000, 8), generator=g)  # few distinct rows: ties everywhere
    q = torch.randint(0, 4, (40, 8), generator=g)
    path = str(tmp_path / "base")
    CodeBook(base, Layout(("x",), ((512,),))).save(path)
    for k in (1, 10, 300):
        d, i = ooc.hamming_topk_out_of_core(q, path, k, memory_budget="1MiB")
        d0, i0 = hamming_topk(q, base, k)
        assert torch.equal(d, d0) and torch.equal(i, i0), k
    with pytest.raises(ValueError):
        ooc.hamming_topk_out_of_core(q, path, 30001, memory_budget="1MiB")


_RSS = r"""
import json, sys, numpy as np, torch
import activation_hash.outofcore as ooc
from activation_hash.codes import CodeBook
torch.set_num_threads(1)
path, budget = sys.argv[1], sys.argv[2]
def rss_peak_since_reset(fn):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set to the current one
    before = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
    out = fn()
    peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
    return out, (peak - before) * 1024
q = torch.from_numpy(np.load(path + "/q.npy"))
# warm-up on a small store: the library code pages that a first call touches are not data
c = torch.randint(0, 5, (3000, q.shape[1]))
CodeBook(c, __import__("activation_hash").Layout(("x",), ((64 * q.shape[1],),))).save(path + ".small")
ooc.count_collisions_out_of_core(path + ".small", memory_budget=budget, top=10)
ooc.hamming_topk_out_of_core(q, path + ".small", 10, memory_budget=budget)
rep, c_rss = rss_peak_since_reset(lambda: ooc.count_collisions_out_of_core(
    path, memory_budget=budget, work_dir=path + ".work").to_dict())
(d, i), k_rss = rss_peak_since_reset(lambda: ooc.hamming_topk_out_of_core(
    q, path, 10, memory_budget=budget))
print(json.dumps({"rep": rep, "c_rss": c_rss, "k_rss": k_rss, "d": d.tolist(), "i": i.tolist()}))
"""


@pytest.mark.skipif(not ops.HAS_EXTENSION, reason="the pure-PyTorch fingerprint makes per-row "
                    "temporaries of the whole tile: the budget is kept by the compiled kernels")
def test_resident_set_under_budget(tmp_path):
    """A store of 96 MiB, a budget of 16 MiB: the peak resident-set growth of each call (a
    fresh process, /proc/self/status VmHWM after clear_refs) stays under the budget."""
    n, w = 393216, 32  # 96 MiB of codes
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(-2**63, 2**63 - 1, (n, w), generator=g, dtype=torch.int64)
    codes[n // 2: n // 2 + 1000] = codes[:1000]
    path = str(tmp_path / "big")
    CodeBook(codes, Layout(("x",), ((64 * w,),))).save(path)
    q = codes[::20000].clone()
    np.save(path + "/q.npy", q.numpy())
    want = count_collisions(codes).to_dict()
    d0, i0 = hamming_topk(q, codes, 10)
    del codes
    budget = 16 << 20  # 6x below the store
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(ooc.__file__)), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _RSS, path, str(budget)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["rep"] == want
    assert res["d"] == d0.tolist() and res["i"] == i0.tolist()
    print("peak resident-set growth", res["c_rss"], res["k_rss"], "budget", budget)
    assert res["c_rss"] < budget and res["k_rss"] < budget, (res["c_rss"], res["k_rss"])
