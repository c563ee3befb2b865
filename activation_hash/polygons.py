"""Batched convex polygons for the exact 2-D slices (:mod:`activation_hash.slices`).

A batch of P convex polygons is ``verts`` float64 ``[P, K, 2]`` (counter-clockwise) with
``nv`` int64 ``[P]`` vertices each; the slots ``nv .. K - 1`` repeat the last vertex, so
rolled shoelace sums need no mask. Everything here is vectorized over the polygons.

Robustness: a vertex is *on* a line ``c0 + cu u + cv v = 0`` when
``|value| <= TOL2 * (|c0| + (|cu| + |cv|) R)`` (R: the window's radius), so no vertex near a
line ever makes a sliver; a polygon is cut only when it has vertices strictly on both sides.
"""
from __future__ import annotations

import torch

__all__ = ["TOL2", "rect", "area", "centroid", "cat_polys", "clip", "argmax_cells"]

TOL2 = 1e-11  # relative: on-line tolerance, a fraction of the window's radius


def rect(window) -> tuple[torch.Tensor, torch.Tensor]:
    """The window ``(u0, u1, v0, v1)`` as one polygon: ``[1, 4, 2]``, ``[1]``."""
    u0, u1, v0, v1 = window
    v = torch.tensor([[[u0, v0], [u1, v0], [u1, v1], [u0, v1]]], dtype=torch.float64)
    return v, torch.tensor([4])


def area(verts: torch.Tensor) -> torch.Tensor:
    """Signed (CCW positive) areas ``[P]`` (padding repeats the last vertex: no mask)."""
    u, v = verts[..., 0], verts[..., 1]
    return 0.5 * (u * v.roll(-1, 1) - u.roll(-1, 1) * v).sum(1)


def centroid(verts: torch.Tensor, nv: torch.Tensor) -> torch.Tensor:
    """Mean of each polygon's vertices ``[P, 2]`` (an interior point of a convex polygon)."""
    valid = torch.arange(verts.shape[1]) < nv[:, None]
    return (verts * valid[..., None]).sum(1) / nv[:, None]


def pad_to(verts: torch.Tensor, K: int) -> torch.Tensor:
    if verts.shape[1] >= K:
        return verts
    return torch.cat([verts, verts[:, -1:].expand(-1, K - verts.shape[1], -1)], 1)


def cat_polys(parts: list[tuple[torch.Tensor, torch.Tensor]]):
    """Concatenate polygon batches of different K."""
    parts = [p for p in parts if p[0].shape[0]]
    if not parts:
        return torch.zeros(0, 3, 2, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
    K = max(int(p[1].max()) for p in parts)
    return (torch.cat([pad_to(v[:, :K], K) for v, _ in parts]), torch.cat([n for _, n in parts]))


def values(verts: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``c0 + cu u + cv v`` at each vertex: c ``[P, 3]`` -> ``[P, K]``."""
    return torch.addcmul(torch.addcmul(c[:, None, 0], verts[..., 0], c[:, None, 1]),
                         verts[..., 1], c[:, None, 2])


def clip(verts, nv, c, R: float, strict):
    """Each polygon intersected with the half-plane ``c0 + cu u + cv v >= 0`` (c ``[P, 3]``).

    A polygon with every vertex on the line is kept whole unless ``strict`` (bool or bool
    ``[P]``): the tie rule of argmax (the earlier of two identical functions wins). Returns
    ``(verts [P, K', 2], nv [P])``, ``nv = 0`` where nothing of positive area is left."""
    P, K, _ = verts.shape
    s = values(verts, c)
    tol = TOL2 * (c[:, 0].abs() + (c[:, 1].abs() + c[:, 2].abs()) * R)
    valid = torch.arange(K) < nv[:, None]
    pos = (s > tol[:, None]) & valid
    neg = (s < -tol[:, None]) & valid
    hp, hn = pos.any(1), neg.any(1)
    zero = ~hp & ~hn
    strict = torch.as_tensor(strict).expand(P)
    whole = (hp & ~hn) | (zero & ~strict)
    out_nv = torch.where(whole, nv, torch.zeros_like(nv))
    cut = (hp & hn).nonzero().squeeze(1)
    if cut.numel() == 0:
        return verts, out_nv
    v, sv, n, p_, g_ = verts[cut], s[cut], nv[cut], pos[cut], neg[cut]
    k = torch.arange(K)
    nxt = torch.where(k + 1 < n[:, None], k + 1, 0)
    s_n, p_n, g_n = sv.gather(1, nxt), p_.gather(1, nxt), g_.gather(1, nxt)
    v_n = v.gather(1, nxt[..., None].expand(-1, -1, 2))
    cross = (p_ & g_n) | (g_ & p_n)
    t = torch.where(cross, sv / torch.where(cross, sv - s_n, torch.ones_like(sv)), 0.0)
    pt = torch.addcmul(v, t[..., None], v_n - v)
    keep = (k < n[:, None]) & ~g_
    slots = torch.stack([keep, cross], 2).view(cut.numel(), 2 * K)
    pts = torch.stack([v, pt], 2).view(cut.numel(), 2 * K, 2)
    cnt = slots.sum(1)
    K2 = int(cnt.max())
    order = torch.sort((~slots).to(torch.uint8), dim=1, stable=True).indices[:, :K2]
    take = order.gather(1, torch.minimum(torch.arange(K2), cnt[:, None] - 1))
    new = pts.gather(1, take[..., None].expand(-1, -1, 2))
    Kout = max(K, K2)
    out = pad_to(verts, Kout).clone()
    out[cut] = pad_to(new, Kout)
    out_nv[cut] = cnt
    return out, out_nv


def argmax_cells(verts, nv, g, R: float, min_area: float):
    """Split each polygon into the cells where each of ``kw`` affine functions is the largest.

    g: float64 ``[P, kw, 3]`` (c0, cu, cv) per polygon. Ties go to the lower index (as
    ``torch.argmax``). Returns ``(verts, nv, src [C] polygon of each cell, which [C] winning
    index)``; cells of area ``<= min_area`` are dropped."""
    P, kw, _ = g.shape
    parts, src, which = [], [], []
    ar = torch.arange(P)
    for i in range(kw):
        v, n = verts, nv
        for m in range(kw):
            if m == i:
                continue
            v, n = clip(v, n, g[:, i] - g[:, m], R, m < i)
        ok = (n > 0)
        if ok.any():
            ok &= area(v) > min_area
        parts.append((v[ok], n[ok]))
        src.append(ar[ok])
        which.append(torch.full((int(ok.sum()),), i, dtype=torch.int64))
    v, n = cat_polys(parts)
    return v, n, torch.cat(src), torch.cat(which)
