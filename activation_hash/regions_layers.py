"""The layer-by-layer split of segments for plain chains (``segment_regions(method="layers")``).

A chain (``nn.Sequential`` of Linear / Conv / BatchNorm (eval) / ReLU / LeakyReLU / Flatten /
Dropout (eval) / AvgPool) is split at each ReLU-like layer in turn: every piece ``[lo, hi)``
of a segment carries the layer's input as the affine map ``a + (t - lo) b``.

- MLPs (Linear and ReLU-like layers alternating, on the CPU): the compiled ``split_pieces``
  op (csrc/cpu/regions.cpp) splits one layer per call, and the next Linear is applied only
  to the first child of each piece (one matmul row per piece of the previous layer, not per
  new piece): the other children differ from their left neighbour in a few units, whose
  columns of the weight the op adds (rank-one updates).
- other chains (convolutions, pooling, BatchNorm), other devices, no extension: torch ops over
  all pieces at once (``chain_layers``).

Both give the breakpoints of the walk (tests/test_regions.py compares them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from activation_hash.nn import ReLU
from activation_hash.ops import HAS_SPLIT, pack_signs, split_pieces
from activation_hash.switches import TOL

__all__ = ["PASS_MODULES", "AFFINE_MODULES", "linear_part", "plain_chain", "mlp_stages",
           "chain_layers", "mlp_layers"]

PASS_MODULES = (nn.Flatten, nn.Dropout, nn.Identity, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
AFFINE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                  nn.ConvTranspose2d, nn.ConvTranspose3d, nn.BatchNorm1d, nn.BatchNorm2d,
                  nn.BatchNorm3d)


def linear_part(m: nn.Module, d: torch.Tensor) -> torch.Tensor:
    """The linear part of an affine module (``AFFINE_MODULES``) applied to directions
    ``d [P, ...]``: no bias, no offset (BatchNorm in eval: the per-channel scale)."""
    if isinstance(m, nn.Linear):
        return F.linear(d, m.weight)
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return m._conv_forward(d, m.weight, None)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        scale = torch.rsqrt(m.running_var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight
        return d * scale.view((1, -1) + (1,) * (d.dim() - 2))
    return m(d) - m(torch.zeros_like(d[:1]))


def plain_chain(model: nn.Module) -> list[nn.Module] | None:
    """The modules of a plain chain (nested Sequentials flattened), or None."""
    if not isinstance(model, nn.Sequential):
        return None
    out = []
    for m in model:
        if isinstance(m, nn.Sequential):
            sub = plain_chain(m)
            if sub is None:
                return None
            out += sub
        elif isinstance(m, (nn.ReLU, nn.LeakyReLU, ReLU, *PASS_MODULES, *AFFINE_MODULES)):
            out.append(m)
        else:
            return None
    return out


def chain_layers(chain: list[nn.Module], x0: torch.Tensor, x1: torch.Tensor, max_pieces: int):
    """Split every segment at each ReLU-like layer in turn. A piece [lo, hi) carries the
    layer's input as ``h(t) = a + (t - lo) b`` (``a`` its value at the piece's own start: no
    extrapolation from t = 0, which would cancel digits far along the segment)."""
    S = x0.shape[0]
    seg = torch.arange(S)
    lo = torch.zeros(S, dtype=torch.float64)
    hi = torch.ones(S, dtype=torch.float64)
    a, b = x0, x1 - x0                      # h(t) = a + (t - lo) b  (b: no bias)
    words: list[torch.Tensor] = []          # per code site: int64 [pieces, w] (for its pieces)
    parent: list[torch.Tensor] = []         # per site: piece index of the previous stage
    site_of_split: list[torch.Tensor] = []  # per site: split flag of each new piece

    with torch.no_grad():
        for m in chain:
            if isinstance(m, PASS_MODULES):
                a, b = m(a), m(b)  # linear, no offset
                continue
            if isinstance(m, AFFINE_MODULES):
                a, b = _affine(m, a, b, lo, seg)
                continue
            slope = float(getattr(m, "negative_slope", 0.0) or 0.0)
            P = a.shape[0]
            za, zb = a.reshape(P, -1), b.reshape(P, -1)
            tc = lo[:, None] - za / zb          # zero crossing of each unit
            # zb == 0 gives +-inf or nan: never inside
            inside = (tc > lo[:, None] + TOL).logical_and_(tc < hi[:, None] - TOL)
            piece, unit = inside.nonzero(as_tuple=True)  # the few crossings inside their piece
            tv = tc[piece, unit]
            order = torch.sort(tv, stable=True).indices
            order = order[torch.sort(piece[order], stable=True).indices]  # by piece, then t
            piece, tv = piece[order], tv[order]
            distinct = torch.ones_like(piece, dtype=torch.bool)  # coincident crossings (closer
            distinct[1:] = (piece[1:] != piece[:-1]) | (tv[1:] > tv[:-1] + TOL)  # than TOL): one
            cuts = tv[distinct]                 # pieces in order, cuts ascending in each
            n_new = torch.bincount(piece[distinct], minlength=P) + 1
            if int(n_new.sum()) > max_pieces * S:
                raise ValueError(f"more than max_pieces={max_pieces} pieces per segment")
            rep = torch.repeat_interleave(torch.arange(P), n_new)
            first = torch.zeros(rep.shape[0], dtype=torch.bool)
            first[torch.cumsum(n_new, 0)[:-1]] = True
            first[0] = True
            new_lo = lo[rep].clone()
            new_hi = hi[rep].clone()
            not_first = ~first
            new_lo[not_first] = cuts
            last = torch.ones_like(first)
            last[:-1] = first[1:]
            new_hi[~last] = cuts
            shape = (-1,) + (1,) * (a.dim() - 1)
            br = b.index_select(0, rep)
            ar = torch.addcmul(a.index_select(0, rep), (new_lo - lo[rep]).view(shape), br)
            on = torch.addcmul(ar, (0.5 * (new_hi - new_lo)).view(shape), br) > 0  # midpoint
            if slope == 0.0:
                a, b = ar.masked_fill_(~on, 0.0), br.masked_fill_(~on, 0.0)
            else:
                factor = torch.full_like(ar, slope).masked_fill_(on, 1.0)  # float64 slope
                a, b = ar.mul_(factor), br.mul_(factor)
            words.append(pack_signs(on.to(torch.float32) - 0.5))
            parent.append(rep)
            site_of_split.append(not_first)
            seg, lo, hi = seg[rep], new_lo, new_hi
    return seg, lo, *final_codes(words, parent, site_of_split, seg.shape[0])


def _affine(m: nn.Module, a: torch.Tensor, b: torch.Tensor, lo: torch.Tensor,
            seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An affine layer on every piece: the direction through its linear part (one batched
    call), the value at each piece's start exactly for the first piece of each segment and by
    continuity for the others (``z(lo_j) = a_{j-1} + (lo_j - lo_{j-1}) b_{j-1}``): the layer's
    matrix is applied to the directions only."""
    bl = linear_part(m, b)
    P = b.shape[0]
    new_seg = torch.ones(P, dtype=torch.bool)
    new_seg[1:] = seg[1:] != seg[:-1]
    firsts = new_seg.nonzero().squeeze(1)
    al = torch.empty_like(bl)
    al[firsts] = m(a[firsts])
    shape = (-1,) + (1,) * (bl.dim() - 1)
    step = bl[:-1] * (lo[1:] - lo[:-1]).view(shape)   # step[j - 1]: from piece j - 1 to j
    ends = torch.cat([firsts[1:], torch.tensor([P])]).tolist()
    for f, e in zip(firsts.tolist(), ends):
        if e - f > 1:
            torch.cumsum(step[f:e - 1], 0, out=al[f + 1:e])
            al[f + 1:e] += al[f]
    return al, bl


