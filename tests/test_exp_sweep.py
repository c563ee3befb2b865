"""Sweeps (resume after an interruption, determinism, the width-sweep acceptance trends),
the phase-chart labelling, the plots and the HTML report."""
import base64
import json
import struct
import zlib
from html.parser import HTMLParser

import pytest
import torch

from activation_hash.experiments import sweep as sw
from activation_hash.experiments.phase import Thresholds, phase_figure, phase_table, write_phase
from activation_hash.experiments.plots import factor_figure, save_png
from activation_hash.experiments.report import write_report


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


SMALL = {"name": "digits", "n_train": 150, "n_test": 60}


def counting(monkeypatch):
    calls = {"train": 0, "measure": 0}
    real_train, real_measure = sw.train, sw.measure

    def train(*a, **k):
        calls["train"] += 1
        return real_train(*a, **k)

    def measure(*a, **k):
        calls["measure"] += 1
        return real_measure(*a, **k)

    monkeypatch.setattr(sw, "train", train)
    monkeypatch.setattr(sw, "measure", measure)
    return calls


class Stop(Exception):
    pass


def interrupt_after(n):
    seen = []

    def cb(row):
        seen.append(row)
        if len(seen) == n:
            raise Stop
    return cb


def test_sweep_resume_after_interruption(tmp_path, monkeypatch):
    calls = counting(monkeypatch)
    cfg = sw.SweepConfig(factors={"width": [2, 4, 8]}, data=SMALL, train={"epochs": 2, "lr": 1e-2},
                         seeds=[0, 1], probes="knn")
    with pytest.raises(Stop):
        sw.run_sweep(cfg, tmp_path, progress=False, on_point=interrupt_after(2))
    assert calls == {"train": 2, "measure": 2}
    saved = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "points").glob("*.json")}
    assert len(saved) == 2
    assert len(json.loads((tmp_path / "results.json").read_text())["rows"]) == 2
    calls.update(train=0, measure=0)
    rows = sw.run_sweep(cfg, tmp_path, progress=False)
    assert calls == {"train": 4, "measure": 4}  # only the missing points
    assert len(rows) == 6 and [(r["width"], r["seed"]) for r in rows] == \
        [(w, s) for w in (2, 4, 8) for s in (0, 1)]
    for r in rows:  # nothing lost: the first two points are the saved ones
        if r["key"] in saved:
            assert r == saved[r["key"]]
    calls.update(train=0, measure=0)
    again = sw.run_sweep(cfg, tmp_path, progress=False)
    assert calls == {"train": 0, "measure": 0} and again == rows
    csv_lines = (tmp_path / "results.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 7 and "redundancy_train" in csv_lines[0]
    # extending the grid computes only the new points
    cfg2 = sw.SweepConfig(factors={"width": [2, 4, 8, 16]}, data=SMALL,
                          train={"epochs": 2, "lr": 1e-2}, seeds=[0, 1], probes="knn")
    rows2 = sw.run_sweep(cfg2, tmp_path, progress=False)
    assert calls == {"train": 2, "measure": 2} and rows2[:6] == rows
    # the resumed points equal an uninterrupted run's (deterministic training)
    fresh = sw.run_sweep(sw.SweepConfig(factors={"width": [8]}, data=SMALL,
                                        train={"epochs": 2, "lr": 1e-2}, seeds=[1], probes="knn"),
                         tmp_path / "fresh", progress=False)[0]
    ref = next(r for r in rows if r["width"] == 8 and r["seed"] == 1)
    for col in ("redundancy_train", "redundancy_test", "knn_test", "acc_test", "key"):
        assert fresh[col] == ref[col]


def test_sweep_epochs_checkpoints_resume(tmp_path, monkeypatch):
    calls = counting(monkeypatch)
    cfg = sw.SweepConfig(factors={"width": [6], "epochs": [0, 1, 3, 4]}, data=SMALL,
                         train={"lr": 1e-2}, probes="knn")
    with pytest.raises(Stop):
        sw.run_sweep(cfg, tmp_path, progress=False, on_point=interrupt_after(2))
    assert calls == {"train": 1, "measure": 2}
    rows = sw.run_sweep(cfg, tmp_path, progress=False)
    assert calls == {"train": 2, "measure": 4}  # retrained once, measured the 2 missing epochs
    assert [r["epochs"] for r in rows] == [0, 1, 3, 4]
    assert rows[0]["acc_test"] < rows[-1]["acc_test"]
    assert all(r["stopped_epoch"] <= 4 for r in rows)


def test_sweep_extending_epochs_keeps_finished_checkpoints(tmp_path, monkeypatch):
    calls = counting(monkeypatch)
    base = dict(data=SMALL, train={"lr": 1e-2}, model={"arch": "mlp", "width": 6}, probes="knn")
    first = sw.run_sweep(sw.SweepConfig(factors={"epochs": [0, 1, 3]}, **base), tmp_path,
                         progress=False)
    assert calls == {"train": 1, "measure": 3}
    calls.update(train=0, measure=0)
    rows = sw.run_sweep(sw.SweepConfig(factors={"epochs": [0, 1, 3, 6]}, **base), tmp_path,
                        progress=False)
    assert calls == {"train": 1, "measure": 1}  # only epoch 6 measured
    assert rows[:3] == first and [r["epochs"] for r in rows] == [0, 1, 3, 6]
    # the reused checkpoints equal those of a fresh run that goes on to epoch 6
    fresh = sw.run_sweep(sw.SweepConfig(factors={"epochs": [0, 1, 3, 6]}, **base),
                         tmp_path / "fresh", progress=False)
    for a, b in zip(fresh, rows):
        assert a["key"] == b["key"]
        for col in ("redundancy_train", "redundancy_test", "knn_test", "acc_test", "stopped_epoch"):
            assert a[col] == b[col], col


def test_sweep_records_thread_count_and_guards_resume(tmp_path, monkeypatch):
    calls = counting(monkeypatch)
    cfg = sw.SweepConfig(factors={"width": [2, 4]}, data=SMALL, train={"epochs": 1, "lr": 1e-2},
                         probes="none")
    with pytest.raises(Stop):
        sw.run_sweep(cfg, tmp_path, progress=False, on_point=interrupt_after(1))
    assert json.loads((tmp_path / "sweep.json").read_text())["torch_threads"] == 1
    torch.set_num_threads(2)
    with pytest.raises(ValueError, match=r"run with 1 torch thread\(s\), this run uses 2"):
        sw.run_sweep(cfg, tmp_path, progress=False)
    assert calls["train"] == 1  # refused before any work
    with pytest.warns(RuntimeWarning, match="deterministic only for a given thread count"):
        rows = sw.run_sweep(cfg, tmp_path, progress=False, force=True)
    assert [r["torch_threads"] for r in rows] == [1, 2] and calls["train"] == 2
    assert json.loads((tmp_path / "sweep.json").read_text())["torch_threads"] == 2
    torch.set_num_threads(1)
    with pytest.raises(ValueError, match="--threads 2"):
        sw.run_sweep(cfg, tmp_path, progress=False)


def test_sweep_all_probes_and_label_noise(tmp_path):
    cfg = sw.SweepConfig(factors={"label_noise": [0.25]}, data=dict(SMALL, n_train=200),
                         train={"epochs": 3, "lr": 1e-2}, model={"arch": "mlp", "width": 24})
    (row,) = sw.run_sweep(cfg, tmp_path, progress=False)
    assert row["label_noise"] == 0.25 and row["noise_rate_true"] == 50 / 200
    for col in ("knn_train", "knn_test", "kmeans_purity_train", "kmeans_hungarian_train",
                "kmeans_purity_test", "kmeans_hungarian_test", "logreg_train", "logreg_test",
                "acc_train", "acc_test"):
        assert 0.0 <= row[col] <= 1.0, col
    assert row["kmeans_hungarian_test"] <= row["kmeans_purity_test"]
    assert row["knn_test"] > 0.3 and row["n_bits"] == 24
    assert row["n_distinct_train"] == round((1 - row["redundancy_train"]) * 200)


def test_sweep_n_trained_excludes_validation_split(tmp_path):
    cfg = sw.SweepConfig(factors={"n_train": [150]}, data=SMALL, probes="none",
                         train={"epochs": 1, "lr": 1e-2, "val_fraction": 0.2})
    (row,) = sw.run_sweep(cfg, tmp_path, progress=False)
    assert row["n_train"] == 150 and row["factor_n_train"] == 150
    assert row["n_trained"] == 120  # 20% held out for validation
    assert row["n_distinct_train"] == round((1 - row["redundancy_train"]) * 120)
    (plain,) = sw.run_sweep(sw.SweepConfig(factors={"n_train": [150]}, data=SMALL, probes="none",
                                           train={"epochs": 1, "lr": 1e-2}),
                            tmp_path / "plain", progress=False)
    assert plain["n_train"] == plain["n_trained"] == 150


def test_sweep_config_errors():
    with pytest.raises(ValueError, match="unknown sweep factor 'size'"):
        sw.SweepConfig(factors={"size": [1]})
    with pytest.raises(ValueError, match="at least one factor"):
        sw.SweepConfig(factors={})
    cfg = sw.SweepConfig(factors={"sample_size": [50, 100], "noise": [0.0, 0.2], "seed": [3, 4]})
    runs = sw.plan_points(cfg)
    assert len(runs) == 8 and len({k for r in runs for k, _, _ in r.points}) == 8
    assert {r.cfg["data"]["n_train"] for r in runs} == {50, 100}
    assert {(r.cfg["data"]["label_noise"], r.cfg["seed"], r.cfg["train"]["seed"]) for r in runs} == \
        {(n, s, s) for n in (0.0, 0.2) for s in (3, 4)}
    runs = sw.plan_points(sw.SweepConfig(factors={"bn": [True, False], "dropout": [0, 0.5],
                                                  "wd": [0, 1e-4], "depth": [1, 2]}))
    assert len(runs) == 16
    assert {(r.cfg["model"]["batch_norm"], r.cfg["model"]["dropout"], r.cfg["train"]["weight_decay"],
             r.cfg["model"]["depth"]) for r in runs} == \
        {(b, d, w, k) for b in (True, False) for d in (0, 0.5) for w in (0, 1e-4) for k in (1, 2)}


def test_width_sweep_acceptance(tmp_path):
    """The paper's qualitative result on digits: as the hidden layer widens, the redundancy
    falls to about 0 and K-NN on the codes rises toward the network's own accuracy."""
    cfg = sw.SweepConfig(factors={"width": [2, 4, 8, 16, 64]},
                         data={"name": "digits", "n_train": 600, "n_test": 300},
                         model={"arch": "mlp", "depth": 1, "batch_norm": True},
                         train={"epochs": 8, "lr": 1e-2, "batch_size": 64}, seeds=[0], probes="knn")
    rows = sw.run_sweep(cfg, tmp_path, progress=False)
    R = [r["redundancy_train"] for r in rows]
    knn = [r["knn_test"] for r in rows]
    net = [r["acc_test"] for r in rows]
    assert R[0] > 0.8 and R[-1] <= 0.02
    assert all(a >= b - 0.02 for a, b in zip(R, R[1:]))  # non-increasing (up to noise)
    assert rows[-1]["redundancy_test"] <= 0.02
    assert knn[-1] > knn[0] + 0.3 and knn[-1] > 0.85
    assert net[-1] - knn[-1] < 0.1  # close to the network's own accuracy ...
    assert net[-1] - knn[-1] < net[1] - knn[1]  # ... and closer than for a narrow network


# ---- phase chart ----------------------------------------------------------------------------

def synthetic_rows():
    def row(w, e, R, acc, seed=0):
        return {"width": w, "epochs": e, "redundancy_train": R, "knn_test": acc, "seed": seed}
    return [row(2, 1, 0.9, 0.3), row(2, 10, 0.5, 0.5),
            row(8, 1, 0.05, 0.70), row(8, 10, 0.005, 0.80),
            row(32, 1, 0.0, 0.94), row(32, 10, 0.01, 0.95),
            row(16, 1, 0.08, 0.9, 0), row(16, 1, 0.14, 0.9, 1),   # mean R 0.11 -> under
            row(16, 10, 0.1, 0.95)]                               # R == r_hi -> under


def test_phase_labelling_global():
    table = phase_table(synthetic_rows(), "epochs", "width", Thresholds(r_hi=0.1, r_lo=0.01, acc_eps=0.02))
    got = {(c["width"], c["epochs"]): c["regime"] for c in table}
    assert got == {(2, 1): "under", (2, 10): "under", (8, 1): "critical", (8, 10): "critical",
                   (16, 1): "under", (16, 10): "under",
                   (32, 1): "sufficient", (32, 10): "sufficient"}
    cell = next(c for c in table if (c["width"], c["epochs"]) == (16, 1))
    assert cell["n"] == 2 and cell["redundancy"] == pytest.approx(0.11)
    assert all(c["saturated"] == 0.95 for c in table)


def test_phase_labelling_row_saturation_and_eps():
    table = phase_table(synthetic_rows(), "epochs", "width", Thresholds(saturation="row"))
    got = {(c["width"], c["epochs"]): c["regime"] for c in table}
    assert got[(8, 10)] == "sufficient" and got[(8, 1)] == "critical"  # 0.80 is row 8's best
    table = phase_table(synthetic_rows(), "epochs", "width", Thresholds(acc_eps=0.0))
    assert {(c["width"], c["epochs"]): c["regime"] for c in table}[(32, 1)] == "critical"
    with pytest.raises(ValueError, match="r_lo < r_hi"):
        Thresholds(r_hi=0.01, r_lo=0.1)
    with pytest.raises(ValueError, match="needs column"):
        phase_table([{"width": 1, "epochs": 1}], "epochs", "width")


def test_phase_nan_cells_are_not_a_regime(tmp_path):
    nan = float("nan")
    rows = synthetic_rows() + [
        {"width": 64, "epochs": 1, "redundancy_train": nan, "knn_test": 0.9, "seed": 0},
        {"width": 64, "epochs": 10, "redundancy_train": 0.0, "knn_test": nan, "seed": 0},
        {"width": 4, "epochs": 1, "redundancy_train": 0.5, "knn_test": None, "seed": 0}]
    table = phase_table(rows, "epochs", "width")
    got = {(c["width"], c["epochs"]): c["regime"] for c in table}
    assert got[(64, 1)] == got[(64, 10)] == got[(4, 1)] == "n/a"
    assert got[(32, 1)] == "sufficient" and got[(8, 1)] == "critical"  # the others unchanged
    ax = phase_figure(table, "epochs", "width").axes[0]
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in ax.texts}
    xs, ys = [1, 10], [2, 4, 8, 16, 32, 64]
    assert texts[(xs.index(1), ys.index(64))] == "n/a" and texts[(xs.index(10), ys.index(64))] == "n/a"
    assert texts[(xs.index(1), ys.index(32))].startswith("S")
    res = write_phase(rows, tmp_path, "epochs", "width")
    assert sum(line.endswith(",n/a") for line in res["csv"].read_text().splitlines()) == 3


