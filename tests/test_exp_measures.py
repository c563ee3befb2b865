"""Sweep measures: the registry, the probes -> measures mapping, a registered measure becoming
a sweep column, and the keys / columns of probes-only sweeps staying as they were."""
import json

import pytest
import torch

from activation_hash.experiments import measures as ms
from activation_hash.experiments import sweep as sw
from activation_hash.experiments.datasets import load_dataset
from activation_hash.experiments.models import build_model


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def scratch_measure():
    """Register measures for one test only."""
    before = dict(ms.MEASURES)
    yield ms.register_measure
    ms.MEASURES.clear()
    ms.MEASURES.update(before)


SMALL = {"name": "digits", "n_train": 120, "n_test": 60}


def tiny_split():
    data = load_dataset("digits", n_train=80, n_test=40, seed=0)
    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "width": 6}, data.input_shape, data.n_classes).eval()
    return model, ms.Split(data.x_train, data.y_train, data.x_test, data.y_test, k=3)


def test_registry_and_probe_lists():
    assert {"collisions", "knn", "probes", "accuracy"} <= set(ms.MEASURES)
    assert ms.resolve_measures(probes=True) == ms.resolve_measures(probes="all") == \
        ["collisions", "probes", "accuracy"]
    assert ms.resolve_measures(probes="knn") == ["collisions", "knn", "accuracy"]
    assert ms.resolve_measures(probes=False) == ms.resolve_measures(probes="none") == \
        ["collisions", "accuracy"]
    assert ms.resolve_measures(["accuracy", "knn"]) == ["accuracy", "knn"]
    with pytest.raises(ValueError, match="probes must be one of"):
        ms.resolve_measures(probes="some")
    with pytest.raises(ValueError, match="measure must be one of .*got 'no_such_measure'"):
        ms.resolve_measures(["knn", "no_such_measure"])
    with pytest.raises(ValueError, match="more than once"):
        ms.resolve_measures(["knn", "knn"])
    with pytest.raises(ValueError, match="either measures .* or probes"):
        ms.resolve_measures(["knn"], probes="knn")
    with pytest.raises(TypeError, match="list of measure names"):
        ms.resolve_measures("knn")
    # one place validates: the config and measure() give the same errors
    with pytest.raises(ValueError, match="probes must be one of"):
        sw.SweepConfig(factors={"width": [2]}, probes="some")
    with pytest.raises(ValueError, match="measure must be one of"):
        sw.SweepConfig(factors={"width": [2]}, measures=["no_such_measure"])


def test_register_measure(scratch_measure):
    @scratch_measure("n_params")
    def n_params(model, split):
        return {"n_params": sum(p.numel() for p in model.parameters())}

    assert ms.MEASURES["n_params"] is n_params
    scratch_measure("n_params")(n_params)  # the same function again: fine
    with pytest.raises(ValueError, match="already registered"):
        scratch_measure("n_params")(lambda m, s: {})
    scratch_measure("n_params", replace=True)(lambda m, s: {"n_params": 0})
    assert ms.MEASURES["n_params"](None, None) == {"n_params": 0}
    with pytest.raises(TypeError, match="non-empty str"):
        scratch_measure("")
    with pytest.raises(TypeError, match="replace must be True or False"):
        scratch_measure("x", replace=1)


def test_run_measures_columns_and_conflicts(scratch_measure):
    model, split = tiny_split()
    row = ms.run_measures(model, split, ["accuracy"])
    assert list(row) == ["acc_train", "acc_test"] and split.t_extract is None  # no codes needed
    row = ms.run_measures(model, split, ["collisions", "knn", "accuracy"])
    assert list(row) == ["t_extract", "n_bits", "t_collisions", "redundancy_train",
                         "redundancy_test", "n_distinct_train", "n_distinct_test",
                         "mixed_samples_train", "knn_train", "knn_test", "t_probes",
                         "acc_train", "acc_test"]
    assert row["n_bits"] == 6 and 0.0 <= row["knn_test"] <= 1.0
    with pytest.raises(ValueError, match="measures 'knn' and 'probes' both give column 't_probes'"):
        ms.run_measures(model, split, ["knn", "probes"])
    scratch_measure("bad")(lambda m, s: [1])
    with pytest.raises(TypeError, match="returned list"):
        ms.run_measures(model, split, ["bad"])
    scratch_measure("steals")(lambda m, s: {"n_bits": 1})
    with pytest.raises(ValueError, match="'n_bits'"):
        ms.run_measures(model, split, ["steals"])
    other = build_model({"arch": "mlp", "width": 6}, (1, 8, 8), 10)
    with pytest.raises(ValueError, match="another model"):
        split.codes(other)


def test_probes_only_keys_and_config_unchanged():
    """Keys of points (the names of finished point files) and sweep.json are those of the
    version before measures existed, so old sweep directories resume."""
    cfg = sw.SweepConfig(factors={"width": [2]}, data={"name": "digits", "n_train": 150},
                         train={"epochs": 1})
    assert sw.plan_points(cfg)[0].points[0][0] == "fbcb5ef34183b69e"
    keys = [k for k, _, _ in sw.plan_points(sw.SweepConfig(factors={"width": [2], "epochs": [0, 3]},
                                                           probes="knn"))[0].points]
    assert keys == ["b8aa0ce1e954ba8a", "2b47b165c1b8b62f"]
    assert "measures" not in cfg.to_dict() and cfg.measure_names == ["collisions", "probes", "accuracy"]
    named = sw.SweepConfig(factors={"width": [2]}, data={"name": "digits", "n_train": 150},
                           train={"epochs": 1}, measures=["collisions", "probes", "accuracy"])
    assert named.to_dict()["measures"] == ["collisions", "probes", "accuracy"]
    assert sw.SweepConfig.from_dict(named.to_dict()).measures == named.measures
    assert sw.plan_points(named)[0].points[0][0] != "fbcb5ef34183b69e"  # its own key


def test_sweep_with_a_registered_measure(tmp_path, scratch_measure):
    @scratch_measure("n_codes_train")
    def n_codes_train(model, split):
        train_codes, _ = split.codes(model)  # the point's codes, extracted once
        return {"n_codes_train": len(train_codes)}

    base = dict(factors={"width": [3, 5]}, data=SMALL, train={"epochs": 1, "lr": 1e-2})
    knn = sw.run_sweep(sw.SweepConfig(probes="knn", **base), tmp_path / "knn", progress=False)
    named = sw.run_sweep(sw.SweepConfig(measures=["collisions", "knn", "accuracy"], **base),
                         tmp_path / "named", progress=False)
    extra = sw.run_sweep(sw.SweepConfig(measures=["collisions", "knn", "accuracy",
                                                  "n_codes_train"], **base),
                         tmp_path / "extra", progress=False)
    for a, b, c in zip(knn, named, extra):
        cols = list(a)
        at = cols.index("t_train")
        assert list(b) == cols and list(c) == cols[:at] + ["n_codes_train"] + cols[at:]
        for col in cols:
            if col != "key" and not col.startswith("t_"):
                assert a[col] == b[col] == c[col], col
        assert len({a["key"], b["key"], c["key"]}) == 3
        assert c["n_codes_train"] == c["n_trained"] == 120
    header = (tmp_path / "extra" / "results.csv").read_text().splitlines()[0].split(",")
    assert "n_codes_train" in header
    assert json.loads((tmp_path / "extra" / "sweep.json").read_text())["measures"][-1] == "n_codes_train"
