"""Exact collision counting against np.unique(axis=0), forced fingerprint clashes, streaming."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import activation_hash.collisions as col
import activation_hash.grouping as grp
from activation_hash import reference as ref
from activation_hash.codes import CodeBook
from activation_hash.collisions import CollisionCounter, collisions, group_codes
from activation_hash.layout import Layout
from activation_hash.ops import fingerprint128, fingerprint_key
from helpers import ISAS, run_with_isa


def planted(n, bits, dup_fraction=0.3, seed=0, near=True):
    """Random codes [n, W] (padding 0) with exact duplicates and one-bit near duplicates."""
    g = torch.Generator().manual_seed(seed)
    b = torch.rand(n, bits, generator=g) < 0.5
    k = int(n * dup_fraction)
    if n > 1 and k:
        src = torch.randint(n, (k,), generator=g)
        dst = torch.randint(n, (k,), generator=g)
        b[dst] = b[src]
        if near and bits:  # rows one bit away from another row: must stay distinct
            m = max(1, k // 3)
            src2 = torch.randint(n, (m,), generator=g)
            dst2 = torch.randint(n, (m,), generator=g)
            b[dst2] = b[src2]
            flip = torch.randint(bits, (m,), generator=g)
            b[dst2, flip] = ~b[dst2, flip]
    return ref.pack_bits(b)


def oracle(codes):
    a = codes.cpu().numpy()
    if a.shape[0] == 0:
        return 0, {}, np.zeros(0, np.int64)
    u, inv, cnt = np.unique(a, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    occ = {}
    for c in cnt:
        occ[int(c)] = occ.get(int(c), 0) + 1
    # canonical partition label: smallest member index of the sample's group
    first = np.full(len(u), a.shape[0], np.int64)
    np.minimum.at(first, inv, np.arange(a.shape[0]))
    return len(u), occ, first[inv]


def partition_of(groups):
    gid = groups.group_ids().cpu().numpy()
    n = gid.shape[0]
    first = np.full(groups.n_groups, n, np.int64)
    np.minimum.at(first, gid, np.arange(n))
    return first[gid]


def check_against_oracle(codes, labels=None):
    U, occ, part = oracle(codes)
    rep = collisions(codes, labels)
    n = codes.shape[0]
    assert rep.n == n and rep.n_distinct == U
    assert rep.occupancy == occ
    assert rep.redundancy == ((n - U) / n if n else 0.0)
    assert rep.unique_fraction == (occ.get(1, 0) / n if n else 0.0)
    assert np.array_equal(partition_of(group_codes(codes)), part)
    return rep


@pytest.mark.parametrize("bits,n", [(1, 50), (63, 300), (64, 300), (65, 300), (256, 500),
                                    (1000, 200), (300000, 12)])
def test_matches_np_unique_widths(device, bits, n):
    codes = planted(n, bits, seed=bits).to(device)
    rep = check_against_oracle(codes)
    assert rep.n_distinct < n  # duplicates were planted


@given(n=st.integers(0, 60), bits=st.integers(0, 200), dup=st.floats(0, 1),
       seed=st.integers(0, 1000))
def test_matches_np_unique_random(n, bits, dup, seed):
    check_against_oracle(planted(n, bits, dup, seed))


def test_edges(device):
    empty = torch.zeros(0, 4, dtype=torch.int64, device=device)
    rep = check_against_oracle(empty)
    assert (rep.n, rep.n_distinct, rep.redundancy, rep.largest_groups) == (0, 0, 0.0, [])
    one = torch.tensor([[5, -1]], device=device)
    rep = check_against_oracle(one)
    assert (rep.n_distinct, rep.redundancy, rep.unique_fraction) == (1, 0.0, 1.0)
    same = torch.full((7, 3), -42, dtype=torch.int64, device=device)
    rep = check_against_oracle(same)
    assert rep.n_distinct == 1 and rep.occupancy == {7: 1}
    assert rep.redundancy == 6 / 7 and rep.unique_fraction == 0.0
    assert rep.largest_groups[0].tolist() == list(range(7))
    zero_width = torch.zeros(5, 0, dtype=torch.int64, device=device)
    assert check_against_oracle(zero_width).n_distinct == 1


@pytest.mark.parametrize("fake", ["constant", "mod3", "first_word_only"])
def test_forced_fingerprint_clash_never_merges(monkeypatch, fake):
    codes = planted(400, 130, seed=3)

    def clashing(c, ends=None):
        fp = fingerprint128(c, ends)
        if fake == "constant":
            return torch.zeros_like(fp)
        if fake == "mod3":
            return (c[:, :1] % 3).expand(-1, 2).clone() if ends is None else fp * 0 + 7
        return c[:, :1].expand(-1, 2).clone() if ends is None else fp * 0
    monkeypatch.setattr(col, "fingerprint128", clashing)
    monkeypatch.setattr(grp, "fingerprint128", clashing)

    def clashing_key(c, b):
        rows = torch.arange(c.shape[0], dtype=torch.int64)
        return (clashing(c)[:, 0] & -(1 << b)) | rows
    monkeypatch.setattr(grp, "fingerprint_key", clashing_key)
    check_against_oracle(codes)
    # per layer too: all prefixes clash
    layout = Layout(("a", "b", "c"), ((64,), (1,), (65,)))
    c4 = planted(400, 256, seed=4)
    c4[:, 1] &= 1  # layer b: 1 bit
    c4[:, 3] &= 1  # layer c: 65 bits
    cb = CodeBook(c4, layout)
    rep = collisions(cb, per_layer=True)
    for (name, r), e in zip(rep.per_layer, [1, 2, 4]):
        U = len(np.unique(cb.codes[:, :e].numpy(), axis=0))
        assert r == (400 - U) / 400, name


def test_largest_groups_and_mixed_regions():
    codes = torch.tensor([[1], [2], [1], [3], [2], [1], [4]])
    labels = torch.tensor([0, 1, 0, 5, 2, 1, 9])
    rep = collisions(codes, labels, top=5)
    assert [g.tolist() for g in rep.largest_groups] == [[0, 2, 5], [1, 4]]
    assert rep.n_shared_regions == 2
    assert rep.mixed_regions == 2 and rep.mixed_samples == 5
    rep = collisions(codes, torch.tensor([0, 1, 0, 5, 1, 0, 9]), top=1)
    assert rep.mixed_regions == 0 and rep.mixed_samples == 0
    assert [g.tolist() for g in rep.largest_groups] == [[0, 2, 5]]
    d = rep.to_dict()
    assert d["occupancy"] == {"1": 2, "2": 1, "3": 1} and d["largest_groups"] == [[0, 2, 5]]
    assert collisions(codes).mixed_regions is None


def test_per_layer_profile(device):
    layout = Layout(("l0", "l1", "l2"), ((3,), (70,), (200,)))
    g = torch.Generator().manual_seed(1)
    n = 300
    b0 = torch.rand(n, 3, generator=g) < 0.5             # 8 patterns: heavy collisions
    b1 = torch.rand(n, 70, generator=g) < 0.02           # sparse: some collisions left
    b2 = torch.rand(n, 200, generator=g) < 0.5           # unique
    codes = torch.cat([ref.pack_bits(b0), ref.pack_bits(b1), ref.pack_bits(b2)], 1)
    cb = CodeBook(codes.to(device), layout, labels=torch.randint(0, 3, (n,), generator=g))
    rep = collisions(cb, per_layer=True)
    want = []
    for e in [1, 3, 7]:
        U = len(np.unique(codes[:, :e].numpy(), axis=0))
        want.append((n - U) / n)
    assert [name for name, _ in rep.per_layer] == ["l0", "l1", "l2"]
    assert [r for _, r in rep.per_layer] == want
    assert want[0] > want[1] > want[2] == 0.0
    assert rep.redundancy == want[2] and rep.mixed_regions == 0


@pytest.mark.parametrize("shapes", [((0,), (5,), (0,), (130,), (64,)), ((1,),), ((0,), (0,))])
def test_per_layer_profile_refines_layer_by_layer(device, shapes):
    """Empty layers (no new words), one layer, no words at all; groups that split only in a
    late layer, and the full grouping taken from the last layer's refinement."""
    names = tuple(f"l{i}" for i in range(len(shapes)))
    layout = Layout(names, shapes)
    W = layout.total_words
    g = torch.Generator().manual_seed(5)
    n = 400
    bits = torch.rand(n, max(1, layout.total_bits), generator=g) < 0.5
    codes = torch.zeros(n, W, dtype=torch.int64)
    for o, w, u in zip(layout.word_offsets, layout.words_per_layer, layout.units):
        if w:
            codes[:, o:o + w] = ref.pack_bits(bits[:, :u])
            codes[:, o:o + w] &= torch.randint(0, 3, (n, 1), generator=g)  # few patterns
    codes[100:200] = codes[:100]  # duplicates of whole codes
    cb = CodeBook(codes.to(device), layout)
    rep = collisions(cb, per_layer=True)
    for (name, r), o, w in zip(rep.per_layer, layout.word_offsets, layout.words_per_layer):
        U = len(np.unique(codes[:, :o + w].numpy(), axis=0)) if o + w else 1
        assert r == (n - U) / n, name
    assert rep.n_distinct == collisions(codes.to(device)).n_distinct
    assert np.array_equal(partition_of(col.layer_profile(codes.to(device), layout)[1]),
                          oracle(codes)[2])


