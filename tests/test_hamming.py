"""Hamming ops (hamming_distance, hamming_topk, hamming_consecutive) against the reference,
scipy's cdist and FAISS, with ties, edges and errors."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import activation_hash as ah
from activation_hash import ops
from activation_hash import reference as ref
from helpers import ISAS, run_with_isa


def random_codes(n, n_bits, seed=0, density=0.5, device="cpu"):
    """Packed codes of n random rows of n_bits bits (padding bits 0) and the bool bits."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.rand(n, n_bits, generator=g) < density
    return ref.pack_bits(bits).to(device), bits


def low_entropy_codes(n, W, seed=0, device="cpu"):
    """Rows drawn from a handful of words: many equal distances (ties) and duplicates."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor([0, -1, 1, 3, 0x0F0F, -(1 << 63)], dtype=torch.int64)
    return pool[torch.randint(len(pool), (n, W), generator=g)].to(device)


def check_all(a, b, k=None):
    d = ops.hamming_distance(a, b)
    assert torch.equal(d, ref.hamming_distance(a, b))
    for kk in sorted({0, 1, min(5, b.shape[0]), b.shape[0]} | ({k} if k is not None else set())):
        if kk > b.shape[0]:
            continue
        got = ops.hamming_topk(a, b, kk)
        want = ref.hamming_topk(a, b, kk)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), kk
    assert torch.equal(ops.hamming_consecutive(b), ref.hamming_consecutive(b))
    return d


@pytest.mark.parametrize("n_bits", [1, 5, 63, 64, 65, 200, 256, 1000, 1024, 4096])
def test_distance_equals_scipy_cdist(device, n_bits):
    from scipy.spatial.distance import cdist

    a, abits = random_codes(13, n_bits, seed=n_bits, device=device)
    b, bbits = random_codes(700, n_bits, seed=n_bits + 1, device=device)
    d = check_all(a, b, k=10)
    want = np.rint(cdist(abits.numpy(), bbits.numpy(), "hamming") * n_bits).astype(np.int32)
    assert np.array_equal(d.cpu().numpy(), want)


@pytest.mark.parametrize("n_bits", [8, 64, 256, 1024])
def test_distances_and_topk_equal_faiss(n_bits):
    import faiss
    a, _ = random_codes(20, n_bits, seed=3)
    b, _ = random_codes(3000, n_bits, seed=4)
    index = faiss.IndexBinaryFlat(n_bits)
    to_bytes = lambda x: x.numpy().view(np.uint8)[:, : n_bits // 8].copy()  # noqa: E731
    index.add(to_bytes(b))
    D, _ = index.search(to_bytes(a), 10)
    d, i = ah.ops.hamming_topk(a, b, 10)
    assert np.array_equal(d.numpy(), D)
    # FAISS's ids may order ties differently; ours have exactly FAISS's distances.
    full = ops.hamming_distance(a, b)
    assert torch.equal(torch.gather(full, 1, i), d)


def test_topk_ties_go_to_lower_index(device):
    a = low_entropy_codes(40, 4, seed=1, device=device)
    b = low_entropy_codes(2000, 4, seed=2, device=device)
    check_all(a, b, k=50)
    # all base rows equal: indices 0..k-1 in order
    base = torch.full((100, 2), 7, dtype=torch.int64, device=device)
    d, i = ops.hamming_topk(base[:3], base, 17)
    assert d.eq(0).all() and torch.equal(i.cpu(), torch.arange(17).expand(3, 17))


@given(n=st.integers(0, 40), m=st.integers(0, 1200), W=st.integers(0, 9),
       seed=st.integers(0, 2**16), ties=st.booleans(), k=st.integers(0, 40))
def test_match_reference_random(n, m, W, seed, ties, k):
    if ties:
        a, b = low_entropy_codes(n, W, seed), low_entropy_codes(m, W, seed + 1)
    else:
        g = torch.Generator().manual_seed(seed)
        a = torch.randint(-2**63, 2**63 - 1, (n, W), generator=g)
        b = torch.randint(-2**63, 2**63 - 1, (m, W), generator=g)
    check_all(a, b, k=min(k, m))


@pytest.mark.parametrize("W", [1, 2, 4, 5, 16, 64])
def test_widths_and_tile_boundaries(device, W):
    # base sizes around the tiles (kTileBytes / 8W rows) and the 8/16-lane groups
    g = torch.Generator().manual_seed(W)
    for m in [1, 7, 8, 9, 15, 16, 17, 511, 512, 513, 2049]:
        a = torch.randint(-2**63, 2**63 - 1, (5, W), generator=g).to(device)
        b = torch.randint(-2**63, 2**63 - 1, (m, W), generator=g).to(device)
        check_all(a, b, k=min(m, 33))


def test_large_k_and_k_equals_m(device):
    a, _ = random_codes(6, 256, seed=5, device=device)
    b, _ = random_codes(3000, 256, seed=6, device=device)
    for k in [1000, 2999, 3000]:
        got, want = ops.hamming_topk(a, b, k), ref.hamming_topk(a, b, k)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_empty(device):
    e = torch.empty(0, 4, dtype=torch.int64, device=device)
    x, _ = random_codes(3, 256, device=device)
    assert ops.hamming_distance(e, x).shape == (0, 3)
    assert ops.hamming_distance(x, e).shape == (3, 0)
    d, i = ops.hamming_topk(x, e, 0)
    assert d.shape == (3, 0) and i.shape == (3, 0) and d.dtype == torch.int32
    d, i = ops.hamming_topk(e, x, 2)
    assert d.shape == (0, 2) and i.dtype == torch.int64
    assert ops.hamming_consecutive(e).shape == (0,)
    assert ops.hamming_consecutive(x[:1]).shape == (0,)
    z = torch.empty(3, 0, dtype=torch.int64, device=device)
    assert ops.hamming_distance(z, z).eq(0).all()
    d, i = ops.hamming_topk(z, z, 2)
    assert d.eq(0).all() and torch.equal(i.cpu(), torch.tensor([[0, 1]] * 3))
    assert ops.hamming_consecutive(z).tolist() == [0, 0]


def test_non_contiguous(device):
    x, _ = random_codes(50, 64 * 8, seed=7, device=device)
    x = x.view(50, 8)
    for a, b in [(x[::2], x[1::3]), (x[:, ::2], x[5:, 1::2]), (x.t().contiguous().t(), x)]:
        assert not (a.is_contiguous() and b.is_contiguous())
        check_all(a, b, k=7)


def test_consecutive_values(device):
    c = torch.tensor([[0, 0], [1, 0], [1, -1], [0, 0]], dtype=torch.int64, device=device)
    assert ops.hamming_consecutive(c).tolist() == [1, 64, 65]


@pytest.mark.parametrize("fn", ["ext", "ref"])
def test_errors(device, fn):
    dist = ops.hamming_distance if fn == "ext" else ref.hamming_distance
    topk = ops.hamming_topk if fn == "ext" else ref.hamming_topk
    cons = ops.hamming_consecutive if fn == "ext" else ref.hamming_consecutive
    a = torch.zeros(3, 4, dtype=torch.int64, device=device)
    with pytest.raises(TypeError, match="int64 packed words.*int32"):
        dist(a.int(), a)
    with pytest.raises(TypeError, match="int64"):
        topk(a, a.float(), 1)
    with pytest.raises(TypeError, match="int64"):
        cons(a.to(torch.uint8))
    with pytest.raises(ValueError, match=r"same number of words.*\[3, 4\].*\[3, 5\]"):
        dist(a, torch.zeros(3, 5, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match="2-D"):
        dist(a[0], a)
    with pytest.raises(ValueError, match="2-D"):
        cons(a[0])
    with pytest.raises(ValueError, match="k must be >= 0, got -1"):
        topk(a, a, -1)
    with pytest.raises(ValueError, match=r"k must be <= the number of base rows \(3\), got k=4"):
        topk(a, a, 4)


def test_k_type_error():
    a = torch.zeros(3, 4, dtype=torch.int64)
    with pytest.raises(TypeError, match="k must be an int"):
        ops.hamming_topk(a, a, 1.5)


def test_without_the_extension_the_wrappers_run_the_reference(monkeypatch):
    # ops.HAS_EXTENSION False (no compiled extension): the wrappers run the reference
    # without touching torch.ops.
    monkeypatch.setattr(ops, "HAS_EXTENSION", False)
    monkeypatch.setattr(ops, "_ops", object(), raising=False)  # any use would raise
    a, _ = random_codes(6, 150, seed=11)
    b, _ = random_codes(9, 150, seed=12)
    assert torch.equal(ops.hamming_distance(a, b), ref.hamming_distance(a, b))
    got, want = ops.hamming_topk(a, b, np.int64(4)), ref.hamming_topk(a, b, 4)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(ops.hamming_consecutive(b), ref.hamming_consecutive(b))
    assert torch.equal(ops.fingerprint128(b), ref.fingerprint128(b))


def test_opcheck(device):
    if ah.backend() != "extension":
        pytest.skip("no compiled extension")
    a, _ = random_codes(9, 300, seed=8, device=device)
    b, _ = random_codes(40, 300, seed=9, device=device)
    torch.library.opcheck(torch.ops.activation_hash.hamming_distance, (a, b))
    torch.library.opcheck(torch.ops.activation_hash.hamming_topk, (a, b, 5))
    torch.library.opcheck(torch.ops.activation_hash.hamming_consecutive, (b,))


def test_compile_fake():
    if ah.backend() != "extension":
        pytest.skip("no compiled extension")
    a, _ = random_codes(9, 256, seed=10)
    with torch._subclasses.fake_tensor.FakeTensorMode():
        fa = torch.empty(9, 4, dtype=torch.int64)
        d, i = ops.hamming_topk(fa, fa, 3)
        assert d.shape == (9, 3) and i.dtype == torch.int64
        assert ops.hamming_consecutive(fa).shape == (8,)
        assert ops.hamming_distance(fa, fa[:2]).shape == (9, 2)


_ISA_SCRIPT = """
import torch
from activation_hash import reference as ref, ops
g = torch.Generator().manual_seed(0)
def check(a, b):
    assert torch.equal(ops.hamming_distance(a, b), ref.hamming_distance(a, b))
    for k in sorted({1, min(b.shape[0], 10), b.shape[0]}):
        got, want = ops.hamming_topk(a, b, k), ref.hamming_topk(a, b, k)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (a.shape, b.shape, k)
    assert torch.equal(ops.hamming_consecutive(b), ref.hamming_consecutive(b))
