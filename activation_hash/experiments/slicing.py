"""The ``activation-hash slice`` command and the slice helpers of the experiments.

- :func:`run_slice`: the exact region map of a plane through three samples of a model's data
  (chosen by index, or the first test sample of each of three classes), or of the input plane
  of a 2-D-input model over its data's box: ``slice_<tag>.png`` / ``.svg`` and
  ``slice_<tag>.json`` (faces, decision-boundary segments, faces per predicted class, the
  anchors) in the run directory, then its ``report.html`` is refreshed.
- :func:`pick_samples` / :func:`parse_ids`: the three samples of a slice.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from activation_hash.fileio import atomic_write_json
from activation_hash.validation import check_int

__all__ = ["run_slice", "pick_samples", "parse_ids"]

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
        pr = slices.sampled_plane_regions(*args, box=box, resolution=resolution, margin=margin)
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
    png = slices.region_map(pr, out / f"slice_{tag}.png", title=title)
    svg = slices.region_map(pr, out / f"slice_{tag}.svg", title=title)
    atomic_write_json(out / f"slice_{tag}.json", res, indent=1)
    report = write_report(out, "activation-hash slice")
    (say or (lambda s: None))(f"{len(pr)} faces, {res['decision_boundary_segments']} decision-"
                              f"boundary segments ({tag}) -> {png}; report: {report}")
    return {**res, "out": out, "png": png, "svg": svg, "regions": pr, "report": report}

