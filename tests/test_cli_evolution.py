"""The ``slice`` and ``evolution`` commands: tiny end-to-end runs and one-line user errors."""
import json

import pytest

from activation_hash.cli import main
from helpers import cli_user_error

pytestmark = pytest.mark.usefixtures("keep_threads")  # --threads sets torch's threads


def user_error(argv, capsys) -> str:
    err = cli_user_error(main, argv, capsys)
    assert err.startswith(f"activation-hash {argv[0]}: error: "), err
    return err


def test_slice_trained_model_and_init(tmp_path, capsys):
    run = tmp_path / "t"
    assert main(["train", "--dataset", "moons", "--width", "8", "--depth", "2", "--epochs", "2",
                 "--out", str(run), "-q"]) == 0
    assert main(["slice", "--model", str(run), "--out", str(run), "-q"]) == 0
    assert main(["slice", "--model", str(run), "--samples", "0,5,9", "--out", str(run)]) == 0
    assert "faces" in capsys.readouterr().out
    box = json.loads((run / "slice_box.json").read_text())
    tri = json.loads((run / "slice_samples-0-5-9.json").read_text())
    assert box["faces"] >= 1 and sum(box["faces_per_class"].values()) == box["faces"]
    assert tri["samples"] == [0, 5, 9] and len(tri["anchors_uv"]) == 3
    for tag in ("box", "samples-0-5-9"):
        assert (run / f"slice_{tag}.png").stat().st_size > 1000
        assert (run / f"slice_{tag}.svg").read_text().lstrip().startswith("<?xml")
    html = (run / "report.html").read_text()
    assert "<h2>Slices</h2>" in html and "training" in html  # the train run's plot stays
    out = tmp_path / "c"
    assert main(["slice", "--dataset", "digits", "--width", "16", "--classes", "3,5,8",
                 "--out", str(out), "-q"]) == 0
    d = json.loads((out / "slice_classes-3-5-8.json").read_text())
    assert d["sample_labels"] == [3, 5, 8] and d["faces"] > 1


def test_evolution_quick_cli(tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["evolution", "--quick", "--no-minwidth", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("moons: regions box/hull") and "report:" in lines[-1]
    d = json.loads((out / "evolution.json").read_text())
    assert d["settings"]["quick"] and {r["dataset"] for r in d["rows"]} == {"moons", "random"}
    assert "<h2>Training evolution</h2>" in (out / "report.html").read_text()


@pytest.mark.parametrize("args,msg", [
    (["slice", "--dataset", "digits", "--width", "8"], "give three samples (--samples)"),
    (["slice", "--dataset", "moons", "--samples", "0,1"], "three distinct non-negative"),
    (["slice", "--dataset", "moons", "--samples", "0,1,x"], "three comma-separated integers"),
    (["slice", "--dataset", "moons", "--samples", "0,1,99999"], "out of range"),
    (["slice", "--dataset", "moons", "--classes", "0,1,7"], "class 7 has no test sample"),
    (["slice", "--dataset", "moons", "--samples", "0,1,2", "--classes", "0,1,2"], "not both"),
    (["slice", "--model", "/nonexistent/run"], "no trained model at"),
    (["evolution", "--datasets", "moons,mnist", "--epochs", "1"], "dataset must be one of"),
    (["evolution", "--snapshots", "0,2,1", "--epochs", "2"], "must be increasing"),
    (["evolution", "--snapshots", "0,5", "--epochs", "2"], "snapshot epoch must be"),
    (["evolution", "--widths", "16,x"], "expected comma-separated numbers"),
    (["evolution", "--widths", "16,2.5"], "width must be an integer"),
    (["evolution", "--epochs", "-1"], "--epochs: must be an integer >= 0"),
    (["evolution", "--tol", "0"], "--tol: must be a finite number in (0, inf)"),
])
def test_one_line_errors(tmp_path, capsys, args, msg):
    err = user_error(args + ["--out", str(tmp_path / "o"), "-q"], capsys)
    assert msg in err, err