def png_size(path):
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", raw[8:16])
    assert kind == b"IHDR" and length == 13
    assert zlib.crc32(raw[12:29]) == struct.unpack(">I", raw[29:33])[0]
    return struct.unpack(">II", raw[16:24])


def test_phase_png_and_csv(tmp_path):
    fig = phase_figure(phase_table(synthetic_rows()), "epochs", "width")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epochs" and ax.get_ylabel() == "width"
    assert len(ax.texts) == 8 and {t.get_text()[0] for t in ax.texts} == {"U", "C", "S"}
    res = write_phase(synthetic_rows(), tmp_path, "epochs", "width")
    w, h = png_size(res["png"])
    assert w >= 300 and h >= 300
    lines = res["csv"].read_text().splitlines()
    assert lines[0] == "width,epochs,redundancy,accuracy,saturated,n,regime" and len(lines) == 9


def fake_sweep_rows():
    rows = []
    for w in (2, 4, 8, 16):
        for s in (0, 1):
            rows.append({"width": w, "seed": s, "epochs": 5, "redundancy_train": 1 / w,
                         "redundancy_test": 0.8 / w, "knn_test": 1 - 1 / w, "acc_test": 0.95,
                         "kmeans_purity_test": 0.5, "kmeans_hungarian_test": 0.4,
                         "logreg_test": 0.9 - 0.1 * s})
    return rows


