"""The demo (``activation-hash demo``, ``make demo``): the paper's picture on digits in seconds.

A one-hidden-layer MLP (Linear -> BatchNorm -> ReLU, Adam) on scikit-learn's digits:

- ``width``: widths 1..64 trained 20 epochs, all probes (``1_width.png``);
- ``width_x_epochs``: widths x checkpoints 0..20 epochs, K-NN only (``2_epochs_width16.png``, the
  phase chart ``3_phase_width_x_epochs``);
- ``width_x_samples``: widths 2, 8, 32 x 100, 300, 1348 training samples, 10 epochs, K-NN only
  (the phase chart ``4_phase_width_x_samples``);

- ``depth``: depths 1..4 at width 32 (no BatchNorm), 20 epochs: K-NN, the network's accuracy
  and the exact space folding of 16 test paths (``5_folding_depth.png``: folding vs depth next
  to the test accuracy);
each sweep in its subdirectory, its table copied as ``results_<name>.csv``, the width sweep's
rows as ``results.json`` (the report's table) and one ``report.html``. :func:`demo_configs`
gives the three :class:`~activation_hash.experiments.sweep.SweepConfig`, :func:`run_demo`
runs them (resuming, like every sweep).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from activation_hash.validation import check_int

__all__ = ["DEMO_WIDTHS", "DEMO_EPOCHS", "demo_configs", "run_demo", "demo_summary"]

DEMO_WIDTHS = [1, 2, 4, 8, 16, 32, 64]
DEMO_EPOCHS = [0, 1, 3, 6, 10, 20]
DEMO_DEPTHS = [1, 2, 3, 4]
_MODEL = {"arch": "mlp", "depth": 1, "batch_norm": True}
_TRAIN = {"lr": 1e-2, "batch_size": 64, "lr_step": 10, "lr_gamma": 0.3}


def demo_configs(seed: int = 0) -> dict:
    """``{"width", "width_x_epochs", "width_x_samples"}`` -> the demo's sweep configs."""
    from activation_hash.experiments.sweep import SweepConfig

    seed = check_int(seed, "seed")
    data = {"name": "digits"}
    return {
        "width": SweepConfig(factors={"width": DEMO_WIDTHS}, data=data, model=_MODEL,
                             train=dict(_TRAIN, epochs=max(DEMO_EPOCHS)), seeds=[seed],
                             probes="all"),
        "width_x_epochs": SweepConfig(factors={"width": DEMO_WIDTHS, "epochs": DEMO_EPOCHS},
                                      data=data, model=_MODEL, train=_TRAIN, seeds=[seed],
                                      probes="knn"),
        "width_x_samples": SweepConfig(factors={"width": [2, 8, 32], "n_train": [100, 300, 1348]},
                                       data=data, model=_MODEL, train=dict(_TRAIN, epochs=10),
                                       seeds=[seed], probes="knn"),
        "depth": SweepConfig(factors={"depth": DEMO_DEPTHS}, data=data,
                             model={"arch": "mlp", "width": 32, "batch_norm": False},
                             train=dict(_TRAIN, epochs=max(DEMO_EPOCHS)), seeds=[seed],
                             measures=["collisions", "knn", "accuracy", "folding"]),
    }


def run_demo(out=None, *, seed: int = 0, thresholds=None, progress: bool = False,
             say: Callable[[str], None] | None = None, settings: dict | None = None) -> dict:
    """Run the demo into ``out`` (see the module docstring; None: a new ``runs/demo-<time>``);
    ``thresholds``: the phase charts'
    :class:`~activation_hash.experiments.phase.Thresholds`; ``say(line)`` receives the
    progress line and the summary (:func:`demo_summary`).

    Returns ``{"out", "rows": {sweep name: rows}, "phase", "phase_samples"`` (the
    :func:`~activation_hash.experiments.phase.write_phase` dicts), ``"regimes"`` (cells per
    regime of the width x epochs chart), ``"report"}``.
    """
    from activation_hash.experiments.geometry import depth_folding_figure
    from activation_hash.experiments.phase import Thresholds, regime_counts, write_phase
    from activation_hash.experiments.plots import factor_figure, save_png
    from activation_hash.experiments.report import write_report
    from activation_hash.experiments.runs import new_run_dir, write_settings
    from activation_hash.experiments.sweep import run_sweep
    from activation_hash.fileio import atomic_write_bytes, atomic_write_json

    out = new_run_dir("demo", out)
    say = say or (lambda line: None)
    cfgs = demo_configs(seed)
    th = thresholds or Thresholds()
    write_settings(out, settings, width_sweep=cfgs["width"].to_dict(),
                   time_sweep=cfgs["width_x_epochs"].to_dict(),
                   size_sweep=cfgs["width_x_samples"].to_dict())
    say(f"demo: digits, 1-hidden-layer MLP (Linear -> BN -> ReLU); widths {DEMO_WIDTHS} x "
        f"epochs {DEMO_EPOCHS}, then widths x sample sizes -> {out}")
    rows = {name: run_sweep(cfg, out / name, progress=progress) for name, cfg in cfgs.items()}
    last, time_rows = rows["width"], rows["width_x_epochs"]
    save_png(factor_figure(last, "width", title=f"width sweep after {max(DEMO_EPOCHS)} epochs"),
             out / "1_width.png")
    save_png(factor_figure(time_rows, "epochs", where={"width": 16},
                           title="training time, width 16"), out / "2_epochs_width16.png")
    ph = write_phase(time_rows, out, "epochs", "width", th, name="3_phase_width_x_epochs")
    ph2 = write_phase(rows["width_x_samples"], out, "n_train", "width", th,
                      name="4_phase_width_x_samples")
    save_png(depth_folding_figure(rows["depth"], "digits, MLP width 32: folding vs depth"),
             out / "5_folding_depth.png")
    for name in cfgs:
        atomic_write_bytes(out / f"results_{name}.csv", (out / name / "results.csv").read_bytes())
    # the report's results table: the width sweep
    atomic_write_json(out / "results.json", {"rows": last}, indent=None, default=str)
    report = write_report(out, "activation-hash demo: digits, one-hidden-layer MLP")
    res = {"out": out, "rows": rows, "phase": ph, "phase_samples": ph2,
           "regimes": regime_counts(ph["table"]), "report": report}
    for line in demo_summary(res):
        say(line)
    return res


def demo_summary(res: dict) -> list[str]:
    """The demo's printed figures: per width R_train, R_test, K-NN and network test accuracy,
    then the regimes of the width x epochs chart and the two charts' paths."""
    lines = [f"  width {r['width']:3d}: R_train={r['redundancy_train']:.3f} "
             f"R_test={r['redundancy_test']:.3f} knn={r.get('knn_test', float('nan')):.3f} "
             f"net={r['acc_test']:.3f}" for r in res["rows"]["width"]]
    lines += [f"  depth {r['depth']}: folding mean={r['folding_mean']:.4f} "
              f"max={r['folding_max']:.4f} net={r['acc_test']:.3f}" for r in res["rows"]["depth"]]
    lines.append(f"phase chart (width x epochs) regimes: {res['regimes']}; "
                 f"{Path(res['phase']['png'])}, {Path(res['phase_samples']['png'])}")
    return lines
