"""Exact linear regions along segments, against oracles: hyperplane arrangements, sawtooth
networks, dense sampling, affinity checks on each piece, and regioncam."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from activation_hash.nn import convert
from activation_hash.record import record
from activation_hash.regions import (NotPiecewiseLinearError, regions_in_interval,
                                     sampled_segment_regions, segment_regions)
from helpers import ResidualBlock


def one_hidden(d=10, n=40, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, n), nn.ReLU(), nn.Linear(n, 3)).eval()


def sawtooth(L):
    """L tent maps t -> 2 min(t, 1 - t) = 2 relu(t) - 4 relu(t - 1/2) on [0, 1], composed."""
    layers = []
    first = nn.Linear(1, 2)
    first.weight.data = torch.tensor([[1.0], [1.0]])
    first.bias.data = torch.tensor([0.0, -0.5])
    layers += [first, nn.ReLU()]
    for _ in range(L - 1):
        lin = nn.Linear(2, 2)
        lin.weight.data = torch.tensor([[2.0, -4.0], [2.0, -4.0]])
        lin.bias.data = torch.tensor([0.0, -0.5])
        layers += [lin, nn.ReLU()]
    out = nn.Linear(2, 1)
    out.weight.data = torch.tensor([[2.0, -4.0]])
    out.bias.data = torch.zeros(1)
    return nn.Sequential(*layers, out).eval().double()


@pytest.mark.parametrize("method", ["walk", "layers"])
def test_one_hidden_layer_counts_the_hyperplanes_crossed(method):
    model = one_hidden()
    torch.manual_seed(1)
    x0, x1 = torch.randn(6, 10, dtype=torch.float64), torch.randn(6, 10, dtype=torch.float64)
    r = segment_regions(model, x0, x1, method=method)
    W, b = model[0].weight.double(), model[0].bias.double()
    for i in range(6):
        z0, z1 = W @ x0[i] + b, W @ x1[i] + b
        crossing = (z0 > 0) != (z1 > 0)
        t = torch.sort(-z0[crossing] / (z1 - z0)[crossing]).values
        assert int(r.counts[i]) == int(crossing.sum()) + 1
        torch.testing.assert_close(r.breakpoints(i), torch.cat([torch.zeros(1, dtype=torch.float64),
                                                                t, torch.ones(1, dtype=torch.float64)]),
                                   rtol=0, atol=1e-12)
        assert int(r.n_distinct[i]) == int(r.counts[i])  # a pattern appears once on a line
    assert r.method == method


@pytest.mark.parametrize("L", [1, 3, 6])
@pytest.mark.parametrize("method", ["walk", "layers"])
def test_sawtooth_has_2_to_the_L_pieces_at_k_over_2_to_the_L(L, method):
    model = sawtooth(L)
    r = regions_in_interval(model, 0.0, 1.0, method=method)
    assert int(r.counts[0]) == 2 ** L
    want = torch.arange(2 ** L + 1, dtype=torch.float64) / 2 ** L
    torch.testing.assert_close(r.breakpoints(0), want, rtol=0, atol=1e-12)
    # each piece's code is the pattern in its interior, read by the recorder
    mids = (want[:-1] + want[1:]) / 2
    with record(model) as rec, torch.no_grad():
        model(mids[:, None])
    assert torch.equal(r.codes.codes, rec.codes)


def test_regions_in_interval_adds_up_over_subintervals():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(1, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(),
                          nn.Linear(30, 1)).eval()
    whole = regions_in_interval(model, -3.0, 2.0)
    left, right = regions_in_interval(model, -3.0, 0.123), regions_in_interval(model, 0.123, 2.0)
    inner = whole.breakpoints(0)[1:-1] * 5 - 3
    at_cut = bool(((inner - 0.123).abs() < 1e-9).any())
    assert int(whole.counts[0]) == int(left.counts[0]) + int(right.counts[0]) - (0 if at_cut else 1)


def cnn_maxpool():
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 1),
                         nn.Flatten(), nn.Linear(6, 3)).eval()


def resnet():
    torch.manual_seed(5)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), ResidualBlock(4), ResidualBlock(4),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    for mod in m.modules():  # non-trivial running statistics
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def mlp():
    torch.manual_seed(6)
    return convert(nn.Sequential(nn.Flatten(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 24),
                                 nn.LeakyReLU(0.2), nn.Linear(24, 3))).eval()


@pytest.mark.parametrize("make", [mlp, cnn_maxpool, resnet], ids=["mlp", "cnn_maxpool", "resnet"])
def test_dense_sampling_agrees_with_every_piece(make):
    model = make()
    torch.manual_seed(7)
    x0, x1 = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    r = segment_regions(model, x0, x1, method="walk")
    wm = model.double()
    for i in range(2):
        bp = r.breakpoints(i)
        ts = torch.linspace(0, 1, 20001, dtype=torch.float64)
        keep = torch.ones_like(ts, dtype=torch.bool)
        for b in bp:  # samples on a breakpoint belong to either side
            keep &= (ts - b).abs() > 1e-9
        ts = ts[keep]
        pts = x0[i:i + 1].double() + ts.view(-1, 1, 1, 1) * (x1[i:i + 1] - x0[i:i + 1]).double()
        with record(wm) as rec, torch.no_grad():
            wm(pts)
        piece = torch.searchsorted(bp, ts, right=True) - 1
        assert torch.equal(rec.codes, r.segment(i).codes[piece])  # no pattern the walk missed
        # the output is affine on each piece (no missed switch: max-pool included) ...
        lo, hi = bp[:-1], bp[1:]
        for part in (torch.stack([lo + (hi - lo) * f for f in (0.1, 0.5, 0.9)]),):
            p3 = x0[i:i + 1].double() + part.reshape(-1, 1, 1, 1) * (x1[i:i + 1] - x0[i:i + 1]).double()
            with torch.no_grad():
                o = wm(p3).view(3, -1, 3)
            second = o[0] - 2 * o[1] + o[2]  # points at 0.1, 0.5, 0.9 of each piece
            torch.testing.assert_close(second, torch.zeros_like(second), rtol=0, atol=1e-8)
        # ... and sampling converges to the walk's count from below
        n_few = sampled_segment_regions(model, x0[i:i + 1], x1[i:i + 1], n=50)
        n_many = sampled_segment_regions(model, x0[i:i + 1], x1[i:i + 1], n=5000)
        assert int(n_few) <= int(n_many) <= int(r.n_distinct[i])
        assert int(n_many) >= 0.9 * int(r.n_distinct[i])


def test_max_pool_switches_count_as_pieces():
    model = cnn_maxpool()
    torch.manual_seed(8)
    x0, x1 = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    r = segment_regions(model, x0, x1)
    ops = {s.op for s in r.switches}
    assert {"relu", "max_pool2d"} <= ops
    pooled = sum(r.switches[int(k)].op == "max_pool2d" for k in r.switch if k >= 0)
    assert pooled > 0
    assert (r.counts >= r.n_distinct).all() and (r.counts > r.n_distinct).any()
    assert r.method == "walk"


def test_walk_and_layers_agree_on_chains():
    torch.manual_seed(9)
    chain = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.LeakyReLU(0.1),
                          nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 16), nn.ReLU(),
                          nn.Dropout(0.5), nn.Linear(16, 2)).eval()
    chain[1].running_mean.uniform_(-1, 1)
    x0, x1 = torch.randn(4, 2, 4, 4), torch.randn(4, 2, 4, 4)
    a = segment_regions(chain, x0, x1, method="walk")
    b = segment_regions(chain, x0, x1, method="layers")
    assert torch.equal(a.counts, b.counts) and torch.equal(a.codes.codes, b.codes.codes)
    torch.testing.assert_close(a.starts, b.starts, rtol=0, atol=1e-12)
    assert [a.switches[int(k)].name for k in a.switch] == \
        [b.switches[int(k)].name if k >= 0 else a.switches[int(k)].name for k in b.switch]
    assert segment_regions(chain, x0, x1).method == "layers"


def test_other_piecewise_linear_ops():
    class Ops(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(torch.abs(h) + F.hardtanh(h) + F.relu6(h) + torch.clamp(h, min=-0.3)
                          + F.relu(h))

    torch.manual_seed(10)
    model = Ops().eval().double()
    x0, x1 = 3 * torch.randn(2, 3, dtype=torch.float64), 3 * torch.randn(2, 3, dtype=torch.float64)
    r = segment_regions(model, x0, x1)
    h0, h1 = model.a(x0).detach(), model.a(x1).detach()
    for i in range(2):  # every kink of every op is a hyperplane of the first layer: count them
        ts = []
        for c in (0.0, -1.0, 1.0, 6.0, -0.3):
            z0, z1 = h0[i] - c, h1[i] - c
            cross = (z0 > 0) != (z1 > 0)
            ts += (-z0[cross] / (z1 - z0)[cross]).tolist()
        assert int(r.counts[i]) == len(set(np.round(ts, 12))) + 1
    assert {s.op for s in r.switches} >= {"abs", "hardtanh_min", "relu6_max", "clamp_min", "relu"}
    assert r.codes.layout.names == ("relu",)


def test_errors():
    gelu = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2)).eval()
    x = torch.randn(2, 3)
    with pytest.raises(NotPiecewiseLinearError, match="gelu.*sampled_segment_regions"):
        segment_regions(gelu, x, x + 1)
    with pytest.raises(NotPiecewiseLinearError, match="train mode"):
        segment_regions(one_hidden(3).train(), x, x + 1)
    with pytest.raises(ValueError, match="method='layers' needs"):
        segment_regions(resnet(), torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4),
                        method="layers")
    with pytest.raises(ValueError, match="one shape"):
        segment_regions(one_hidden(3), x, torch.randn(3, 3))
    with pytest.raises(ValueError, match="finite"):
        segment_regions(one_hidden(3), x, torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="method must be one of"):
        segment_regions(one_hidden(3), x, x + 1, method="sample")


def test_codes_use_the_recorder_layout_and_labels_segments():
    model = resnet()
    x0, x1 = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    r = segment_regions(model, x0, x1)
    with record(model) as rec, torch.no_grad():
        model(x0)
    assert r.codes.layout == rec.layout
    assert torch.equal(r.codes.codes[r.offsets[:-1]], rec.codes)  # first piece = code at x0
    assert torch.equal(r.codes.ids, torch.repeat_interleave(torch.arange(2), r.counts))
    assert r.starts[r.offsets[:-1]].eq(0).all()


def test_counts_equal_regioncam_on_mlps():
    import regioncam as rc  # a test extra (pyproject.toml)
    torch.manual_seed(11)
    nets = [nn.Sequential(nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(),
                          nn.Linear(48, 4)).eval(),
            nn.Sequential(nn.Linear(16, 48), nn.LeakyReLU(0.05), nn.Linear(48, 32),
                          nn.LeakyReLU(0.05), nn.Linear(32, 4)).eval()]
    x0, x1 = torch.randn(4, 16), torch.randn(4, 16)
    for net in nets:
        r = segment_regions(net, x0, x1)
        for i in range(4):
            cam = rc.Regioncam1D.through_points(np.stack([x0[i].numpy(), x1[i].numpy()]), size=2.0)
            cam.add(rc.nn.convert(net))
            assert cam.num_edges == int(r.counts[i])


def test_counts_equal_regioncam_on_a_residual_mlp():
    import regioncam as rc

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.l1, self.l2, self.out = (nn.Linear(8, 32), nn.Linear(32, 32),
                                                    nn.Linear(32, 32), nn.Linear(32, 3))

        def forward(self, x):
            h = F.relu(self.inp(x))
            h = h + F.relu(self.l1(h))
            h = h + F.relu(self.l2(h))
            return self.out(h)

    torch.manual_seed(12)
    net = Res().eval()

    def lin(m):
        return rc.nn.Linear(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
    cam_net = rc.nn.Sequential(lin(net.inp), rc.nn.ReLU(),
                               rc.nn.Residual(rc.nn.Sequential(lin(net.l1), rc.nn.ReLU())),
                               rc.nn.Residual(rc.nn.Sequential(lin(net.l2), rc.nn.ReLU())),
                               lin(net.out))
    x0, x1 = torch.randn(3, 8), torch.randn(3, 8)
    r = segment_regions(net, x0, x1)
    for i in range(3):
        cam = rc.Regioncam1D.through_points(np.stack([x0[i].numpy(), x1[i].numpy()]), size=2.0)
        cam.add(cam_net)
        assert cam.num_edges == int(r.counts[i])
