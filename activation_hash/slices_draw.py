"""Region maps of 2-D slices (:class:`~activation_hash.slices.PlaneRegions`) as PNG or SVG.

Faces are filled with a colour hashed from their neural code (the same code gives the same
colour in every map), region boundaries drawn thin, the decision boundary bold, the anchor
inputs marked. A sampled (raster) slice is drawn as its raster and says "sampled" in the
title. Files are written through :func:`activation_hash.fileio.atomic_path`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from activation_hash.fileio import atomic_path
from activation_hash.validation import check_choice

__all__ = ["region_map", "code_colors"]

_MIX = torch.tensor([0x9E3779B97F4A7C15 - 2 ** 64, 0xBF58476D1CE4E5B9 - 2 ** 64,
                     0x94D049BB133111EB - 2 ** 64], dtype=torch.int64)


def code_colors(codes: torch.Tensor) -> torch.Tensor:
    """float ``[N, 3]`` RGB in [0.3, 0.95] from int64 codes ``[N, W]`` (a hash of the row)."""
    h = torch.zeros(codes.shape[0], dtype=torch.int64)
    for w in range(codes.shape[1]):
        h = (h ^ codes[:, w]) * _MIX[w % 3]
        h = h ^ (h >> 29)
    rgb = torch.stack([(h >> s) & 255 for s in (8, 24, 40)], 1).double() / 255
    return 0.3 + 0.65 * rgb


def region_map(regions, path, *, fmt: str | None = None, title: str | None = None) -> Path:
    """Write the region map of ``regions`` to ``path`` (``fmt`` "png" or "svg", else the
    file's suffix) and return the path."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection, PolyCollection

    path = Path(path)
    fmt = fmt if fmt is not None else path.suffix.lstrip(".").lower()
    check_choice(fmt, "fmt (or the file's suffix)", ("png", "svg"))
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a string, got {type(title).__name__}")
    colors = code_colors(regions.codes.codes).numpy()
    u0, u1, v0, v1 = regions.window
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text in SVGs
    fig, ax = plt.subplots(figsize=(6, 6 * (v1 - v0) / (u1 - u0) if u1 > u0 else 6), dpi=150)
    try:
        if regions.sampled and regions.grid is not None:
            ax.imshow(colors[regions.grid.numpy()], origin="lower", extent=(u0, u1, v0, v1),
                      interpolation="nearest")
        else:
            ax.add_collection(PolyCollection([f.numpy() for f in regions.faces],
                                             facecolors=colors, edgecolors=(0.15, 0.15, 0.15),
                                             linewidths=0.15))
        if len(regions.decision_boundary):
            ax.add_collection(LineCollection(regions.decision_boundary.numpy(), colors="k",
                                             linewidths=2.0))
        if len(regions.anchors):
            a = regions.anchors.numpy()
            ax.scatter(a[:, 0], a[:, 1], s=60, c="white", edgecolors="k", zorder=5)
            for i, (x, y) in enumerate(a):
                ax.annotate("abc"[i] if i < 3 else str(i), (x, y), xytext=(5, 5),
                            textcoords="offset points", fontsize=10, zorder=6)
        ax.set_xlim(u0, u1)
        ax.set_ylim(v0, v1)
        ax.set_aspect("equal")
        what = f"{len(regions)} {'codes' if regions.sampled else 'faces'}"
        head = title if title is not None else "linear regions"
        ax.set_title(f"{head} ({what}{', sampled' if regions.sampled else ''})")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
