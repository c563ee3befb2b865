"""The split_pieces op (csrc/cpu/regions.cpp) against its reference, bit for bit, and the MLP
path of segment_regions that drives it against the general chain path."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import activation_hash as ah
import activation_hash.regions_layers as RL
from activation_hash import ops
from activation_hash import reference as ref
from activation_hash.nn import ReLU
from activation_hash.regions import segment_regions
from activation_hash.switches import walk_copy
from helpers import ISAS, assert_same_values, run_with_isa

needs_op = pytest.mark.skipif(not ops.HAS_SPLIT, reason="no compiled split_pieces")


def mlp(widths, slope=0.0, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.LeakyReLU(slope) if slope else nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], 3)).eval()


def captured_calls(model, S, seed=1):
    """The arguments of every split_pieces call of segment_regions(model) on S random
    segments (each call's inputs are the previous call's outputs after the next Linear)."""
    torch.manual_seed(seed)
    n_in = model[0].in_features
    x0, x1 = torch.randn(S, n_in), torch.randn(S, n_in)
    calls, orig = [], RL.split_pieces

    def spy(*args, **kwargs):  # copies: the driver reuses its buffers for the next layers
        calls.append((tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args),
                      dict(kwargs, first_out=kwargs["first_out"].clone())))
        return orig(*args, **kwargs)
    RL.split_pieces = spy
    try:
        segment_regions(model, x0, x1)
    finally:
        RL.split_pieces = orig
    return calls


def compare(args, kwargs):
    """The op and the reference on one call: equal bits everywhere."""
    last = kwargs["last"]
    rows = 0 if last else args[7].shape[0]
    got = ops.split_pieces(*args, last=last, first_out=torch.full((rows, args[0].shape[1]), 7.0,
                                                                  dtype=torch.float64))
    want_first = torch.full_like(got[0], -7.0)
    want = ref.split_pieces(*args, last, want_first)
    assert len(got) == len(want) + 1 == 9
    assert_same_values(got[0], want_first)
    for g, w in zip(got[1:], want):
        if g.dtype.is_floating_point:
            assert_same_values(g, w)
        else:
            assert torch.equal(g, w)
    return got


@needs_op
@settings(max_examples=15, deadline=None)
@given(widths=st.sampled_from([(5, 7), (4, 63, 9), (6, 64, 65), (3, 17, 17, 17), (8, 130)]),
       slope=st.sampled_from([0.0, 0.01, 0.3]), S=st.integers(1, 5), seed=st.integers(0, 99))
def test_split_pieces_matches_the_reference_along_mlp_walks(widths, slope, S, seed):
    calls = captured_calls(mlp(widths, slope, seed), S, seed)
    n_layers, chunks = len(widths) - 1, -(-S // (2 * torch.get_num_threads()))
    assert len(calls) == n_layers * chunks
    for args, kwargs in calls:
        compare(args, kwargs)
    assert any(c[0][2][-1] > 0 for c in calls) or n_layers == 1  # flips were exercised


def _hand_case(n, S, pieces_per_seg, seed=0, special=False, empty_segment=False):
    g = torch.Generator().manual_seed(seed)
    counts = [pieces_per_seg] * S
    if empty_segment and S:
        counts[S // 2] = 0
    P = sum(counts)
    seg_ptr = torch.tensor([0] + counts).cumsum(0)
    group_ptr = seg_ptr.unique()  # one group per segment (empty segments share a boundary)
    G = group_ptr.shape[0] - 1
    cuts = [torch.sort(torch.rand(c - 1, generator=g, dtype=torch.float64)).values
            for c in counts if c]
    lo = torch.cat([torch.cat([torch.zeros(1, dtype=torch.float64), c]) for c in cuts]) if P \
        else torch.zeros(0, dtype=torch.float64)
    hi = torch.cat([torch.cat([c, torch.ones(1, dtype=torch.float64)]) for c in cuts]) if P \
        else torch.zeros(0, dtype=torch.float64)
    n_in = 5
    flip_count = torch.randint(0, 3, (P,), generator=g)
    flip_count[group_ptr[:-1]] = 0
    flip_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), flip_count.cumsum(0)])
    F = int(flip_ptr[-1])
    first_dir = torch.randn(G, n, generator=g, dtype=torch.float64)
    start = torch.randn(S, n, generator=g, dtype=torch.float64)
    if special and n >= 4:
        first_dir[:, 0] = 0.0                        # zb = 0: crossing at +-inf or nan
        start[:, 1] = -0.0
        first_dir[:, 2] = float("inf")
        start[:, 3] = float("nan")
    return (first_dir, group_ptr, flip_ptr, torch.randint(0, n_in, (F,), generator=g),
            torch.randn(F, generator=g, dtype=torch.float64),
            torch.randn(n_in, n, generator=g, dtype=torch.float64), start, lo, hi, seg_ptr)


@needs_op
@pytest.mark.parametrize("n", [0, 1, 4, 63, 64, 65, 200])
@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("last", [False, True])
def test_split_pieces_edges(n, special, last):
    for S, per, empty in ((0, 1, False), (1, 1, False), (3, 4, True), (4, 6, False)):
        args = _hand_case(n, S, per, seed=n + S, special=special, empty_segment=empty)
        for slope, tol in ((0.0, 1e-12), (0.2, 0.0), (0.0, 0.05)):
            compare(args + (slope, tol, 10_000), {"last": last})


@needs_op
def test_split_pieces_non_contiguous_inputs():
    args = list(_hand_case(70, 3, 5, seed=3))
    base = compare(tuple(args) + (0.0, 1e-12, 10_000), {"last": False})
    args[0] = torch.stack([args[0], -args[0]], 2)[..., 0]   # element stride 2
    assert not args[0].is_contiguous()
    args[5] = args[5].t().contiguous().t()                   # column-major weight_t
    got = compare(tuple(args) + (0.0, 1e-12, 10_000), {"last": False})
    for g, b in zip(got, base):
        assert torch.equal(g, b)


def _errors():
    good = _hand_case(8, 2, 3, seed=1)

    def with_(i, v, *rest):
        a = list(good) + [0.0, 1e-12, 100, False]
        a[i] = v
        for j, w in zip(rest[::2], rest[1::2]):
            a[j] = w
        return a
    P = good[7].shape[0]
    return [
        (with_(0, good[0].float()), TypeError),                      # first_dir not float64
        (with_(1, good[1].int()), TypeError),                        # group_ptr not int64
        (with_(0, good[0][:, :3]), ValueError),                      # weight_t width
        (with_(8, good[8][:-1]), ValueError),                        # lo and hi lengths
        (with_(2, good[2][:-1]), ValueError),                        # flip_ptr length
        (with_(9, good[9].flip(0)), ValueError),                     # seg_ptr decreasing
        (with_(1, torch.tensor([0, P])), ValueError),                # groups != first_dir rows
        (with_(1, torch.tensor([0, 1, P]), 0, good[0][:2]), ValueError),  # segment starts at 3
        (with_(3, torch.full_like(good[3], 99)), ValueError),        # flip_unit out of range
        (with_(11, -1.0), ValueError),                               # tol
        (with_(12, 0), ValueError),                                  # max_pieces
    ]


@needs_op
@pytest.mark.parametrize("case", range(11))
def test_split_pieces_errors_match_the_reference(case):
    args, err = _errors()[case]
    rows = 0 if args[13] else args[7].shape[0]
    with pytest.raises(err):
        ops.split_pieces(*args[:13], last=args[13])
    with pytest.raises(err):
        ref.split_pieces(*args, torch.empty(rows, args[0].shape[1], dtype=torch.float64))


@needs_op
def test_split_pieces_max_pieces_and_first_out_checks():
    args = _hand_case(40, 2, 5, seed=4)
    P = args[7].shape[0]
    n_children = int(ops.split_pieces(*args, 0.0, 1e-12, 10_000)[1].diff().max())
    with pytest.raises(ValueError, match="more than max_pieces=3 pieces"):
        ops.split_pieces(*args, 0.0, 1e-12, 3)
    with pytest.raises(ValueError, match="more than max_pieces=3 pieces"):
        ref.split_pieces(*args, 0.0, 1e-12, 3, False, torch.empty(P, 40, dtype=torch.float64))
    assert n_children >= 1
    for bad, err in ((torch.empty(P + 1, 40, dtype=torch.float64), ValueError),
                     (torch.empty(P, 40), TypeError),
                     (torch.empty(40, P, dtype=torch.float64).t(), ValueError)):
        with pytest.raises(err, match="first_out"):
            ops.split_pieces(*args, 0.0, 1e-12, 100, first_out=bad)
        with pytest.raises(err, match="first_out"):
            ref.split_pieces(*args, 0.0, 1e-12, 100, False, bad)


@needs_op
def test_opcheck_split_pieces():
    args, kwargs = captured_calls(mlp((6, 20, 20), 0.1, 3), 3)[1]
    first_out = torch.empty(args[7].shape[0], args[0].shape[1], dtype=torch.float64)
    torch.library.opcheck(torch.ops.activation_hash.split_pieces,
                          tuple(args) + (False, first_out))


_ISA_SCRIPT = """
import torch, activation_hash.regions_layers as RL
from torch import nn
from activation_hash import ops, reference as ref
from activation_hash.regions import segment_regions
torch.manual_seed(5)
m = nn.Sequential(nn.Linear(7, 67), nn.LeakyReLU(0.1), nn.Linear(67, 130), nn.ReLU(),
                  nn.Linear(130, 2)).eval()
