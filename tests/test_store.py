"""The on-disk store: round trips, memory maps, corruption, kill -9 and resume."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import activation_hash as ah
from activation_hash import store
from activation_hash.codes import CodeBook
from activation_hash.extract import extract_codes
from activation_hash.layout import Layout
from activation_hash.store import IncompleteStoreError

LAYOUT = Layout(("a", "b"), ((100,), (3, 5)))


def book(n=33, labels=True):
    g = torch.Generator().manual_seed(n)
    codes = torch.randint(-2**62, 2**62, (n, LAYOUT.total_words), generator=g)
    codes[:, 1] &= (1 << 36) - 1  # padding bits 0
    codes[:, 2] &= (1 << 15) - 1
    return CodeBook(codes, LAYOUT, labels=torch.arange(n) % 7 if labels else None,
                    ids=torch.arange(n) * 3, meta={"model": "m", "split": "test"})


def test_save_load_round_trip(tmp_path):
    cb = book()
    cb.save(tmp_path / "s")
    for mmap in (True, False):
        back = CodeBook.load(tmp_path / "s", mmap=mmap, verify=True)
        assert torch.equal(back.codes, cb.codes) and torch.equal(back.labels, cb.labels)
        assert torch.equal(back.ids, cb.ids) and back.layout == LAYOUT and back.meta == cb.meta
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["complete"] is True and m["rows"] == 33 and len(m["chunks"]) == 1
    data = store.read(tmp_path / "s")
    assert isinstance(data.arrays["codes"], np.memmap)  # memory-mapped, copy-on-write
    assert data.arrays["codes"].mode == "c" and data.arrays["codes"].flags.writeable
    unlabelled = book(5, labels=False)
    unlabelled.save(tmp_path / "u")
    assert CodeBook.load(tmp_path / "u").labels is None
    empty = book(0)
    empty.save(tmp_path / "e")
    back = CodeBook.load(tmp_path / "e")
    assert back.codes.shape == (0, 3) and back.labels.shape == (0,)


def test_overwrite_and_errors(tmp_path):
    cb = book()
    cb.save(tmp_path / "s")
    with pytest.raises(ValueError, match="already exists"):
        cb.save(tmp_path / "s")
    cb[:3].save(tmp_path / "s", overwrite=True)
    assert len(CodeBook.load(tmp_path / "s")) == 3
    with pytest.raises(FileNotFoundError, match="no code store"):
        CodeBook.load(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a code store"):
        CodeBook.load(tmp_path / "plain")
    with pytest.raises(ValueError, match="not an empty directory"):
        cb.save(tmp_path / "plain")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not an activation-hash store"):
        CodeBook.load(tmp_path / "bad")


def test_corruption_is_detected(tmp_path):
    cb = book()
    cb.save(tmp_path / "s")
    f = tmp_path / "s" / "codes-000000.npy"
    raw = bytearray(f.read_bytes())
    raw[-8] ^= 0x01  # same size, one real bit of the last word: found by the checksum
    f.write_bytes(bytes(raw))
    CodeBook.load(tmp_path / "s", verify=False)  # size and header checks only
    with pytest.raises(ValueError, match="does not match the manifest.*sha256"):
        CodeBook.load(tmp_path / "s")  # checksums are verified by default
    f.write_bytes(bytes(raw[:-8]))  # truncated: found by the size
    with pytest.raises(ValueError, match="does not match the manifest"):
        CodeBook.load(tmp_path / "s")


def test_pickles_are_refused(tmp_path):
    cb = book()
    cb.save(tmp_path / "s")
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    path = tmp_path / "s" / m["chunks"][0]["files"]["labels"]["file"]
    np.save(path, np.array([object()] * 33, dtype=object), allow_pickle=True)
    entry = m["chunks"][0]["files"]["labels"]
    entry["bytes"] = path.stat().st_size
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    for mmap in (True, False):  # refused, never unpickled
        with pytest.raises(ValueError, match="allow_pickle|Python objects|the manifest says"):
            CodeBook.load(tmp_path / "s", mmap=mmap)


def test_chunked_extraction_store(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 30), torch.nn.ReLU(), torch.nn.Linear(30, 90),
                                torch.nn.ReLU())
    x, y = torch.randn(61, 4), torch.randint(0, 5, (61,))
    mem = extract_codes(model, (x, y), batch_size=8, progress=False)
    cb = extract_codes(model, (x, y), batch_size=8, progress=False, store=tmp_path / "s",
                       chunk_rows=16, meta={"run": 1})
    assert torch.equal(cb.codes, mem.codes) and torch.equal(cb.labels, y)
    assert cb.layout == mem.layout and cb.meta["run"] == 1
    assert cb.meta["extraction"]["n"] == x.shape[0]
    names = sorted(n for n in os.listdir(tmp_path / "s") if not n.startswith("."))
    assert names == ["codes.npy", "labels.npy", "manifest.json"]  # chunks merged
    # a complete store is returned as it is
    again = extract_codes(model, (x, y), batch_size=8, progress=False, store=tmp_path / "s")
    assert torch.equal(again.codes, mem.codes)
    with pytest.raises(ValueError, match="already exists"):
        extract_codes(model, (x, y), progress=False, store=tmp_path / "s", resume=False)
    empty = extract_codes(model, x[:0], progress=False, store=tmp_path / "e")
    assert len(empty) == 0


JOB = textwrap.dedent("""
    import os, sys, time
    import torch
    from activation_hash.extract import extract_codes

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 50), torch.nn.ReLU(),
                                    torch.nn.Linear(50, 70), torch.nn.ReLU())
        g = torch.Generator().manual_seed(1)
        return model, torch.randn(300, 6, generator=g), torch.randint(0, 9, (300,), generator=g)

    class Slow(torch.nn.Module):
        def __init__(self, inner, delay, counter):
            super().__init__()
            self.inner, self.delay, self.counter = inner, delay, counter
        def forward(self, x):
            self.counter.append(x.shape[0])
            time.sleep(self.delay)
            return self.inner(x)

    if __name__ == "__main__":
        model, x, y = make()
        extract_codes(Slow(model, 0.05, []), (x, y), batch_size=10, progress=False,
                      store=sys.argv[1], chunk_rows=20)
