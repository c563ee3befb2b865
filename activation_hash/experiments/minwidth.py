"""The 1-D minimum-width experiment (Qi & Wei, arXiv 2310.18725): how many ReLU units a
one-hidden-layer network needs to express a continuous piecewise-linear function of one input.

A one-hidden-layer ReLU network with n units has at most n + 1 linear pieces on a line (each
unit switches at most once), so a target with k pieces on [0, 1] needs ``n >= k - 1`` (the
*bound*). Exactly (:func:`exact_min_width`): ``k - 1`` units suffice only when the slope of the
first piece is minus a sum of some of the k - 1 slope changes (the units facing left are active
on the first piece); a generic target needs ``k`` (one unit spends its kink outside [0, 1] on
the linear part).

:func:`random_target` draws k-piece targets (random breakpoints at least ``0.5 / k`` apart,
random slopes changing by at least 1 at every breakpoint, so a fit within ``tol < 1 / (8 k)``
must place a kink near every breakpoint); :func:`fit_width` trains networks of one width (Adam
on a grid of [0, 1], mean squared error, then the output layer refit by least squares);
:func:`min_width` tries widths 1, 2, ... and reports the first that fits to max abs error
``<= tol`` on a dense grid, with the exact piece count of the fitted network
(:func:`~activation_hash.regions.regions_in_interval`). :func:`run_minwidth` writes
``minwidth.json`` and ``minwidth.png``. Training may miss widths that suffice; the rows say
what was found, next to the bound and the exact minimum.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from activation_hash.fileio import atomic_write_json
from activation_hash.validation import check_float, check_int

__all__ = ["Target", "random_target", "exact_min_width", "shallow_net", "fit_width",
           "min_width", "max_error", "run_minwidth", "minwidth_figure"]

Say = Callable[[str], None] | None
QUICK = {"ks": (2, 3), "restarts": 1, "steps": 600}


@dataclass(frozen=True)
class Target:
    """A continuous piecewise-linear function on [0, 1]: ``breaks`` float64 ``[k + 1]``
    (``0 = b_0 < ... < b_k = 1``) and its ``values`` there ``[k + 1]``."""

    breaks: np.ndarray
    values: np.ndarray

    @property
    def k(self) -> int:
        return len(self.breaks) - 1

    @property
    def slopes(self) -> np.ndarray:
        return np.diff(self.values) / np.diff(self.breaks)

    def __call__(self, x) -> np.ndarray:
        return np.interp(np.asarray(x, dtype=np.float64), self.breaks, self.values)


def random_target(k: int, seed: int = 0, *, min_jump: float = 1.0, max_slope: float = 3.0
                  ) -> Target:
    """A seeded k-piece target: inner breakpoints uniform on (0, 1), at least ``0.5 / k``
    apart; slopes uniform on ``[-max_slope, max_slope]`` changing by at least ``min_jump`` at
    every breakpoint; the value at 0 uniform on [-0.5, 0.5]."""
    k = check_int(k, "k", min=1)
    seed = check_int(seed, "seed", min=0)
    rng = np.random.default_rng(seed)
    while True:
        b = np.concatenate([[0.0], np.sort(rng.uniform(0, 1, k - 1)), [1.0]])
        if np.diff(b).min() >= 0.5 / k:
            break
    s = [rng.uniform(-max_slope, max_slope)]
    while len(s) < k:
        c = rng.uniform(-max_slope, max_slope)
        if abs(c - s[-1]) >= min_jump:
            s.append(c)
    v = np.concatenate([[0.0], np.cumsum(np.array(s) * np.diff(b))]) + rng.uniform(-0.5, 0.5)
    return Target(b, v)


def exact_min_width(target: Target, *, atol: float = 1e-9) -> int:
    """The fewest ReLU units of a one-hidden-layer network equal to ``target`` on [0, 1]:
    ``k - 1`` when the first slope is minus a subset sum of the slope changes (``atol``), else
    ``k`` (0 for a constant). Enumerates the subsets: k <= 21."""
    if target.k > 21:
        raise ValueError(f"exact_min_width enumerates 2^(k-1) subsets; k = {target.k} > 21")
    s = target.slopes
    jumps = np.diff(s)
    for r in range(len(jumps) + 1):
        for sub in itertools.combinations(jumps, r):
            if abs(s[0] + sum(sub)) <= atol:
                return target.k - 1
    return target.k


def shallow_net(width: int) -> nn.Sequential:
    """``Linear(1, width) -> ReLU -> Linear(width, 1)``, float64: input ``[B, 1]`` -> ``[B, 1]``."""
    width = check_int(width, "width", min=1)
    return nn.Sequential(nn.Linear(1, width), nn.ReLU(), nn.Linear(width, 1)).double()


def max_error(model: nn.Module, target: Target, n: int = 4001) -> float:
    """Max abs difference of ``model`` and ``target`` on ``n`` equally spaced points of [0, 1]."""
    x = torch.linspace(0, 1, n, dtype=torch.float64)[:, None]
    with torch.no_grad():
        y = model(x.to(next(model.parameters()).dtype)).double()[:, 0]
    return float((y - torch.from_numpy(target(x[:, 0].numpy()))).abs().max())


def fit_width(target: Target, width: int, *, seed: int = 0, steps: int = 3000,
              lr: float = 1e-2, grid: int = 257) -> tuple[nn.Sequential, float]:
    """Train a :func:`shallow_net` of ``width`` units on ``target`` (Adam, full batch on
    ``grid`` points, mean squared error; ``steps`` at ``lr`` then ``steps // 3`` at
    ``lr / 10``; then the output layer refit by least squares). Restart ``seed`` 0 puts one
    unit's kink at -0.1 (the linear part) and the others evenly on [0, 1), facing right; other
    seeds draw kinks and orientations at random. Returns ``(net, max_error on 4001 points)``."""
    steps = check_int(steps, "steps", min=0)
    lr = check_float(lr, "lr", min=0.0, min_open=True)
    net = shallow_net(width)
    g = torch.Generator().manual_seed(check_int(seed, "seed", min=0))
    with torch.no_grad():
        if seed == 0:
            c = torch.arange(width, dtype=torch.float64) / width
            c[0] = -0.1
            sign = torch.ones(width, dtype=torch.float64)
        else:
            c = torch.rand(width, generator=g, dtype=torch.float64)
            sign = torch.where(torch.rand(width, generator=g) < 0.5, -1.0, 1.0).double()
        net[0].weight[:, 0] = sign
        net[0].bias[:] = -sign * c
    x = torch.linspace(0, 1, check_int(grid, "grid", min=2), dtype=torch.float64)[:, None]
    y = torch.from_numpy(target(x[:, 0].numpy()))[:, None]
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for i in range(steps + steps // 3):
        if i == steps:
            for group in opt.param_groups:
                group["lr"] = lr / 10
        opt.zero_grad(set_to_none=True)
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        feats = torch.cat([torch.relu(net[0](x)), torch.ones_like(x)], 1)
        sol = torch.linalg.lstsq(feats, y).solution[:, 0]
        if torch.isfinite(sol).all():
            net[2].weight[0] = sol[:-1]
            net[2].bias[0] = sol[-1]
    return net.eval(), max_error(net, target)


def min_width(target: Target, *, tol: float = 0.01, max_width: int | None = None,
              restarts: int = 3, steps: int = 3000, start: int = 1) -> dict:
    """Widths ``start, start + 1, ..., max_width`` (default ``k + 2``), ``restarts`` trainings
    each, until one fits ``target`` to max abs error ``<= tol``. Returns ``{"k", "bound" (k - 1),
    "exact_min_width", "min_width_found" (None: none fit), "max_error", "pieces" (exact pieces
    of the fitted net on [0, 1]), "tried": [{"width", "max_error", "pieces"}] (the best restart
    of each width), "pieces_within_bound" (every tried net has <= width + 1 pieces),
    "fit_has_k_pieces" (the fitted net has >= k pieces; None without a fit)}``."""
    from activation_hash.regions import regions_in_interval

    tol = check_float(tol, "tol", min=0.0, min_open=True)
    restarts = check_int(restarts, "restarts", min=1)
    max_width = check_int(max_width if max_width is not None else target.k + 2, "max_width",
                          min=1)
    tried, found = [], None
    for w in range(check_int(start, "start", min=1), max_width + 1):
        best, best_net = None, None
        for r in range(restarts):
            net, err = fit_width(target, w, seed=r, steps=steps)
            if best is None or err < best["max_error"]:
                best, best_net = {"width": w, "max_error": err, "restart": r}, net
            if err <= tol:
                break
        # the exact walk once per width, for its best restart
        best["pieces"] = int(regions_in_interval(best_net, 0.0, 1.0).counts[0])
        tried.append(best)
        if best["max_error"] <= tol:
            found = best
            break
    return {"k": target.k, "bound": target.k - 1, "exact_min_width": exact_min_width(target),
            "min_width_found": found["width"] if found else None,
            "max_error": found["max_error"] if found else min(t["max_error"] for t in tried),
            "pieces": found["pieces"] if found else None, "tol": tol, "tried": tried,
            "pieces_within_bound": all(t["pieces"] <= t["width"] + 1 for t in tried),
            "fit_has_k_pieces": (found["pieces"] >= target.k) if found else None,
            "breaks": target.breaks.tolist(), "values": target.values.tolist()}


def minwidth_figure(rows: list[dict], title: str = "1-D minimum width"):
    """Smallest width found vs k pieces, next to the bound k - 1 and the exact minimum; the
    fitted nets' exact piece counts (a ``Figure``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    ks = sorted({r["k"] for r in rows})
    ax.plot(ks, [k - 1 for k in ks], color="k", ls="--", label="bound n >= k - 1")
    ax.plot(ks, ks, color="0.6", ls=":", label="n = k (generic exact minimum)")
    ax.scatter([r["k"] for r in rows], [r["exact_min_width"] for r in rows], marker="s",
               facecolors="none", edgecolors="C2", s=80, label="exact minimum (this target)")
    fit = [r for r in rows if r["min_width_found"] is not None]
    ax.scatter([r["k"] for r in fit], [r["min_width_found"] for r in fit], color="C0",
               label=f"smallest width trained to tol {rows[0]['tol']:g}" if rows else "")
    ax.scatter([r["k"] for r in fit], [r["pieces"] for r in fit], marker="x", color="C3",
               label="exact pieces of the fitted net")
    miss = [r for r in rows if r["min_width_found"] is None]
    if miss:
        ax.scatter([r["k"] for r in miss], [max(t["width"] for t in r["tried"]) for r in miss],
                   marker="v", color="C1", label="no fit up to this width")
    ax.set_xlabel("pieces k of the target")
    ax.set_ylabel("hidden units n  /  pieces")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def run_minwidth(out=None, *, ks: Sequence[int] = (2, 3, 4, 5, 6), targets_per_k: int = 1,
                 tol: float = 0.01, restarts: int = 3, steps: int = 3000, seed: int = 0,
                 quick: bool = False, report: bool = True, settings: dict | None = None,
                 say: Say = None) -> dict:
    """:func:`min_width` for ``targets_per_k`` random targets of every k in ``ks`` (seeds
    ``seed + 1000 k + i``) -> ``out/minwidth.json`` (``{"settings", "rows"}``) and
    ``out/minwidth.png``; with ``report`` (standalone) also ``settings.json`` and
    ``report.html``. ``quick`` uses :data:`QUICK` (ks 2, 3; one restart; 600 steps). Returns
    ``{"out", "rows", "png"}``."""
    from activation_hash.experiments.plots import save_png
    from activation_hash.experiments.runs import new_run_dir, write_settings

    if quick:
        ks, restarts, steps = QUICK["ks"], QUICK["restarts"], QUICK["steps"]
    ks = [check_int(k, "k", min=1) for k in ks]
    targets_per_k = check_int(targets_per_k, "targets_per_k", min=1)
    tol = check_float(tol, "tol", min=0.0, min_open=True)
    seed = check_int(seed, "seed", min=0)
    out = new_run_dir("minwidth", out)
    resolved = {"ks": ks, "targets_per_k": targets_per_k, "tol": tol, "restarts": restarts,
                "steps": steps, "seed": seed, "quick": quick}
    if report:
        write_settings(out, settings, minwidth=resolved)
    rows = []
    for k in ks:
        for i in range(targets_per_k):
            r = min_width(random_target(k, seed + 1000 * k + i), tol=tol, restarts=restarts,
                          steps=steps)
            rows.append({"target": i, **r})
            (say or (lambda s: None))(
                f"k={k} pieces: bound {k - 1}, exact minimum {r['exact_min_width']}, trained "
                f"fit at width {r['min_width_found']} (max error {r['max_error']:.4f}, "
                f"{r['pieces']} exact pieces)")
    atomic_write_json(out / "minwidth.json", {"settings": resolved, "rows": rows}, indent=1)
    png = save_png(minwidth_figure(rows, f"1-D minimum width, tol {tol:g}"), out / "minwidth.png")
    if report:
        from activation_hash.experiments.report import write_report

        write_report(out, "activation-hash minwidth")
    return {"out": out, "rows": rows, "png": png}
