"""The ``activation-hash slice`` command and the slice helpers of the experiments.

- :func:`run_slice`: the exact region map of a plane through three samples of a model's data
  (chosen by index, or the first test sample of each of three classes), or of the input plane
  of a 2-D-input model over its data's box: ``slice_<tag>.png`` / ``.svg`` and
  ``slice_<tag>.json`` (faces, decision-boundary segments, faces per predicted class, the
  anchors) in the run directory, then its ``report.html`` is refreshed.
- :func:`box_counts`: exact regions in the box and in the convex hull of 2-D data
  (:func:`activation_hash.slices.regions_in_box`).
- :func:`draw_map`: the region map PNG / SVG (:func:`activation_hash.slices.region_map`).

Both helpers call :mod:`activation_hash.slices`; where an early version of it lacks one of
those functions, a plain implementation here stands in (same outputs).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import torch

from activation_hash.fileio import atomic_path, atomic_write_json
from activation_hash.validation import check_choice, check_int

__all__ = ["run_slice", "box_counts", "draw_map", "pick_samples", "parse_ids"]

Say = Callable[[str], None] | None


def parse_ids(text, what: str) -> list[int]:
    """``"0,5,9"`` (or a list) -> three distinct non-negative ints; ValueError otherwise."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        ids = [int(str(i).strip()) for i in items]
    except ValueError:
        raise ValueError(f"{what} must be three comma-separated integers, got {text!r}") from None
    if len(ids) != 3 or len(set(ids)) != 3 or min(ids) < 0:
        raise ValueError(f"{what} must be three distinct non-negative integers, got {text!r}")
    return ids


def pick_samples(x: torch.Tensor, y: torch.Tensor, *, samples=None, classes=None
                 ) -> tuple[torch.Tensor, list[int]]:
    """Three inputs ``[3, *shape]`` and their indices: ``samples`` (indices into ``x``) or, for
    ``classes``, the first sample of each class."""
    if (samples is None) == (classes is None):
        raise ValueError("give three samples (by index) or three classes, not both")
    if samples is not None:
        idx = parse_ids(samples, "samples")
        if max(idx) >= len(x):
            raise ValueError(f"sample index {max(idx)} is out of range (the test set has "
                             f"{len(x)} samples)")
    else:
        idx = []
        for c in parse_ids(classes, "classes"):
            hit = (y == c).nonzero()
            if not len(hit):
                raise ValueError(f"class {c} has no test sample (classes present: "
                                 f"{sorted(set(y.tolist()))})")
            idx.append(int(hit[0]))
    return x[idx], idx


# ---- regions in the box and hull of 2-D data -------------------------------------------------

def box_counts(model, x: torch.Tensor) -> dict:
    """``{"box": int, "hull": int}``: exact linear regions of a 2-D-input ``model`` meeting the
    bounding box / the convex hull of the points ``x [N, 2]`` (with positive area)."""
    from activation_hash import slices

    if hasattr(slices, "regions_in_box"):
        r = slices.regions_in_box(model, x)
        return {"box": int(r["box"]), "hull": int(r["hull"])}
    return _box_counts(model, x)


def _box_counts(model, x):
    from scipy.spatial import ConvexHull

    from activation_hash import polygons as pg
    from activation_hash.slices import plane_regions

    pts = x.detach().double()
    lo, hi = pts.amin(0), pts.amax(0)
    window = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
    pr = plane_regions(model, box=window)
    verts, nv = pg.cat_polys([(f[None], torch.tensor([f.shape[0]])) for f in pr.faces])
    hull = torch.from_numpy(pts.numpy()[ConvexHull(pts.numpy()).vertices])  # CCW
    R = max(abs(w) for w in window)
    for i in range(len(hull)):
        p, q = hull[i], hull[(i + 1) % len(hull)]
        d = q - p  # left of p -> q is inside: -d_v (u - p_u) + d_u (v - p_v) >= 0
        c = torch.tensor([float(d[1] * p[0] - d[0] * p[1]), float(-d[1]), float(d[0])],
                         dtype=torch.float64).expand(len(verts), 3)
        verts, nv = pg.clip(verts, nv, c, R, True)
    keep = nv > 0
    area = pg.area(verts).abs()
    tiny = 1e-18 * (window[1] - window[0]) * (window[3] - window[2])
    return {"box": len(pr), "hull": int((keep & (area > tiny)).sum())}


# ---- region maps ----------------------------------------------------------------------------

def draw_map(pr, path, *, title: str | None = None, fmt: str | None = None) -> Path:
    """The region map of ``pr`` (a ``PlaneRegions``) at ``path`` (PNG or SVG by suffix or
    ``fmt``): faces coloured by a hash of their code, edges thin, decision boundary bold,
    anchors marked."""
    from activation_hash import slices

    if hasattr(slices, "region_map"):
        return Path(slices.region_map(pr, path, fmt=fmt, title=title))
    return _draw_map(pr, path, title=title, fmt=fmt)


