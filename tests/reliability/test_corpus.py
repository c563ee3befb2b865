"""Issue 14: a corpus of hostile files, each through its reader, with the exact error it must
give; no reader runs code from a file (the gadgets would create ``PWNED``)."""
import gzip
import io
import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from activation_hash.codes import CodeBook
from activation_hash.experiments.datasets import load_cifar_batch, read_idx
from activation_hash.layout import Layout

LAYOUT = Layout(("a",), ((128,),))


class Gadget:
    """Unpickling this runs ``os.system`` (touching the marker) unless the reader refuses it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class PersistentPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return "evil" if isinstance(obj, str) and obj == "ref" else None


def gadgets(marker):
    """name -> pickle bytes of the malicious payloads."""
    g = Gadget(marker)
    buf = io.BytesIO()
    PersistentPickler(buf, protocol=2).dump({b"data": "ref", b"labels": [0]})
    return {
        "reduce": pickle.dumps(g, protocol=2),
        "nested": pickle.dumps({b"data": [1, {"x": (g,)}], b"labels": [0]}, protocol=4),
        "persistent_id": buf.getvalue(),
        "builtins_eval": b"cbuiltins\neval\n(S'__import__(\"os\").system(\"touch " +
                         str(marker).encode() + b"\")'\ntR.",
        "numpy_gadget": pickle.dumps({b"data": np.array([g], dtype=object), b"labels": [0]},
                                     protocol=2),
    }


# ---- pickled CIFAR batches ----------------------------------------------------------------------

@pytest.mark.parametrize("name,msg", [
    ("reduce", r"refusing to load global posix.system"),
    ("nested", r"refusing to load global posix.system"),
    ("persistent_id", r"persistent"),
    ("builtins_eval", r"refusing to load global builtins.eval"),
    ("numpy_gadget", r"refusing dtype object"),  # refused at the object array, before its items
])
def test_cifar_pickle_gadgets_never_run(tmp_path, name, msg):
    marker = tmp_path / "PWNED"
    f = tmp_path / "data_batch_1"
    f.write_bytes(gadgets(marker)[name])
    with pytest.raises(pickle.UnpicklingError, match=msg):
        load_cifar_batch(f)
    assert not marker.exists()


@pytest.mark.parametrize("content,msg", [
    (b"", r"Ran out of input|pickle data was truncated"),
    (pickle.dumps([1, 2]), r"a CIFAR python batch is a dict, got list"),
    (pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]}),
     r"expected uint8 \[n, 3072\] and \[n\]"),
    (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [12]}),
     r"label 12 at index 0 is outside \[0, 10\)"),
    (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [-1]}),
     r"label -1 at index 0 is outside \[0, 10\)"),
    (pickle.dumps({b"nope": 1}), r"CIFAR batch needs keys 'data' and 'labels'"),
])
def test_cifar_python_batches(tmp_path, content, msg):
    f = tmp_path / "data_batch_1"
    f.write_bytes(content)
    with pytest.raises((ValueError, pickle.UnpicklingError, EOFError), match=msg):
        load_cifar_batch(f)


@pytest.mark.parametrize("n,label,msg", [
    (3072, 0, r"not a multiple of the 3073-byte"),
    (3073, 10, r"label 10 at index 0 is outside \[0, 10\)"),
    (3073, 255, r"label 255 at index 0 is outside \[0, 10\)"),
])
def test_cifar_binary_batches(tmp_path, n, label, msg):
    raw = bytearray(n)
    raw[0] = label
    f = tmp_path / "data_batch_1.bin"
    f.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=msg):
        load_cifar_batch(f)


# ---- IDX ----------------------------------------------------------------------------------------

def idx(shape, dtype_code=0x08, data=None):
    head = bytes([0, 0, dtype_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    return head + (bytes(int(np.prod(shape))) if data is None else data)


@pytest.mark.parametrize("content,msg", [
    (b"", r"is not an IDX file \(magic bytes b''"),
    (b"\x1f\x8b\x08\x00", r"is not an IDX file"),
    (b"\x00\x00\x07\x01" + b"\0" * 8, r"is not an IDX file"),
    (b"\x00\x00\x08\x03\x00\x00", r"truncated IDX header \(6 bytes, need 16\)"),
    (idx((2, 3))[:-1], r"IDX header says shape \(2, 3\) \(6 data bytes\), file has 5"),
    (idx((2, 3)) + b"\0", r"IDX header says shape \(2, 3\) \(6 data bytes\), file has 7"),
    (idx((1 << 31, 1 << 31, 1 << 31), 0x0E, b""), r"\(79228162514264337593543950336 data bytes\)"),
    (bytes([0, 0, 8, 255]) + b"\xff" * 16, r"truncated IDX header"),
])
def test_idx_files(tmp_path, content, msg):
    f = tmp_path / "train-labels-idx1-ubyte"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=msg):
        read_idx(f)


def test_idx_gzip_truncated(tmp_path):
    f = tmp_path / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(gzip.compress(idx((100,)))[:-10])
    # a ValueError (it was a bare EOFError, a traceback in the CLI; found by bench/fuzz.py)
    with pytest.raises(ValueError, match=r"is not a readable gzip file \(Compressed file ended "
                                         "before the end-of-stream"):
        read_idx(f)


# ---- store chunks -------------------------------------------------------------------------------

def saved(tmp_path, n=10):
    g = torch.Generator().manual_seed(0)
    c = torch.randint(-2**62, 2**62, (n, 2), generator=g)
    CodeBook(c, LAYOUT, torch.arange(n) % 3).save(tmp_path / "s")
    return tmp_path / "s", json.loads((tmp_path / "s" / "manifest.json").read_text())


def rewrite(p, m):
    (p / "manifest.json").write_text(json.dumps(m))


def test_store_truncated_chunk(tmp_path):
    p, _ = saved(tmp_path)
    f = p / "codes-000000.npy"
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"codes-000000.npy does not match the manifest \(missing, "
                                         r"or its size differs\)"):
        CodeBook.load(p)


def test_store_wrong_magic(tmp_path):
    p, _ = saved(tmp_path)
    f = p / "codes-000000.npy"
    raw = bytearray(f.read_bytes())
    raw[:6] = b"NOTNPY"
    f.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"codes-000000.npy: not a valid .npy file"):
        CodeBook.load(p, verify=False)


def test_store_huge_declared_shape(tmp_path):
    p, m = saved(tmp_path)
    f = p / "codes-000000.npy"
    arr = np.zeros((10, 2), np.int64)
    with open(f, "wb") as fh:  # header says 10**12 rows; the file holds 10
        np.lib.format.write_array_header_2_0(fh, {"descr": "<i8", "fortran_order": False,
                                                   "shape": (10**12, 2)})
        fh.write(arr.tobytes())
    m["chunks"][0]["files"]["codes"]["bytes"] = f.stat().st_size
    rewrite(p, m)
    with pytest.raises(ValueError, match=r"holds int64 \[1000000000000, 2\], the manifest says "
                                         r"<i8 \[10, 2\]"):
        CodeBook.load(p, mmap=False, verify=False)


def test_store_object_pickle_chunk(tmp_path):
    marker = tmp_path / "PWNED"
    p, m = saved(tmp_path)
    f = p / "labels-000000.npy"
    np.save(f, np.array([Gadget(marker)] * 10, dtype=object), allow_pickle=True)
    m["chunks"][0]["files"]["labels"]["bytes"] = f.stat().st_size
    rewrite(p, m)
    for mmap in (True, False):
        with pytest.raises(ValueError, match=r"labels-000000.npy holds object \[10\], the "
                                             r"manifest says <i8 \[10\]"):
            CodeBook.load(p, mmap=mmap, verify=False)
    assert not marker.exists()


@pytest.mark.parametrize("text,msg", [
    ("", r"is not valid JSON"),
    ("[]", r"is not an activation-hash store manifest"),
    ('{"format": "activation-hash-store", "version": 99}', r"store version 99"),
    ('{"format": "activation-hash-store", "version": 1}', r"'complete' must be true or false"),
    ("\udcff", r"is not valid JSON"),
])
def test_store_manifest_text(tmp_path, text, msg):
    p, _ = saved(tmp_path)
    (p / "manifest.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError, match=msg):
        CodeBook.load(p)


# ---- FAISS files and sidecars -------------------------------------------------------------------

def index_files(tmp_path):
    from activation_hash.index import CodeIndex

    g = torch.Generator().manual_seed(0)
    CodeIndex("flat", device="cpu").add(torch.randint(-2**62, 2**62, (50, 2), generator=g)) \
        .save(tmp_path / "i")
    return tmp_path / "i", json.loads((tmp_path / "i.json").read_text())


@pytest.mark.parametrize("edit,msg", [
    (lambda m: "{", r"i.json is not valid JSON"),
    (lambda m: json.dumps(dict(m, format=1)), r"is not a CodeIndex sidecar of format 2"),
    (lambda m: json.dumps(dict(m, kind="lsh")), r"is not a CodeIndex sidecar of format 2"),
    (lambda m: json.dumps(dict(m, n_words="2")), r"corrupt sidecar"),
    (lambda m: json.dumps(dict(m, params={"M": 0})), r"bad parameters \(unknown parameters"),
    (lambda m: json.dumps(dict(m, bytes=m["bytes"] + 1)), r"does not match its sidecar"),
    (lambda m: json.dumps(dict(m, sha256="0" * 64)), r"is corrupt: its sha256 differs"),
])
def test_index_sidecars(tmp_path, edit, msg):
    from activation_hash.index import CodeIndex

    p, m = index_files(tmp_path)
    (tmp_path / "i.json").write_text(edit(m))
    with pytest.raises(ValueError, match=msg):
        CodeIndex.load(p, device="cpu")


def test_index_file_truncated(tmp_path):
    from activation_hash.index import CodeIndex

    p, _ = index_files(tmp_path)
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"does not match its sidecar \(missing, or not"):
        CodeIndex.load(p, device="cpu")


# ---- trained models and configs ------------------------------------------------------------------

def test_model_pt_gadget_is_refused(tmp_path):
    from activation_hash.experiments.runs import load_trained

    marker = tmp_path / "PWNED"
    torch.save({"model": "mlp", "state_dict": Gadget(marker)}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"model.pt' is refused: not a model.pt of "
                                         r"`activation-hash train` readable with weights_only"):
        load_trained(tmp_path)
    assert not marker.exists()
    (tmp_path / "model.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"is refused"):
        load_trained(tmp_path)


@pytest.mark.parametrize("text,msg", [
    ("width = [", r"bad TOML"),
    ("[data]\nseed = 1\n[train]\nseed = 2\n", r"'seed' is set both in \[data\] and in \[train\]"),
])
def test_config_files(tmp_path, text, msg):
    from activation_hash.experiments.config import load_config

    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ValueError, match=msg):
        load_config(f)


# ---- sweep results -------------------------------------------------------------------------------

def test_sweep_unreadable_point_is_recomputed_not_trusted(tmp_path):
    from activation_hash.experiments.sweep import load_results

    (tmp_path / "points").mkdir()
    (tmp_path / "points" / "a.json").write_text('{"key": "a"}')
    assert load_results(tmp_path) == [{"key": "a"}]