""")


def test_kill_9_then_refuse_then_resume(tmp_path):
    job = tmp_path / "job.py"
    job.write_text(JOB)
    spec = importlib.util.spec_from_file_location("ah_store_job", job)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    path = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(ah.__file__)), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-W", "ignore", str(job), str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        rows = 0
        while time.time() < deadline and proc.poll() is None:  # wait for 3 chunks on disk
            try:
                rows = json.loads((path / "manifest.json").read_text())["rows"]
            except (OSError, ValueError, KeyError):
                rows = 0
            if rows >= 60:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    m = json.loads((path / "manifest.json").read_text())
    assert m["complete"] is False and 60 <= m["rows"] < 300
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        CodeBook.load(path)
    with pytest.raises(ValueError, match="incomplete"):  # also a ValueError
        store.read(path)
    # damage the last intact chunk: resume must drop it and redo its rows
    last = m["chunks"][-1]["files"]["codes"]["file"]
    raw = bytearray((path / last).read_bytes())
    raw[-3] ^= 1
    (path / last).write_bytes(bytes(raw))

    model, x, y = mod.make()
    calls = []
    cb = extract_codes(mod.Slow(model, 0.0, calls), (x, y), batch_size=10, progress=False,
                       store=path, chunk_rows=20)
    whole = extract_codes(model, (x, y), batch_size=10, progress=False)
    assert torch.equal(cb.codes, whole.codes) and torch.equal(cb.labels, y)
    assert sum(calls) == 300 - (m["rows"] - 20)  # only the missing rows were recomputed
    assert CodeBook.load(path, verify=True).codes.shape == whole.codes.shape


def test_resume_over_a_dataloader_and_a_dataset(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 70), torch.nn.ReLU())
    x, y = torch.randn(45, 4), torch.randint(0, 5, (45,))
    whole = extract_codes(model, (x, y), progress=False)
    for k, data in enumerate([DataLoader(TensorDataset(x, y), batch_size=7),
                              TensorDataset(x, y)]):
        path = tmp_path / f"s{k}"
        w = store.Writer(path, chunk_rows=1000)  # a run that stopped after 17 rows
        w.append({"codes": whole.codes[:17].numpy(), "labels": y[:17].numpy()},
                 layout=whole.layout.to_dict())
        w.flush()
        assert not store.is_complete(path)
        cb = extract_codes(model, data, batch_size=5, progress=False, store=path)
        assert torch.equal(cb.codes, whole.codes) and torch.equal(cb.labels, y)
        assert store.is_complete(path)
    # a store of another layout is not resumed with these codes
    path = tmp_path / "other"
    w = store.Writer(path)
    w.append({"codes": np.zeros((3, 1), np.int64), "labels": np.zeros(3, np.int64)},
             layout={"names": ["z"], "shapes": [[5]]})
    w.flush()
    with pytest.raises(ValueError, match="layout"):
        extract_codes(model, (x, y), progress=False, store=path)


def test_store_is_tied_to_its_data_model_and_layers(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 70), torch.nn.ReLU(), torch.nn.Linear(70, 9),
                                torch.nn.ReLU())
    x, y = torch.randn(50, 4), torch.randint(0, 5, (50,))
    d = tmp_path / "d"
    small = extract_codes(model, (x[:10], y[:10]), progress=False, store=d)
    assert len(small) == 10 and small.meta["extraction"]["n"] == 10
    with pytest.raises(ValueError, match="10 rows, the data 50 samples"):
        extract_codes(model, (x, y), progress=False, store=d)
    with pytest.raises(ValueError, match="data differ"):
        extract_codes(model, (x[10:20], y[10:20]), progress=False, store=d)
    with pytest.raises(ValueError, match="layers"):
        extract_codes(model, (x[:10], y[:10]), layers=[0], progress=False, store=d)
    other = torch.nn.Sequential(torch.nn.Linear(4, 70), torch.nn.ReLU(),
                                torch.nn.Linear(70, 9), torch.nn.ReLU())
    with pytest.raises(ValueError, match="model weights differ"):
        extract_codes(other, (x[:10], y[:10]), progress=False, store=d)
    assert torch.equal(extract_codes(model, (x[:10], y[:10]), progress=False, store=d).codes,
                       small.codes)  # same inputs: the store is returned
    (d / "notes.txt").write_text("mine")
    big = extract_codes(model, (x, y), progress=False, store=d, overwrite=True)
    assert torch.equal(big.codes, extract_codes(model, (x, y), progress=False).codes)
    assert (d / "notes.txt").read_text() == "mine"
    # resume: an unfinished store of 20 rows of another model is not continued
    p = tmp_path / "r"
    w = store.Writer(p, meta={"extraction": {"n": 50, "layers": None, "model": "other",
                                             "data": None}}, chunk_rows=1000)
    w.append({"codes": big.codes[:20].numpy(), "labels": y[:20].numpy()},
             layout=big.layout.to_dict())
    w.flush()
    with pytest.raises(ValueError, match="model weights differ"):
        extract_codes(model, (x, y), progress=False, store=p)
    with pytest.raises(ValueError, match="20 rows, the data 15"):
        extract_codes(model, (x[:15], y[:15]), progress=False, store=p)
    cb = extract_codes(model, (x, y), progress=False, store=p, overwrite=True)
    assert torch.equal(cb.codes, big.codes)


def test_resume_keeps_the_users_other_files(tmp_path):
    p = tmp_path / "s"
    b = book(30)
    w = store.Writer(p, chunk_rows=10)
    w.append({"codes": b.codes[:20].numpy()}, layout=LAYOUT.to_dict())  # 1 chunk of 20
    (p / "codes-000001.npy.tmp").write_bytes(b"partial")  # the dead run's temporaries
    (p / "manifest.json.tmp").write_bytes(b"{")
    (p / "codes.npy.tmp").write_bytes(b"x")
    mine = ["README.txt", "codes_backup.npy", "plot.png", "labels-1.npy"]
    for name in mine:
        (p / name).write_text(name)
    w2 = store.Writer(p, resume=True)
    assert w2.n_rows == 20
    assert sorted(n for n in os.listdir(p) if not n.startswith(".lock")) == \
        sorted(mine + ["manifest.json", "codes-000000.npy"])
    w2.append({"codes": b.codes[20:].numpy()}, layout=LAYOUT.to_dict())
    w2.finish()
    assert torch.equal(CodeBook.load(p).codes, b.codes)
    assert all((p / name).read_text() == name for name in mine)


def test_overwrite_is_crash_safe(tmp_path, monkeypatch):
    old, new = book(12), book(20)
    old.save(tmp_path / "s")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(store, "write_npy", boom)
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path / "s", overwrite=True)
    monkeypatch.undo()
    back = CodeBook.load(tmp_path / "s", verify=True)
    assert torch.equal(back.codes, old.codes)
    assert os.listdir(tmp_path) == ["s"]  # no temporary left behind
    new.save(tmp_path / "s", overwrite=True)
    assert torch.equal(CodeBook.load(tmp_path / "s", verify=True).codes, new.codes)
    assert os.listdir(tmp_path) == ["s"]
