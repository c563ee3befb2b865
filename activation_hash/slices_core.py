"""The machinery of :mod:`activation_hash.slices`: the result type, the plane, the split of
faces at one switch, the chain path (batched affine coefficients) and the general path
(:class:`~activation_hash.switches.SwitchMode` on three rows per face)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from activation_hash import polygons as pg
from activation_hash.codes import CodeBook
from activation_hash.layout import Layout
from activation_hash.ops import pack_signs
from activation_hash.regions_layers import AFFINE_MODULES, PASS_MODULES, linear_part
from activation_hash.switches import NotPiecewiseLinearError, SwitchMode
from activation_hash.validation import check_float

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

def _winner(verts, g):
    """Winner at each vertex: verts ``[P, K, 2]``, g ``[P, E, 3]`` (a kink: max(0, z), 1 where
    z > 0) or ``[P, E, kw, 3]`` (argmax) -> ``[P, K, E]`` (bool for kinks, else int64)."""
    if g.dim() == 3:
        z = torch.baddbmm(g[:, None, :, 0], verts, g[..., 1:].transpose(1, 2))
        return z > 0
    val = torch.einsum("pkd,pead->pkea", verts, g[..., 1:]) + g[:, None, :, :, 0]
    return val.argmax(-1)


def _split(verts, nv, G, R, min_area, max_faces, what):
    """Cut every piece by one switch: E events (a unit, a window), each choosing the largest
    of kw affine functions of (u, v): G float64 ``[P, E, kw, 3]``, or ``[P, E, 3]`` for kinks
    (max(0, z)). Returns the new pieces, the piece each came from ``[P']`` and the winner of
    each event at each new piece ``[P', E]``."""
    P, K, _ = verts.shape
    E = G.shape[1]
    kink = G.dim() == 3
    per = 1 if kink else G.shape[2]
    valid = torch.arange(K) < nv[:, None]
    pairs_p, pairs_e = [], []
    chunk = max(1, 2 ** 22 // max(1, K * E * per))
    for s in range(0, P, chunk):  # which events are not constant on which pieces
        am = _winner(verts[s:s + chunk], G[s:s + chunk])
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
        g = G[ao, pe[ptr]]                              # [A, 3] or [A, kw, 3]
        am = _winner(av, g[:, None])[..., 0]
        mix = ((am != am[:, :1]) & (torch.arange(av.shape[1]) < an[:, None])).any(1)
        stay = (~mix).nonzero()[:, 0]
        go = mix.nonzero()[:, 0]
        gg = g[go]
        if kink:
            gg = torch.stack([torch.zeros_like(gg), gg], 1)
        cv, cn, src, _ = pg.argmax_cells(av[go], an[go], gg, R, min_area)
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
    return verts, nv, origin, _winner(c[:, None], G[origin])[:, 0]


def _kinks(Z: torch.Tensor) -> torch.Tensor:
    """Units' affine inputs, rows (const, du, dv) ``[P, 3, n]`` -> (c0, cu, cv) per unit
    ``[P, n, 3]`` (kink events, or the outputs' affine maps)."""
    return Z.transpose(1, 2)


# ---- plain chains -----------------------------------------------------------------------

def _affine(m: nn.Module, H: torch.Tensor) -> torch.Tensor:
    """An affine layer on ``H [P, 3, *shape]``: row 0 the value at (0, 0), rows 1-2 the
    directions (the linear part only: no bias)."""
    P = H.shape[0]
    c, d = H[:, 0], H[:, 1:].flatten(0, 1)
    dl = linear_part(m, d)
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
        if isinstance(m, PASS_MODULES):
            H = m(H.flatten(0, 1)).view((H.shape[0], 3) + m(H[:1, 0]).shape[1:])
            continue
        if isinstance(m, AFFINE_MODULES):
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
    g = _kinks(Y)                                          # [F, C, 3]
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


# ---- any piecewise-linear model: SwitchMode, three rows per face --------------------------

class _Stop(Exception):
    """Raised at the switch whose input is wanted."""


class _PlaneMode(SwitchMode):
    """Rows ``cat([x, x + e0, x + e1])`` of P face centroids: switches ``< stop`` take the
    faces' fixed decisions; at switch ``stop`` its input is kept and the forward stops.
    Without ``fixed`` (a probe) every switch decides at the point itself."""

    def __init__(self, P: int, fixed: dict, stop: int | None):
        super().__init__(P, {}, copies=3)
        self.fixed, self.stop, self.caught = fixed, stop, None

    def _take(self, z, decide):
        k = self.k
        if k == self.stop:
            self.caught = z
            raise _Stop
        self.k += 1
        got = self.fixed.get(k)
        return decide(z[:self.S]) if got is None else got

    def _decide(self, z):
        return self._take(z, lambda zp: zp > 0), None

    def _pool_decide(self, w):
        return self._take(w, lambda wp: wp.argmax(-1, keepdim=True))


def _rows(verts, nv, origin, basis, in_shape):
    c = pg.centroid(verts, nv)
    x = origin + c @ basis
    return c, torch.cat([x, x + basis[0], x + basis[1]]).view((-1,) + in_shape)


def _affine_rows(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Outputs of the three rows ``[3P, ...]`` -> (c0, cu, cv) ``[P, n, 3]`` in (u, v)."""
    P = c.shape[0]
    z = z.reshape(3, P, -1)
    du, dv = z[1] - z[0], z[2] - z[0]
    c0 = z[0] - c[:, :1] * du - c[:, 1:] * dv
    return torch.stack([c0, du, dv], -1)


def _general_slice(wm, plane, verts, nv, R, min_area, max_faces, n_sites, layout):
    origin, basis, in_shape = plane
    c, rows = _rows(verts, nv, origin, basis, in_shape)
    probe = _PlaneMode(verts.shape[0], {}, None)
    with probe:
        wm(rows)
    kinds = probe.kinds
    if tuple(probe.shapes[:len(layout.shapes)]) != layout.shapes:
        raise RuntimeError(f"the slice saw ReLU-like sites of shapes {probe.shapes}, the "
                           f"recorder {list(layout.shapes)}")
    code_at = [k for k, (_, in_code) in enumerate(kinds) if in_code]
    last = len(kinds) if n_sites < 0 else (code_at[n_sites - 1] + 1 if n_sites else 0)
    fixed: dict[int, torch.Tensor] = {}
    stages = []
    for k in range(last):
        c, rows = _rows(verts, nv, origin, basis, in_shape)
        mode = _PlaneMode(c.shape[0], fixed, k)
        try:
            with mode:
                wm(rows)
        except _Stop:
            pass
        if mode.caught is None:
            raise NotPiecewiseLinearError("the model calls different switches at different "
                                          "inputs (data-dependent control flow)")
        z = mode.caught
        op, in_code = kinds[k]
        pool = op.startswith("max_pool")
        if pool:
            kw = z.shape[-1]
            G = _affine_rows(z, c).view(c.shape[0], -1, kw, 3)
        else:
            G = _affine_rows(z, c)
        verts, nv, parent, win = _split(verts, nv, G, R, min_area, max_faces, f"switch {k} ({op})")
        shape = z.shape[1:-1] + (1,) if pool else z.shape[1:]
        fixed = {j: f[parent] for j, f in fixed.items()}
        fixed[k] = win.view((-1,) + shape) if pool else win.bool().view((-1,) + shape)
        words = pack_signs(win.to(torch.float32) - 0.5) if in_code else None
        stages.append((words, parent))
    if last < len(kinds):
        return verts, nv, stages, None
    c, rows = _rows(verts, nv, origin, basis, in_shape)
    mode = _PlaneMode(c.shape[0], fixed, None)
    with mode:
        y = wm(rows)
    return verts, nv, stages, _affine_rows(y, c).transpose(1, 2)


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
    eps = 64 * max(torch.finfo(x.dtype).eps if isinstance(x, torch.Tensor) and
                   x.dtype.is_floating_point else 0.0 for x in (a, b, c))
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
    if e1.norm() <= eps * max(float(n0), float((c - a).norm())):  # collinear to rounding
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



def _hint(e: Exception) -> str:
    return str(e).replace("sampled_segment_regions (or folding(..., steps=n))",
                          "sampled_plane_regions").replace("exact walk", "exact slice")


