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

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from activation_hash import polygons as pg
from activation_hash.codes import CodeBook
from activation_hash.layout import Layout
from activation_hash.ops import pack_signs
from activation_hash.record import find_sites
from activation_hash.regions import _AFFINE, _PASS, _chain
from activation_hash.switches import NotPiecewiseLinearError, walk_copy
from activation_hash.validation import check_float, check_int

__all__ = ["PlaneRegions", "plane_regions", "NotPiecewiseLinearError"]

_MIN_AREA = 1e-24  # relative to the window's area: pieces below are empty (zero area)


@dataclass(frozen=True)
class PlaneRegions:
    """The faces of a 2-D slice ``x = origin + u basis[0] + v basis[1]`` inside ``window``.

    Attributes:
        origin: float64 ``[D]`` (D: the per-sample input size; ``in_shape`` its shape).
        basis: float64 ``[2, D]`` (orthonormal for a plane through points).
        window: ``(u_min, u_max, v_min, v_max)``.
        faces: F tensors ``[k_i, 2]`` float64, each face's vertices (u, v), counter-clockwise.
        codes: :class:`CodeBook` ``[F]``, the neural code of each face (recorder layout).
        labels: int64 ``[F]``: arg-max class of the output at the face's centroid (1 output:
            1 where it is > 0, else 0); -1 where undefined (``layers`` cut the model short).
        decision_boundary: float64 ``[E, 2, 2]``: segments (u, v) where the arg-max changes.
        anchors: float64 ``[A, 2]``: (u, v) of the anchor inputs (3, or 0 for a box).
        sampled: True for :func:`sampled_plane_regions` (a raster, not exact).
        in_shape: the model's per-sample input shape.
        grid: sampled mode: int64 ``[R, R]`` face of each raster cell (row = v), else None.
    """

    origin: torch.Tensor
    basis: torch.Tensor
    window: tuple[float, float, float, float]
    faces: list[torch.Tensor]
    codes: CodeBook
    labels: torch.Tensor
    decision_boundary: torch.Tensor
    anchors: torch.Tensor
    sampled: bool
    in_shape: tuple[int, ...] = ()
    grid: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.faces)

    def to_input(self, uv) -> torch.Tensor:
        """Plane coordinates ``[..., 2]`` -> inputs ``[..., D]`` (reshape to ``in_shape``)."""
        uv = torch.as_tensor(uv, dtype=torch.float64)
        return self.origin + uv @ self.basis

    def areas(self) -> torch.Tensor:
        """float64 ``[F]``: the area of each face."""
        verts, _ = self._padded()
        return pg.area(verts)

    def _padded(self):
        if not self.faces:
            return torch.zeros(0, 3, 2, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
        return pg.cat_polys([(f[None], torch.tensor([f.shape[0]])) for f in self.faces])

    def locate(self, uv) -> torch.Tensor:
        """int64 ``[P]``: the face holding each point ``[P, 2]`` (-1 outside every face; a
        point on an edge goes to one of the faces meeting there)."""
        uv = torch.as_tensor(uv, dtype=torch.float64).reshape(-1, 2)
        out = torch.full((uv.shape[0],), -1, dtype=torch.int64)
        if self.grid is not None:
            u0, u1, v0, v1 = self.window
            R = self.grid.shape[0]
            i = ((uv[:, 1] - v0) / (v1 - v0) * R).floor().long()
            j = ((uv[:, 0] - u0) / (u1 - u0) * R).floor().long()
            ok = (i >= 0) & (i < R) & (j >= 0) & (j < R)
            out[ok] = self.grid[i[ok], j[ok]]
            return out
        verts, nv = self._padded()
        if not len(verts):
            return out
        lo, hi = verts.amin(1), verts.amax(1)
        nxt = verts.roll(-1, 1)
        eu, ev = nxt[..., 0] - verts[..., 0], nxt[..., 1] - verts[..., 1]
        scale = 1e-12 * max(abs(w) for w in self.window) + 1e-300
        chunk = max(1, 2 ** 24 // max(1, len(verts)))
        for s in range(0, uv.shape[0], chunk):
            p = uv[s:s + chunk]
            inbox = ((p[:, None] >= lo - scale) & (p[:, None] <= hi + scale)).all(-1)
            pi, fi = inbox.nonzero(as_tuple=True)
            if not pi.numel():
                continue
            q = p[pi]
            cr = (eu[fi] * (q[:, 1, None] - verts[fi, :, 1])
                  - ev[fi] * (q[:, 0, None] - verts[fi, :, 0]))
            inside = (cr >= -scale * (eu[fi].abs() + ev[fi].abs())).all(1)
            pi, fi = pi[inside], fi[inside]
            res = out[s:s + chunk]
            res[pi] = fi          # any of the faces meeting at the point
        return out


# ---- the split at one switch ------------------------------------------------------------

def _split(verts, nv, G, R, min_area, max_faces, what):
    """Cut every piece by one switch: G float64 ``[P, E, kw, 3]``: E events (a unit, a window)
    each choosing the largest of kw affine functions of (u, v). Returns the new pieces, the
    piece each came from ``[P']`` and the winner of each event at each new piece ``[P', E]``."""
    P, K, _ = verts.shape
    E, kw = G.shape[1], G.shape[2]
    valid = torch.arange(K) < nv[:, None]
    pairs_p, pairs_e = [], []
    chunk = max(1, 2 ** 22 // max(1, K * E * kw))
    for s in range(0, P, chunk):  # which events are not constant on which pieces
        g = G[s:s + chunk]
        val = torch.einsum("pkd,pead->pkea", verts[s:s + chunk], g[..., 1:]) + g[:, None, :, :, 0]
        am = val.argmax(-1)
        mixed = ((am != am[:, :1]) & valid[s:s + chunk, :, None]).any(1)
        p, e = mixed.nonzero(as_tuple=True)
        pairs_p.append(p + s)
        pairs_e.append(e)
    pp, pe = torch.cat(pairs_p), torch.cat(pairs_e)
    n_ev = torch.bincount(pp, minlength=P)
    start = torch.cumsum(n_ev, 0) - n_ev
    end = start + n_ev
    done_v, done_o = [(verts[n_ev == 0], nv[n_ev == 0])], [torch.nonzero(n_ev == 0)[:, 0]]
    act = torch.nonzero(n_ev > 0)[:, 0]
    av, an, ao, ptr = verts[act], nv[act], act, start[act]
    n_done = int(done_o[0].numel())
    while ao.numel():
        e = pe[ptr]
        g = G[ao, e]                                    # [A, kw, 3]
        val = torch.einsum("akd,amd->akm", av, g[..., 1:]) + g[:, None, :, 0]
        am = val.argmax(-1)
        mix = ((am != am[:, :1]) & (torch.arange(av.shape[1]) < an[:, None])).any(1)
        stay = (~mix).nonzero()[:, 0]
        go = mix.nonzero()[:, 0]
        cv, cn, src, _ = pg.argmax_cells(av[go], an[go], g[go], R, min_area)
        nv_, nn_ = pg.cat_polys([(av[stay], an[stay]), (cv, cn)])
        no = torch.cat([ao[stay], ao[go][src]])
        nptr = torch.cat([ptr[stay], ptr[go][src]]) + 1
        fin = nptr >= end[no]
        done_v.append((nv_[fin], nn_[fin]))
        done_o.append(no[fin])
        n_done += int(fin.sum())
        keep = ~fin
        av, an, ao, ptr = nv_[keep], nn_[keep], no[keep], nptr[keep]
        if n_done + ao.numel() > max_faces:
            raise ValueError(f"the slice reached {n_done + ao.numel()} faces at {what}, more "
                             f"than max_faces={max_faces}; raise max_faces or shrink the window")
    verts, nv = pg.cat_polys(done_v)
    origin = torch.cat(done_o)
    c = pg.centroid(verts, nv)
    g = G[origin]
    val = torch.einsum("pd,pead->pea", c, g[..., 1:]) + g[..., 0]
    return verts, nv, origin, val.argmax(-1)


def _kinks(Z: torch.Tensor) -> torch.Tensor:
    """Units' affine inputs ``[P, 3, n]`` -> events ``[P, n, 2, 3]``: max(0, z) (index 1: on)."""
    z = Z.transpose(1, 2)
    return torch.stack([torch.zeros_like(z), z], 2)


def _roll(Z: torch.Tensor) -> torch.Tensor:
    """Rows (const, du, dv) ``[P, 3, n]`` -> (c0, cu, cv) per unit ``[P, n, 3]``."""
    return Z.transpose(1, 2)


# ---- plain chains -----------------------------------------------------------------------

def _affine(m: nn.Module, H: torch.Tensor) -> torch.Tensor:
    """An affine layer on ``H [P, 3, *shape]``: row 0 the value at (0, 0), rows 1-2 the
    directions (the linear part only: no bias)."""
    P = H.shape[0]
    c, d = H[:, 0], H[:, 1:].flatten(0, 1)
    if isinstance(m, nn.Linear):
        dl = F.linear(d, m.weight)
    elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        dl = m._conv_forward(d, m.weight, None)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        scale = torch.rsqrt(m.running_var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight
        dl = d * scale.view((1, -1) + (1,) * (d.dim() - 2))
    else:
        dl = m(d) - m(torch.zeros_like(d[:1]))
    cl = m(c)
    return torch.cat([cl[:, None], dl.view((P, 2) + dl.shape[1:])], 1)


def _chain_slice(chain, H, verts, nv, R, min_area, max_faces, n_sites):
    """Faces of a chain: H float64 ``[1, 3, *in_shape]``. Returns pieces, per-site (words,
    parent) and the final coefficients ``[F, 3, n_out]`` (None when cut short)."""
    stages = []
    k = 0
    for m in chain:
        if k == n_sites:
            return verts, nv, stages, None
        if isinstance(m, _PASS):
            H = m(H.flatten(0, 1)).view((H.shape[0], 3) + m(H[:1, 0]).shape[1:])
            continue
        if isinstance(m, _AFFINE):
            H = _affine(m, H)
            continue
        slope = float(getattr(m, "negative_slope", 0.0) or 0.0)
        P = H.shape[0]
        Z = H.reshape(P, 3, -1)
        verts, nv, origin, win = _split(verts, nv, _kinks(Z), R, min_area, max_faces,
                                        f"site {k}")
        on = win.bool()
        H = H[origin]
        mask = on.view((on.shape[0], 1) + H.shape[2:])
        H = H * mask if slope == 0.0 else torch.where(mask, H, H * slope)
        stages.append((pack_signs(on.to(torch.float32) - 0.5), origin))
        k += 1
    return verts, nv, stages, H.reshape(H.shape[0], 3, -1)


def _codes(stages, n_final: int, layout: Layout) -> CodeBook:
    """Follow the parents backwards: every site's words for the final faces."""
    idx = torch.arange(n_final)
    words = []
    for w, parent in reversed(stages):
        if w is not None:
            words.append(w[idx])
        idx = parent[idx]
    words.reverse()
    codes = torch.cat(words, 1) if words else torch.zeros(n_final, 0, dtype=torch.int64)
    return CodeBook(codes, layout, meta={"kind": "plane faces"})


def _outputs(verts, nv, Y, R, min_area):
    """Labels ``[F]`` at the centroids and decision-boundary segments ``[E, 2, 2]`` from the
    final affine outputs Y ``[F, 3, C]``."""
    g = _roll(Y)                                          # [F, C, 3]
    if g.shape[1] == 1:
        g = torch.cat([torch.zeros_like(g), g], 1)        # sign: class 1 where y > 0
    c = pg.centroid(verts, nv)
    labels = (g[..., 0] + c[:, None, 0] * g[..., 1] + c[:, None, 1] * g[..., 2]).argmax(1)
    val = torch.einsum("fkd,fcd->fkc", verts, g[..., 1:]) + g[:, None, :, 0]
    am = val.argmax(-1)
    mixed = ((am != am[:, :1]) & (torch.arange(verts.shape[1]) < nv[:, None])).any(1)
    segs = torch.zeros(0, 2, 2, dtype=torch.float64)
    idx = mixed.nonzero()[:, 0]
    if idx.numel():
        cv, cn, src, cls = pg.argmax_cells(verts[idx], nv[idx], g[idx], R, min_area)
        gi = g[idx][src]                                   # [M, C, 3]
        nxt = torch.where(torch.arange(cv.shape[1]) + 1 < cn[:, None],
                          torch.arange(cv.shape[1]) + 1, 0)
        ends = cv.gather(1, nxt[..., None].expand(-1, -1, 2))
        own = gi.gather(1, cls[:, None, None].expand(-1, 1, 3))       # [M, 1, 3]
        diff = own - gi                                    # [M, C, 3]: >= 0 on the cell
        tol = 1e3 * pg.TOL2 * (diff[..., 0].abs() + (diff[..., 1].abs() + diff[..., 2].abs()) * R)

        def at(p):
            return (torch.einsum("mkd,mcd->mkc", p, diff[..., 1:]) + diff[:, None, :, 0]).abs()
        on = (at(cv) <= tol[:, None]) & (at(ends) <= tol[:, None])   # [M, K, C]
        later = torch.arange(g.shape[1]) > cls[:, None]              # each pair once
        edge = (on & later[:, None]).any(-1) & (torch.arange(cv.shape[1]) < cn[:, None])
        m, k = edge.nonzero(as_tuple=True)
        segs = torch.stack([cv[m, k], ends[m, k]], 1)
    return labels, segs


# ---- public -----------------------------------------------------------------------------

def _as_input(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x.detach().double()


def _check_box(box):
    if not isinstance(box, (tuple, list)) or len(box) != 4:
        raise TypeError(f"box must be (x_min, x_max, y_min, y_max), got {box!r}")
    box = tuple(check_float(v, f"box[{i}]") for i, v in enumerate(box))
    if not (box[0] < box[1] and box[2] < box[3]):
        raise ValueError(f"box must have x_min < x_max and y_min < y_max, got {box}")
    return box


def _plane(a, b, c, box, margin):
    """origin [D], basis [2, D], window, anchors [A, 2], in_shape."""
    if a is None:
        if box is None:
            raise TypeError("plane_regions needs three inputs a, b, c or a box")
        if b is not None or c is not None:
            raise TypeError("give a, b and c, or a box without inputs")
        return (torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64),
                _check_box(box), torch.zeros(0, 2, dtype=torch.float64), (2,))
    if b is None or c is None:
        raise TypeError("a plane through inputs needs three of them: a, b and c")
    a, b, c = _as_input(a, "a"), _as_input(b, "b"), _as_input(c, "c")
    if not (a.shape == b.shape == c.shape):
        raise ValueError(f"a, b and c must have one shape (the model's per-sample input), got "
                         f"{list(a.shape)}, {list(b.shape)} and {list(c.shape)}")
    in_shape = tuple(a.shape)
    a, b, c = a.flatten(), b.flatten(), c.flatten()
    origin = (a + b + c) / 3
    e0 = b - a
    n0 = e0.norm()
    e1 = c - a
    if n0 == 0:
        raise ValueError("a and b are the same point: the three inputs span no plane")
    e0 = e0 / n0
    e1 = e1 - (e1 @ e0) * e0
    if e1.norm() <= 1e-9 * max(float(n0), float((c - a).norm())):
        raise ValueError("a, b and c are collinear: they span no plane")
    e1 = e1 / e1.norm()
    basis = torch.stack([e0, e1])
    anchors = (torch.stack([a, b, c]) - origin) @ basis.T
    lo, hi = anchors.amin(0), anchors.amax(0)
    if box is not None:
        window = _check_box(box)
    else:
        pad = margin * float((hi - lo).max())
        window = (float(lo[0]) - pad, float(hi[0]) + pad, float(lo[1]) - pad, float(hi[1]) + pad)
    return origin, basis, window, anchors, in_shape


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
    wm = walk_copy(model)
    H = torch.stack([origin, basis[0], basis[1]]).view((1, 3) + in_shape)
    sites = find_sites(wm, H[0, :1])
    if layers is not None:
        layers = check_int(layers, "layers", min=0, max=len(sites))
        sites = sites[:layers]
    layout = Layout(tuple(s.name for s in sites), tuple(s.shape for s in sites))
    verts, nv = pg.rect(window)
    R = max(abs(w) for w in window)
    min_area = _MIN_AREA * (window[1] - window[0]) * (window[3] - window[2])
    chain = _chain(wm)
    n_sites = -1 if layers is None or layers == len(find_sites(wm, H[0, :1])) else layers
    with torch.no_grad():
        if chain is not None:
            verts, nv, stages, Y = _chain_slice(chain, H, verts, nv, R, min_area, max_faces,
                                                n_sites)
        else:
            raise NotImplementedError("general path")
        if Y is not None:
            labels, segs = _outputs(verts, nv, Y, R, min_area)
        else:
            labels = torch.full((verts.shape[0],), -1, dtype=torch.int64)
            segs = torch.zeros(0, 2, 2, dtype=torch.float64)
    faces = list(verts[torch.arange(verts.shape[1]) < nv[:, None]].split(nv.tolist()))
    return PlaneRegions(origin, basis, window, faces, _codes(stages, len(faces), layout),
                        labels, segs, anchors, False, in_shape)