def test_per_layer_profile_empty():
    layout = Layout(("a", "b"), ((3,), (70,)))
    rep = collisions(CodeBook(torch.zeros(0, 3, dtype=torch.int64), layout), per_layer=True)
    assert rep.per_layer == [("a", 0.0), ("b", 0.0)] and rep.n == 0


def test_fingerprint_prefixes_are_one_pass_of_the_same_hash():
    codes = planted(40, 700, seed=2)
    ends = [0, 1, 1, 5, 11]
    fp = fingerprint128(codes, ends)
    assert fp.shape == (40, 5, 2)
    for p, e in enumerate(ends):
        assert torch.equal(fp[:, p], fingerprint128(codes[:, :e]))
        assert torch.equal(fp[:, p], ref.fingerprint128(codes[:, :e]))
    full = fingerprint128(codes)
    assert full.shape == (40, 2) and torch.equal(full, fp[:, -1])
    # distinct rows, distinct fingerprints; equal rows, equal ones
    u = np.unique(full.numpy(), axis=0)
    assert len(u) == len(np.unique(codes.numpy(), axis=0))
    # a one-bit change of any word changes both halves
    x = codes[:1].repeat(11, 1)
    for w in range(11):
        x[w + 0, w] ^= 1 << (w * 5 % 64)
    f = fingerprint128(x[:11])
    assert len(set(f[:, 0].tolist())) == 11 and len(set(f[:, 1].tolist())) == 11


