"""Training evolution (Qi & Wei's protocol): snapshot schedule, fractional epochs as optimizer
steps, exact counts against sampling, GIF frames, report sections, the browser check."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.optim.optimizer as optim_mod
from PIL import Image

from activation_hash.experiments import evolution as ev
from activation_hash.experiments.models import MLP
from activation_hash.slices import regions_in_box
from activation_hash.record import record

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_default_protocol_constants():
    assert ev.SNAPSHOTS == (0, 0.1, 0.5, 1, 2, 4, 6, 8, 10, 15, 20, 30, 50, 80, 100)
    assert set(ev.TOY_DATASETS) >= {"moons", "quantiles", "circles", "spirals", "random"}
    assert ev.snapshot_steps(ev.SNAPSHOTS, 32)[:4] == [0, 3, 16, 32]
    assert ev.snapshot_steps(ev.SNAPSHOTS, 32)[-1] == 3200


@pytest.mark.parametrize("name", ev.TOY_DATASETS)
def test_toy_data(name):
    x, y = ev.toy_data(name, 300, seed=1)
    assert x.shape == (300, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(x.amin(0), torch.tensor([-1.0, -1.0])) and \
        torch.allclose(x.amax(0), torch.tensor([1.0, 1.0]))
    assert set(y.tolist()) == {0, 1}
    x2, y2 = ev.toy_data(name, 300, seed=1)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_bad_input():
    with pytest.raises(ValueError, match="dataset must be one of"):
        ev.toy_data("mnist")
    with pytest.raises(TypeError, match="n_samples"):
        ev.toy_data("moons", 10.5)
    net = MLP((2,), 2, width=[4])
    x, y = ev.toy_data("moons", 20)
    with pytest.raises(ValueError, match="increasing"):
        ev.train_with_snapshots(net, x, y, epochs=2, snapshots=[1, 0.5])
    with pytest.raises(ValueError, match="snapshot epoch"):
        ev.train_with_snapshots(net, x, y, epochs=2, snapshots=[0, 3])
    with pytest.raises(ValueError, match="datasets"):
        ev.run_evolution(None, datasets="moons")


def test_fractional_epochs_are_optimizer_steps():
    """0.1 epoch of 100 samples in batches of 32 (4 steps per epoch) = round(0.4) = 0 steps;
    0.5 = 2 steps; counted with a global optimizer step hook, independently."""
    x, y = ev.toy_data("moons", 100, seed=0)
    torch.manual_seed(0)
    net = MLP((2,), 2, width=[8, 8])
    counted, seen = [0], []
    handle = optim_mod.register_optimizer_step_post_hook(
        lambda opt, args, kwargs: counted.__setitem__(0, counted[0] + 1))
    try:
        rows = ev.train_with_snapshots(net, x, y, epochs=3, snapshots=[0, 0.25, 0.5, 1, 2.5, 3],
                                       on_snapshot=lambda e, s, m: seen.append((e, s, counted[0],
                                                                                m.training)))
    finally:
        handle.remove()
    assert [r["epoch"] for r in rows] == [0, 0.25, 0.5, 1, 2.5, 3]
    assert [s for _, s, _, _ in seen] == [0, 1, 2, 4, 10, 12] == [c for _, _, c, _ in seen]
    assert [r["samples_seen"] for r in rows] == [0, 32, 64, 100, 100 * 2 + 64, 300]
    assert not any(t for *_, t in seen)  # measured in eval mode


def test_evolve_counts_against_sampling(tmp_path):
    rows = ev.evolve("circles", tmp_path, epochs=1, snapshots=(0, 0.5, 1), widths=(6, 6),
                     n_samples=64, seed=3)
    assert [r["epoch"] for r in rows] == [0, 0.5, 1] and [r["steps"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert r["faces"] == r["regions_box"] >= r["regions_hull"] >= 1
        assert (tmp_path / r["map"]).is_file()
    # the final model again: dense sampling of the box never finds more regions than exact
    x, y = ev.toy_data("circles", 64, seed=3)
    torch.manual_seed(3)
    net = MLP((2,), 2, width=[6, 6])
    ev.train_with_snapshots(net, x, y, epochs=1, snapshots=(0, 0.5, 1), seed=3)
    counts = regions_in_box(net, x)
    assert (counts["box"], counts["hull"]) == (rows[-1]["regions_box"], rows[-1]["regions_hull"])
    g = torch.linspace(-1, 1, 200)
    pts = torch.cartesian_prod(g, g)
    with torch.no_grad(), record(net) as rec:
        net(pts)
    distinct = len({tuple(r) for r in rec.codes.tolist()})
    assert distinct <= counts["box"]
    assert distinct >= 0.8 * counts["box"]  # a 200 x 200 grid finds most of them


def test_run_evolution_quick(tmp_path):
    said = []
    res = ev.run_evolution(tmp_path / "e", quick=True, minwidth=False, say=said.append)
    out = res["out"]
    d = json.loads((out / "evolution.json").read_text())
    snaps = list(ev.QUICK["snapshots"])
    for name in ev.QUICK["datasets"]:
        rs = [r for r in d["rows"] if r["dataset"] == name]
        assert [r["epoch"] for r in rs] == snaps
        with Image.open(out / f"evolution_{name}.gif") as im:
            assert im.format == "GIF" and im.n_frames == len(snaps)
        assert (out / f"evolution_{name}.png").is_file()
    assert (out / "evolution_regions.png").is_file()
    assert not list(out.glob(".*tmp*"))  # the atomic writer left nothing behind
    html = (out / "report.html").read_text()
    assert "<h2>Training evolution</h2>" in html and html.count("data:image/gif;base64,") == 2
    assert "data-images-loaded" in html
    assert len(said) == len(ev.QUICK["datasets"]) + 1


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt-get install "
                    "chromium); the project does not require it")
def test_report_renders_in_a_browser(tmp_path):
    res = ev.run_evolution(tmp_path / "e", quick=True, minwidth=False)
    script = ROOT / "tools" / "check_report.py"
    r = subprocess.run([sys.executable, str(script), str(res["report"]), "--screenshot",
                        str(tmp_path / "shot.png")], capture_output=True, text=True, timeout=240)
    got = json.loads(r.stdout)
    assert r.returncode == 0 and got["ok"], got
    assert got["images_loaded"] == got["images_total"] == got["images_in_html"] >= 5
    # a broken image is seen as such
    html = res["report"].read_text().replace("data:image/gif;base64,R0lG", "data:image/gif;base64,AAAA", 1)
    bad = tmp_path / "bad.html"
    bad.write_text(html)
    r = subprocess.run([sys.executable, str(script), str(bad)], capture_output=True, text=True,
                       timeout=240)
    got = json.loads(r.stdout)
    assert r.returncode == 1 and got["images_loaded"] == got["images_total"] - 1


def test_report_skips_malformed_evolution_rows(tmp_path):
    """A hand-edited evolution.json with rows that are not snapshot objects is skipped, not a
    crash of the whole report."""
    from activation_hash.experiments.report import write_report

    (tmp_path / "evolution.json").write_text(json.dumps(
        {"rows": [1, {"epoch": 0}, {"dataset": "moons", "epoch": 0, "steps": 0, "box": 3,
                                     "hull": 2, "acc": 0.5}]}))
    page = write_report(tmp_path).read_text()
    assert "Training evolution" in page and "moons" in page
