"""Space folding along the straight path between two inputs (Lewandowski et al.,
arXiv 2502.09954; other activations: arXiv 2503.08502).

For the sequence of activation patterns ``pi_1 .. pi_n`` met on ``x(t) = (1 - t) x + t y``:
``r1 = max_i d_H(pi_1, pi_i)``, ``r2 = sum_i d_H(pi_i, pi_{i+1})`` and the folding
``chi = 1 - r1 / r2`` (0 when r2 = 0). 0: the walk moves monotonically away from its start;
larger: it turns back. The patterns come from

- ``method="exact"`` (default): the exact walk of :func:`activation_hash.regions.segment_regions`
  (every linear piece, piecewise-linear models);
- ``method="sampled"``: ``steps`` equally spaced points (the ESANN 2023 code used 11);
- ``method="adaptive"`` (any activation: GELU, SiLU, tanh, ...): patterns are the signs of the
  pre-activations of every elementwise activation; the path is refined between two samples
  whose patterns differ in more than one unit until each step flips at most one unit or is
  shorter than ``tol``; repeated patterns are dropped (no sample is redundant). Marked
  ``sampled`` with the ``tol`` used.

Per layer: chi of the codes truncated after each layer (folding vs depth), from the same walk.
Hamming distances of consecutive pieces use the ``hamming_consecutive`` op.

Example::

    f = folding(model, x, y)                     # x, y: one input each, or [S, ...] pairs
    f.chi, f.per_layer                           # float64 [S], [S, L]
    rep = folding_pairs(model, X, labels, mode="intra", n_pairs=200)
    rep.median, rep.tmlr_aggregate, rep.per_class_pair
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import torch.nn.functional as F

from activation_hash.codes import as_labels
from activation_hash.layout import Layout
from activation_hash.ops import hamming_consecutive, pack_signs
from activation_hash.record import record
from activation_hash.regions import as_segment_pairs, segment_regions
from activation_hash.validation import check_choice, check_float, check_int

__all__ = ["folding", "folding_pairs", "Folding", "FoldingReport", "chi_of_walks"]


@dataclass
class Folding:
    """Folding of S paths.

    Attributes:
        chi, r1, r2: float64 / int64 ``[S]``.
        per_layer: float64 ``[S, L]``: chi of the codes truncated after layer 1 .. L.
        n_patterns: int64 ``[S]``: patterns in each walk (pieces, or samples kept).
        layers: the layer names (the columns of ``per_layer``).
        method: ``"exact"``, ``"sampled"`` or ``"adaptive"``; ``sampled`` is True for the
            last two; ``tol`` (adaptive) / ``steps`` (sampled) the setting used.
    """

    chi: torch.Tensor
    r1: torch.Tensor
    r2: torch.Tensor
    per_layer: torch.Tensor
    n_patterns: torch.Tensor
    layers: tuple[str, ...]
    method: str
    sampled: bool
    tol: float | None = None
    steps: int | None = None


def chi_of_walks(codes: torch.Tensor, seg: torch.Tensor, S: int):
    """``(chi, r1, r2)`` per walk from the patterns of S walks: codes int64 ``[N, W]`` in walk
    order, ``seg`` int64 ``[N]`` the walk of each row (non-decreasing)."""
    N = codes.shape[0]
    r1 = torch.zeros(S, dtype=torch.int64)
    r2 = torch.zeros(S, dtype=torch.int64)
    if N:
        counts = torch.bincount(seg, minlength=S)
        first = torch.cumsum(counts, 0) - counts            # row of each walk's first pattern
        pairs = torch.stack([codes[first[seg]], codes], 1).reshape(2 * N, -1)
        d_first = hamming_consecutive(pairs)[0::2].to(torch.int64)
        r1.scatter_reduce_(0, seg, d_first, "amax")
        if N > 1:
            step = hamming_consecutive(codes).to(torch.int64)
            same = seg[1:] == seg[:-1]
            r2.index_add_(0, seg[1:][same], step[same])
    chi = torch.where(r2 > 0, 1 - r1.double() / r2.clamp_min(1).double(),
                      torch.zeros(S, dtype=torch.float64))
    return chi, r1, r2


def _per_layer(codes: torch.Tensor, layout: Layout, seg: torch.Tensor, S: int) -> torch.Tensor:
    out = torch.zeros(S, len(layout), dtype=torch.float64)
    ends = [o + w for o, w in zip(layout.word_offsets, layout.words_per_layer)]
    for li, e in enumerate(ends):
        out[:, li] = chi_of_walks(codes[:, :e].contiguous(), seg, S)[0]
    return out


# ---- patterns of other activations (adaptive sampling) -------------------------------------

_ELEMENTWISE = {F.relu, torch.relu, F.relu_, torch.relu_, torch.Tensor.relu, F.leaky_relu,
                F.leaky_relu_, torch._C._nn.leaky_relu, F.prelu, torch.prelu, F.gelu, F.silu,
                F.elu, F.selu, F.celu, F.softplus, F.mish, F.hardswish, F.hardsigmoid,
                F.sigmoid, torch.sigmoid, torch.Tensor.sigmoid, F.tanh, torch.tanh,
                torch.Tensor.tanh, F.logsigmoid, F.softsign, F.hardtanh, F.relu6}


class _Signs(TorchFunctionMode):
    """Packed signs of the input of every elementwise activation, in call order."""

    def __init__(self):
        super().__init__()
        self.words: list[torch.Tensor] = []
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ELEMENTWISE:
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, torch.Tensor):
                self.words.append(pack_signs(x.detach()))
                self.shapes.append(tuple(x.shape[1:]))
        return func(*args, **kwargs)


def _sign_patterns(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Layout]:
    signs = _Signs()
    with torch.no_grad(), signs:
        model(x)
    if not signs.words:
        raise ValueError("the model calls no elementwise activation whose signs could be read")
    layout = Layout(tuple(f"act{i}" for i in range(len(signs.shapes))), tuple(signs.shapes))
    return torch.cat(signs.words, 1), layout


def _adaptive(model, x0, x1, tol: float, max_points: int):
    """Refined sample of one path: (ts float64 [n], codes int64 [n, W], layout)."""
    d = x1 - x0
    view = (-1,) + (1,) * (x0.dim() - 1)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    codes, layout = _sign_patterns(model, x0 + ts.view(view) * d)
    while True:
        dist = hamming_consecutive(codes)
        need = (dist > 1) & ((ts[1:] - ts[:-1]) > tol)
        if not need.any():
            break
        if ts.shape[0] + int(need.sum()) > max_points:
            raise ValueError(f"adaptive sampling needs more than max_points={max_points} points "
                             f"(raise it, or raise tol)")
        mids = 0.5 * (ts[:-1][need] + ts[1:][need])
        new, _ = _sign_patterns(model, x0 + mids.view(view) * d)
        ts_all = torch.cat([ts, mids])
        order = torch.argsort(ts_all)
        ts, codes = ts_all[order], torch.cat([codes, new])[order]
    keep = torch.ones(ts.shape[0], dtype=torch.bool)
    if ts.shape[0] > 1:
        keep[1:] = hamming_consecutive(codes) > 0  # a repeated pattern adds nothing
    return ts[keep], codes[keep], layout


# ---- public ---------------------------------------------------------------------------------

def folding(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, method: str = "exact",
            steps: int = 11, tol: float = 1e-6, batch: int = 64,
            max_points: int = 1_000_000) -> Folding:
    """Folding ``chi`` of the paths from ``x`` to ``y`` (``[S, *in_shape]`` pairs; see the
    module docstring for the methods). The model is not changed."""
    check_choice(method, "method", ("exact", "sampled", "adaptive"))
    x0, x1 = as_segment_pairs(x, y)
    S = x0.shape[0]
    if method == "exact":
        r = segment_regions(model, x0, x1, batch=batch)
        codes, seg, layout = r.codes.codes, r.codes.ids, r.codes.layout
        extra = {}
    elif method == "sampled":
        steps = check_int(steps, "steps", min=2)
        wm = copy.deepcopy(model).double().eval()
        ts = torch.linspace(0, 1, steps, dtype=torch.float64)
        view = (1, -1) + (1,) * (x0.dim() - 1)
        pts = (x0.unsqueeze(1) + ts.view(view) * (x1 - x0).unsqueeze(1)).flatten(0, 1)
        with record(wm) as rec, torch.no_grad():
            wm(pts)
        codes, layout = rec.codes, rec.layout
        seg = torch.arange(S).repeat_interleave(steps)
        extra = {"steps": steps}
    else:
        tol = check_float(tol, "tol", min=0, min_open=True)
        max_points = check_int(max_points, "max_points", min=2)
        wm = copy.deepcopy(model).double().eval()
        parts, segs, layout = [], [], None
        for i in range(S):
            _, c, layout = _adaptive(wm, x0[i:i + 1], x1[i:i + 1], tol, max_points)
            parts.append(c)
            segs.append(torch.full((c.shape[0],), i, dtype=torch.int64))
        codes, seg = torch.cat(parts), torch.cat(segs)
        extra = {"tol": tol}
    chi, r1, r2 = chi_of_walks(codes, seg, S)
    return Folding(chi, r1, r2, _per_layer(codes, layout, seg, S), torch.bincount(seg, minlength=S),
                   layout.names, method, method != "exact", **extra)


@dataclass
class FoldingReport:
    """Folding over sampled pairs of inputs.

    Attributes:
        folding: the :class:`Folding` of every path.
        pairs: int64 ``[n, 2]`` sample indices (x, y); ``classes`` their labels ``[n, 2]``.
        mean, median, max, frac_nonzero: of ``folding.chi``.
        per_class_pair: ``{(a, b): {"n", "mean", "max"}}`` over the paths from class a to b.
        tmlr_aggregate: for each class pair the maximum non-zero chi of its paths (0 when none),
            then the median over the class pairs (the TMLR paper's measure).
        mode: ``"intra"``, ``"inter"`` or ``"all"``.
    """

    folding: Folding
    pairs: torch.Tensor
    classes: torch.Tensor
    mean: float
    median: float
    max: float
    frac_nonzero: float
    per_class_pair: dict = field(default_factory=dict)
    tmlr_aggregate: float = 0.0
    mode: str = "all"

    def to_dict(self) -> dict:
        return {"mode": self.mode, "n_pairs": int(self.pairs.shape[0]), "mean": self.mean,
                "median": self.median, "max": self.max, "frac_nonzero": self.frac_nonzero,
                "tmlr_aggregate": self.tmlr_aggregate, "method": self.folding.method,
                "per_layer_mean": self.folding.per_layer.mean(0).tolist()
                if self.pairs.shape[0] else [],
                "per_class_pair": {f"{a}-{b}": v for (a, b), v in self.per_class_pair.items()}}


def _draw_pairs(labels: torch.Tensor, mode: str, n_pairs: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    N = labels.shape[0]
    out: list[torch.Tensor] = []
    have, tries = 0, 0
    while have < n_pairs:
        tries += 1
        if tries > 1000:
            raise ValueError(f"cannot draw {n_pairs} {mode}-class pairs from these labels")
        i = torch.randint(N, (4 * n_pairs,), generator=g)
        j = torch.randint(N, (4 * n_pairs,), generator=g)
        ok = i != j
        if mode == "intra":
            ok &= labels[i] == labels[j]
        elif mode == "inter":
            ok &= labels[i] != labels[j]
        p = torch.stack([i[ok], j[ok]], 1)
        out.append(p)
        have += p.shape[0]
    return torch.cat(out)[:n_pairs]


def folding_pairs(model: nn.Module, X: torch.Tensor, labels, *, mode: str = "all",
                  n_pairs: int = 100, seed: int = 0, method: str = "exact",
                  **kwargs) -> FoldingReport:
    """Folding of ``n_pairs`` paths between samples of ``X`` ``[N, *in_shape]``: same class
    (``mode="intra"``), different classes (``"inter"``) or any (``"all"``), drawn with
    ``seed``. ``kwargs`` go to :func:`folding`."""
    check_choice(mode, "mode", ("intra", "inter", "all"))
    n_pairs = check_int(n_pairs, "n_pairs", min=1)
    seed = check_int(seed, "seed")
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"X must be a torch.Tensor [N, ...], got {type(X).__name__}")
    lab = as_labels(labels, X.shape[0], "labels")
    pairs = _draw_pairs(lab, mode, n_pairs, seed)
    f = folding(model, X[pairs[:, 0]], X[pairs[:, 1]], method=method, **kwargs)
    classes = lab[pairs]
    chi = f.chi
    per: dict = {}
    keys = [tuple(c) for c in classes.tolist()]
    for key in sorted(set(keys)):
        sel = torch.tensor([k == key for k in keys])
        c = chi[sel]
        nz = c[c > 0]
        per[key] = {"n": int(sel.sum()), "mean": float(c.mean()), "max": float(c.max()),
                    "max_nonzero": float(nz.max()) if nz.numel() else 0.0}
    agg = float(torch.tensor([v["max_nonzero"] for v in per.values()]).median()) if per else 0.0
    return FoldingReport(f, pairs, classes, float(chi.mean()), float(chi.median()),
                         float(chi.max()), float((chi > 0).double().mean()), per, agg, mode)
