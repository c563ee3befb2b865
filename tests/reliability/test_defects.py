"""Issue 14: each defect of the reliability review, with the exact error it must give now."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from activation_hash import ops, store
from activation_hash import reference as ref
from activation_hash.codes import CodeBook
from activation_hash.extract import extract_codes, model_fingerprint
from activation_hash.layout import Layout

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = Layout(("a", "b"), ((70,), (3,)))


def book(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    bits = torch.rand(n, 73, generator=g) < 0.5
    codes = torch.cat([ref.pack_bits(bits[:, :70]), ref.pack_bits(bits[:, 70:])], 1)
    return CodeBook(codes, LAYOUT, torch.arange(n) % 3)


def codes(n, n_bits=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ref.pack_bits(torch.rand(n, n_bits, generator=g) < 0.5)


# ---- FAISS parameters ----------------------------------------------------------------------

@pytest.mark.parametrize("kind,params,err,msg", [
    ("hnsw", {"M": 0}, ValueError, r"M must be an integer in \[2, 512\], got 0"),
    ("hnsw", {"M": 1}, ValueError, r"M must be an integer in \[2, 512\], got 1"),
    ("hnsw", {"M": -3}, ValueError, r"M must be an integer in \[2, 512\], got -3"),
    ("hnsw", {"ef_search": 0}, ValueError, r"ef_search must be an integer in \[1, 1048576\]"),
    ("hnsw", {"ef_construction": 0}, ValueError, r"ef_construction must be an integer"),
    ("hash", {"nflip": -1}, ValueError, r"nflip must be an integer in \[0, 64\], got -1"),
    ("hash", {"hash_bits": 0}, ValueError, r"hash_bits must be an integer in \[1, 64\]"),
    ("hash", {"hash_bits": 8, "nflip": 9}, ValueError, r"nflip must be an integer in \[0, hash_bits=8\]"),
    ("multihash", {"nhash": 0}, ValueError, r"nhash must be an integer in \[1, 64\], got 0"),
    ("ivf", {"nprobe": 0}, ValueError, r"nprobe must be an integer >= 1, got 0"),
    ("ivf", {"nprobe": -2}, ValueError, r"nprobe must be an integer >= 1, got -2"),
    ("ivf", {"nlist": 2.5}, TypeError, r"nlist must be an integer"),
    ("hnsw", {"M": True}, TypeError, r"M must be an integer"),
])
def test_index_parameters_checked_before_faiss(kind, params, err, msg):
    from activation_hash.index import CodeIndex

    with pytest.raises(err, match=msg):
        CodeIndex(kind, device="cpu", **params)


def test_index_hash_bits_above_d():
    from activation_hash.index import CodeIndex

    with pytest.raises(ValueError, match=r"hash_bits must be an integer in \[1, 64\], got 65"):
        CodeIndex("hash", device="cpu", hash_bits=65)  # d >= 64: FAISS's key limit comes first
    with pytest.raises(ValueError, match=r"nhash \* hash_bits <= d=64"):
        CodeIndex("multihash", device="cpu", nhash=4, hash_bits=20).add(codes(10, 64))


def test_hnsw_missing_results_use_the_documented_marker():
    from activation_hash.index import CodeIndex

    idx = CodeIndex("hnsw", device="cpu").add(codes(5))
    d, i = idx.search(codes(2, seed=1), k=8)
    assert (i[:, 5:] == -1).all() and (d[:, 5:] == 2**31 - 1).all()


def test_index_file_checksum_and_kind(tmp_path):
    from activation_hash.index import CodeIndex

    idx = CodeIndex("ivf", device="cpu", nlist=4).add(codes(200))
    p = tmp_path / "i.faiss"
    idx.save(p)
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"i.faiss is corrupt: its sha256 differs from the sidecar"):
        CodeIndex.load(p, device="cpu")
    CodeIndex("flat", device="cpu").add(codes(200)).save(p)
    side = json.loads((tmp_path / "i.faiss.json").read_text())
    side["kind"] = "hnsw"
    (tmp_path / "i.faiss.json").write_text(json.dumps(side))
    with pytest.raises(ValueError, match=r"holds a IndexBinaryFlat, its sidecar says kind='hnsw'"):
        CodeIndex.load(p, device="cpu")


# ---- silent corruption -----------------------------------------------------------------------

def test_flipped_code_or_label_byte_is_found_on_load_by_default(tmp_path):
    cb = book()
    cb.save(tmp_path / "s")
    for name in ("codes", "labels"):
        cb.save(tmp_path / name, overwrite=False)
        f = tmp_path / name / f"{name}-000000.npy"
        raw = bytearray(f.read_bytes())
        raw[-8] ^= 0x01
        f.write_bytes(bytes(raw))
        with pytest.raises(ValueError, match=rf"{name}-000000.npy does not match the manifest "
                                             r"\(corrupt: its sha256 differs"):
            CodeBook.load(tmp_path / name)
        CodeBook.load(tmp_path / name, verify=False)  # the opt-out


def test_cli_collisions_exit_2_on_a_flipped_byte(tmp_path):
    cb = book()
    cb.save(tmp_path / "s")
    f = tmp_path / "s" / "codes-000000.npy"
    raw = bytearray(f.read_bytes())
    raw[200] ^= 0x01
    f.write_bytes(bytes(raw))
    r = subprocess.run([sys.executable, "-m", "activation_hash.cli", "collisions",
                        str(tmp_path / "s"), "--out", str(tmp_path / "o"), "-q"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    lines = [line for line in r.stderr.splitlines()  # the reference backend's one warning aside
             if "compiled extension not available" not in line and "import ops" not in line]
    assert r.returncode == 2 and len(lines) == 1 and "sha256" in lines[0], r.stderr


# ---- path traversal --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../victim/x.npy", "/etc/passwd", "sub/codes-000000.npy",
                                  "codes-000000.npy/../../x", "labels-000000.npy"])
def test_manifest_file_names_must_be_the_stores_own(tmp_path, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "x.npy").write_bytes(b"precious")
    w = store.Writer(tmp_path / "s", chunk_rows=10)
    w.append({"codes": book(20).codes.numpy()}, layout=LAYOUT.to_dict())
    w.close()
    mp = tmp_path / "s" / "manifest.json"
    m = json.loads(mp.read_text())
    m["chunks"][0]["files"]["codes"]["file"] = name
    mp.write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"corrupt manifest: chunk 0 names file .* a store reads "
                                         r"only its own files"):
        store.Writer(tmp_path / "s", resume=True)
    assert (victim / "x.npy").read_bytes() == b"precious"


@pytest.mark.parametrize("edit,msg", [
    (lambda m: m.pop("chunks"), r"'chunks' must be a list"),
    (lambda m: m.update(rows="7"), r"'rows' must be an integer >= 0"),
    (lambda m: m.update(complete="yes"), r"'complete' must be true or false"),
    (lambda m: m["arrays"].update(codes=["|O", [2]]), r"dtype '\|O'"),
    (lambda m: m["chunks"][0].pop("rows"), r"chunk 0 must be"),
    (lambda m: m["chunks"][0]["files"]["codes"].update(sha256=None), r"'sha256' must be 64 hex"),
    (lambda m: m["chunks"][0]["files"]["codes"].update(shape=[10**15, 2]), r"shape"),
    (lambda m: m.update(rows=3), r"'rows' is 3 but the chunks hold 40"),
    (lambda m: m.update(layout=[1]), r"'layout' must be"),
])
def test_corrupt_manifests_give_one_clear_error(tmp_path, edit, msg):
    book().save(tmp_path / "s")
    mp = tmp_path / "s" / "manifest.json"
    m = json.loads(mp.read_text())
    edit(m)
    mp.write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"manifest.json: corrupt manifest: .*" + msg):
        CodeBook.load(tmp_path / "s")


# ---- resume into changed data or model -------------------------------------------------------

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 16)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.fc(x))


def test_resume_refuses_changed_data_beyond_the_first_samples(tmp_path):
    torch.manual_seed(0)
    model, x = Net(), torch.randn(300, 6)
    p = tmp_path / "s"
    w = store.Writer(p, chunk_rows=50)  # an interrupted run: chunks, not complete
    extract_codes(model, x[:100], progress=False)  # (warm up)
    from activation_hash.extract import _extraction_record
    rec = _extraction_record(model, x, None)
    w.close()
    store.remove(p)
    w = store.Writer(p, meta={"extraction": rec}, chunk_rows=50)
    cb = extract_codes(model, x[:100], progress=False)
    w.append({"codes": cb.codes.numpy()}, layout=cb.layout.to_dict())
    w.close()
    x2 = x.clone()
    x2[100:] *= -1
    with pytest.raises(ValueError, match=r"made from other inputs than this call \(data differ\)"):
        extract_codes(model, x2, progress=False, store=p, chunk_rows=50)
    full = extract_codes(model, x, progress=False, store=p, chunk_rows=50)
    assert torch.equal(full.codes, extract_codes(model, x, progress=False).codes)


def test_model_fingerprint_sees_permuted_weights():
    torch.manual_seed(0)
    a = Net()
    b = Net()
    b.load_state_dict(a.state_dict())
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.fc.weight.copy_(b.fc.weight[:, torch.tensor([1, 0, 2, 3, 4, 5])])  # same sums
    assert model_fingerprint(a) != model_fingerprint(b)


# ---- concurrent writers ----------------------------------------------------------------------

HOLD = textwrap.dedent("""
    import sys, time
    from activation_hash import store
    w = store.Writer(sys.argv[1], chunk_rows=10)
    print("locked", flush=True)
    time.sleep(60)