for W in [1, 2, 4, 5, 17, 64, 129]:
    for m in [1, 9, 257, 700]:
        for q in [7, 40]:  # few queries, and enough for the bit-sliced top-k
            a = torch.randint(-2**63, 2**63 - 1, (q, W), generator=g)
            b = torch.randint(-2**63, 2**63 - 1, (m, W), generator=g)
            b[m // 2:] = b[:m - m // 2].clone()  # duplicates: ties
            check(a, b)
            # low entropy: many equal distances, queries of more ones than zeros
            lo = torch.randint(0, 4, (m, W), generator=g) * 0x0101010101010101
            qa = torch.randint(0, 4, (q, W), generator=g) * 0x0101010101010101
            qa[::2] = ~qa[::2]
            check(qa, lo)
print("ok")
"""


# ACTIVATION_HASH_SLICED forces the bit-sliced top-k off / on: an AVX2 kernel only
@pytest.mark.parametrize("isa,sliced", [(isa, "auto") for isa in ISAS] +
                         [("avx2", "0"), ("avx2", "1")])
def test_every_cpu_kernel_family(isa, sliced):
    """Every kernel family this CPU has (ACTIVATION_HASH_ISA in a subprocess), bit for bit
    against the reference; ACTIVATION_HASH_SLICED forces the bit-sliced top-k off / on."""
    env = {} if sliced == "auto" else {"ACTIVATION_HASH_SLICED": sliced}
    run_with_isa(_ISA_SCRIPT, isa, env)


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_few_queries_split_the_base_between_threads(threads):
    # Q < 2 threads and many tiles: each thread scans a range of the base, lists are merged
    q, _ = random_codes(3, 256, seed=13)
    b = low_entropy_codes(6000, 4, seed=14)  # many ties across the ranges
    b[3000:] = random_codes(3000, 256, seed=15)[0]
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for qq in [q, q[:1], b[:2]]:
            for k in [1, 10, 700, 6000]:
                got, want = ops.hamming_topk(qq, b, k), ref.hamming_topk(qq, b, k)
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), k
    finally:
        torch.set_num_threads(old)


def test_threads_give_the_same_result():
    a, _ = random_codes(3, 256, seed=11)  # short a: distance parallel over base tiles
    b, _ = random_codes(5000, 256, seed=12)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        d1, t1 = ops.hamming_distance(a, b), ops.hamming_topk(b[:50], b, 9)
        torch.set_num_threads(max(2, old))
        d2, t2 = ops.hamming_distance(a, b), ops.hamming_topk(b[:50], b, 9)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(d1, d2) and torch.equal(t1[0], t2[0]) and torch.equal(t1[1], t2[1])
    assert torch.equal(d1, ref.hamming_distance(a, b))


def test_many_queries_run_in_blocks():
    # more queries than one L2 block (csrc/cpu/hamming.cpp query_block) for both ops
    g = torch.Generator().manual_seed(16)
    q = torch.randint(-2**63, 2**63 - 1, (1200, 16), generator=g)
    b = torch.randint(-2**63, 2**63 - 1, (300, 16), generator=g)
    b[150:] = b[:150].clone()
    assert torch.equal(ops.hamming_distance(q, b), ref.hamming_distance(q, b))
    got, want = ops.hamming_topk(q, b, 20), ref.hamming_topk(q, b, 20)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
