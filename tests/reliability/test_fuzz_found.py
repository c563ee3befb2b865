"""Issue 14: what bench/fuzz.py found, each a test that failed before its fix: a reader let an
exception other than its documented ValueError escape (a traceback in the CLI), or a hostile
file made FAISS allocate without bound."""
import gzip
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from activation_hash.experiments import sweep
from activation_hash.experiments.readers import RefusedPickleError, load_cifar_batch, read_idx

HERE = Path(__file__).resolve().parent


def test_truncated_gzip_idx_is_a_value_error(tmp_path):
    f = tmp_path / "x-idx1-ubyte.gz"
    f.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3]))[:-9])
    with pytest.raises(ValueError, match="is not a readable gzip file"):
        read_idx(f)


@pytest.mark.parametrize("raw", [b"\xff", b"", b"\x80\x02}q\x00(", b"\x80\x02K"])
def test_every_bad_cifar_pickle_is_a_value_error(tmp_path, raw):
    f = tmp_path / "data_batch_1"
    f.write_bytes(raw)
    with pytest.raises(ValueError, match="is not a CIFAR-10 python batch: unpickling failed"):
        load_cifar_batch(f)
    assert issubclass(RefusedPickleError, pickle.UnpicklingError)


class _ObjectArray:
    """Pickles as numpy's own array reconstruction with an object dtype and a shape of 2^28
    (2 GB of pointers, all set to None by numpy before anything else could fail)."""

    def __reduce__(self):
        import numpy as np
        return (np.ndarray.__reduce__(np.zeros(1, np.uint8))[0], (np.ndarray, (0,), b"b"),
                (1, (2 ** 28,), np.dtype(object), False, [0]))


class _FieldsDtype:
    """A plain dtype global whose BUILD state smuggles in fields (a structured dtype)."""

    def __reduce__(self):
        import numpy as np
        return (np.dtype, ("u1", False, True),
                (3, "|", None, ("a",), {"a": (np.dtype("u1"), 0)}, 1, 1, 0))


@pytest.mark.parametrize("evil, why", [(_ObjectArray, "refusing dtype object"),
                                       (_FieldsDtype, "fields or subarrays")])
def test_hostile_cifar_arrays_are_refused_before_numpy_allocates(tmp_path, evil, why):
    """Found by bench/fuzz.py (cifar_py, 2026-12-02): a 332-byte batch made the reader reach
    the fuzzer's 4 GB limit. Arrays and dtypes are now checked before numpy builds them."""
    import resource
    f = tmp_path / "data_batch_1"
    f.write_bytes(pickle.dumps({b"data": evil(), b"labels": [0]}, protocol=2))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(RefusedPickleError, match=why):
        load_cifar_batch(f)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 200_000, f"the peak resident set grew by {grown_kb} KB"


def test_a_huge_declared_bytearray_is_refused_before_it_is_allocated(tmp_path):
    """Found by bench/fuzz.py (cifar_py, 2026-12-02, after the fix above): BYTEARRAY8
    declaring 5.8 GB in a 492-byte file; the unpickler allocates the declared length first."""
    import resource
    import struct
    f = tmp_path / "data_batch_1"
    f.write_bytes(b"\x80\x05" + pickle.BYTEARRAY8 + struct.pack("<Q", 2 ** 33) + b".")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(RefusedPickleError, match="a bytearray of 8589934592 bytes in a file"):
        load_cifar_batch(f)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000


def test_npy_header_tokenizer_error_is_a_value_error(tmp_path):
    import torch

    from activation_hash import store
    from activation_hash.codes import CodeBook
    from activation_hash.layout import Layout
    CodeBook(torch.zeros(4, 1, dtype=torch.int64), Layout(("a",), ((64,),))).save(tmp_path / "s")
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    e = m["chunks"][0]["files"]["codes"]
    f = tmp_path / "s" / e["file"]
    raw = bytearray(f.read_bytes())
    head = raw.index(b"(4, 1)")
    raw[head:head + 6] = b"(4, 1 "  # an unclosed tuple: numpy's tokenizer raises TokenError
    f.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"not a valid \.npy file \(TokenError"):
        store.read(tmp_path / "s", verify=False)


def _index(tmp_path, body: bytes, kind="hnsw", params=None):
    import hashlib
    p = tmp_path / "i.faiss"
    p.write_bytes(body)
    side = {"format": 2, "kind": kind, "params": params or {"M": 4, "ef_search": 16,
                                                             "ef_construction": 40},
            "n_words": 1, "ntotal": 64, "bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest()}
    (tmp_path / "i.faiss.json").write_text(json.dumps(side))
    return p


def test_faiss_read_error_is_a_value_error(tmp_path):
    from activation_hash.index import CodeIndex
    p = _index(tmp_path, b"IBHf" + bytes(40))
    with pytest.raises(ValueError, match="is not a binary index FAISS can read"):
        CodeIndex.load(p, device="cpu")


def test_faiss_hostile_size_does_not_allocate():
    """The input the fuzzer saved (libFuzzer: out-of-memory, over 4 GB): through its target
    (first byte: the index kind; the rest: the file, its sidecar re-hashed to match): refused
    with a ValueError, the process's peak RSS under 2 GB (an 8 GB address-space cap as a net)."""
    script = ("import resource, sys, tempfile\n"
              "resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))\n"
              "sys.path.insert(0, 'bench')\nimport fuzz_targets as ft\n"
              "data = open(sys.argv[1], 'rb').read()\n"
              "with tempfile.TemporaryDirectory() as r:\n"
              "    t = ft.TARGETS['index_file'](r); t.fresh(); e = {}\n"
              "    ft.one(t, data, e); print(list(e))\n"
              "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", script, str(HERE / "data" / "index_file_oom.bin")],
                         cwd=HERE.parents[1], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "is not a binary index FAISS can read" in out.stdout, out.stdout
    assert int(out.stdout.split("maxrss_kb")[1]) < 2 << 20, out.stdout


@pytest.mark.parametrize("raw", [b"[]", b'{"rows": 3}', b'{"rows": [1]}', b"\xff"])
def test_bad_results_json_is_a_value_error(tmp_path, raw):
    (tmp_path / "results.json").write_bytes(raw)
    with pytest.raises(ValueError, match="results.json"):
        sweep.load_results(tmp_path)


@pytest.mark.parametrize("raw", [b'{"torch_threads": 1e999}', b'{"torch_threads": "x"}',
                                 b'{"torch_threads": [2]}', b"\xff\xfe"])
def test_bad_sweep_json_is_ignored(tmp_path, raw):
    (tmp_path / "points").mkdir()
    (tmp_path / "points" / "k.json").write_text("{}")
    (tmp_path / "sweep.json").write_bytes(raw)
    sweep._check_threads(tmp_path, 1, False)  # nothing to compare with: no error


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"[1, 2]", b'"row"'])
def test_unreadable_point_file_is_recomputed(tmp_path, raw):
    from types import SimpleNamespace
    (tmp_path / "points").mkdir()
    (tmp_path / "points" / "k.json").write_bytes(raw)
    assert sweep._load_done(tmp_path, [SimpleNamespace(points=[("k", None, None)])]) == {}
    assert sweep.load_results(tmp_path) == []