""")


def test_second_writer_gets_one_line_naming_the_holder(tmp_path):
    p = tmp_path / "s"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(p)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(store.LockedError, match=rf"store .* is locked by pid {proc.pid} on "):
            store.Writer(p, resume=True)
        with pytest.raises(store.LockedError, match=rf"locked by pid {proc.pid}"):
            book().save(p, overwrite=True)
    finally:
        proc.kill()
        proc.wait()
    w = store.Writer(p, resume=True)  # a dead holder leaves no stale lock
    w.close()


def test_second_sweep_into_one_directory_is_refused(tmp_path):
    from activation_hash.fileio import LockedError
    from activation_hash.experiments.sweep import run_sweep

    out = tmp_path / "sw"
    code = ("import sys, time\nfrom activation_hash.fileio import exclusive_lock\n"
            "with exclusive_lock(sys.argv[1], 'x'):\n print('locked', flush=True)\n"
            " time.sleep(60)\n")
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", code, str(out / ".lock")],
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=rf"sweep directory .* is locked by pid {proc.pid}"):
            run_sweep({"factors": {"width": [2]}, "data": {"name": "moons"},
                       "train": {"epochs": 1}}, out, progress=False)
    finally:
        proc.kill()
        proc.wait()


# ---- failed saves ----------------------------------------------------------------------------

def test_a_failed_save_leaves_nothing_behind(tmp_path):
    cb = book()
    cb.meta = {"x": object()}
    with pytest.raises(TypeError, match="meta must hold JSON values only"):
        cb.save(tmp_path / "s")
    assert not (tmp_path / "s").exists()
    book().save(tmp_path / "s")
    with pytest.raises(TypeError, match="meta must hold JSON values only"):
        cb.save(tmp_path / "s", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["s"]
    cb.meta = {"ok": 1}
    cb.save(tmp_path / "s", overwrite=True)
    assert CodeBook.load(tmp_path / "s").meta == {"ok": 1}


# ---- smaller ---------------------------------------------------------------------------------

def test_idx_header_size_overflow(tmp_path):
    from activation_hash.experiments.datasets import read_idx

    f = tmp_path / "x-idx3-ubyte"
    f.write_bytes(bytes([0, 0, 0x0E, 3]) + (0xFFFFFFFF).to_bytes(4, "big") * 3 + b"\0" * 16)
    with pytest.raises(ValueError, match=r"IDX header says shape \(4294967295, 4294967295, "
                                         r"4294967295\) \(633825299671392843082401579000 data"):
        read_idx(f)


def test_labels_out_of_range_are_refused(tmp_path):
    from activation_hash.experiments.datasets import load_cifar_batch

    rec = np.zeros((2, 3073), np.uint8)
    rec[1, 0] = 77
    f = tmp_path / "data_batch_1.bin"
    f.write_bytes(rec.tobytes())
    with pytest.raises(ValueError, match=r"label 77 at index 1 is outside \[0, 10\)"):
        load_cifar_batch(f)


def test_padding_bits_are_refused_by_codebook():
    c = book().codes.clone()
    c[3, 1] |= 1 << 63  # layer a has 70 units: bits 6..63 of word 1 are padding
    with pytest.raises(ValueError, match=r"padding bits set \(row 3, word 1: the last word of "
                                         r"layer 'a'"):
        CodeBook(c, LAYOUT)


def test_hamming_topk_takes_numpy_k():
    from activation_hash.hamming import hamming_topk

    c = codes(10)
    assert hamming_topk(c, c, np.int64(3))[0].shape == (10, 3)


@pytest.mark.parametrize("fn,args,msg", [
    (ops.pack_signs, ([1.0],), r"pack_signs: x must be a torch.Tensor"),
    (ops.unpack_bits, ([[1]], 3), r"unpack_bits: words must be a torch.Tensor"),
    (ops.hamming_distance, (np.zeros((1, 1), np.int64), torch.zeros(1, 1, dtype=torch.int64)),
     r"hamming_distance: a must be a torch.Tensor"),
    (ops.fingerprint128, ([[1]],), r"fingerprint128: codes must be a torch.Tensor"),
    (ops.hamming_consecutive, (None,), r"hamming_consecutive: codes must be a torch.Tensor"),
])
def test_ops_refuse_non_tensors_with_a_type_error(fn, args, msg):
    with pytest.raises(TypeError, match=msg):
        fn(*args)


def test_store_docstring_matches_single_chunk_files(tmp_path):
    assert "a store of exactly one chunk keeps codes-000000.npy" in " ".join(
        store.__doc__.split())
    book().save(tmp_path / "s")
    assert (tmp_path / "s" / "codes-000000.npy").is_file()
