"""Exact linear regions along segments: where a piecewise-linear network changes its affine map
on the line ``x(t) = (1 - t) x0 + t x1``, ``t in [0, 1]``, and the neural code of every piece.

Two exact methods give the same breakpoints (to about 1e-12 in t) and the same codes:

- ``"walk"`` (any piecewise-linear model: convolutions, residual additions, max-pooling,
  BatchNorm in eval, ...): from the current t, run the point ``p = x(t)`` and ``q = p + (x1 -
  x0)`` through the model together, ``q`` sharing every switch decision of ``p`` (so ``q - p``
  is the derivative along the segment), find the nearest switch ahead (a pre-activation
  crossing 0, a max-pool window changing its argmax, a clamp reaching a bound), step there,
  and decide each unit by its right-hand limit. Units that reached 0 at the breakpoint are
  decided by the sign of their new derivative, the others by ``z + tol * dz > 0``: no epsilon
  step past the breakpoint, pieces down to ``tol = 1e-12`` of a segment are resolved.
- ``"layers"`` (chains of Linear / Conv / BatchNorm (eval) / ReLU / LeakyReLU / Flatten /
  Dropout (eval) / AvgPool modules in a ``nn.Sequential``): the segment is split layer by
  layer, every piece carrying the affine map ``a + t b`` of the layer's input: one batched
  matmul per layer for all pieces of all segments.

``method="auto"`` takes ``"layers"`` where the model allows it. Other nonlinearities (GELU,
SiLU, tanh, sigmoid, softmax, ...) and modules in train mode raise ValueError pointing to
:func:`sampled_segment_regions`. The codes are the ReLU-like patterns (ReLU, LeakyReLU, PReLU,
in the recorder's layout); ``abs``, ``hardtanh``/``clamp``/``relu6`` and max-pooling are
switches too, so neighbouring pieces may share a code where only such a switch changed:
``switch`` says what changed at each breakpoint, ``n_distinct`` counts distinct codes.

Example::

    r = segment_regions(model, x0, x1)          # x0, x1 [S, ...] (or one input each)
    r.counts                                    # int64 [S]: linear pieces of each segment
    r.breakpoints(0)                            # float64 [P_0 + 1]: 0 = t_0 < ... < t_P = 1
    r.codes                                     # CodeBook [sum P, W]; ids = segment of each piece
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from activation_hash.codes import CodeBook
from activation_hash.grouping import group_rows
from activation_hash.layout import Layout
from activation_hash.record import find_sites, record
from activation_hash.regions_layers import chain_layers, mlp_layers, mlp_stages, plain_chain
from activation_hash.switches import (TOL, NotPiecewiseLinearError, SwitchMode,  # noqa: F401
                                      check_eval, walk_copy)
from activation_hash.validation import check_choice, check_int

__all__ = ["segment_regions", "regions_in_interval", "sampled_segment_regions",
           "SegmentRegions", "Switch", "NotPiecewiseLinearError", "TOL"]

@dataclass(frozen=True)
class Switch:
    """Something that can switch along a segment: a ReLU-like site of the code, or another
    piecewise-linear op (max-pooling, abs, clamp/hardtanh bound) that is not in the code."""

    name: str
    op: str
    in_code: bool


@dataclass
class SegmentRegions:
    """The linear pieces of S segments.

    Attributes:
        counts: int64 ``[S]``, pieces P of each segment (regions crossed).
        offsets: int64 ``[S + 1]``: segment i's pieces are rows ``offsets[i]:offsets[i + 1]``.
        starts: float64 ``[sum P]``: the t at which each piece begins (0 for the first).
        codes: :class:`CodeBook` ``[sum P, W]`` in the model's layout; ``ids`` = segment.
        switch: int64 ``[sum P]``: index into ``switches`` of what switched at the piece's
            start (-1 for the first piece of a segment).
        switches: the :class:`Switch` table.
        n_distinct: int64 ``[S]``: distinct codes along each segment.
        method: ``"walk"`` or ``"layers"``.
    """

    counts: torch.Tensor
    offsets: torch.Tensor
    starts: torch.Tensor
    codes: CodeBook
    switch: torch.Tensor
    switches: tuple[Switch, ...]
    n_distinct: torch.Tensor
    method: str

    def __len__(self) -> int:
        return self.counts.shape[0]

    def breakpoints(self, i: int) -> torch.Tensor:
        """float64 ``[P_i + 1]``: ``0 = t_0 < t_1 < ... < t_P = 1`` of segment i."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return torch.cat([self.starts[lo:hi], torch.ones(1, dtype=torch.float64)])

    def segment(self, i: int) -> CodeBook:
        """The codes of segment i's pieces, in order along the segment."""
        return self.codes[int(self.offsets[i]):int(self.offsets[i + 1])]

    def switched(self, i: int) -> list[str]:
        """Name of what switched at each inner breakpoint ``t_1 .. t_{P-1}`` of segment i."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return [self.switches[int(k)].name for k in self.switch[lo + 1:hi]]


# ---- the walk ---------------------------------------------------------------------------

def as_segment_pairs(x0, x1) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked segment end points ``x0``, ``x1`` (finite float tensors ``[S, ...]`` of one
    shape), detached, as float64."""
    for name, v in (("x0", x0), ("x1", x1)):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
        if not v.dtype.is_floating_point:
            raise TypeError(f"{name} must be a float tensor, got {v.dtype}")
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have one shape, got {list(x0.shape)} and "
                         f"{list(x1.shape)}")
    if not (torch.isfinite(x0).all() and torch.isfinite(x1).all()):
        raise ValueError("x0 and x1 must be finite")
    return x0.detach().double(), x1.detach().double()


