"""Sampled (raster) 2-D slices: the codes at the cells of a grid, for any model the
recorder sees (GELU, SiLU, ... included); ``sampled=True``."""
from __future__ import annotations

import copy

import torch
from torch import nn

from activation_hash.codes import CodeBook
from activation_hash.collisions import _group_codes
from activation_hash.record import record
from activation_hash.slices_core import PlaneRegions, _plane
from activation_hash.validation import check_float, check_int

__all__ = ["sampled_plane_regions"]


def _support_polygons(gid, n_groups, uv, half):
    """An inner approximation of the convex hull of each group's raster cells: their support
    points in 32 directions, counter-clockwise. gid ``[N]``, uv ``[N, 2]`` cell centres."""
    th = torch.arange(32, dtype=torch.float64) * (2 * torch.pi / 32)
    d = torch.stack([th.cos(), th.sin()], 1)                      # [M, 2]
    corner = torch.where(d >= 0, 1.0, -1.0).to(torch.float64) * half  # [M, 2]
    proj = uv @ d.T + (corner * d).sum(1)                         # [N, M]
    M = d.shape[0]
    best = torch.full((n_groups, M), -torch.inf, dtype=torch.float64)
    best.scatter_reduce_(0, gid[:, None].expand(-1, M), proj, "amax")
    hit = proj >= best[gid]
    idx = torch.where(hit, torch.arange(len(uv))[:, None], len(uv))
    first = torch.full((n_groups, M), len(uv), dtype=torch.int64)
    first.scatter_reduce_(0, gid[:, None].expand(-1, M), idx, "amin")
    pts = uv[first] + corner                                      # [G, M, 2]
    same = (pts == pts.roll(1, 1)).all(-1)
    keep = ~same
    keep[:, 0] = True
    return [p[k] for p, k in zip(pts.unbind(0), keep.unbind(0))]


def sampled_plane_regions(model: nn.Module, a=None, b=None, c=None, *, box=None,
                          resolution: int = 256, margin: float = 0.25,
                          chunk: int = 4096) -> PlaneRegions:
    """A raster of the slice (any model whose ReLU-like units the recorder sees): the codes
    at the centres of ``resolution x resolution`` cells; ``sampled=True``. One face per
    distinct code (its polygon: the hull of its cells, approximated by 32 support points;
    ``grid`` says exactly which cells hold it); labels: the most frequent arg-max of its
    cells; decision boundary: the cell edges where the arg-max changes. Under-counts faces
    smaller than a cell."""
    resolution = check_int(resolution, "resolution", min=2)
    chunk = check_int(chunk, "chunk", min=1)
    margin = check_float(margin, "margin", min=0.0)
    origin, basis, window, anchors, in_shape = _plane(a, b, c, box, margin)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    wm = copy.deepcopy(model).double().eval()
    u0, u1, v0, v1 = window
    hu, hv = (u1 - u0) / resolution, (v1 - v0) / resolution
    us = u0 + (torch.arange(resolution, dtype=torch.float64) + 0.5) * hu
    vs = v0 + (torch.arange(resolution, dtype=torch.float64) + 0.5) * hv
    uv = torch.stack(torch.meshgrid(us, vs, indexing="xy"), -1).reshape(-1, 2)
    outs = []
    with record(wm) as rec, torch.no_grad():
        for s in range(0, uv.shape[0], chunk):
            x = (origin + uv[s:s + chunk] @ basis).view((-1,) + in_shape)
            outs.append(wm(x).reshape(x.shape[0], -1))
    y = torch.cat(outs)
    lab = (y[:, 0] > 0).long() if y.shape[1] == 1 else y.argmax(1)
    g = _group_codes(rec.codes)
    gid = torch.empty_like(g.perm)
    gid[g.perm] = torch.cumsum(g.new.long(), 0) - 1
    n = int(g.new.sum())
    first = torch.full((n,), uv.shape[0], dtype=torch.int64)
    first.scatter_reduce_(0, gid, torch.arange(uv.shape[0]), "amin")
    C = max(2, y.shape[1])
    votes = torch.zeros(n * C, dtype=torch.int64).index_add_(0, gid * C + lab,
                                                              torch.ones_like(lab))
    labels = votes.view(n, C).argmax(1)
    L = lab.view(resolution, resolution)
    segs = []
    i, j = (L[:, 1:] != L[:, :-1]).nonzero(as_tuple=True)   # vertical edges
    x = u0 + (j + 1).double() * hu
    segs.append(torch.stack([torch.stack([x, v0 + i * hv], 1),
                             torch.stack([x, v0 + (i + 1) * hv], 1)], 1))
    i, j = (L[1:] != L[:-1]).nonzero(as_tuple=True)        # horizontal edges
    yv = v0 + (i + 1).double() * hv
    segs.append(torch.stack([torch.stack([u0 + j * hu, yv], 1),
                             torch.stack([u0 + (j + 1) * hu, yv], 1)], 1))
    faces = _support_polygons(gid, n, uv, torch.tensor([hu / 2, hv / 2], dtype=torch.float64))
    cb = CodeBook(rec.codes[first], rec.layout, meta={"kind": "sampled plane faces"})
    return PlaneRegions(origin, basis, window, faces, cb, labels, torch.cat(segs).double(),
                        anchors, True, in_shape, gid.view(resolution, resolution))


