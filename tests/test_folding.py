"""Space folding: hand-computed walks, the one-layer theorem, r2 = P - 1, sampled and adaptive
variants, pair statistics."""
import pytest
import torch
from torch import nn

from activation_hash.folding import chi_of_walks, folding, folding_pairs
from activation_hash.regions import segment_regions
from test_regions import one_hidden, sawtooth


def test_sawtooth_two_layers_by_hand():
    # pieces [0,.25) [.25,.5) [.5,.75) [.75,1) have codes 1010, 1011, 1111, 1110: distances from
    # the first 0, 1, 2, 1 (r1 = 2), steps 1, 1, 1 (r2 = 3): chi = 1/3; layer 1 alone:
    # 10, 10, 11, 11: r1 = r2 = 1, chi = 0.
    f = folding(sawtooth(2), torch.zeros(1, 1), torch.ones(1, 1))
    assert f.r1.tolist() == [2] and f.r2.tolist() == [3] and f.n_patterns.tolist() == [4]
    assert f.chi.tolist() == pytest.approx([1 / 3])
    assert f.per_layer[0].tolist() == pytest.approx([0.0, 1 / 3])
    assert not f.sampled and f.method == "exact"


def test_one_hidden_layer_never_folds():
    model = one_hidden(d=6, n=50)
    x, y = torch.randn(20, 6), torch.randn(20, 6)
    f = folding(model, x, y)
    assert (f.chi == 0).all() and (f.r2 > 0).all()


def test_r2_is_pieces_minus_one_when_each_breakpoint_flips_one_unit():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2)).eval()
    x, y = torch.randn(10, 8), torch.randn(10, 8)
    f = folding(model, x, y)
    r = segment_regions(model, x, y)
    assert torch.equal(f.r2, r.counts - 1)
    assert (f.chi > 0).any()  # three layers do fold
    assert f.per_layer.shape == (10, 3) and (f.per_layer[:, 0] == 0).all()
    assert torch.allclose(f.per_layer[:, -1], f.chi)


def test_chi_of_walks_matches_a_direct_computation():
    torch.manual_seed(3)
    codes = torch.randint(-2**62, 2**62, (30, 2))
    seg = torch.tensor([0] * 7 + [1] * 1 + [2] * 22)
    chi, r1, r2 = chi_of_walks(codes, seg, 4)
    for s in range(4):
        c = codes[seg == s]
        pop = lambda a, b: sum(bin(int(v) & (2**64 - 1)).count("1") for v in (a ^ b))
        want_r1 = max([pop(c[0], c[i]) for i in range(len(c))], default=0)
        want_r2 = sum(pop(c[i], c[i + 1]) for i in range(len(c) - 1))
        assert (int(r1[s]), int(r2[s])) == (want_r1, want_r2)
        assert float(chi[s]) == pytest.approx(1 - want_r1 / want_r2 if want_r2 else 0.0)


def test_sampled_and_adaptive_against_exact():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 2)).eval()
    x, y = torch.randn(6, 4), torch.randn(6, 4)
    exact = folding(model, x, y)
    adaptive = folding(model, x, y, method="adaptive", tol=1e-10)
    assert adaptive.sampled and adaptive.tol == 1e-10
    torch.testing.assert_close(adaptive.chi, exact.chi)  # no region missed at this tolerance
    sampled = folding(model, x, y, method="sampled", steps=11)
    assert sampled.steps == 11 and sampled.n_patterns.tolist() == [11] * 6
    assert (sampled.r2 <= exact.r2).all()  # coarse steps under-count transitions


def test_adaptive_works_for_gelu():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 12), nn.GELU(), nn.Linear(12, 12), nn.Tanh(),
                          nn.Linear(12, 2)).eval()
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="not piecewise linear"):
        folding(model, x, y)
    f = folding(model, x, y, method="adaptive", tol=1e-8)
    assert f.layers == ("act0", "act1") and f.sampled
    assert ((f.chi >= 0) & (f.chi < 1)).all() and (f.r2 > 0).all()


def test_folding_pairs_statistics():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3)).eval()
    X, y = torch.randn(40, 5), torch.arange(40) % 3
    intra = folding_pairs(model, X, y, mode="intra", n_pairs=30, seed=1)
    assert (intra.classes[:, 0] == intra.classes[:, 1]).all()
    inter = folding_pairs(model, X, y, mode="inter", n_pairs=30, seed=1)
    assert (inter.classes[:, 0] != inter.classes[:, 1]).all()
    chi = inter.folding.chi
    assert inter.mean == pytest.approx(float(chi.mean()))
    assert inter.frac_nonzero == pytest.approx(float((chi > 0).double().mean()))
    best = {}
    for (a, b), c in zip(inter.classes.tolist(), chi.tolist()):
        best[(a, b)] = max(best.get((a, b), 0.0), c if c > 0 else 0.0)
    assert inter.tmlr_aggregate == pytest.approx(float(torch.tensor(list(best.values())).median()))
    again = folding_pairs(model, X, y, mode="inter", n_pairs=30, seed=1)
    assert torch.equal(again.pairs, inter.pairs)  # seeded
    assert set(inter.to_dict()) >= {"mean", "median", "tmlr_aggregate", "per_class_pair"}
    with pytest.raises(ValueError, match="mode must be one of"):
        folding_pairs(model, X, y, mode="cross")