def test_factor_figure_and_png(tmp_path):
    fig = factor_figure(fake_sweep_rows(), "width")
    (ax_r, ax_a) = fig.axes[:2]
    assert ax_r.get_xlabel() == "width" and ax_r.get_ylabel() == "redundancy ratio R"
    assert ax_a.get_xlabel() == "width" and ax_a.get_ylabel() == "accuracy"
    assert [t.get_text() for t in ax_r.get_legend().get_texts()] == ["train", "test"]
    assert len(ax_a.get_legend().get_texts()) == 5
    path = save_png(fig, tmp_path / "width.png")
    assert png_size(path) == (1000, 400) and path.stat().st_size > 10_000
    fig = factor_figure([dict(r, batch_norm=bool(r["seed"])) for r in fake_sweep_rows()], "batch_norm")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["False", "True"]
    with pytest.raises(ValueError, match="no rows"):
        factor_figure(fake_sweep_rows(), "width", where={"epochs": 99})


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tags, self.cells, self.links = [], [], [], []
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(a)
        for k in ("src", "href"):
            if k in a and tag != "img":
                self.links.append(a[k])
        self._in_td = tag in ("td", "th")

    def handle_endtag(self, tag):
        self._in_td = False

    def handle_data(self, data):
        if self._in_td:
            self.cells.append(data)


