"""Every command's work from Python (experiments.runs, experiments.demo), the same files as
the command line, and the CLI's thin layer over them (config defaults without argparse
internals, --measures, missing inputs)."""
import json
import re
from pathlib import Path

import pytest

from activation_hash.cli import build_parser, main
from activation_hash.experiments import demo, runs
from activation_hash.experiments.phase import regime_counts
from activation_hash.experiments.sweep import SweepConfig

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


DATA = {"name": "digits", "n_train": 150, "n_test": 60}
MODEL = {"arch": "mlp", "batch_norm": True, "width": 7, "depth": 1}
TRAIN = {"epochs": 2, "lr": 1e-2, "val_fraction": 0.2, "seed": 0}


def test_python_runs_match_the_command_line(tmp_path, capsys):
    said = []
    res = runs.run_train(tmp_path / "py", DATA, MODEL, TRAIN, save_checkpoints="log",
                         say=said.append, settings={"from": "python"})
    assert res["out"] == tmp_path / "py" and res["model_path"] == tmp_path / "py" / "model.pt"
    assert said == [f"test accuracy {res['result'].test_accuracy:.4f} after 2 epochs; model: "
                    f"{tmp_path / 'py' / 'model.pt'}"]
    settings = json.loads((tmp_path / "py" / "settings.json").read_text())
    assert settings["from"] == "python" and settings["model_cfg"] == MODEL
    assert sorted(p.name for p in (tmp_path / "py" / "checkpoints").iterdir()) == \
        ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"]
    assert main(["train", "--n-train", "150", "--n-test", "60", "--width", "7", "--batch-norm",
                 "--epochs", "2", "--val-fraction", "0.2", "--out", str(tmp_path / "cli"),
                 "--quiet"]) == 0
    py, cli = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("py", "cli"))
    assert {k: v for k, v in py.items() if k != "seconds"} == \
        {k: v for k, v in cli.items() if k != "seconds"}
    model, ck = runs.load_trained(tmp_path / "py")
    assert not model.training and ck["model"] == MODEL and len(ck["train_idx"]) == 120

    said.clear()
    ex = runs.run_extract(tmp_path / "x", tmp_path / "py", say=said.append)
    assert len(ex["train"]) == 120 and len(ex["test"]) == 60 and ex["train"].n_bits == 7
    assert said == [f"train: 120 codes of 7 bits -> {tmp_path / 'x' / 'train.codes'}",
                    f"test: 60 codes of 7 bits -> {tmp_path / 'x' / 'test.codes'}"]
    reports = runs.run_collisions(tmp_path / "c", [ex["paths"]["train"]], per_layer=True)
    (path, rep), = reports.items()
    saved = json.loads((tmp_path / "c" / "collisions.json").read_text())[path]
    assert saved["n"] == rep.n == 120 and saved["redundancy"] == pytest.approx(rep.redundancy)
    d = runs.run_categorize(tmp_path / "k", ex["paths"]["train"], ex["paths"]["test"], k=3)
    assert json.loads((tmp_path / "k" / "categorization.json").read_text())["knn_test"] == d["knn_test"]