def _draw_map(pr, path, *, title=None, fmt=None):
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.figure import Figure

    path = Path(path)
    fmt = check_choice(fmt or path.suffix.lstrip(".").lower(), "fmt", ("png", "svg"))
    words = pr.codes.codes.numpy().astype(np.uint64) if len(pr) else np.zeros((0, 1), np.uint64)
    h = np.full(len(words), 1469598103934665603, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(words.shape[1]):
            h = (h ^ words[:, j]) * np.uint64(1099511628211)
            h ^= h >> np.uint64(29)
    rgb = np.stack([(h >> np.uint64(s)) % np.uint64(256) for s in (8, 24, 40)], 1) / 255.0
    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.add_collection(PolyCollection([f.numpy() for f in pr.faces], facecolors=0.35 + 0.6 * rgb,
                                     edgecolors="0.25", linewidths=0.3))
    if pr.decision_boundary.shape[0]:
        ax.add_collection(LineCollection(pr.decision_boundary.numpy(), colors="k",
                                         linewidths=2.2))
    if pr.anchors.shape[0]:
        a = pr.anchors.numpy()
        ax.scatter(a[:, 0], a[:, 1], marker="*", s=140, c="w", edgecolors="k", zorder=3)
    u0, u1, v0, v1 = pr.window
    ax.set_xlim(u0, u1)
    ax.set_ylim(v0, v1)
    ax.set_aspect("equal")
    ax.set_title(title or f"{len(pr)} regions" + (" (sampled)" if pr.sampled else ""),
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt)
    return path


# ---- the command ----------------------------------------------------------------------------

def run_slice(out=None, model=None, *, arch: dict | None = None, data: dict | None = None,
              data_root=None, samples: Sequence[int] | str | None = None,
              classes: Sequence[int] | str | None = None, seed: int = 0,
              margin: float = 0.25, max_faces: int = 1_000_000, sampled: bool = False,
              resolution: int = 256, settings: dict | None = None, say: Say = None) -> dict:
    """The exact region map of a 2-D slice of a trained model (``model=`` a ``train`` run) or
    of ``arch`` at initialization (on ``data``): the plane through three test samples
    (``samples`` by index, or the first test sample of each of three ``classes``), or, for a
    2-D-input model without them, its input plane over the test data's box. ``sampled``:
    a raster of ``resolution`` x ``resolution`` (models that are not piecewise linear).

    Writes ``out/slice_<tag>.png``, ``.svg`` and ``.json`` (``tag``: ``samples-0-5-9``,
    ``classes-3-5-8`` or ``box``), refreshes ``out/report.html``; returns the JSON dict plus
    ``"out"``, ``"png"``, ``"svg"``, ``"regions"`` (the ``PlaneRegions``)."""
    from activation_hash import slices
    from activation_hash.experiments.geometry import model_and_data
    from activation_hash.experiments.report import write_report
    from activation_hash.experiments.runs import new_run_dir, write_settings

    max_faces = check_int(max_faces, "max_faces", min=1)
    net, ds, what = model_and_data(model, arch=arch, data=data, data_root=data_root, seed=seed)
    x, y = ds.x_test, ds.y_test
    if samples is None and classes is None:
        if tuple(x.shape[1:]) != (2,):
            raise ValueError(f"give three samples (--samples) or classes (--classes): the "
                             f"model's input is {list(x.shape[1:])}, not a 2-D plane")
        lo, hi = x.double().amin(0), x.double().amax(0)
        anchors, idx, tag = None, [], "box"
        box = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
    else:
        anchors, idx = pick_samples(x, y, samples=samples, classes=classes)
        tag = ("samples-" + "-".join(map(str, idx)) if samples is not None else
               "classes-" + "-".join(map(str, parse_ids(classes, "classes"))))
        box = None
    out = new_run_dir("slice", out)
    write_settings(out, settings, model=what, samples=idx, slice=tag)
    args = (net,) if anchors is None else (net, anchors[0], anchors[1], anchors[2])
    if sampled:
        pr = slices.sampled_plane_regions(*args, box=box, resolution=resolution)
    elif anchors is None:
        pr = slices.plane_regions(net, box=box, max_faces=max_faces)
    else:
        pr = slices.plane_regions(*args, margin=margin, max_faces=max_faces)
    labels = pr.labels.tolist()
    res = {"model": what, "slice": tag, "samples": idx,
           "sample_labels": [int(y[i]) for i in idx], "faces": len(pr),
           "faces_per_class": {str(c): labels.count(c) for c in sorted(set(labels))},
           "decision_boundary_segments": int(pr.decision_boundary.shape[0]),
           "window": list(pr.window), "anchors_uv": pr.anchors.tolist(), "sampled": pr.sampled,
           "layers": list(pr.codes.layout.names)}
    title = (f"{len(pr)} regions{' (sampled)' if pr.sampled else ''}: {tag}\n{what}")
    png = draw_map(pr, out / f"slice_{tag}.png", title=title)
    svg = draw_map(pr, out / f"slice_{tag}.svg", title=title)
    atomic_write_json(out / f"slice_{tag}.json", res, indent=1)
    report = write_report(out, "activation-hash slice")
    (say or (lambda s: None))(f"{len(pr)} faces, {res['decision_boundary_segments']} decision-"
                              f"boundary segments ({tag}) -> {png}; report: {report}")
    return {**res, "out": out, "png": png, "svg": svg, "regions": pr, "report": report}


def load_slice_rows(run_dir) -> list[dict]:
    """The ``slice_*.json`` records of a run directory (for the report)."""
    return [json.loads(p.read_text()) for p in sorted(Path(run_dir).glob("slice_*.json"))]