def final_codes(words: list[torch.Tensor], parent: list[torch.Tensor],
                site_of_split: list[torch.Tensor],
                n_final: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every site's words carried to the final pieces (parents followed backwards), and the
    site that split each final piece off its left neighbour (-1 for a segment's first).

    words[j]: int64 ``[pieces after site j, w_j]``; parent[j]: the piece of the stage before
    of each; site_of_split[j]: bool, the piece begins at a cut of site j.
    """
    k = len(words)
    idx = torch.arange(n_final)
    final_words = [None] * k
    split_site = torch.full((n_final,), -1, dtype=torch.int64)
    for j in range(k - 1, -1, -1):
        final_words[j] = words[j][idx]
        hit = site_of_split[j][idx] & (split_site < 0)
        split_site[hit] = j
        idx = parent[j][idx]
    codes = torch.cat(final_words, 1) if final_words else torch.zeros(n_final, 0,
                                                                       dtype=torch.int64)
    return codes, split_site


RELU_LIKE = (nn.ReLU, nn.LeakyReLU, ReLU)


def mlp_stages(chain: list[nn.Module], x0: torch.Tensor) -> list[tuple[nn.Linear, float]] | None:
    """``[(Linear, negative_slope), ...]`` of a chain whose modules are Linear and ReLU-like
    layers alternating (Dropout / Identity anywhere, a leading Flatten, any affine tail after
    the last ReLU-like layer), on the CPU with the compiled op; else None."""
    if not HAS_SPLIT or x0.device.type != "cpu":
        return None
    mods = [m for m in chain if not isinstance(m, (nn.Dropout, nn.Identity))]
    if mods and isinstance(mods[0], nn.Flatten) and (mods[0].start_dim, mods[0].end_dim) == (1, -1):
        mods = mods[1:]
    stages, i = [], 0
    while i + 1 < len(mods) and isinstance(mods[i], nn.Linear) and \
            isinstance(mods[i + 1], RELU_LIKE):
        if mods[i].weight.device.type != "cpu":
            return None
        stages.append((mods[i], float(getattr(mods[i + 1], "negative_slope", 0.0) or 0.0)))
        i += 2
    if not stages or any(isinstance(m, RELU_LIKE) for m in mods[i:]) or \
            stages[0][0].in_features != x0[0].numel():
        return None
    return stages


def _float64_t(lin: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight transposed, float64 ``[in, out]`` contiguous, and the bias (transposed in
    its own dtype, then widened: 2x faster than one strided float64 copy)."""
    w = lin.weight.detach()
    wt = w.t().contiguous().double()
    b = lin.bias
    return wt, (torch.zeros(w.shape[0], dtype=torch.float64) if b is None else
                b.detach().double())


def mlp_layers(stages: list[tuple[nn.Linear, float]], x0: torch.Tensor, x1: torch.Tensor,
               max_pieces: int):
    """The MLP path: x0, x1 float64 ``[S, ...]`` -> (segment of each piece ``[P]``, its start
    t ``[P]``, its code ``[P, W]``, the site that split it off ``[P]``).

    Segments go through in chunks of two per thread, and the two big float64 arrays of each
    layer (the masked directions of the first children, the next matmul's result) live in two
    buffers shared by all chunks and layers: fresh pages for every layer of every chunk would
    cost about a fifth of the time in page faults."""
    S = x0.shape[0]
    x0 = x0.reshape(S, -1)
    x1 = x1.reshape(S, -1)
    weights = [_float64_t(lin) for lin, _ in stages]
    chunk = 2 * torch.get_num_threads()
    bufs = (_Buffer(), _Buffer())
    parts = [_mlp_chunk(weights, [slope for _, slope in stages], x0[i:i + chunk],
                        x1[i:i + chunk], max_pieces, bufs) for i in range(0, S, chunk)]
    counts = [p[0] for p in parts]
    seg = torch.repeat_interleave(torch.arange(S), torch.cat(counts))
    return (seg, *(torch.cat([p[k] for p in parts]) for k in (1, 2, 3)))


class _Buffer:
    """float64 ``[rows, n]`` views of one flat buffer, reallocated only when too small: then
    at 4x the size (at most 1 GB more), as the pieces grow from layer to layer. Only the pages
    a view touches are ever mapped, so the slack costs address space, not memory."""

    def __init__(self):
        self.flat = torch.empty(0, dtype=torch.float64)

    def view(self, rows: int, n: int) -> torch.Tensor:
        need = rows * n
        if need > self.flat.numel():
            self.flat = torch.empty(min(4 * need, need + 2 ** 27), dtype=torch.float64)
        return self.flat[:need].view(rows, n)


def _mlp_chunk(weights, slopes, x0, x1, max_pieces, bufs):
    S = x0.shape[0]
    wt, b = weights[0]
    first_dir, start = (x1 - x0) @ wt, torch.addmm(b, x0, wt)  # [S, n]: a group per segment
    ptr = torch.arange(S + 1)
    group_ptr, seg_ptr = ptr, ptr
    flip_ptr = torch.zeros(S + 1, dtype=torch.int64)
    flip_unit, flip_coef = torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64)
    lo, hi = torch.zeros(S, dtype=torch.float64), torch.ones(S, dtype=torch.float64)
    words, parent, site_of_split = [], [], []
    with torch.no_grad():
        for i, slope in enumerate(slopes):
            last = i + 1 == len(slopes)
            out = bufs[0].view(0 if last else lo.shape[0], first_dir.shape[1])
            (first_out, child_ptr, lo_c, hi_c, w_c, start_out, flip_ptr, flip_unit,
             flip_coef) = split_pieces(first_dir, group_ptr, flip_ptr, flip_unit, flip_coef,
                                       weights[i][0], start, lo, hi, seg_ptr, slope, TOL,
                                       max_pieces, last=last, first_out=out)
            P, C = lo.shape[0], lo_c.shape[0]
            parent.append(torch.repeat_interleave(torch.arange(P), child_ptr.diff(),
                                                  output_size=C))
            split = torch.ones(C, dtype=torch.bool)
            split[child_ptr[:-1]] = False
            site_of_split.append(split)
            words.append(w_c)
            seg_ptr, group_ptr, lo, hi = child_ptr[seg_ptr], child_ptr, lo_c, hi_c
            if not last:
                wt, b = weights[i + 1]
                first_dir = torch.mm(first_out, wt, out=bufs[1].view(first_out.shape[0],
                                                                      wt.shape[1]))
                start = torch.addmm(b, start_out, wt)
    return (seg_ptr.diff(), lo, *final_codes(words, parent, site_of_split, lo.shape[0]))