class _Rows:
    """Rows appended to one buffer that doubles when full: one allocation per doubling, not
    per step (thousands of small live tensors between the freed per-step temporaries
    fragment the heap: the walk's resident set grew by about 1 MB per piece)."""

    def __init__(self, tail: tuple[int, ...], dtype: torch.dtype):
        self.buf = torch.empty((256,) + tail, dtype=dtype)
        self.n = 0

    def append(self, rows: torch.Tensor) -> None:
        k = rows.shape[0]
        if self.n + k > self.buf.shape[0]:
            new = torch.empty((max(2 * self.buf.shape[0], self.n + k),) + self.buf.shape[1:],
                              dtype=self.buf.dtype)
            new[:self.n] = self.buf[:self.n]
            self.buf = new
        self.buf[self.n:self.n + k] = rows
        self.n += k

    def rows(self) -> torch.Tensor:
        return self.buf[:self.n]


def _walk(wm: nn.Module, x0: torch.Tensor, x1: torch.Tensor, layout: Layout,
          max_pieces: int, progress: bool):
    S = x0.shape[0]
    d = x1 - x0
    view = (-1,) + (1,) * (x0.dim() - 1)
    t = torch.zeros(S, dtype=torch.float64)
    prev_switch = torch.full((S,), -1, dtype=torch.int64)
    active = torch.arange(S)
    flags: dict[int, torch.Tensor] = {}
    seg_out, start_out = _Rows((), torch.int64), _Rows((), torch.float64)
    words_out, switch_out = _Rows((layout.total_words,), torch.int64), _Rows((), torch.int64)
    kinds = owner = None
    n_pieces = torch.zeros(S, dtype=torch.int64)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(desc="walk", unit="piece")
    with torch.no_grad():
        while active.numel():
            ta = t[active]
            p = x0[active] + ta.view(view) * d[active]
            walk = SwitchMode(active.numel(), flags)
            with walk:
                wm(torch.cat([p, p + d[active]]))
            if kinds is None:
                kinds = walk.kinds
                if tuple(walk.shapes) != layout.shapes:
                    raise RuntimeError(f"the walk saw ReLU-like sites of shapes {walk.shapes}, "
                                       f"the recorder {list(layout.shapes)}")
            elif walk.kinds != kinds:
                raise NotPiecewiseLinearError("the model calls different switches at different "
                                              "inputs (data-dependent control flow)")
            seg_out.append(active)
            start_out.append(ta)
            words_out.append(torch.cat(walk.words, 1) if walk.words else
                             torch.zeros(active.numel(), 0, dtype=torch.int64))
            switch_out.append(prev_switch[active])
            n_pieces[active] += 1
            if int(n_pieces[active].max()) > max_pieces:
                raise ValueError(f"a segment has more than max_pieces={max_pieces} pieces; "
                                 f"raise max_pieces")
            if walk.steps:
                steps = torch.cat(walk.steps, 1)
                s_min, arg = steps.min(1)
                if owner is None:  # switch of each column (the same at every step)
                    sizes = torch.tensor([st.shape[1] for st in walk.steps])
                    owner = torch.repeat_interleave(torch.arange(len(walk.steps)), sizes)
                which = owner[arg]
            else:
                s_min = torch.full((active.numel(),), math.inf, dtype=torch.float64)
                which = torch.full((active.numel(),), -1, dtype=torch.int64)
            s_min = torch.where(torch.isfinite(s_min), s_min.clamp_min(TOL), s_min)
            t_new = ta + s_min
            go = t_new < 1.0
            prev_switch[active] = which
            t[active] = t_new
            flags = {}
            if go.any():
                bound = (s_min * (1 + 1e-9))[go, None]
                for k, st in enumerate(walk.steps):
                    flags[k] = st[go] <= bound
            active = active[go]
            if bar is not None:
                bar.update(int(go.sum()))
    if bar is not None:
        bar.close()
    seg = seg_out.rows()
    order = torch.sort(seg, stable=True).indices  # within a segment: step order = t order
    return (seg[order], start_out.rows()[order], words_out.rows()[order],
            switch_out.rows()[order], kinds or [])


