"""Plots of sweep results (matplotlib ``Figure`` objects, no pyplot state; PNG via Agg).

- :func:`factor_figure`: redundancy (train and test) vs a factor, and the probe accuracies
  (K-NN, K-Means purity and Hungarian, logistic regression, on test codes) with the network's
  own test accuracy vs the same factor; mean over seeds, error bars = standard deviation.
- :func:`sweep_plots`: a sweep directory's plots (one per factor, the phase chart of a
  size x time/samples grid).
- :func:`save_png`: write a figure as PNG (atomically, :mod:`activation_hash.fileio`).
"""
from __future__ import annotations

import math
from pathlib import Path

__all__ = ["factor_figure", "history_figure", "save_png", "sweep_plots", "ACCURACY_SERIES",
           "pick_rows", "SIZE_FACTORS", "TIME_FACTORS"]

ACCURACY_SERIES = [("knn_test", "K-NN (k=9, Hamming)"), ("kmeans_purity_test", "K-Means purity"),
                   ("kmeans_hungarian_test", "K-Means Hungarian"), ("logreg_test", "logistic regression"),
                   ("acc_test", "network")]
_LOG_FACTORS = {"width", "n_train", "epochs", "weight_decay", "lr"}
SIZE_FACTORS = ("width", "depth")  # the y of a phase chart
TIME_FACTORS = ("epochs", "n_train")  # its x


def pick_rows(rows: list[dict], where: dict | None = None) -> list[dict]:
    """Rows whose columns equal every ``where`` item (numbers compared as floats)."""
    def same(a, b):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return str(a) == str(b)
    return [r for r in rows if all(k in r and same(r[k], v) for k, v in (where or {}).items())]


def _stats(rows, factor, col):
    groups: dict = {}
    for r in rows:
        v = r.get(col)
        if v is None or v == "":
            continue
        v = float(v)
        if not math.isnan(v):
            groups.setdefault(r[factor], []).append(v)
    keys = sorted(groups, key=lambda k: (isinstance(k, str), k))
    means = [sum(groups[k]) / len(groups[k]) for k in keys]
    stds = [math.sqrt(sum((v - m) ** 2 for v in groups[k]) / len(groups[k])) for k, m in zip(keys, means)]
    return keys, means, stds


def factor_figure(rows: list[dict], factor: str, *, where: dict | None = None,
                  title: str | None = None):
    """Two panels vs ``factor``: redundancy ratio (train, test) and accuracies (test).

    ``where`` keeps only matching rows (e.g. ``{"epochs": 30}`` in a width x epochs grid).
    Returns a ``matplotlib.figure.Figure``; its axes are labelled (``factor`` on x,
    "redundancy ratio R" / "accuracy" on y).
    """
    from matplotlib.figure import Figure

    rows = pick_rows(rows, where)
    if not rows:
        raise ValueError(f"no rows to plot for factor {factor!r} with {where!r}")
    if factor not in rows[0]:
        raise ValueError(f"rows have no column {factor!r}; columns: {sorted(rows[0])}")
    categorical = any(isinstance(r[factor], (str, bool)) for r in rows)
    fig = Figure(figsize=(10, 4), dpi=100)
    ax_r, ax_a = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)

    def xs_of(keys):
        return list(range(len(keys))) if categorical else [float(k) for k in keys]

    for col, label in [("redundancy_train", "train"), ("redundancy_test", "test")]:
        keys, m, s = _stats(rows, factor, col)
        if keys:
            ax_r.errorbar(xs_of(keys), m, yerr=s, marker="o", capsize=3, label=label)
    for col, label in ACCURACY_SERIES:
        keys, m, s = _stats(rows, factor, col)
        if keys:
            ax_a.errorbar(xs_of(keys), m, yerr=s, marker="o", capsize=3, label=label,
                          linestyle="--" if col == "acc_test" else "-")
    keys = sorted({r[factor] for r in rows}, key=lambda k: (isinstance(k, str), k))
    for ax in (ax_r, ax_a):
        ax.set_xlabel(factor)
        if categorical:
            ax.set_xticks(range(len(keys)), [str(k) for k in keys])
        elif factor in _LOG_FACTORS and min(float(k) for k in keys) > 0 and \
                max(float(k) for k in keys) / min(float(k) for k in keys) >= 10:
            ax.set_xscale("log")
            ax.set_xticks([float(k) for k in keys], [str(k) for k in keys])
            ax.minorticks_off()
        elif factor in _LOG_FACTORS and float(min(keys)) == 0 and len(keys) > 2 and \
                max(float(k) for k in keys) >= 10:
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xticks([float(k) for k in keys], [str(k) for k in keys])
            ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_r.set_ylabel("redundancy ratio R")
    ax_r.set_ylim(-0.03, 1.03)
    ax_r.set_title("redundancy (N - distinct codes) / N")
    ax_a.set_ylabel("accuracy")
    ax_a.set_title("categorization on codes (test)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_png(fig, path) -> Path:
    """Save ``fig`` as a PNG at ``path`` (Agg canvas); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from activation_hash.fileio import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:  # a crash never leaves a torn PNG
        fig.savefig(tmp, format="png")
    return path


def history_figure(history: list[dict], title: str | None = None):
    """Training curves: loss, and train/validation accuracy, vs epoch (a ``Figure``)."""
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("no training history to plot (0 epochs)")
    ep = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    ax_l, ax_a = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax_l.plot(ep, [h["loss"] for h in history], marker=".")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("training loss")
    ax_a.plot(ep, [h["train_acc"] for h in history], marker=".", label="train (running)")
    if any(not math.isnan(h["val_acc"]) for h in history):
        ax_a.plot(ep, [h["val_acc"] for h in history], marker=".", label="validation")
    ax_a.set_xlabel("epoch")
    ax_a.set_ylabel("accuracy")
    ax_a.legend(fontsize=8)
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def sweep_plots(rows: list[dict], factors, out, thresholds=None) -> list[Path]:
    """Write a sweep's plots into ``out``: ``factor_<f>.png`` for every factor but ``seed``
    (the other factors at their largest value) and, for a grid of exactly one model size
    (:data:`SIZE_FACTORS`) x one training time or sample size (:data:`TIME_FACTORS`), its
    phase chart (``phase_<y>_x_<x>.png`` / ``.csv``, with ``thresholds``). Returns the PNGs."""
    from activation_hash.experiments.phase import Thresholds, write_phase

    out = Path(out)
    made = []
    grid = [f for f in factors if f != "seed"]
    for f in grid:
        where = {}
        for g in grid:
            if g != f:
                vals = sorted({r[g] for r in rows}, key=lambda v: (isinstance(v, str), v))
                where[g] = vals[-1]
        desc = ", ".join(f"{k}={v}" for k, v in where.items())
        made.append(save_png(factor_figure(rows, f, where=where,
                                           title=f"vs {f}" + (f" ({desc})" if desc else "")),
                             out / f"factor_{f}.png"))
    ys = [f for f in grid if f in SIZE_FACTORS]
    xs = [f for f in grid if f in TIME_FACTORS]
    if ys and xs and len(grid) == 2:
        made.append(write_phase(rows, out, xs[0], ys[0], thresholds or Thresholds())["png"])
    return made
