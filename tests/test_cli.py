"""The activation-hash command line: --help of every subcommand, config files, and tiny
end-to-end runs."""
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from activation_hash.cli import build_parser, main

COMMANDS = ["demo", "train", "extract", "collisions", "categorize", "sweep", "regions", "folding",
            "slice", "evolution", "phase-chart", "report"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: activation-hash {cmd}")
    if cmd not in ("report",):
        assert "--out" in text and "--quiet" in text and "--config" in text


def test_top_level_help_and_console_script(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(c in text for c in COMMANDS)
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["activation-hash"] == "activation_hash.cli:main"
    r = subprocess.run([sys.executable, "-m", "activation_hash.cli", "sweep", "--help"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "--factor" in r.stdout


def _user_error(argv, capsys) -> str:
    """The one stderr line of a user error (exit status 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_bad_usage(tmp_path, capsys):
    assert "--factor" in _user_error(["sweep", "--out", str(tmp_path / "s"), "--quiet"], capsys)
    cfg = tmp_path / "c.toml"
    cfg.write_text("widht = 3\n")
    err = _user_error(["train", "--config", str(cfg), "--out", str(tmp_path / "t")], capsys)
    assert "widht" in err and str(cfg) in err
    assert "not found" in _user_error(["train", "--config", str(tmp_path / "none.toml")], capsys)


def test_config_same_key_in_two_tables(tmp_path, capsys):
    from activation_hash.cli import _load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text("[data]\nseed = 1\nn_train = 100\n[train]\nseed = 2\nepochs = 1\n")
    with pytest.raises(ValueError, match=r"'seed' is set both in \[data\] and in \[train\]"):
        _load_config(str(cfg))
    err = _user_error(["train", "--config", str(cfg), "--out", str(tmp_path / "t"), "--quiet"],
                      capsys)
    assert "'seed'" in err and "[data]" in err and "[train]" in err
    assert str(cfg) in err and not (tmp_path / "t").exists()
    cfg.write_text("n-train = 5\n[data]\nn_train = 100\n")
    with pytest.raises(ValueError, match=r"'n_train' is set both in the top level and in \[data\]"):
        _load_config(str(cfg))
    cfg.write_text("seed = 1\n[data]\nn_train = 100\n[factor]\nwidth = [2, 4]\n")
    assert _load_config(str(cfg)) == {"seed": 1, "n_train": 100, "factor": {"width": [2, 4]}}


def test_paper_preset_and_overrides():
    from activation_hash.cli import _train_cfg

    args = build_parser().parse_args(["train", "--preset", "paper_mlp", "--epochs", "3", "--seed", "2"])
    cfg = _train_cfg(args)
    assert cfg["epochs"] == 3 and cfg["seed"] == 2
    assert (cfg["lr"], cfg["lr_step"], cfg["lr_gamma"], cfg["batch_size"], cfg["patience"],
            cfg["val_fraction"], cfg["weight_decay"]) == (1e-2, 20, 0.1, 64, 10, 0.2, 2e-6)
    assert cfg["decay_bias_bn"] is False  # Keras l2: kernels only
    args = build_parser().parse_args(["train", "--preset", "paper_mlp", "--decay-bias-bn"])
    assert _train_cfg(args)["decay_bias_bn"] is True
    assert "decay_bias_bn" not in _train_cfg(build_parser().parse_args(["train"]))


def test_train_with_config_file(tmp_path, capsys):
    cfg = tmp_path / "train.toml"
    cfg.write_text('[data]\nn-train = 200\nn_test = 100\n[model]\nwidth = 5\nbatch_norm = true\n'
                   '[train]\nepochs = 2\nlr = 0.01\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--width", "7", "--out", str(out), "--quiet",
                 "--save-checkpoints", "paper"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["width"] == 7 and settings["n_train"] == 200 and settings["epochs"] == 2
    assert settings["model_cfg"] == {"arch": "mlp", "batch_norm": True, "width": 7, "depth": 1}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped_epoch"] == 2 and metrics["test_accuracy"] > 0.2
    assert len(json.loads((out / "history.json").read_text())) == 2
    ck = torch.load(out / "model.pt", weights_only=True)
    assert ck["state_dict"]["1.weight"].shape == (7, 64)
    assert (out / "training.png").stat().st_size > 5000 and (out / "report.html").is_file()


def test_sweep_phase_report_cli(tmp_path, capsys):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text('seeds = "0"\nprobes = "knn"\nn_train = 150\nn_test = 80\nlr = 0.01\n'
                   '[factor]\nwidth = [2, 16]\nepochs = [0, 2]\n')
    out = tmp_path / "sw"
    assert main(["sweep", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["width"], r["epochs"]) for r in rows] == [(2, 0), (2, 2), (16, 0), (16, 2)]
    assert all("knn_test" in r and "logreg_test" not in r for r in rows)
    names = {p.name for p in out.iterdir()}
    assert {"results.csv", "factor_width.png", "factor_epochs.png", "phase_width_x_epochs.png",
            "phase_width_x_epochs.csv", "report.html", "settings.json"} <= names
    # rerun: everything is already there
    assert main(["sweep", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "results.json").read_text())["rows"] == rows
    ph = tmp_path / "ph"
    assert main(["phase-chart", str(out), "--x", "epochs", "--y", "width", "--r-hi", "0.5",
                 "--r-lo", "0.2", "--acc-eps", "1.0", "--out", str(ph), "--quiet"]) == 0
    table = (ph / "phase_width_x_epochs.csv").read_text().splitlines()
    assert len(table) == 5
    for line in table[1:]:
        w, e, R = line.split(",")[:3]
        want = "under" if float(R) >= 0.5 else ("sufficient" if float(R) <= 0.2 else "critical")
        assert line.endswith(want)
    capsys.readouterr()
    assert main(["report", str(ph), "--title", "again"]) == 0
    assert capsys.readouterr().out.strip() == str(ph / "report.html")
    assert "<title>again</title>" in (ph / "report.html").read_text()


def test_sweep_cli_thread_count_guard(tmp_path, capsys):
    out = tmp_path / "sw"
    base = ["sweep", "--factor", "width=2", "--dataset", "moons", "--epochs", "1", "--probes",
            "none", "--out", str(out), "--quiet"]
    assert main(base + ["--threads", "1"]) == 0
    assert json.loads((out / "sweep.json").read_text())["torch_threads"] == 1
    err = _user_error(base + ["--threads", "2"], capsys)
    assert "1 torch thread(s)" in err and "--force" in err
    assert main(base + ["--threads", "1"]) == 0  # the same count resumes
    with pytest.warns(RuntimeWarning):
        assert main(base + ["--threads", "2", "--force"]) == 0


def test_train_extract_collisions_categorize(tmp_path, capsys):
    run = tmp_path / "t"
    main(["train", "--n-train", "300", "--n-test", "100", "--width", "12", "--epochs", "2",
          "--val-fraction", "0.2", "--out", str(run), "--quiet"])
    ex = tmp_path / "x"
    assert main(["extract", "--model", str(run), "--out", str(ex), "--quiet"]) == 0
    from activation_hash import CodeBook

    tr, te = CodeBook.load(str(ex / "train.codes")), CodeBook.load(str(ex / "test.codes"))
    assert len(tr) == 240 and len(te) == 100 and tr.n_bits == 12
    assert tr.labels is not None and len(tr.labels) == 240
    co = tmp_path / "co"
    assert main(["collisions", str(ex / "train.codes"), "--per-layer", "--out", str(co), "--quiet"]) == 0
    rep = json.loads((co / "collisions.json").read_text())[str(ex / "train.codes")]
    n_distinct = len({tuple(r) for r in tr.codes.tolist()})
    assert rep["n"] == 240 and rep["n_distinct"] == n_distinct
    assert rep["redundancy"] == pytest.approx((240 - n_distinct) / 240)
    assert rep["per_layer"] == [["2", pytest.approx(rep["redundancy"])]]
    capsys.readouterr()
    assert main(["collisions", str(ex / "train.codes"), "--per-layer", "--out", str(co)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith(f"N=240 distinct={n_distinct} redundancy={rep['redundancy']:.4f}")
    assert printed[1] == f"  code up to layer 2: redundancy={rep['redundancy']:.4f}"
    ca = tmp_path / "ca"
    assert main(["categorize", "--train", str(ex / "train.codes"), "--test", str(ex / "test.codes"),
                 "--out", str(ca), "--quiet"]) == 0
    d = json.loads((ca / "categorization.json").read_text())
    from activation_hash import knn_accuracy, logreg_accuracy

    assert d["logreg_test"] == logreg_accuracy(tr, te, "ovo", C=1.0, seed=0)  # the same saved codes
    assert d["knn_test"] == knn_accuracy(tr, te, k=9) and d["knn_test"] > 0.3
    logreg = d["settings"]["logreg"]
    assert (logreg["multi_class"], logreg["C"], logreg["penalty"]) == ("ovo", 1.0, "l2")
