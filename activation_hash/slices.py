"""Exact 2-D slices of the linear-region partition: a plane through three inputs (or the input
plane of a 2-D-input model) cut into the convex faces on which the network is affine.

Faces are split at each switch in forward order. On a face, once the earlier switches are
fixed, every unit's input at the next switch is affine in the plane coordinates,
``z = c0 + u cu + v cv``: a ReLU-like unit (or an ``abs`` / ``clamp`` kink) cuts the face on
its line ``z = 0``, a max-pool window on the lines where its argmax changes (the cells of the
upper envelope of the window's entries). Every face carries its pieces' affine maps forward.
All float64, vectorized over faces (Python loops run over layers and over the units that
cross one face, never over faces).

- plain chains (Linear / Conv / BatchNorm (eval) / ReLU / LeakyReLU / Flatten / Dropout (eval)
  / AvgPool modules in an ``nn.Sequential``): the coefficients ``[F, 3, *shape]`` of every
  face go through the layers as batched matmuls;
- any other piecewise-linear model (residual blocks, max-pooling, PReLU, abs, clamp...): the
  model runs under :class:`~activation_hash.switches.SwitchMode`, once per switch, on three
  rows per face (its centroid and the two plane directions, the directions sharing the
  centroid's decisions): the differences are the Jacobian columns.

Conventions: a unit is on where ``z > 0`` (as the recorder); a unit constant on a face
(``cu = cv = 0``) takes the sign of ``c0``, 0 counting as off; of two max-pool entries equal on
a face the first wins (as ``torch.argmax``). Vertices within ``TOL2`` (relative to the
window) of a line count as on it: no sliver faces. The codes are the ReLU-like patterns in the
recorder's layout; abs / clamp / max-pool switches split faces too, so neighbouring faces can
share a code.

Example::

    r = plane_regions(model, a, b, c)        # a, b, c: inputs of the model's per-sample shape
    len(r), r.faces[0], r.codes              # faces; [k, 2] vertices (u, v); CodeBook [F, W]
    r.decision_boundary                      # [E, 2, 2] segments where the arg-max changes
"""
from __future__ import annotations

import torch
from torch import nn

from activation_hash import polygons as pg
from activation_hash.layout import Layout
from activation_hash.record import find_sites
from activation_hash.regions_layers import plain_chain
from activation_hash.slices_core import (_MIN_AREA, NotPiecewiseLinearError, PlaneRegions,
                                         _as_input, _chain_slice, _codes, _general_slice,
                                         _hint, _outputs, _plane)
from activation_hash.slices_draw import region_map
from activation_hash.slices_sampled import sampled_plane_regions
from activation_hash.switches import walk_copy
from activation_hash.validation import check_float, check_int

__all__ = ["PlaneRegions", "plane_regions", "sampled_plane_regions", "regions_in_box",
           "region_map", "NotPiecewiseLinearError"]