# ---- public -----------------------------------------------------------------------------

def segment_regions(model: nn.Module, x0: torch.Tensor, x1: torch.Tensor, *,
                    method: str = "auto", batch: int = 64, max_pieces: int = 10_000_000,
                    progress: bool = False) -> SegmentRegions:
    """Exact linear pieces of the segments ``x(t) = (1 - t) x0 + t x1``, ``t in [0, 1]``.

    Args:
        model: a piecewise-linear network in eval mode (it is copied, not changed).
        x0, x1: float ``[S, *in_shape]`` (or one input ``[*in_shape]`` each, with a batch
            dimension of 1 added when the model's input is batched: pass ``[1, ...]``).
        method: ``"auto"``, ``"walk"`` (any graph) or ``"layers"`` (plain chains).
        batch: segments advanced together (MLPs on the CPU: two per thread).
        max_pieces: ValueError when a segment has more pieces.
        progress: a tqdm bar of the pieces found.

    Returns:
        a :class:`SegmentRegions` (codes in the layout of :func:`~activation_hash.record.record`).
    """
    check_choice(method, "method", ("auto", "walk", "layers"))
    batch = check_int(batch, "batch", min=1)
    max_pieces = check_int(max_pieces, "max_pieces", min=1)
    x0, x1 = as_segment_pairs(x0, x1)
    if x0.shape[0] == 0:
        raise ValueError("x0 and x1 hold no segment")
    check_eval(model)
    chain = plain_chain(model)
    stages = mlp_stages(chain, x0) if chain is not None and method != "walk" else None
    if stages:  # the MLP path reads the weights: no float64 copy of the model needed
        wm = model
        sites = find_sites(model, x0[:1].to(stages[0][0].weight.dtype))
    else:
        wm = walk_copy(model)
        sites = find_sites(wm, x0[:1])
        chain = plain_chain(wm)
    layout = Layout(tuple(s.name for s in sites), tuple(s.shape for s in sites))
    if method == "layers" and chain is None:
        raise ValueError("method='layers' needs a plain nn.Sequential chain of Linear/Conv/"
                         "BatchNorm/ReLU/LeakyReLU/Flatten/Dropout/AvgPool modules; use "
                         "method='walk'")
    use_layers = chain is not None and method != "walk"
    parts = []
    step = x0.shape[0] if stages else batch  # MLPs: chunks of their own
    for lo in range(0, x0.shape[0], step):
        a, b = x0[lo:lo + step], x1[lo:lo + step]
        if use_layers:
            seg, starts, words, split = (mlp_layers(stages, a, b, max_pieces) if stages else
                                         chain_layers(chain, a, b, max_pieces))
            parts.append((seg + lo, starts, words, split))
        else:
            seg, starts, words, switch, kinds = _walk(wm, a, b, layout, max_pieces, progress)
            parts.append((seg + lo, starts, words, switch))
    seg = torch.cat([p[0] for p in parts])
    starts = torch.cat([p[1] for p in parts])
    words = torch.cat([p[2] for p in parts])
    switch = torch.cat([p[3] for p in parts])
    if use_layers:
        switches = tuple(Switch(s.name, s.op, True) for s in sites)
    else:
        switches = _switch_table(kinds, layout)
    S = x0.shape[0]
    counts = torch.bincount(seg, minlength=S)
    offsets = torch.zeros(S + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, 0)
    # distinct codes per segment: exact grouping of (segment, code) rows
    g = group_rows(torch.cat([seg[:, None], words], 1))
    heads = g.perm[g.new]
    n_distinct = torch.bincount(seg[heads], minlength=S)
    cb = CodeBook(words, layout, ids=seg, meta={"kind": "segment pieces"})
    return SegmentRegions(counts, offsets, starts, cb, switch, switches, n_distinct,
                          "layers" if use_layers else "walk")


