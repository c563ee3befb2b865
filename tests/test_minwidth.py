"""The 1-D minimum-width experiment: the bound on a constructed network, the exact minimum,
and a tiny trained run."""
import json

import numpy as np
import pytest
import torch

from activation_hash.experiments import minwidth as mw
from activation_hash.regions import regions_in_interval


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _hand_net(kinks, coefs, left: int, bias: float):
    """n units, kink c_i inside (0, 1); unit ``left`` faces left (relu(c - x)), the others right."""
    n = len(kinks)
    net = mw.shallow_net(n)
    with torch.no_grad():
        sign = torch.ones(n, dtype=torch.float64)
        sign[left] = -1
        net[0].weight[:, 0] = sign
        net[0].bias[:] = -sign * torch.tensor(kinks, dtype=torch.float64)
        net[2].weight[0] = torch.tensor(coefs, dtype=torch.float64)
        net[2].bias[0] = bias
    return net.eval()


@pytest.mark.parametrize("n", [1, 3, 6])
def test_n_units_make_n_plus_1_pieces_and_fit_exactly(n):
    kinks = sorted(np.random.default_rng(n).uniform(0.1, 0.9, n).tolist())
    coefs = [(-1) ** i * (1.0 + i) for i in range(n)]
    net = _hand_net(kinks, coefs, left=0, bias=0.3)
    breaks = np.array([0.0] + kinks + [1.0])
    with torch.no_grad():
        values = net(torch.tensor(breaks)[:, None])[:, 0].numpy()
    target = mw.Target(breaks, values)  # k = n + 1 pieces, the network's own function
    assert target.k == n + 1
    assert mw.max_error(net, target) < 1e-12
    r = regions_in_interval(net, 0.0, 1.0)
    assert int(r.counts[0]) == n + 1 == target.k  # the bound n >= k - 1 is met with equality
    assert torch.allclose(r.breakpoints(0)[1:-1], torch.tensor(kinks, dtype=torch.float64))
    # this target's first slope is minus a subset sum of its slope changes: k - 1 units suffice
    assert mw.exact_min_width(target) == n


def test_exact_min_width_generic_target_needs_k_units():
    t = mw.Target(np.array([0.0, 0.5, 1.0]), np.array([0.0, 1.0, 1.5]))  # slopes 2, 1
    assert mw.exact_min_width(t) == 2  # -2 is neither 0 nor -(-1)
    t = mw.Target(np.array([0.0, 0.5, 1.0]), np.array([0.0, -0.5, 0.0]))  # |x - 0.5|: 2 units
    assert mw.exact_min_width(t) == 2
    t = mw.Target(np.array([0.0, 0.5, 1.0]), np.array([0.0, -1.0, -1.0]))  # 2 relu(0.5 - x) - 1
    assert mw.exact_min_width(t) == 1
    assert mw.exact_min_width(mw.Target(np.array([0.0, 1.0]), np.array([2.0, 2.0]))) == 0


def test_random_target():
    t = mw.random_target(5, seed=2)
    assert t.k == 5 and t.breaks[0] == 0 and t.breaks[-1] == 1
    assert np.diff(t.breaks).min() >= 0.5 / 5 and np.abs(np.diff(t.slopes)).min() >= 1.0
    assert np.allclose(t(t.breaks), t.values)
    with pytest.raises(ValueError, match="k must be"):
        mw.random_target(0)
    with pytest.raises(TypeError, match="tol"):
        mw.min_width(t, tol="small")


def test_trained_run_never_beats_the_bound(tmp_path):
    res = mw.run_minwidth(tmp_path / "m", ks=(2,), tol=0.02, restarts=1, steps=400)
    (row,) = res["rows"]
    assert row["bound"] == 1 and row["exact_min_width"] in (1, 2)
    assert row["pieces_within_bound"]
    for t in row["tried"]:
        assert t["pieces"] <= t["width"] + 1
    if row["min_width_found"] is not None:
        assert row["min_width_found"] >= row["exact_min_width"] >= row["bound"]
        assert row["pieces"] >= row["k"] and row["fit_has_k_pieces"]
    d = json.loads((tmp_path / "m" / "minwidth.json").read_text())
    assert d["settings"]["tol"] == 0.02 and len(d["rows"]) == 1
    assert (tmp_path / "m" / "minwidth.png").is_file()
    html = (tmp_path / "m" / "report.html").read_text()
    assert "<h2>Minimum width (1-D)</h2>" in html