def test_missing_inputs(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no trained model"):
        runs.load_trained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no codes at"):
        runs.load_codes(tmp_path / "none.codes")
    with pytest.raises(FileNotFoundError, match="neither a sweep directory"):
        runs.run_phase_chart(tmp_path / "nope", tmp_path / "ph")
    assert not (tmp_path / "ph").exists()
    for argv, msg in [(["extract", "--model", str(tmp_path)], "no trained model"),
                      (["collisions", str(tmp_path / "a.codes")], "no codes at"),
                      (["phase-chart", str(tmp_path / "nope")], "neither a sweep directory")]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(argv + ["--out", str(tmp_path / "o"), "--quiet"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(f"activation-hash {argv[0]}: error: ")
        assert msg in err


def test_sweep_report_and_phase_chart_from_python(tmp_path):
    cfg = SweepConfig(factors={"width": [2, 12], "epochs": [0, 2]}, data=DATA,
                      train={"lr": 1e-2}, probes="knn")
    said = []
    res = runs.run_sweep_report(cfg, tmp_path / "s", say=said.append)
    assert [p.name for p in res["plots"]] == ["factor_width.png", "factor_epochs.png",
                                              "phase_width_x_epochs.png"]
    assert said == [f"4 points -> {tmp_path / 's' / 'results.csv'}; report: {res['report']}"]
    ph = runs.run_phase_chart(tmp_path / "s" / "results.json", tmp_path / "ph", say=said.append)
    assert ph["counts"] == regime_counts(ph["table"]) and sum(ph["counts"].values()) == 4
    assert said[-1].startswith(f"regimes {ph['counts']}; chart: {ph['png']}")
    assert regime_counts([{"regime": "under"}, {"regime": "n/a"}, {"regime": "under"}]) == \
        {"under": 2, "n/a": 1}


def test_cli_sweep_measures_option(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sweep", "--factor", "width=3", "--dataset", "moons", "--epochs", "1",
                 "--measures", "collisions,accuracy", "--out", str(out), "--quiet"]) == 0
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert "redundancy_train" in row and "acc_test" in row and "knn_test" not in row
    assert json.loads((out / "sweep.json").read_text())["measures"] == ["collisions", "accuracy"]
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--factor", "width=3", "--measures", "no_such_measure", "--out", str(out), "-q"])
    assert e.value.code == 2 and "measure must be one of" in capsys.readouterr().err


def test_config_defaults_without_argparse_internals(tmp_path, capsys):
    p = build_parser({"train": {"width": 9, "epochs": 3}})
    args = p.parse_args(["train", "--epochs", "5"])
    assert (args.width, args.epochs) == (9, 5)  # the flag wins over the default
    assert build_parser().parse_args(["train"]).width == 32
    assert build_parser({"sweep": {"width": 9}}).parse_args(["train"]).width == 32
    cfg = tmp_path / "c.toml"
    cfg.write_text("width = 3\nfoo = 1\n")
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown option(s) ['foo']" in err and "'width'" in err
    assert "'func'" not in err and "'command'" not in err
    text = (ROOT / "activation_hash" / "cli.py").read_text()
    assert not re.search(r"\._(actions|subparsers|group_actions|option_string_actions)\b", text)
    assert len(text.splitlines()) < 450


def test_run_demo_small(tmp_path, monkeypatch):
    """run_demo's files and printed figures, on smaller sweeps (the real demo is `make demo`)."""
    model, train = {"arch": "mlp", "depth": 1, "batch_norm": True}, {"lr": 1e-2}
    small = {
        "width": SweepConfig(factors={"width": [2, 16]}, data=DATA, model=model,
                             train=dict(train, epochs=2), probes="all"),
        "width_x_epochs": SweepConfig(factors={"width": [2, 16], "epochs": [0, 2]}, data=DATA,
                                      model=model, train=train, probes="knn"),
        "width_x_samples": SweepConfig(factors={"width": [2, 16], "n_train": [60, 150]},
                                       data=DATA, model=model, train=dict(train, epochs=1),
                                       probes="knn"),
        "depth": SweepConfig(factors={"depth": [1, 2]}, data=DATA,
                             model={"arch": "mlp", "width": 8}, train=dict(train, epochs=1),
                             measures=["collisions", "knn", "accuracy", "folding"]),
    }
    assert list(small) == list(demo.demo_configs(0))
    monkeypatch.setattr(demo, "demo_configs", lambda seed=0: small)
    said = []
    res = demo.run_demo(tmp_path / "d", say=said.append, settings={"seed": 0})
    out = tmp_path / "d"
    for name in ("1_width.png", "2_epochs_width16.png", "3_phase_width_x_epochs.png",
                 "3_phase_width_x_epochs.csv", "4_phase_width_x_samples.png", "report.html",
                 "results.json", "results_width.csv", "results_width_x_epochs.csv",
                 "results_width_x_samples.csv", "settings.json", "5_folding_depth.png"):
        assert (out / name).is_file(), name
    assert (out / "results_width.csv").read_bytes() == (out / "width" / "results.csv").read_bytes()
    assert said[0].startswith("demo: digits, 1-hidden-layer MLP") and len(said) == 1 + 2 + 2 + 1
    assert said[1:] == demo.demo_summary(res)
    assert re.fullmatch(r"  width  16: R_train=\d\.\d{3} R_test=\d\.\d{3} knn=\d\.\d{3} net=\d\.\d{3}",
                        said[2])
    assert re.fullmatch(r"  depth 1: folding mean=0\.0000 max=0\.0000 net=\d\.\d{3}", said[3])
    assert res["regimes"] == regime_counts(res["phase"]["table"])
    settings = json.loads((out / "settings.json").read_text())
    assert list(settings) == ["seed", "width_sweep", "time_sweep", "size_sweep"]
