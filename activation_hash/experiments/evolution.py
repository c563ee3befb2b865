"""How training refines the linear regions of a 2-D-input ReLU MLP (Qi & Wei, arXiv 2310.18725).

The protocol of their toy experiments: an MLP 16-16-16 (ReLU) on 2-D data sets of 1000 samples
(:func:`toy_data`: moons, Gaussian quantiles, circles, spirals, random points with random
labels), Adam lr 1e-3 with weight decay 1e-4, batch 32, 100 epochs, snapshots at the epochs of
:data:`SNAPSHOTS`. A fractional epoch ``e`` is the model after ``round(e * B)`` optimizer steps,
``B = ceil(N / batch)`` the steps of one epoch (:func:`snapshot_steps`; epoch 0.1 of 1000
samples in batches of 32 = 3 steps). At each snapshot: the exact number of linear regions in
the data's box and in its convex hull (:func:`activation_hash.slices.regions_in_box`), the
accuracy, and the exact region map of the box (:func:`~activation_hash.slices.plane_regions` +
:func:`~activation_hash.slices.region_map`).

:func:`run_evolution` writes, into a run directory: ``evolution/<dataset>/epoch_<e>.png`` (one
region map per snapshot), ``evolution_<dataset>.png`` (the snapshots as one grid) and
``evolution_<dataset>.gif`` (an animation, one frame per snapshot), ``evolution_regions.png``
(regions in the box and hull, and accuracy, vs epoch, every data set on one plot: the
"intricate inputs leave fewer regions" comparison on the same network), ``evolution.json``
(one row per data set and snapshot) and refreshes ``report.html``. With ``minwidth=True`` it
also runs the 1-D minimum-width experiment (:mod:`activation_hash.experiments.minwidth`).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from activation_hash.fileio import atomic_path, atomic_write_json
from activation_hash.validation import check_choice, check_float, check_int

__all__ = ["SNAPSHOTS", "TOY_DATASETS", "QUICK", "toy_data", "snapshot_steps",
           "train_with_snapshots", "evolve", "run_evolution", "write_gif", "regions_figure",
           "grid_figure", "epoch_tag"]

SNAPSHOTS = (0, 0.1, 0.5, 1, 2, 4, 6, 8, 10, 15, 20, 30, 50, 80, 100)
TOY_DATASETS = ("moons", "quantiles", "circles", "spirals", "random")
QUICK = {"epochs": 2, "snapshots": (0, 0.1, 0.5, 1, 2), "n_samples": 200, "widths": (8, 8),
         "datasets": ("moons", "random")}  # the --quick mode (tests, a first look)

Say = Callable[[str], None] | None


# ---- data -----------------------------------------------------------------------------------

def toy_data(name: str, n_samples: int = 1000, seed: int = 0, *, noise: float | None = None):
    """A 2-class 2-D data set, each axis scaled onto ``[-1, 1]`` (so every set fills the box
    ``[-1, 1]^2``, the box Qi & Wei enumerate regions in).

    ``name``: ``moons`` (scikit-learn, noise 0.1), ``quantiles`` (``make_gaussian_quantiles``:
    a Gaussian split by a radius quantile), ``circles`` (noise 0.05, factor 0.5), ``spirals``
    (two interleaved arms of 1.5 turns, noise 0.03), ``random`` (uniform points, uniformly
    random labels). ``noise`` overrides the default jitter. Returns ``(x float32 [N, 2],
    y int64 [N])``, seeded.
    """
    name = check_choice(name, "dataset", TOY_DATASETS)
    n = check_int(n_samples, "n_samples", min=4)
    seed = check_int(seed, "seed", min=0)
    rng = np.random.default_rng(seed)
    jitter = {"moons": 0.1, "circles": 0.05, "spirals": 0.03}.get(name, 0.0)
    if noise is not None:
        jitter = check_float(noise, "noise", min=0.0)
    if name == "moons":
        from sklearn.datasets import make_moons
        x, y = make_moons(n, noise=jitter, random_state=seed)
    elif name == "circles":
        from sklearn.datasets import make_circles
        x, y = make_circles(n, noise=jitter, factor=0.5, random_state=seed)
    elif name == "quantiles":
        from sklearn.datasets import make_gaussian_quantiles
        x, y = make_gaussian_quantiles(n_samples=n, n_features=2, n_classes=2, random_state=seed)
    elif name == "spirals":
        y = np.arange(n) % 2
        t = np.sqrt(rng.uniform(0.02, 1.0, n))  # uniform density along the arm
        angle = 3.0 * np.pi * t + np.pi * y
        x = np.stack([t * np.cos(angle), t * np.sin(angle)], 1) + rng.normal(0, jitter, (n, 2))
    else:
        x, y = rng.uniform(-1, 1, (n, 2)), rng.integers(0, 2, n)
    lo, hi = x.min(0), x.max(0)
    x = 2 * (x - lo) / np.where(hi > lo, hi - lo, 1.0) - 1
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


# ---- training with fractional-epoch snapshots ----------------------------------------------

def _check_snapshots(snapshots, epochs: int) -> list[float]:
    try:
        snaps = [check_float(e, "snapshot epoch", min=0.0, max=float(epochs)) for e in snapshots]
    except TypeError:
        raise TypeError(f"snapshots must be numbers (epochs), got {snapshots!r}") from None
    if not snaps:
        raise ValueError("give at least one snapshot epoch")
    if any(b <= a for a, b in zip(snaps, snaps[1:])):
        raise ValueError(f"snapshot epochs must be increasing, got {snaps}")
    return snaps


def snapshot_steps(snapshots: Sequence[float], steps_per_epoch: int) -> list[int]:
    """Optimizer steps taken before each snapshot: ``round(e * steps_per_epoch)`` (0.1 of an
    epoch of 32 steps = 3 steps; epoch 2 = 64 steps). int list, same length."""
    spe = check_int(steps_per_epoch, "steps_per_epoch", min=1)
    return [int(round(float(e) * spe)) for e in snapshots]


def train_with_snapshots(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                         epochs: int = 100, snapshots: Sequence[float] = SNAPSHOTS,
                         batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 1e-4,
                         seed: int = 0,
                         on_snapshot: Callable[[float, int, nn.Module], None] | None = None
                         ) -> list[dict]:
    """Train ``model`` on ``x [N, D]`` / ``y [N]`` (Adam, coupled L2 ``weight_decay``, cross
    entropy, a seeded reshuffle every epoch, the last batch of an epoch smaller) and call
    ``on_snapshot(epoch, steps, model)`` (model in eval mode, no gradient state touched) at every
    snapshot epoch (see :func:`snapshot_steps`). Returns one dict per snapshot: ``epoch``,
    ``steps`` (optimizer steps so far), ``samples_seen``, ``loss`` (mean training loss of the
    steps since the previous snapshot; NaN at step 0)."""
    epochs = check_int(epochs, "epochs", min=0)
    batch_size = check_int(batch_size, "batch_size", min=1)
    lr = check_float(lr, "lr", min=0.0, min_open=True)
    weight_decay = check_float(weight_decay, "weight_decay", min=0.0)
    snaps = _check_snapshots(snapshots, epochs)
    n = int(y.shape[0])
    if n == 0 or x.shape[0] != n:
        raise ValueError(f"x [{x.shape[0]}, ...] and y [{n}] must hold the same number (>= 1) "
                         "of samples")
    spe = -(-n // batch_size)
    targets = snapshot_steps(snaps, spe)
    g = torch.Generator().manual_seed(check_int(seed, "seed", min=0))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    rows, steps, seen, k = [], 0, 0, 0
    run_loss, run_steps = 0.0, 0

    def fire():
        nonlocal k, run_loss, run_steps
        while k < len(snaps) and targets[k] == steps:
            model.eval()
            rows.append({"epoch": snaps[k], "steps": steps, "samples_seen": seen,
                         "loss": run_loss / run_steps if run_steps else float("nan")})
            if on_snapshot is not None:
                on_snapshot(snaps[k], steps, model)
            run_loss, run_steps, k = 0.0, 0, k + 1

    fire()
    for _ in range(epochs):
        if k == len(snaps):
            break
        order = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            b = order[i:i + batch_size]
            model.train()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[b]), y[b])
            loss.backward()
            opt.step()
            steps, seen = steps + 1, seen + len(b)
            run_loss, run_steps = run_loss + float(loss.detach()), run_steps + 1
            fire()
    model.eval()
    return rows


def epoch_tag(epoch: float) -> str:
    """File-name tag of a snapshot epoch: ``0.1 -> '000.1'``, ``15 -> '015'`` (6 decimals:
    snapshots closer than 1e-6 epoch would share a file)."""
    whole = int(math.floor(epoch))
    frac = f"{epoch - whole:.6f}".rstrip("0").rstrip(".")[1:] if epoch != whole else ""
    return f"{whole:03d}{frac}"


# ---- one data set ---------------------------------------------------------------------------

def evolve(dataset: str, out, *, epochs: int = 100, snapshots: Sequence[float] = SNAPSHOTS,
           widths: Sequence[int] = (16, 16, 16), n_samples: int = 1000, seed: int = 0,
           batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 1e-4,
           maps: bool = True) -> list[dict]:
    """Train the MLP ``2 -> widths -> 2`` on :func:`toy_data` ``(dataset)`` and measure every
    snapshot; with ``maps``, region maps go to ``out/evolution/<dataset>/epoch_<tag>.png``.
    Returns one row per snapshot: ``dataset``, ``epoch``, ``steps``, ``samples_seen``,
    ``loss``, ``accuracy`` (on the training data), ``regions_box`` / ``regions_hull`` (exact),
    ``faces`` (of the region map: equals ``regions_box``), ``boundary_segments`` (pieces of the
    decision boundary), ``seconds`` (measuring), ``map`` (PNG path relative to ``out``)."""
    from activation_hash.experiments.models import MLP
    from activation_hash.slices import region_map, regions_in_box

    widths = [check_int(w, "width", min=1) for w in widths]
    x, y = toy_data(dataset, n_samples, seed)
    torch.manual_seed(seed)
    model = MLP((2,), 2, width=widths)
    out = Path(out)
    mapdir = out / "evolution" / dataset
    if maps:
        mapdir.mkdir(parents=True, exist_ok=True)
    measured: list[dict] = []

    def measure(epoch, steps, net):
        t0 = time.perf_counter()
        with torch.no_grad():
            acc = float((net(x).argmax(1) == y).double().mean())
        counts = regions_in_box(net, x)
        row = {"dataset": dataset, "accuracy": acc, "regions_box": counts["box"],
               "regions_hull": counts["hull"]}
        if maps:
            pr = counts["regions"]  # the exact faces of the data's box = [-1, 1]^2
            path = mapdir / f"epoch_{epoch_tag(epoch)}.png"
            region_map(pr, path, title=f"{dataset}, epoch {epoch:g}: {row['regions_box']} "
                                       f"regions (hull {row['regions_hull']}), acc {acc:.2f}")
            row.update(faces=len(pr), boundary_segments=int(pr.decision_boundary.shape[0]),
                       map=str(path.relative_to(out)))
        row["seconds"] = time.perf_counter() - t0
        measured.append(row)

    rows = train_with_snapshots(model, x, y, epochs=epochs, snapshots=snapshots,
                                batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                seed=seed, on_snapshot=measure)
    return [{"dataset": dataset, **r, **{k: v for k, v in m.items() if k != "dataset"}}
            for r, m in zip(rows, measured)]


# ---- figures --------------------------------------------------------------------------------

def _frames(out: Path, rows: list[dict]) -> list[np.ndarray]:
    from matplotlib.image import imread

    return [imread(out / r["map"]) for r in rows if r.get("map")]


def grid_figure(images: list[np.ndarray], titles: list[str], suptitle: str = "", cols: int = 5):
    """The region maps ``images`` (RGB(A) arrays) as one grid ``Figure``, one titled panel each."""
    from matplotlib.figure import Figure

    if not images:
        raise ValueError("no images to put in a grid")
    cols = max(1, min(cols, len(images)))
    rows = -(-len(images) // cols)
    fig = Figure(figsize=(2.6 * cols, 2.7 * rows + 0.4), dpi=100)
    for i, (im, t) in enumerate(zip(images, titles)):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(im)
        ax.set_title(t, fontsize=8)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def write_gif(images: list[np.ndarray], path, *, fps: float = 2.0, titles=None) -> Path:
    """An animated GIF of ``images`` (one frame each, equal-sized panels) at ``path``, written
    with matplotlib's ``PillowWriter`` through the atomic writer. Returns the path."""
    from matplotlib.animation import PillowWriter
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not images:
        raise ValueError("no frames for the GIF")
    path = Path(path)
    h, w = images[0].shape[:2]
    fig = Figure(figsize=(w / 100, h / 100 + (0.3 if titles else 0)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, h / (h + (30 if titles else 0))))
    ax.axis("off")
    shown = ax.imshow(images[0])
    label = fig.text(0.5, 0.995, "", ha="center", va="top", fontsize=9)
    writer = PillowWriter(fps=fps)
    # PIL picks the format from the name: the temporary file ends in .gif
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.gif")
    with atomic_path(path, tmp=tmp) as t:
        with writer.saving(fig, str(t), dpi=100):
            for i, im in enumerate(images):
                shown.set_data(im)
                if titles:
                    label.set_text(titles[i])
                writer.grab_frame()
    return path


