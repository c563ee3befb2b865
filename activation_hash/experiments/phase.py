"""The activation hash phase chart: regimes over (model size x training time or sample size).

Every cell of the chart is one (x, y) setting of a sweep (x: ``epochs`` or ``n_train``; y: a
model size, ``width`` or ``depth``); its redundancy ``R`` (default ``redundancy_train``) and
categorization accuracy ``A`` (default ``knn_test``) are the means over the seeds of that cell.
The regime of a cell, with thresholds ``r_hi > r_lo`` and ``acc_eps`` (:class:`Thresholds`):

- **under-expressive** if ``R >= r_hi`` (many samples share a linear region);
- **sufficiently-expressive** if ``R <= r_lo`` and ``A >= A_sat - acc_eps``, where ``A_sat``
  is the saturated accuracy: the largest cell accuracy of the whole chart
  (``saturation="global"``), of the cell's row (same model size, ``"row"``) or of its column
  (same x, ``"column"``);
- **critically-expressive** otherwise (``R < r_hi``, but R not yet about 0 or the accuracy
  still below its saturated value);
- **n/a** when R or A of the cell is NaN (not measured, e.g. no samples): it is no regime.

:func:`phase_table` labels the cells, :func:`phase_figure` draws the heatmap (colour: R; letter:
the regime), :func:`write_phase` saves the PNG and the CSV table behind it, :func:`regime_counts`
counts the cells of each regime.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from activation_hash.validation import check_choice, check_float

__all__ = ["Thresholds", "phase_table", "phase_figure", "write_phase", "regime_counts", "REGIMES"]

REGIMES = ("under", "critical", "sufficient", "n/a")
_LETTER = {"under": "U", "critical": "C", "sufficient": "S", "n/a": "n/a"}


@dataclass
class Thresholds:
    """Regime thresholds (see the module docstring for the exact rule)."""

    r_hi: float = 0.1
    r_lo: float = 0.01
    acc_eps: float = 0.02
    saturation: str = "global"
    redundancy: str = "redundancy_train"
    accuracy: str = "knn_test"

    def __post_init__(self):
        self.r_hi = check_float(self.r_hi, "r_hi", min=0.0, max=1.0)
        self.r_lo = check_float(self.r_lo, "r_lo", min=0.0, max=1.0)
        self.acc_eps = check_float(self.acc_eps, "acc_eps", min=0.0)
        self.saturation = check_choice(self.saturation, "saturation", ("global", "row", "column"))
        if not self.r_lo < self.r_hi:
            raise ValueError(f"thresholds need 0 <= r_lo < r_hi <= 1, got r_lo={self.r_lo}, "
                             f"r_hi={self.r_hi}")


def _mean(values):
    vals = [float(v) for v in values if v is not None and v != "" and not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else float("nan")


def _num(v):
    try:
        f = float(v)
        return int(f) if f.is_integer() else f
    except (TypeError, ValueError):
        return v


def phase_table(rows: list[dict], x: str = "epochs", y: str = "width",
                thresholds: Thresholds | None = None) -> list[dict]:
    """Label every (x, y) cell of ``rows`` (sweep rows; seeds averaged).

    Returns cells sorted by (y, x): ``{x, y, redundancy, accuracy, n, saturated, regime}``
    (``x``/``y`` keys are the column names given).
    """
    th = thresholds or Thresholds()
    cells: dict = {}
    for r in rows:
        if x not in r or y not in r:
            raise ValueError(f"phase chart needs columns {x!r} and {y!r}; rows have {sorted(r)}")
        for col in (th.redundancy, th.accuracy):
            if col not in r:
                raise ValueError(f"phase chart needs column {col!r}; rows have {sorted(r)}")
        cells.setdefault((_num(r[y]), _num(r[x])), []).append(r)
    out = []
    for (yv, xv), rs in cells.items():
        out.append({x: xv, y: yv, "redundancy": _mean(r[th.redundancy] for r in rs),
                    "accuracy": _mean(r[th.accuracy] for r in rs), "n": len(rs)})
    out.sort(key=lambda c: (c[y], c[x]))

    def sat(c):
        if th.saturation == "row":
            pool = [d for d in out if d[y] == c[y]]
        elif th.saturation == "column":
            pool = [d for d in out if d[x] == c[x]]
        else:
            pool = out
        accs = [d["accuracy"] for d in pool if not math.isnan(d["accuracy"])]
        return max(accs) if accs else float("nan")

    for c in out:
        c["saturated"] = sat(c)
        R, A = c["redundancy"], c["accuracy"]
        if math.isnan(R) or math.isnan(A):
            c["regime"] = "n/a"
        elif R >= th.r_hi:
            c["regime"] = "under"
        elif R <= th.r_lo and A >= c["saturated"] - th.acc_eps:
            c["regime"] = "sufficient"
        else:
            c["regime"] = "critical"
    return out


def phase_figure(table: list[dict], x: str = "epochs", y: str = "width", title: str | None = None,
                 thresholds: Thresholds | None = None):
    """Heatmap of the cells: colour = redundancy, letter U/C/S = regime, text = accuracy
    ("n/a" on a grey cell where the regime is n/a).

    Returns a matplotlib ``Figure`` (no pyplot state) whose single axes is labelled with the
    x and y column names.
    """
    import matplotlib
    import numpy as np
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    xs = sorted({c[x] for c in table}, key=lambda v: (isinstance(v, str), v))
    ys = sorted({c[y] for c in table}, key=lambda v: (isinstance(v, str), v))
    grid = np.full((len(ys), len(xs)), np.nan)
    fig = Figure(figsize=(max(6.5, 2.0 + 0.75 * len(xs)), max(4.0, 1.6 + 0.5 * len(ys))), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for c in table:
        grid[ys.index(c[y]), xs.index(c[x])] = c["redundancy"]
    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="#d9d9d9")  # NaN R: grey
    im = ax.imshow(grid, origin="lower", aspect="auto", cmap=cmap, norm=Normalize(0.0, 1.0))
    for c in table:
        i, j = ys.index(c[y]), xs.index(c[x])
        txt = _LETTER[c["regime"]] if c["regime"] == "n/a" \
            else f"{_LETTER[c['regime']]}\n{c['accuracy']:.2f}"
        ax.text(j, i, txt, ha="center", va="center", fontsize=7,
                color="white" if c["redundancy"] > 0.5 else "black")
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_yticks(range(len(ys)), [str(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if title is None:
        title = "phase chart: U under-, C critically-, S sufficiently-expressive"
        th = thresholds
        title += "\n" + (f"U: R >= {th.r_hi}; S: R <= {th.r_lo} and acc >= sat - {th.acc_eps} "
                         f"({th.saturation}); number: {th.accuracy}" if th else "number: accuracy")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, label="redundancy ratio R")
    fig.tight_layout()
    return fig


def write_phase(rows: list[dict], out_dir, x: str = "epochs", y: str = "width",
                thresholds: Thresholds | None = None, name: str | None = None) -> dict:
    """Label, draw and save: ``<name>.png`` and ``<name>.csv`` in ``out_dir``.

    Returns ``{"png": path, "csv": path, "table": cells, "thresholds": dict}``.
    """
    from activation_hash.fileio import atomic_write_text

    th = thresholds or Thresholds()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = name or f"phase_{y}_x_{x}"
    table = phase_table(rows, x, y, th)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[y, x, "redundancy", "accuracy", "saturated", "n", "regime"])
    w.writeheader()
    w.writerows(table)
    atomic_write_text(out / f"{name}.csv", buf.getvalue())
    from activation_hash.experiments.plots import save_png

    save_png(phase_figure(table, x, y, thresholds=th), out / f"{name}.png")
    return {"png": out / f"{name}.png", "csv": out / f"{name}.csv", "table": table,
            "thresholds": asdict(th)}


def regime_counts(table: list[dict]) -> dict[str, int]:
    """``{regime: number of cells}`` of a phase table, in the order regimes first occur."""
    counts: dict[str, int] = {}
    for c in table:
        counts[c["regime"]] = counts.get(c["regime"], 0) + 1
    return counts