def plane_regions(model: nn.Module, a=None, b=None, c=None, *, box=None, margin: float = 0.25,
                  max_faces: int = 1_000_000, layers: int | None = None) -> PlaneRegions:
    """The exact faces of a 2-D slice of a piecewise-linear model.

    Args:
        model: a piecewise-linear network in eval mode (copied, not changed).
        a, b, c: three inputs of the model's per-sample shape (not batched): the plane
            through them, ``origin`` their mean, ``basis`` orthonormal (b - a first); the
            window is the box of the three points plus ``margin`` times its larger side on
            each side (or ``box`` in plane coordinates, if given).
        box: without a, b, c: ``(x_min, x_max, y_min, y_max)`` of the input plane of a model
            with 2-D input (``[B, 2]``).
        max_faces: ValueError when the slice has more faces.
        layers: only the first ``layers`` ReLU-like sites (and the switches before them) cut
            the faces and make the codes; labels are then -1, no decision boundary.
    """
    margin = check_float(margin, "margin", min=0.0)
    max_faces = check_int(max_faces, "max_faces", min=1)
    origin, basis, window, anchors, in_shape = _plane(a, b, c, box, margin)
    try:
        wm = walk_copy(model)
    except NotPiecewiseLinearError as e:
        raise NotPiecewiseLinearError(_hint(e)) from None
    H = torch.stack([origin, basis[0], basis[1]]).view((1, 3) + in_shape)
    sites = find_sites(wm, H[0, :1])
    n_sites = -1  # every site cuts
    if layers is not None:
        layers = check_int(layers, "layers", min=0, max=len(sites))
        if layers < len(sites):
            n_sites = layers
        sites = sites[:layers]
    layout = Layout(tuple(s.name for s in sites), tuple(s.shape for s in sites))
    verts, nv = pg.rect(window)
    R = max(abs(w) for w in window)
    min_area = _MIN_AREA * (window[1] - window[0]) * (window[3] - window[2])
    chain = plain_chain(wm)
    with torch.no_grad():
        if chain is not None:
            verts, nv, stages, Y = _chain_slice(chain, H, verts, nv, R, min_area, max_faces,
                                                n_sites)
        else:
            try:
                verts, nv, stages, Y = _general_slice(wm, (origin, basis, in_shape), verts, nv,
                                                      R, min_area, max_faces, n_sites, layout)
            except NotPiecewiseLinearError as e:
                raise NotPiecewiseLinearError(_hint(e)) from None
        if Y is not None:
            labels, segs = _outputs(verts, nv, Y, R, min_area)
        else:
            labels = torch.full((verts.shape[0],), -1, dtype=torch.int64)
            segs = torch.zeros(0, 2, 2, dtype=torch.float64)
    faces = list(verts[torch.arange(verts.shape[1]) < nv[:, None]].split(nv.tolist()))
    return PlaneRegions(origin, basis, window, faces, _codes(stages, len(faces), layout),
                        labels, segs, anchors, False, in_shape)


def _hull(p: torch.Tensor) -> torch.Tensor:
    """Convex hull ``[H, 2]`` (counter-clockwise) of points ``[N, 2]`` (monotone chain)."""
    pts = sorted(set(map(tuple, p.tolist())))
    if len(pts) < 3:
        return torch.tensor(pts, dtype=torch.float64)

    def half(seq):
        out = []
        for q in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (q[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (q[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(q)
        return out[:-1]
    return torch.tensor(half(pts) + half(pts[::-1]), dtype=torch.float64)


def regions_in_box(model: nn.Module, data, *, hull: bool = True, **kwargs) -> dict:
    """Linear regions of a 2-D-input model around a data set ``[N, 2]``:
    ``{"box": faces of its bounding box, "hull": faces meeting the interior of its convex
    hull (None with hull=False), "bounds": the box, "hull_vertices": [H, 2], "regions": the
    PlaneRegions of the box}``. ``kwargs`` go to :func:`plane_regions`."""
    if hull not in (True, False):
        raise TypeError(f"hull must be True or False, got {hull!r}")
    x = _as_input(torch.as_tensor(data), "data")
    if x.dim() != 2 or x.shape[1] != 2 or x.shape[0] < 2:
        raise ValueError(f"data must be [N, 2] points (N >= 2), got {list(x.shape)}")
    lo, hi = x.amin(0), x.amax(0)
    if not (lo < hi).all():
        raise ValueError("the data's bounding box is flat (all points share an x or a y)")
    bounds = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
    r = plane_regions(model, box=bounds, **kwargs)
    out = {"box": len(r), "hull": None, "bounds": bounds, "regions": r,
           "hull_vertices": None}
    if hull:
        h = _hull(x)
        out["hull_vertices"] = h
        if h.shape[0] < 3:
            out["hull"] = 0
            return out
        verts, nv = r._padded()
        R = max(abs(w) for w in bounds)
        for p, q in zip(h.unbind(0), h.roll(-1, 0).unbind(0)):
            e = q - p   # left of p -> q: -(e_v) (u - p_u) + e_u (v - p_v) >= 0
            line = torch.stack([e[1] * p[0] - e[0] * p[1], -e[1], e[0]])
            verts, nv = pg.clip(verts, nv, line.expand(verts.shape[0], 3), R, False)
        total = (bounds[1] - bounds[0]) * (bounds[3] - bounds[2])
        out["hull"] = int(((nv > 0) & (pg.area(verts) > 1e-12 * total)).sum())
    return out