def test_fingerprints_on_device_match_reference(device):
    """More prefix ends than one CUDA launch takes (64), rows and widths around the CUDA
    kernels' 256-row tiles and 16-word chunks."""
    g = torch.Generator().manual_seed(3)
    for N, W in [(1, 1), (300, 17), (257, 40), (5, 0)]:
        codes = torch.randint(-2**63, 2**63 - 1, (N, W), generator=g, dtype=torch.int64)
        ends = sorted(int(e) for e in torch.randint(0, W + 1, (150,), generator=g))
        fp = fingerprint128(codes.to(device), ends)
        assert torch.equal(fp.cpu(), ref.fingerprint128(codes, ends))
        assert torch.equal(fingerprint128(codes.to(device)).cpu(), ref.fingerprint128(codes))
        assert torch.equal(fingerprint_key(codes.to(device), 12).cpu(),
                           ref.fingerprint_key(codes, 12))


def test_streaming_counter_matches_exact():
    codes = planted(1000, 200, seed=5)
    labels = torch.randint(0, 4, (1000,))
    exact = collisions(codes, labels, top=3)
    c = CollisionCounter(top=3)
    for lo in range(0, 1000, 128):
        c.update(codes[lo:lo + 128], labels[lo:lo + 128])
    rep = c.compute()
    assert rep.exact is False and exact.exact is True
    for k in ("n", "n_distinct", "redundancy", "unique_fraction", "occupancy",
              "n_shared_regions", "mixed_regions", "mixed_samples"):
        assert getattr(rep, k) == getattr(exact, k), k
    assert [g.tolist() for g in rep.largest_groups] == [g.tolist() for g in exact.largest_groups]
    assert c.state_bytes == 1000 * (16 + 8)
    # merge of two halves == one counter; reset empties
    a, b = CollisionCounter(), CollisionCounter()
    a.update(codes[:400])
    b.update(codes[400:])
    m = a.merge(b).compute()
    assert m.n_distinct == exact.n_distinct and m.n == 1000
    assert a.state_bytes == 16 * 1000
    a.reset()
    assert a.compute().n == 0 and a.state_bytes == 0
    # a 64-bit first-half clash with different second halves is kept apart
    fp_state = CollisionCounter()
    fp_state._fps = [torch.tensor([[1, 2], [1, 3], [1, 2], [0, 2]])]
    fp_state.n = 4
    assert fp_state.compute().n_distinct == 3


