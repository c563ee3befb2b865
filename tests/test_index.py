"""CodeIndex over the FAISS binary indexes: results, devices (GPU only when FAISS sees one),
range search, save/load, errors; and the Python face of the Hamming ops."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import faiss  # noqa: E402  (a hard dependency: a broken install must fail, not skip)

from activation_hash import hamming  # noqa: E402
from activation_hash import reference as ref  # noqa: E402
from activation_hash.index import GPU_K_LIMIT, CodeIndex, to_bytes  # noqa: E402


def codes(n, n_bits=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ref.pack_bits(torch.rand(n, n_bits, generator=g) < 0.5)


@pytest.fixture
def data():
    return codes(2000, 256, seed=1), codes(30, 256, seed=2)


def test_bytes_view_is_little_endian_packbits():
    bits = torch.rand(4, 130) < 0.5
    b = to_bytes(ref.pack_bits(bits))
    want = np.zeros((4, 24), np.uint8)
    want[:, :17] = np.packbits(bits.numpy(), axis=1, bitorder="little")
    assert np.array_equal(b, want) and b.flags.c_contiguous


@pytest.mark.parametrize("shapes", [((70,), (2, 29)), ((64,),), ((1,), (130,), (3, 3, 3)),
                                    ((0,),)])
@pytest.mark.parametrize("n", [0, 1, 9])
def test_bytes_equal_codebook_as_bytes(shapes, n):
    from activation_hash.codes import CodeBook
    from activation_hash.layout import Layout

    layout = Layout(tuple(f"l{i}" for i in range(len(shapes))), shapes)
    g = torch.Generator().manual_seed(n)
    rows = torch.cat([ref.pack_bits(torch.rand(n, u, generator=g) < 0.5)
                      for u in layout.units], dim=1)
    cb = CodeBook(rows, layout)
    want = cb.as_bytes()
    for got in (to_bytes(rows), to_bytes(cb), to_bytes(torch.tensor(rows.numpy().T).T)):
        assert got.dtype == np.uint8 and got.shape == (n, 8 * layout.total_words)
        assert np.array_equal(got, want) and got.flags.c_contiguous
    with pytest.raises(TypeError, match="int64"):
        to_bytes(rows.to(torch.int32))


def test_flat_equals_our_topk(data):
    base, q = data
    index = CodeIndex("flat", device="cpu").add(base)
    assert len(index) == 2000 and index.d == 256
    d, ids = index.search(q, 10)
    assert d.dtype == torch.int32 and ids.dtype == torch.int64 and d.shape == (30, 10)
    od, _ = hamming.hamming_topk(q, base, 10)
    assert torch.equal(d, od)
    assert torch.equal(torch.gather(hamming.hamming_distance(q, base), 1, ids), d)


@pytest.mark.parametrize("kind", ["hash", "multihash", "ivf", "hnsw"])
def test_approximate_kinds_return_true_distances(data, kind):
    base, q = data
    q = torch.cat([q, base[:5]])  # exact copies are found by every kind
    index = CodeIndex(kind, device="cpu").add(base)
    d, ids = index.search(q, 5)
    found = ids >= 0
    full = hamming.hamming_distance(q, base)
    assert torch.equal(torch.gather(full, 1, ids.clamp(min=0))[found], d[found])
    assert d[~found].eq(2**31 - 1).all()
    assert torch.equal(ids[-5:, 0], torch.arange(5)) and d[-5:, 0].eq(0).all()


def test_ivf_with_all_probes_is_exact(data):
    base, q = data
    index = CodeIndex("ivf", device="cpu", nlist=16, nprobe=16).add(base)
    d, _ = index.search(q, 7)
    assert torch.equal(d, hamming.hamming_topk(q, base, 7)[0])


def test_range_search(data):
    base, q = data
    index = CodeIndex("flat", device="cpu").add(base)
    full = hamming.hamming_distance(q, base)
    radius = int(full.float().quantile(0.01).item())
    lims, d, ids = index.range_search(q, radius)
    assert lims.shape == (31,) and lims.dtype == torch.int64 and d.dtype == torch.int32
    for i in range(30):
        got = set(ids[lims[i]:lims[i + 1]].tolist())
        assert got == set((full[i] < radius).nonzero().flatten().tolist())
        assert torch.equal(d[lims[i]:lims[i + 1]], full[i, ids[lims[i]:lims[i + 1]]])
    with pytest.raises(ValueError, match="hnsw"):
        CodeIndex("hnsw", device="cpu").add(base).range_search(q, 3)


def test_save_load(tmp_path, data):
    base, q = data
    for kind, params in [("flat", {}), ("ivf", {"nlist": 8, "nprobe": 3}), ("hash", {"nflip": 1})]:
        index = CodeIndex(kind, device="cpu", **params).add(base)
        path = tmp_path / f"{kind}.faissbin"
        index.save(path)
        meta = json.loads((tmp_path / f"{kind}.faissbin.json").read_text())
        assert meta["kind"] == kind and meta["n_words"] == 4
        back = CodeIndex.load(path, device="cpu")
        assert back.kind == kind and len(back) == len(index)
        for a, b in zip(index.search(q, 5), back.search(q, 5)):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="missing"):
        CodeIndex.load(tmp_path / "nope")


def test_codebook_like_and_tuple_inputs(data):
    base, q = data
    cb = SimpleNamespace(codes=base, labels=torch.zeros(2000, dtype=torch.int64))
    index = CodeIndex("flat", device="cpu").add(cb).add((base[:10], None))
    assert len(index) == 2010
    d, ids = index.search(SimpleNamespace(codes=q), 3)
    assert d.shape == (30, 3)


def test_errors(data):
    base, q = data
    with pytest.raises(ValueError, match="kind must be one of"):
        CodeIndex("lsh")
    with pytest.raises(ValueError, match="unknown parameters"):
        CodeIndex("flat", nlist=3)
    index = CodeIndex("flat", device="cpu")
    with pytest.raises(ValueError, match="empty"):
        index.search(q, 3)
    index.add(base)
    with pytest.raises(ValueError, match="4 words per row"):
        index.add(codes(3, 64))
    with pytest.raises(ValueError, match="4 words per row"):
        index.search(codes(3, 64), 2)
    with pytest.raises(TypeError, match="int64"):
        index.add(base.int())
    with pytest.raises(ValueError, match="k must be"):
        index.search(q, 0)
    with pytest.raises(ValueError, match="device must be"):
        CodeIndex("flat", device="tpu")


def _forbid_gpu(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("GPU code touched")

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0, raising=False)
    monkeypatch.setattr(faiss, "index_binary_cpu_to_gpu", boom, raising=False)
    monkeypatch.setattr(faiss, "StandardGpuResources", boom, raising=False)


def test_auto_device_with_no_gpu_never_touches_gpu(monkeypatch, data):
    _forbid_gpu(monkeypatch)
    base, q = data
    for kind in ["flat", "ivf"]:
        index = CodeIndex(kind, device="auto").add(base)
        assert index.device == "cpu"
        d, _ = index.search(q, 4)
        d2, _ = index.search(q, 1000)
        assert d.shape == (30, 4) and torch.equal(d2[:, :4], d)
    with pytest.raises(ValueError, match="no GPU"):
        CodeIndex("flat", device="cuda")
    with pytest.raises(ValueError, match="no GPU"):
        CodeIndex("flat", device="cuda:0")


def test_gpu_path_taken_when_faiss_reports_a_gpu(monkeypatch, data):
    """With one (pretend) GPU: flat indexes search on the GPU copy for k <= 2048 and on the
    CPU copy above; the GPU copy is rebuilt after an add."""
    base, q = data
    calls = {"res": 0, "to_gpu": 0, "gpu_search": 0}

    class FakeGpuIndex:
        def __init__(self, cpu_index):
            self.cpu = cpu_index
            self.ntotal = cpu_index.ntotal

        def search(self, x, k):
            assert k <= GPU_K_LIMIT
            calls["gpu_search"] += 1
            return self.cpu.search(x, k)

    def res():
        calls["res"] += 1
        return object()

    def to_gpu(r, gpu_id, index):
        assert gpu_id == 0
        calls["to_gpu"] += 1
        return FakeGpuIndex(index)

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "StandardGpuResources", res, raising=False)
    monkeypatch.setattr(faiss, "index_binary_cpu_to_gpu", to_gpu, raising=False)
    index = CodeIndex("flat", device="auto").add(base)
    assert index.device == "cuda"
    d, _ = index.search(q, 10)
    assert calls == {"res": 1, "to_gpu": 1, "gpu_search": 1}
    assert torch.equal(d, hamming.hamming_topk(q, base, 10)[0])
    index.search(q, 3)
    assert calls["to_gpu"] == 1 and calls["gpu_search"] == 2
    big = CodeIndex("flat", device="cuda").add(codes(GPU_K_LIMIT + 100, 64, seed=3))
    dk, _ = big.search(codes(2, 64, seed=4), GPU_K_LIMIT + 1)  # above the GPU limit: CPU copy
    assert dk.shape == (2, GPU_K_LIMIT + 1) and calls["gpu_search"] == 2
    index.add(base[:5])
    index.search(q, 3)
    assert calls["to_gpu"] == 2  # rebuilt after the add; big (k above the limit) never copied
    assert CodeIndex("ivf", device="auto").device == "cpu"  # no GPU ivf in FAISS
    with pytest.raises(ValueError, match="no GPU version"):
        CodeIndex("hnsw", device="cuda")
    with pytest.raises(ValueError, match="1 GPU"):
        CodeIndex("flat", device="cuda:1")


# ---- activation_hash.hamming ---------------------------------------------------------------

def test_hamming_face_accepts_codebooks_tuples_numpy(data):
    base, q = data
    cb = SimpleNamespace(codes=base, labels=None)
    want = ref.hamming_distance(q, base)
    assert torch.equal(hamming.hamming_distance((q, None), cb), want)
    assert torch.equal(hamming.hamming_distance(q.numpy(), base), want)
    d, i = hamming.hamming_topk(q, cb, 6, chunk=7)
    rd, ri = ref.hamming_topk(q, base, 6)
    assert torch.equal(d, rd) and torch.equal(i, ri)
    assert torch.equal(hamming.hamming_consecutive(cb), ref.hamming_consecutive(base))


def test_hamming_face_errors(data):
    base, q = data
    with pytest.raises(TypeError, match="CodeBook"):
        hamming.hamming_distance([1, 2], base)
    with pytest.raises(TypeError, match="int64"):
        hamming.hamming_distance(q.float(), base)
    with pytest.raises(ValueError, match=r"labels must be 1-D class labels of shape \[\d+\], got shape \[3\]"):
        hamming.as_codes((base, torch.zeros(3, dtype=torch.int64)))
    with pytest.raises(ValueError, match="chunk"):
        hamming.hamming_topk(q, base, 2, chunk=0)
    with pytest.raises(ValueError, match="k must be <="):
        hamming.hamming_topk(q, base[:3], 4)