def test_html_report(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"command": "sweep", "k": 9,
                                                        "model": {"arch": "mlp"}}))
    (tmp_path / "results.json").write_text(json.dumps({"rows": fake_sweep_rows()}))
    save_png(factor_figure(fake_sweep_rows(), "width"), tmp_path / "width.png")
    write_phase(synthetic_rows(), tmp_path, "epochs", "width")
    out = write_report(tmp_path, title="t <1>")
    p = _Collect()
    p.feed(out.read_text())
    assert p.tags[0] == "html" and "title" in p.tags and "table" in p.tags
    assert len(p.imgs) == 2 and not p.links
    for img in p.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        raw = base64.b64decode(img["src"].split(",", 1)[1])
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 5000
    assert "settings.model.arch" in p.cells and "mlp" in p.cells  # settings table
    assert "sufficient" in p.cells and "under" in p.cells  # phase table
    assert "redundancy_train" in p.cells  # results table
    assert "t <1>" in out.read_text().replace("&lt;", "<").replace("&gt;", ">")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nope")


def test_sweep_resume_after_kill(tmp_path, monkeypatch):
    """Kill -9 a sweep process half-way; the rerun computes only the points not on disk."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    widths = list(range(2, 22))
    spec = dict(factors={"width": widths}, data=SMALL, train={"epochs": 1}, probes="knn")
    script = ("import torch; torch.set_num_threads(1)\n"
              "from activation_hash.experiments.sweep import SweepConfig, run_sweep\n"
              f"run_sweep(SweepConfig(**{spec!r}), {str(tmp_path)!r}, progress=False)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    points = tmp_path / "points"
    deadline = time.monotonic() + 300
    while len(list(points.glob("*.json"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    _, err = proc.communicate()
    assert proc.returncode != 0, err.decode()[-2000:]  # killed, not finished
    saved = {p.stem: json.loads(p.read_text()) for p in points.glob("*.json")}
    assert 2 <= len(saved) < len(widths)
    calls = counting(monkeypatch)
    rows = sw.run_sweep(sw.SweepConfig(**spec), tmp_path, progress=False)
    assert calls["measure"] == len(widths) - len(saved) == calls["train"]
    assert [r["width"] for r in rows] == widths
    for r in rows:
        if r["key"] in saved:
            assert r == saved[r["key"]]