def test_codebook_and_tuple_inputs():
    codes = planted(50, 100, seed=9)
    cb = CodeBook(codes, Layout(("x",), ((100,),)), labels=torch.arange(50) % 2)
    assert collisions(cb).mixed_regions == collisions((codes, cb.labels)).mixed_regions
    assert collisions(cb).n_distinct == collisions(codes).n_distinct


def test_errors():
    with pytest.raises(TypeError, match="int64"):
        collisions(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="2-D"):
        collisions(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="CodeBook"):
        collisions([[1, 2]])
    with pytest.raises(ValueError, match="layout"):
        collisions(torch.zeros(3, 2, dtype=torch.int64), per_layer=True)
    with pytest.raises(ValueError, match=r"labels must be 1-D .*shape \[3\]"):
        collisions(torch.zeros(3, 2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="top"):
        collisions(torch.zeros(3, 2, dtype=torch.int64), top=-1)
    with pytest.raises(ValueError, match="non-decreasing"):
        fingerprint128(torch.zeros(3, 2, dtype=torch.int64), [2, 1])
    with pytest.raises(ValueError, match="non-decreasing"):
        fingerprint128(torch.zeros(3, 2, dtype=torch.int64), [3])
    with pytest.raises(TypeError, match="int64"):
        fingerprint128(torch.zeros(3, 2, dtype=torch.int32))
    c = CollisionCounter()
    c.update(torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels with every update"):
        c.update(torch.zeros(2, 1, dtype=torch.int64))


# ---- the fingerprint128 op: kernels vs reference, opcheck ---------------------------------

@given(n=st.integers(0, 40), w=st.integers(0, 20), seed=st.integers(0, 2**16),
       data=st.data())
def test_fingerprint_kernel_matches_reference(n, w, seed, data):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-2**63, 2**63 - 1, (n, w), generator=g, dtype=torch.int64)
    assert torch.equal(fingerprint128(codes), ref.fingerprint128(codes))
    ends = sorted(data.draw(st.lists(st.integers(0, w), max_size=5)))
    assert torch.equal(fingerprint128(codes, ends), ref.fingerprint128(codes, ends))


@pytest.mark.parametrize("w", [1, 4, 63, 64, 65, 4688])
def test_fingerprint_widths_and_layouts(device, w):
    codes = planted(9, 64 * w - 5, seed=w).to(device)
    want = ref.fingerprint128(codes.cpu())
    assert torch.equal(fingerprint128(codes).cpu(), want)
    wide = torch.zeros(9, 2 * w, dtype=torch.int64, device=device)
    wide[:, ::2] = codes
    assert not wide[:, ::2].is_contiguous()
    assert torch.equal(fingerprint128(wide[:, ::2]).cpu(), want)  # non-contiguous input
    assert torch.equal(fingerprint128(codes.t().contiguous().t()).cpu(), want)


def test_fingerprint_known_values():
    # pins the hash: a change of the function changes every stored fingerprint
    fp = ref.fingerprint128(torch.tensor([[0], [1], [-1]], dtype=torch.int64))
    assert fp.shape == (3, 2) and len(set(fp.flatten().tolist())) == 6
    assert torch.equal(fingerprint128(torch.zeros(2, 0, dtype=torch.int64)),
                       ref.fingerprint128(torch.zeros(1, 0, dtype=torch.int64)).expand(2, 2))


@pytest.mark.skipif(not hasattr(torch.ops.activation_hash, "fingerprint128"),
                    reason="compiled extension not loaded")
def test_fingerprint_opcheck(device):
    codes = planted(20, 300, seed=1).to(device)
    torch.library.opcheck(torch.ops.activation_hash.fingerprint128, (codes,))
    torch.library.opcheck(torch.ops.activation_hash.fingerprint128, (codes, [0, 2, 5]))
    torch.library.opcheck(torch.ops.activation_hash.fingerprint128, (codes[:0], [1]))


def test_fingerprint_kernels_registered():
    import activation_hash.ops as ops
    if ops.backend() != "extension":
        pytest.skip("reference backend")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("activation_hash::fingerprint128",
                                                          "CPU")
    # a CUDA build registers the CUDA kernel of every op, this one included
    assert torch._C._dispatch_has_kernel_for_dispatch_key(
        "activation_hash::fingerprint128", "CUDA") == ops.cuda_built()


@given(n=st.integers(0, 40), w=st.integers(0, 12), extra=st.integers(0, 5),
       seed=st.integers(0, 2**16))
def test_fingerprint_key_matches_reference(n, w, extra, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-2**63, 2**63 - 1, (n, w), generator=g, dtype=torch.int64)
    b = max(0, (n - 1).bit_length()) + extra
    key = fingerprint_key(codes, b)
    assert torch.equal(key, ref.fingerprint_key(codes, b))
    low = (1 << b) - 1
    assert torch.equal(key & low, torch.arange(n) & low)
    assert torch.equal(key & ~low, fingerprint128(codes)[:, 0] & ~low)


def test_fingerprint_key_device_and_errors(device):
    codes = planted(100, 700, seed=3).to(device)
    assert torch.equal(fingerprint_key(codes, 7).cpu(), ref.fingerprint_key(codes.cpu(), 7))
    assert torch.equal(fingerprint_key(codes[:, ::2], 9).cpu(),
                       ref.fingerprint_key(codes[:, ::2].contiguous().cpu(), 9))
    with pytest.raises(ValueError, match="cannot number 100 rows"):
        fingerprint_key(codes, 6)
    with pytest.raises(ValueError, match="index_bits"):
        fingerprint_key(codes, 63)
    with pytest.raises(TypeError, match="int64"):
        fingerprint_key(codes.int(), 8)
    if hasattr(torch.ops.activation_hash, "fingerprint_key"):
        torch.library.opcheck(torch.ops.activation_hash.fingerprint_key, (codes, 7))
        torch.library.opcheck(torch.ops.activation_hash.fingerprint_key, (codes[:0], 0))


_ISA_FP = """
import torch, activation_hash as ah
from activation_hash import reference as ref
g = torch.Generator().manual_seed(0)
for n, w in [(0, 3), (7, 0), (8, 1), (13, 5), (29, 130), (64, 2)]:
    c = torch.randint(-2**63, 2**63 - 1, (n, w), generator=g)
    assert torch.equal(ah.ops.fingerprint128(c), ref.fingerprint128(c))
    ends = [0, w // 2, w // 2, w]
    assert torch.equal(ah.ops.fingerprint128(c, ends), ref.fingerprint128(c, ends))
    assert torch.equal(ah.ops.fingerprint_key(c, 8), ref.fingerprint_key(c, 8))
print("ok")
"""


@pytest.mark.parametrize("isa", ISAS)
def test_fingerprint_every_cpu_path(isa):
    run_with_isa(_ISA_FP, isa)


def _sync_worker(rank, world, port, codes, labels, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        c = CollisionCounter()
        shard = slice(rank * 250, (rank + 1) * 250 if rank < world - 1 else None)
        c.update(codes[shard], labels[shard])
        rep = c.sync().compute()
        again = c.sync().compute()  # a second sync must not gather the samples again
        assert (again.n, again.n_distinct) == (rep.n, rep.n_distinct), (again.n, rep.n)
        extra = CollisionCounter()  # update after a sync: the next sync gathers the new state
        extra.update(codes[:10])
        extra.sync()
        extra.update(codes[:1])
        assert extra.sync().n == world * (world * 10) + world, extra.n
        out.put((rank, rep.n, rep.n_distinct, rep.mixed_regions,
                 [g.tolist() for g in rep.largest_groups]))
    finally:
        dist.destroy_process_group()


def test_counter_sync_across_ranks():
    import socket

    import torch.multiprocessing as mp
    codes = planted(400, 100, seed=11)
    labels = torch.randint(0, 3, (400,))
    exact = collisions(codes, labels)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_sync_worker, args=(r, 2, port, codes, labels, out))
             for r in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for _, n, U, mixed, largest in got:
        assert (n, U, mixed) == (400, exact.n_distinct, exact.mixed_regions)
        assert largest == [g.tolist() for g in exact.largest_groups]
    assert CollisionCounter().sync().n == 0  # no process group: no-op


def test_torch_sort_clash_path_matches_np_unique(monkeypatch):
    """The path of huge N (and of exact keys): torch.sort of the fingerprint instead of the
    packed value sort, with forced clashes so that the exact split runs too."""
    monkeypatch.setattr(grp, "index_bits", lambda n: None)
    for mod in (col, grp):
        monkeypatch.setattr(mod, "fingerprint128",
                            lambda c, ends=None: (c[:, :1] % 5).expand(-1, 2).clone())

    def no_key(*a):
        raise AssertionError("the packed-key path must not run")
    monkeypatch.setattr(grp, "fingerprint_key", no_key)
    for seed, (n, bits) in enumerate([(300, 130), (257, 64), (40, 1)]):
        codes = planted(n, bits, seed=seed)
        rep = check_against_oracle(codes)
        assert rep.n_distinct < n


def test_largest_groups_ties_are_deterministic():
    # 6 regions of 2 samples each (tied), smallest members 0..5 in a scrambled order
    rows = torch.tensor([[9], [3], [7], [1], [5], [2]], dtype=torch.int64)
    order = torch.tensor([4, 0, 3, 5, 1, 2, 0, 1, 2, 3, 4, 5, 0, 0, 1])
    codes = rows[order]  # codes 5 9 1 2 3 7 9 3 7 1 5 2 9 9 3
    rep = collisions(codes, top=4)
    got = [g.tolist() for g in rep.largest_groups]
    # sizes 4, 3, then four regions of 2 tied: the two of smallest sample index (0, then 2)
    assert got == [[1, 6, 12, 13], [4, 7, 14], [0, 10], [2, 9]]
    assert [g.tolist() for g in collisions(codes, top=10).largest_groups][2:] == \
        [[0, 10], [2, 9], [3, 11], [5, 8]]
    c = CollisionCounter(top=4)
    c.update(codes)
    assert [g.tolist() for g in c.compute().largest_groups] == got


def test_label_and_width_checks():
    codes = planted(20, 130, seed=1)
    with pytest.raises(TypeError, match="float"):
        collisions(codes, labels=torch.rand(20))
    with pytest.raises(TypeError, match="bool"):
        collisions(codes, labels=torch.ones(20, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \[20\]"):
        collisions(codes, labels=torch.zeros(20, 2, dtype=torch.int64))
    c = CollisionCounter()
    with pytest.raises(TypeError, match="float"):
        c.update(codes, torch.rand(20))
    c = CollisionCounter()
    c.update(codes)
    with pytest.raises(ValueError, match="2 words per row, earlier ones had 3"):
        c.update(codes[:, :2])
    other = CollisionCounter()
    other.update(codes[:, :1])
    with pytest.raises(ValueError, match="3 and of 1 words"):
        c.merge(other)
    assert c.n == 20
    with pytest.raises(TypeError, match="float"):  # nothing added by a refused update
        c.update(codes, torch.rand(20))
    assert c.n == 20 and c.compute().n == 20
