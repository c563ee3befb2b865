"""The geometry measures of sweeps and the `regions` / `folding` commands."""
import json

import torch
from torch import nn

from activation_hash.cli import main
from activation_hash.experiments import measures
from activation_hash.experiments.measures import Split, run_measures
from activation_hash.folding import folding_pairs
from activation_hash.regions import segment_regions


def test_geometry_measures_are_sweep_columns():
    assert {"regions", "folding"} <= set(measures.MEASURES)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3)).eval()
    x, y = torch.randn(30, 6), torch.arange(30) % 3
    split = Split(x, y, x, y, seed=4)
    row = run_measures(model, split, ["regions", "folding"])
    pairs = measures._test_pairs(split, measures.GEOMETRY_PAIRS)
    r = segment_regions(model, x[pairs[:, 0]], x[pairs[:, 1]])
    assert row["regions_mean"] == float(r.counts.double().mean())
    rep = folding_pairs(model, x, y, mode="all", n_pairs=measures.GEOMETRY_PAIRS, seed=4)
    assert row["folding_mean"] == rep.mean and row["folding_tmlr"] == rep.tmlr_aggregate
    assert row["folding_layer1"] == 0.0  # one layer never folds
    assert row["folding_layer2"] == float(rep.folding.per_layer[:, 1].mean())


def test_regions_and_folding_commands(tmp_path, capsys):
    out = tmp_path / "fold"
    assert main(["folding", "--arch", "mlp", "--width", "16", "--depth", "2", "--pairs", "6",
                 "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "folding.json").read_text())
    assert res["intra"]["n_pairs"] == 6 and res["inter"]["n_pairs"] == 6
    assert len(res["intra"]["per_layer_mean"]) == 2 and res["intra"]["per_layer_mean"][0] == 0
    for png in ("folding_hist.png", "folding_depth.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "reg"
    assert main(["regions", "--arch", "mlp", "--width", "16", "--pairs", "5", "--out", str(out),
                 "--quiet"]) == 0
    res = json.loads((out / "regions.json").read_text())
    assert len(res["pieces"]) == 5 and all(p >= 1 for p in res["pieces"])
    assert res["method"] == "layers"
    assert (out / "regions_per_segment.png").is_file()