calls, orig = [], RL.split_pieces
def spy(*a, **k):
    a = tuple(v.clone() if isinstance(v, torch.Tensor) else v for v in a)
    out = orig(*a, **k)
    calls.append((a, k, tuple(o.clone() for o in out)))
    return out
RL.split_pieces = spy
segment_regions(m, torch.randn(3, 7), torch.randn(3, 7))
for a, k, out in calls:
    want_first = torch.empty_like(k["first_out"])
    want = ref.split_pieces(*a, k["last"], want_first)
    assert torch.equal(out[0].view(torch.int64), want_first.view(torch.int64))
    for g, w in zip(out[1:], want):
        assert torch.equal(g.view(torch.int64) if g.is_floating_point() else g,
                           w.view(torch.int64) if w.is_floating_point() else w)
assert ops.cpu_kernels()["regions"] == ops.cpu_isa()
print("ok")
"""


@needs_op
@pytest.mark.parametrize("isa", ISAS)
def test_split_pieces_every_cpu_kernel(isa):
    run_with_isa(_ISA_SCRIPT, isa)


# ---- the MLP path of segment_regions ----------------------------------------------------

MLPS = [
    lambda: mlp((10, 40, 40, 40), 0.0, 1),
    lambda: mlp((10, 33, 65), 0.05, 2),
    lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 30), ReLU(), nn.Dropout(0.3),
                          nn.Linear(30, 30), nn.LeakyReLU(0.2), nn.Linear(30, 4), nn.Linear(4, 2)),
    lambda: nn.Sequential(nn.Linear(10, 24, bias=False), nn.ReLU(), nn.Identity(),
                          nn.Linear(24, 24), nn.ReLU()),
]


@needs_op
@pytest.mark.parametrize("make", range(len(MLPS)))
def test_mlp_path_equals_the_chain_path(make):
    torch.manual_seed(make)
    model = MLPS[make]().eval()
    shape = (3, 4) if isinstance(model[0], nn.Flatten) else (10,)
    x0, x1 = torch.randn(7, *shape), torch.randn(7, *shape)
    chain = RL.plain_chain(walk_copy(model))
    assert RL.mlp_stages(chain, x0) is not None
    got = segment_regions(model, x0, x1)
    seg, starts, codes, split = RL.chain_layers(chain, x0.double(), x1.double(), 10**6)
    assert torch.equal(got.codes.ids, seg)
    assert torch.equal(got.codes.codes, codes) and torch.equal(got.switch, split)
    torch.testing.assert_close(got.starts, starts, rtol=0, atol=1e-12)
    assert got.counts.sum() > 7 * 3  # the segments were really cut


def test_mlp_stages_only_for_linear_relu_chains():
    torch.manual_seed(0)
    x = torch.randn(2, 8)
    conv = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    two_linears = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.ReLU())
    two_relus = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.ReLU())
    wrong_width = nn.Sequential(nn.Linear(9, 8), nn.ReLU())
    assert RL.mlp_stages(RL.plain_chain(conv), torch.randn(2, 1, 8)) is None
    for m in (two_linears, two_relus, wrong_width):
        assert RL.mlp_stages(RL.plain_chain(m), x) is None
    ok = RL.mlp_stages(RL.plain_chain(mlp((8, 5), 0.25)), x)
    assert (ok is None) == (not ops.HAS_SPLIT)
    if ok is not None:
        assert [s for _, s in ok] == [0.25]


@needs_op
def test_mlp_path_max_pieces():
    model = mlp((10, 64, 64), 0.0, 4)
    x0, x1 = torch.randn(2, 10), torch.randn(2, 10)
    with pytest.raises(ValueError, match="max_pieces=2"):
        segment_regions(model, x0, x1, max_pieces=2)
    assert ah.backend() == "extension"
