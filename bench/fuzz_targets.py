"""The fuzz targets of ``bench/fuzz.py`` and ``tests/reliability/test_fuzz_smoke.py``: one per
reader of files the package accepts from elsewhere.

A target turns one input (bytes) into the file(s) its reader reads, in a fresh directory, and
calls the reader. The reader may refuse the input only with the target's documented
``expected`` exceptions (a clear error for the user: each a ValueError or TypeError, the CLI's
one-line errors; ``FileNotFoundError`` / ``IncompleteStoreError`` where named). Anything else
escaping the reader is a crash, and so is any of the sentinels firing:

- code execution: the seeds hold pickles (``__reduce__`` gadgets calling ``os.system`` /
  ``builtins.open``, nested and numpy object-array gadgets) whose execution creates the file
  ``PWNED`` in the target's directory; it must never appear;
- deletion outside a store: the store targets keep ``victim.npy`` next to the store (and
  seed manifests naming ``../victim.npy``); it must survive every input.

Readers and what they may raise (``EXPECTED``):

=================  ==================================================================
idx, idx_gz        ``read_idx`` (raw / gzip): ValueError
cifar_bin          ``load_cifar_batch`` of a ``.bin`` batch: ValueError
cifar_py           ``load_cifar_batch`` of a python batch (restricted unpickler): ValueError
store_manifest     ``store.read``, ``CodeBook.load``, ``store.Writer(resume=True)`` with the
                   manifest fuzzed: ValueError (IncompleteStoreError is one), TypeError
store_chunk        the codes ``.npy`` fuzzed (its manifest entry re-hashed to match, as a
                   forger would): ``store.read``, ``CodeBook.load``: ValueError, TypeError
codebook           the labels ``.npy`` fuzzed likewise, ``CodeBook.load``: ValueError, TypeError
index_sidecar      ``CodeIndex.load`` with the JSON sidecar fuzzed: ValueError, TypeError
index_file         ``CodeIndex.load`` with the FAISS file fuzzed and its sidecar re-hashed
                   (first byte: the index kind): ValueError, TypeError
sweep_results      ``sweep.load_results`` of ``results.json``: ValueError
sweep_points       a resumed sweep's point file and ``sweep.json`` (``_load_done``,
                   ``_check_threads``): ValueError; rows read must be dicts
report_settings    ``report.write_report`` with ``settings.json`` fuzzed: ValueError
config             ``--config FILE`` (TOML) of the ``train`` and ``sweep`` commands, through
                   ``load_config`` and the flags' checks: ValueError (UsageError is one),
                   TypeError, argparse's exit 2
=================  ==================================================================
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import random
import shutil
import struct
import tempfile

import numpy as np
import torch

SENTINEL = "PWNED"
VICTIM = "victim.npy"


class Crash(Exception):
    """A sentinel fired (code ran, a file outside the store vanished) or a rule broke."""


class Gadget:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class OpenGadget:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def gadget_pickles(marker: str) -> list[bytes]:
    g, o = Gadget(f"touch {marker}"), OpenGadget(marker)
    return [pickle.dumps(g, protocol=2), pickle.dumps(o, protocol=4),
            pickle.dumps({b"data": [1, {"x": (g,)}], b"labels": [0]}, protocol=2),
            pickle.dumps({b"data": np.array([o], dtype=object), b"labels": [0]}, protocol=2),
            b"cbuiltins\neval\n(S'open(\"" + marker.encode() + b"\", \"w\")'\ntR.",
            b"cbuiltins\nexec\n(S'open(\"" + marker.encode() + b"\", \"w\")'\ntR."]


def _npy(a: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, **kw)
    return buf.getvalue()


def _idx(a: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 8, np.dtype(np.int8): 9, np.dtype(">i2"): 11, np.dtype(">i4"): 12,
            np.dtype(">f4"): 13, np.dtype(">f8"): 14}[a.dtype]
    return bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


class Target:
    """``setup(root)`` once (builds the seeds), then ``run(data)`` per input."""

    name = ""
    expected: tuple = (ValueError,)

    def __init__(self, root: str):
        self.root = root
        self.case = os.path.join(root, "case")
        self.marker = os.path.join(self.case, SENTINEL)
        self.seeds: list[bytes] = []
        self.setup()

    def setup(self) -> None:
        pass

    def fresh(self) -> str:
        shutil.rmtree(self.case, ignore_errors=True)
        os.makedirs(self.case)
        with open(os.path.join(self.case, VICTIM), "wb") as f:
            f.write(b"victim")
        return self.case

    def path(self, *names) -> str:
        p = os.path.join(self.case, *names)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def write(self, data: bytes, *names) -> str:
        p = self.path(*names)
        with open(p, "wb") as f:
            f.write(data)
        return p

    def check(self) -> None:
        if os.path.exists(self.marker):
            raise Crash(f"{self.name}: code from the input ran (the sentinel {SENTINEL} exists)")
        if not os.path.exists(os.path.join(self.case, VICTIM)):
            raise Crash(f"{self.name}: a file outside the store ({VICTIM}) was deleted")

    def run(self, data: bytes) -> None:
        raise NotImplementedError


class Idx(Target):
    name = "idx"

    def setup(self):
        self.seeds = [_idx(np.arange(24, dtype=np.uint8).reshape(2, 3, 4)),
                      _idx(np.arange(5, dtype=np.uint8)), _idx(np.ones((2, 2), ">f8")),
                      _idx(np.arange(6, dtype=">i4").reshape(3, 2)),
                      bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1)]

    def run(self, data):
        from activation_hash.experiments.datasets import read_idx
        read_idx(self.write(data, "train-images-idx3-ubyte"))


class IdxGz(Idx):
    name = "idx_gz"

    def setup(self):
        super().setup()
        self.seeds = [gzip.compress(s) for s in self.seeds] + [gzip.compress(self.seeds[0])[:-9]]

    def run(self, data):
        from activation_hash.experiments.datasets import read_idx
        read_idx(self.write(data, "train-images-idx3-ubyte.gz"))


class CifarBin(Target):
    name = "cifar_bin"

    def setup(self):
        rec = np.zeros((2, 3073), np.uint8)
        rec[:, 0] = [3, 9]
        self.seeds = [rec.tobytes(), rec[:1].tobytes(), b"\x0a" + bytes(3072)]

    def run(self, data):
        from activation_hash.experiments.datasets import load_cifar_batch
        load_cifar_batch(self.write(data, "data_batch_1.bin"))


class CifarPy(Target):
    name = "cifar_py"

    def setup(self):
        d = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2], b"batch_label": b"x"}
        self.seeds = [pickle.dumps(d, protocol=p) for p in (2, 4)] + [
            pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0]}, protocol=2)]
        self.seeds += gadget_pickles(self.marker)

    def run(self, data):
        from activation_hash.experiments.datasets import load_cifar_batch
        load_cifar_batch(self.write(data, "data_batch_1"))


def _store_files(cb, tmp: str, chunk_rows: int | None, finish: bool) -> dict[str, bytes]:
    from activation_hash import store
    p = os.path.join(tmp, "s")
    if finish and chunk_rows is None:
        cb.save(p)
    else:
        w = store.Writer(p, meta={"m": 1}, chunk_rows=chunk_rows)
        for lo in range(0, len(cb), 4):
            w.append({"codes": cb.codes[lo:lo + 4].numpy(), "labels": cb.labels[lo:lo + 4].numpy()},
                     layout=cb.layout.to_dict())
        w.flush()
        w.close()
    out = {n: open(os.path.join(p, n), "rb").read() for n in os.listdir(p)}
    shutil.rmtree(p)
    return out


def _book():
    from activation_hash.codes import CodeBook
    from activation_hash.layout import Layout
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-2**62, 2**62, (12, 2), generator=g)
    codes[:, 1] &= (1 << 6) - 1  # layer b: 6 units
    return CodeBook(codes, Layout(("a", "b"), ((64,), (6,))), torch.arange(12) % 3)


class StoreManifest(Target):
    name = "store_manifest"
    expected = (ValueError, TypeError)

    def setup(self):
        cb, tmp = _book(), os.path.join(self.root, "build")
        self.files = _store_files(cb, tmp, None, True)
        done = json.loads(self.files.pop("manifest.json"))
        part = _store_files(cb, tmp, 4, False)
        partial = json.loads(part.pop("manifest.json"))
        self.files.update(part)
        evil = json.loads(json.dumps(partial))
        evil["chunks"][0]["files"]["codes"]["file"] = "../" + VICTIM
        self.seeds = [json.dumps(m).encode() for m in (done, partial, evil)]

    def run(self, data):
        from activation_hash import store
        from activation_hash.codes import CodeBook
        self.fresh()
        for n, b in self.files.items():
            self.write(b, "s", n)
        s = self.write(data, "s", "manifest.json")[:-len("/manifest.json")]
        try:
            store.read(s)
            CodeBook.load(s)
        except store.IncompleteStoreError:
            store.Writer(s, resume=True).close()  # keeps what verifies, deletes its own files


class StoreChunk(Target):
    """The ``array`` file fuzzed; its manifest entry re-hashed to match (a forged store)."""

    name = "store_chunk"
    expected = (ValueError, TypeError)
    array = "codes"

    def setup(self):
        cb = _book()
        self.files = _store_files(cb, os.path.join(self.root, "build"), None, True)
        self.m = json.loads(self.files["manifest.json"])
        good = self.files[self.m["chunks"][0]["files"][self.array]["file"]]
        a = np.load(io.BytesIO(good))
        bad = a.copy()
        if self.array == "codes":
            bad[0, 1] |= 1 << 40  # a padding bit
        else:
            bad[0] = 77
        self.seeds = [good, _npy(bad), _npy(np.asfortranarray(a)), _npy(a.astype(np.int32)),
                      _npy(np.array([OpenGadget(self.marker)] * len(a), dtype=object),
                           allow_pickle=True), good[:len(good) // 2]]

    def run(self, data):
        from activation_hash import store
        from activation_hash.codes import CodeBook
        from activation_hash.manifest import BLOCK_BYTES
        self.fresh()
        m = json.loads(json.dumps(self.m))
        e = m["chunks"][0]["files"][self.array]
        e.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                 block_bytes=BLOCK_BYTES, blocks=[hashlib.sha256(data).hexdigest()] if data else [])
        for n, b in self.files.items():
            self.write(b, "s", n)
        self.write(json.dumps(m).encode(), "s", "manifest.json")
        s = self.write(data, "s", e["file"])[:-len("/" + e["file"])]
        if self.array == "codes":
            store.read(s, mmap=False)
        CodeBook.load(s)


class CodeBookLabels(StoreChunk):
    name = "codebook"
    array = "labels"


def _index_files(root: str) -> dict[int, tuple[bytes, dict]]:
    from activation_hash.index import CodeIndex
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-2**62, 2**62, (64, 1), generator=g)
    out = {}
    specs = [("flat", {}), ("hash", {"hash_bits": 8}), ("multihash", {"nhash": 2, "hash_bits": 8}),
             ("ivf", {"nlist": 4}), ("hnsw", {"M": 4})]
    for i, (kind, params) in enumerate(specs):
        p = os.path.join(root, f"{kind}.faiss")
        CodeIndex(kind, device="cpu", **params).add(codes).save(p)
        out[i] = (open(p, "rb").read(), json.load(open(p + ".json")))
    return out


class IndexSidecar(Target):
    name = "index_sidecar"
    expected = (ValueError, TypeError)

    def setup(self):
        os.makedirs(os.path.join(self.root, "build"), exist_ok=True)
        self.files = _index_files(os.path.join(self.root, "build"))
        self.seeds = [json.dumps(side).encode() for _, side in self.files.values()]

    def run(self, data):
        from activation_hash.index import CodeIndex
        self.fresh()
        raw, _ = self.files[0]  # the flat index; the sidecar may claim any kind
        p = self.write(raw, "i.faiss")
        self.write(data, "i.faiss.json")
        CodeIndex.load(p, device="cpu")


class IndexFile(IndexSidecar):
    name = "index_file"

    def setup(self):
        super().setup()
        self.seeds = [bytes([i]) + raw for i, (raw, _) in self.files.items()]

    def run(self, data):
        from activation_hash.index import CodeIndex
        if not data:
            return
        self.fresh()
        _, side = self.files[data[0] % len(self.files)]
        body = data[1:]
        side = dict(side, bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
        p = self.write(body, "i.faiss")
        self.write(json.dumps(side).encode(), "i.faiss.json")
        CodeIndex.load(p, device="cpu")


_ROW = {"key": "0123456789abcdef", "factor_width": 4, "width": 4, "seed": 0, "acc_test": 0.5,
        "torch_threads": 1, "n_bits": 8}


class SweepResults(Target):
    name = "sweep_results"

    def setup(self):
        self.seeds = [json.dumps({"factors": ["width"], "config": {}, "rows": [_ROW]}).encode(),
                      b'{"rows": []}', b"[]"]

    def run(self, data):
        from activation_hash.experiments.sweep import load_results
        self.fresh()
        self.write(data, "sw", "results.json")
        rows = load_results(os.path.join(self.case, "sw"))
        if not (isinstance(rows, list) and all(isinstance(r, dict) for r in rows)):
            raise Crash(f"load_results returned {type(rows).__name__} rows that are not dicts")


class SweepPoints(Target):
    """A point file and ``sweep.json`` (same bytes), as a resumed sweep reads them."""

    name = "sweep_points"

    def setup(self):
        self.seeds = [json.dumps(_ROW).encode(), json.dumps({"torch_threads": 1}).encode(),
                      b'{"torch_threads": 1e999}', b'{"torch_threads": "x"}', b"\xff\xfe"]

    def run(self, data):
        from types import SimpleNamespace
        from pathlib import Path

        from activation_hash.experiments import sweep
        self.fresh()
        self.write(data, "sw", "sweep.json")
        self.write(data, "sw", "points", _ROW["key"] + ".json")
        out = Path(self.case) / "sw"
        sweep._check_threads(out, 1, False)  # what run_sweep does on resume
        done = sweep._load_done(out, [SimpleNamespace(points=[(_ROW["key"], None, None)])])
        if not all(isinstance(r, dict) for r in done.values()):
            raise Crash("a point file that is not a JSON object was taken as a finished row")


class ReportSettings(Target):
    name = "report_settings"

    def setup(self):
        self.seeds = [json.dumps({"command": "train", "width": 4, "nested": {"a": [1, 2]}}).encode(),
                      b"[1, 2]", b"{}"]

    def run(self, data):
        from activation_hash.experiments.report import write_report
        self.fresh()
        self.write(data, "run", "settings.json")
        write_report(os.path.join(self.case, "run"))


class Config(Target):
    name = "config"
    expected = (ValueError, TypeError, SystemExit)

    def setup(self):
        self.seeds = [b'dataset = "moons"\nwidth = 8\ndepth = 2\nbatch_norm = false\n',
                      b'[data]\nname = "moons"\nn_train = 100\n[train]\nepochs = 1\nlr = 0.1\n',
                      b'[factor]\nwidth = [2, 4]\n[data]\nname = "moons"\nseeds = [0, 1]\n',
                      b'width = 3.7\nbatch_norm = "false"\n']

    def run(self, data):
        import contextlib

        from activation_hash import cli
        from activation_hash.experiments.config import check_option, load_config
        self.fresh()
        p = self.write(data, "c.toml")
        cfg = load_config(p)
        for cmd in ("train", "sweep"):
            actions = {a.dest: a for a in cli.build_parser().commands[cmd].options}
            known = {k: v for k, v in cfg.items() if k in actions and k != "config"}
            defaults = {cmd: {k: check_option(actions[k], v, p) for k, v in known.items()}}
            with contextlib.redirect_stderr(io.StringIO()):
                try:
                    cli.build_parser(defaults).parse_args([cmd, "--config", p])
                except SystemExit as e:
                    if e.code != 2:
                        raise Crash(f"argparse exited with {e.code!r}") from None
                    raise


TARGETS = {t.name: t for t in (Idx, IdxGz, CifarBin, CifarPy, StoreManifest, StoreChunk,
                               CodeBookLabels, IndexSidecar, IndexFile, SweepResults, SweepPoints,
                               ReportSettings, Config)}


def first_line(err: BaseException, root: str) -> str:
    """``Type: first line`` of an error, its kind only: the directory, quoted values, numbers
    and names taken from the input elided, at most 90 characters."""
    import re
    text = str(err).replace(root + os.sep + "case" + os.sep, "").strip().splitlines()
    line = text[0] if text else ""
    line = re.sub(r"b?'(?:[^'\\]|\\.)*'|b?\"(?:[^\"\\]|\\.)*\"", "<v>", line)
    line = re.sub(r"(global|key|dtype|code|name) \S+", r"\1 <v>", line)
    line = re.sub(r"\b(0x)?[0-9a-f]*\d[0-9a-f]*\b", "N", line)
    return f"{type(err).__name__}: {line[:90]}"


def one(target: Target, data: bytes, errors: dict) -> None:
    """Run one input; an expected error is noted in ``errors`` (message -> count); anything
    else propagates (a crash)."""
    try:
        target.run(data)
    except target.expected as err:
        if isinstance(err, Crash):
            raise
        msg = first_line(err, target.root)
        errors[msg] = errors.get(msg, 0) + 1
    finally:
        target.check()


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    """A cheap mutator for the smoke run (atheris does the real, coverage-guided work)."""
    b = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and b:  # flip bits
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # truncate
            del b[rng.randrange(len(b)):]
        elif op == 2:  # insert random bytes
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and len(b) >= 4:  # an interesting 32-bit value
            i = rng.randrange(len(b) - 3)
            b[i:i + 4] = struct.pack("<I", rng.choice([0, 1, 2**31 - 1, 2**32 - 1, 255, 65536]))
        elif op == 4 and b:  # a JSON-ish token
            i = rng.randrange(len(b))
            b[i:i] = rng.choice([b"null", b"-1", b"1e999", b'"x"', b"[]", b"{}", b"true",
                                 b"9" * 30, b"../", b"\xff"])
        elif op == 5:  # splice with another seed
            o = rng.choice(seeds)
            b = b[:rng.randrange(len(b) + 1)] + o[rng.randrange(len(o) + 1):]
    return bytes(b)


def smoke(name: str, n: int, seed: int = 0) -> dict:
    """``n`` inputs (the seeds, then mutants) through one target, in this process."""
    with tempfile.TemporaryDirectory() as root:
        target = TARGETS[name](root)
        target.fresh()
        rng = random.Random(seed)
        errors: dict = {}
        inputs = target.seeds + [mutate(rng, target.seeds) for _ in range(n - len(target.seeds))]
        for data in inputs:
            try:
                one(target, data, errors)
            except Exception as err:
                raise Crash(f"{name}: {type(err).__name__}: {err} on input {data[:200]!r}") from err
        return {"inputs": len(inputs), "errors": errors}