def _switch_table(kinds, layout: Layout) -> tuple[Switch, ...]:
    out, site, seen = [], 0, {}
    for op, in_code in kinds:
        if in_code:
            out.append(Switch(layout.names[site], op, True))
            site += 1
        else:
            n = seen.get(op, 0)
            seen[op] = n + 1
            out.append(Switch(op if n == 0 else f"{op}#{n}", op, False))
    return tuple(out)


def regions_in_interval(model: nn.Module, a: float, b: float, **kwargs) -> SegmentRegions:
    """All linear pieces of a 1-D-input network on ``[a, b]`` (model input ``[B, 1]``)."""
    for name, v in (("a", a), ("b", b)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise TypeError(f"{name} must be a finite number, got {v!r}")
    if not a < b:
        raise ValueError(f"need a < b, got a={a}, b={b}")
    return segment_regions(model, torch.tensor([[float(a)]]), torch.tensor([[float(b)]]),
                           **kwargs)


def sampled_segment_regions(model: nn.Module, x0: torch.Tensor, x1: torch.Tensor,
                            n: int = 1000, *, chunk: int = 1024) -> torch.Tensor:
    """Distinct neural codes among ``n`` equally spaced points of each segment (both ends
    included): int64 ``[S]``. Sampling under-counts until the step is below the smallest
    piece; it works for any model whose ReLU-like units the recorder sees. Points run
    ``chunk`` at a time (memory: one chunk's activations)."""
    n = check_int(n, "n", min=2)
    chunk = check_int(chunk, "chunk", min=1)
    x0, x1 = as_segment_pairs(x0, x1)
    S = x0.shape[0]
    ts = torch.linspace(0, 1, n, dtype=torch.float64)
    wm = copy.deepcopy(model).double().eval()
    view = (-1,) + (1,) * (x0.dim() - 1)
    out = torch.zeros(S, dtype=torch.int64)
    with torch.no_grad():
        for i in range(S):
            d = x1[i:i + 1] - x0[i:i + 1]
            with record(wm) as rec:
                for lo in range(0, n, chunk):
                    wm(x0[i:i + 1] + ts[lo:lo + chunk].view(view) * d)
            out[i] = group_rows(rec.codes).n_groups
    return out