def regions_figure(rows: list[dict], title: str = "linear regions during training"):
    """Regions in the box (solid) and hull (dashed), and accuracy, vs epoch (symlog x), one
    colour per data set, all on the same axes (a ``Figure``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), dpi=100)
    ax_r, ax_a = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    for i, name in enumerate(names):
        rs = [r for r in rows if r["dataset"] == name]
        ep = [r["epoch"] for r in rs]
        c = f"C{i}"
        ax_r.plot(ep, [r["regions_box"] for r in rs], marker="o", ms=3, color=c,
                  label=f"{name} box")
        ax_r.plot(ep, [r["regions_hull"] for r in rs], ls="--", marker=".", color=c,
                  label=f"{name} hull")
        ax_a.plot(ep, [r["accuracy"] for r in rs], marker="o", ms=3, color=c, label=name)
    for ax in (ax_r, ax_a):
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("epoch (symlog)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    ax_r.set_ylabel("exact linear regions")
    ax_r.set_title("regions in the data's box (solid) and convex hull (dashed)", fontsize=9)
    ax_a.set_ylabel("training accuracy")
    ax_a.set_title("accuracy", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---- the command ----------------------------------------------------------------------------

def run_evolution(out=None, *, datasets: Sequence[str] = TOY_DATASETS, epochs: int = 100,
                  snapshots: Sequence[float] = SNAPSHOTS, widths: Sequence[int] = (16, 16, 16),
                  n_samples: int = 1000, seed: int = 0, quick: bool = False,
                  minwidth: bool = True, minwidth_options: dict | None = None,
                  settings: dict | None = None, say: Say = None) -> dict:
    """The training-evolution protocol on every data set of ``datasets`` (see the module
    docstring) into the run directory ``out``; ``quick`` replaces epochs, snapshots,
    n_samples, widths and datasets by :data:`QUICK` (and the min-width run by its quick mode)
    for tests and a first look. Returns ``{"out", "rows", "summary" ({dataset: {"first",
    "last"}} rows), "gifs", "plots", "minwidth" (its dict or None), "report"}``."""
    from activation_hash.experiments.plots import save_png
    from activation_hash.experiments.report import write_report
    from activation_hash.experiments.runs import new_run_dir, write_settings

    if quick:
        datasets, epochs, snapshots = QUICK["datasets"], QUICK["epochs"], QUICK["snapshots"]
        widths, n_samples = QUICK["widths"], QUICK["n_samples"]
    if isinstance(datasets, str) or not datasets:
        raise ValueError(f"datasets must be a non-empty list of {TOY_DATASETS}, got {datasets!r}")
    datasets = [check_choice(d, "dataset", TOY_DATASETS) for d in datasets]
    epochs = check_int(epochs, "epochs", min=0)
    snapshots = _check_snapshots(snapshots, epochs)
    widths = [check_int(w, "width", min=1) for w in widths]
    if not widths:
        raise ValueError("widths must name at least one hidden layer")
    out = new_run_dir("evolution", out)
    resolved = {"datasets": datasets, "epochs": epochs, "snapshots": snapshots,
                "widths": widths, "n_samples": n_samples, "seed": seed, "batch_size": 32,
                "lr": 1e-3, "weight_decay": 1e-4, "optimizer": "adam", "quick": quick}
    write_settings(out, settings, evolution=resolved)
    say = say or (lambda s: None)
    rows, gifs, plots, summary = [], [], [], {}
    t0 = time.perf_counter()
    for name in datasets:
        rs = evolve(name, out, epochs=epochs, snapshots=snapshots, widths=widths,
                    n_samples=n_samples, seed=seed)
        rows += rs
        summary[name] = {"first": rs[0], "last": rs[-1]}
        frames = _frames(out, rs)
        titles = [f"epoch {r['epoch']:g}: {r['regions_box']} / {r['regions_hull']}" for r in rs]
        arch = "-".join(map(str, widths))
        plots.append(save_png(grid_figure(frames, titles, f"{name}: MLP 2-{arch}-2, regions in "
                                          "box / hull at each snapshot"),
                              out / f"evolution_{name}.png"))
        gifs.append(write_gif(frames, out / f"evolution_{name}.gif", titles=titles))
        say(f"{name}: regions box/hull {rs[0]['regions_box']}/{rs[0]['regions_hull']} at epoch "
            f"{rs[0]['epoch']:g} -> {rs[-1]['regions_box']}/{rs[-1]['regions_hull']} at epoch "
            f"{rs[-1]['epoch']:g}, accuracy {rs[-1]['accuracy']:.3f}")
    plots.insert(0, save_png(regions_figure(rows, f"MLP 2-{'-'.join(map(str, widths))}-2: "
                                                  "exact regions during training"),
                             out / "evolution_regions.png"))
    atomic_write_json(out / "evolution.json", {"settings": resolved, "rows": rows,
                                               "summary": summary,
                                               "seconds": time.perf_counter() - t0}, indent=1)
    mw = None
    if minwidth:
        from activation_hash.experiments.minwidth import run_minwidth

        mw = run_minwidth(out, quick=quick, report=False, say=say, **(minwidth_options or {}))
    report = write_report(out, "activation-hash evolution")
    say(f"{len(rows)} snapshots -> {out / 'evolution.json'}; report: {report}")
    return {"out": out, "rows": rows, "summary": summary, "gifs": gifs, "plots": plots,
            "minwidth": mw, "report": report}
