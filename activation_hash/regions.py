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
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from activation_hash.codes import CodeBook
from activation_hash.collisions import _group_codes
from activation_hash.layout import Layout
from activation_hash.nn import ReLU, convert
from activation_hash.ops import pack_signs
from activation_hash.record import find_sites, record
from activation_hash.validation import check_choice, check_int

__all__ = ["segment_regions", "regions_in_interval", "sampled_segment_regions",
           "SegmentRegions", "Switch", "NotPiecewiseLinearError", "TOL"]

TOL = 1e-12  # right-hand limit: a unit is on after t when z + TOL * dz > 0 (t units)
_SAMPLED_HINT = ("; the exact walk handles piecewise-linear models only: use "
                 "sampled_segment_regions (or folding(..., steps=n)) for this model")


class NotPiecewiseLinearError(ValueError):
    """The model computes something the exact walk cannot follow."""


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

_RELU_LIKE = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu",
    torch.Tensor.relu: "relu", torch.Tensor.relu_: "relu",
    F.leaky_relu: "leaky_relu", F.leaky_relu_: "leaky_relu",
    torch._C._nn.leaky_relu: "leaky_relu", torch._C._nn.leaky_relu_: "leaky_relu",
    F.prelu: "prelu", torch.prelu: "prelu",
}
_CLAMPS = {F.hardtanh: "hardtanh", F.hardtanh_: "hardtanh", torch._C._nn.hardtanh: "hardtanh",
           torch._C._nn.hardtanh_: "hardtanh", F.relu6: "relu6",
           torch.clamp: "clamp", torch.clip: "clamp", torch.Tensor.clamp: "clamp",
           torch.Tensor.clip: "clamp", torch.clamp_: "clamp", torch.Tensor.clamp_: "clamp",
           torch.abs: "abs", torch.absolute: "abs", torch.Tensor.abs: "abs",
           torch.Tensor.abs_: "abs", torch.Tensor.__abs__: "abs"}
_MAX_POOL = {"max_pool1d": 1, "max_pool2d": 2, "max_pool3d": 3, "_max_pool1d": 1,
             "_max_pool2d": 2, "_max_pool3d": 3, "max_pool1d_with_indices": 1,
             "max_pool2d_with_indices": 2, "max_pool3d_with_indices": 3}
_NOT_PL = {F.gelu, F.silu, F.elu, F.selu, F.celu, F.softplus, F.mish, F.hardswish,
           F.hardsigmoid, F.sigmoid, torch.sigmoid, torch.Tensor.sigmoid, F.tanh, torch.tanh,
           torch.Tensor.tanh, F.softmax, torch.softmax, torch.Tensor.softmax, F.log_softmax,
           torch.log_softmax, torch.Tensor.log_softmax, F.logsigmoid, F.softsign,
           F.tanhshrink, F.glu, torch.exp, torch.Tensor.exp, torch.log, torch.Tensor.log,
           F.layer_norm, F.group_norm, F.instance_norm, F.normalize, F.softmin,
           F.scaled_dot_product_attention, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
           F.adaptive_max_pool3d, torch.max, torch.Tensor.max, torch.amax, torch.Tensor.amax,
           torch.min, torch.Tensor.min, torch.amin, torch.maximum, torch.minimum,
           torch.Tensor.maximum, torch.Tensor.minimum, torch.sort, torch.topk, torch.sqrt,
           torch.Tensor.sqrt, torch.rsqrt, torch.pow, torch.Tensor.pow, torch.Tensor.__pow__,
           torch.sign, torch.Tensor.sign, torch.round, torch.floor, torch.ceil, torch.where,
           F.adaptive_max_pool2d_with_indices, F.rrelu, F.hardshrink, F.softshrink,
           F.threshold}


def _name_of(func) -> str:
    return getattr(func, "__name__", repr(func))


class _Walk(TorchFunctionMode):
    """One step of the walk: the model runs on ``cat([p, q])`` (S rows each); every switch
    decides on ``p``'s right-hand limit and applies the same decision to ``q``."""

    def __init__(self, S: int, flags: dict[int, torch.Tensor]):
        super().__init__()
        self.S = S
        self.flags = flags            # switch index -> bool [S, n]: units at 0 at this t
        self.k = 0                    # switches seen so far in this forward (call order)
        self.steps: list[torch.Tensor] = []   # per switch: float64 [S, n] distance ahead
        self.kinds: list[tuple[str, bool]] = []  # per switch: (op, in_code)
        self.words: list[torch.Tensor] = []   # per code site: int64 [S, w]
        self.shapes: list[tuple[int, ...]] = []

    # -- the rules
    def _decide(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One kink at 0 of z [2S, ...]: (right-hand 'on' of p [S, ...], steps ahead [S, n])."""
        zp, zq = z[:self.S], z[self.S:]
        dz = zq - zp
        on = (zp + TOL * dz) > 0
        flag = self.flags.get(self.k)
        if flag is not None and flag.shape[1] == zp[0].numel():
            flag = flag.view_as(zp)
            on = torch.where(flag & (dz != 0), dz > 0, on)
        ahead = torch.where(on, dz < 0, dz > 0)
        s = torch.where(ahead, -zp / torch.where(ahead, dz, torch.ones_like(dz)),
                        torch.full_like(zp, math.inf)).clamp_min(0.0)
        self.steps.append(s.reshape(self.S, -1))
        self.k += 1
        return on, dz

    def _relu_like(self, op: str, func, args, kwargs):
        x = args[0] if args else kwargs.get("input")
        on, _ = self._decide(x)
        self.kinds.append((op, True))
        self.shapes.append(tuple(x.shape[1:]))
        self.words.append(pack_signs(torch.where(on, 1.0, -1.0).to(torch.float64)))
        both = torch.cat([on, on])
        if op == "relu":
            return x * both
        if op == "leaky_relu":
            slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
            return torch.where(both, x, x * float(slope))
        weight = args[1] if len(args) > 1 else kwargs["weight"]
        shape = [1] * x.dim()
        if x.dim() > 1 and weight.numel() > 1:
            shape[1] = weight.numel()
        return torch.where(both, x, x * weight.reshape(shape))

    def _clamp(self, op: str, func, args, kwargs):
        x = args[0] if args else kwargs.get("input")
        if op == "abs":
            on, _ = self._decide(x)
            self.kinds.append(("abs", False))
            return x * torch.where(torch.cat([on, on]), 1.0, -1.0).to(x.dtype)
        if op == "relu6":
            lo, hi = 0.0, 6.0
        elif op == "hardtanh":
            lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
            hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
        else:
            lo = args[1] if len(args) > 1 else kwargs.get("min")
            hi = args[2] if len(args) > 2 else kwargs.get("max")
        if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
            raise NotPiecewiseLinearError("clamp with tensor bounds is not supported by the "
                                          "exact walk" + _SAMPLED_HINT)
        out = x
        both_above_lo = both_above_hi = None
        if lo is not None:
            above, _ = self._decide(x - float(lo))
            self.kinds.append((f"{op}_min", False))
            both_above_lo = torch.cat([above, above])
        if hi is not None:
            above, _ = self._decide(x - float(hi))
            self.kinds.append((f"{op}_max", False))
            both_above_hi = torch.cat([above, above])
        if both_above_lo is not None:
            out = torch.where(both_above_lo, out, torch.full_like(x, float(lo)))
        if both_above_hi is not None:
            out = torch.where(both_above_hi, torch.full_like(x, float(hi)), out)
        return out

    def _max_pool(self, dims: int, func, args, kwargs):
        names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
        x = args[0] if args else kwargs["input"]
        opts = dict(zip(names, args[1:]))
        opts.update({k: v for k, v in kwargs.items() if k in names})
        if opts.get("ceil_mode") or opts.get("return_indices"):
            raise NotPiecewiseLinearError("max-pooling with ceil_mode or return_indices is not "
                                          "supported by the exact walk" + _SAMPLED_HINT)

        def tup(v, default):
            v = default if v is None or (isinstance(v, (list, tuple)) and not v) else v
            return tuple(v) if isinstance(v, (list, tuple)) else (int(v),) * dims
        k = tup(opts["kernel_size"], None)
        stride = tup(opts.get("stride"), k)
        pad = tup(opts.get("padding", 0), 0)
        dil = tup(opts.get("dilation", 1), 1)
        spatial = x.dim() - dims
        w = x
        if any(pad):
            w = F.pad(w, [p for p in reversed(pad) for _ in range(2)],
                      value=torch.finfo(x.dtype).min)
        for d in range(dims):
            size = dil[d] * (k[d] - 1) + 1
            w = w.unfold(spatial + d, size, stride[d])
            if dil[d] > 1:
                w = w[..., ::dil[d]]
        # w [2S, *lead, *out, k0, k1, ...]: the windows; flatten the window dims
        w = w.flatten(-dims)
        wp, wq = w[:self.S], w[self.S:]
        dw = wq - wp
        key = wp + TOL * dw
        win = key.argmax(-1, keepdim=True)
        zw, dzw = wp.gather(-1, win), dw.gather(-1, win)
        gap = zw - wp
        faster = dw - dzw
        ok = faster > 0
        s = torch.where(ok, gap / torch.where(ok, faster, torch.ones_like(faster)),
                        torch.full_like(gap, math.inf)).clamp_min(0.0).amin(-1)
        self.steps.append(s.reshape(self.S, -1))
        self.kinds.append((f"max_pool{dims}d", False))
        self.k += 1
        both = torch.cat([win, win])
        return w.gather(-1, both).squeeze(-1)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = _RELU_LIKE.get(func)
        if op is not None:
            return self._relu_like(op, func, args, kwargs)
        op = _CLAMPS.get(func)
        if op is not None:
            return self._clamp(op, func, args, kwargs)
        name = _name_of(func)
        if name in _MAX_POOL and (getattr(func, "__module__", "") or "").startswith(
                ("torch.nn.functional", "torch")):
            return self._max_pool(_MAX_POOL[name], func, args, kwargs)
        if func in _NOT_PL:
            raise NotPiecewiseLinearError(f"the model calls {name}, which is not piecewise "
                                          f"linear" + _SAMPLED_HINT)
        if func is F.batch_norm and (kwargs.get("training") or (len(args) > 5 and args[5])):
            raise NotPiecewiseLinearError("batch_norm with batch statistics (training=True)"
                                          + _SAMPLED_HINT)
        if func in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout) and (
                kwargs.get("training", len(args) <= 2 or args[2])):
            raise NotPiecewiseLinearError(f"{name} in training mode" + _SAMPLED_HINT)
        return func(*args, **kwargs)


def _walk_model(model: nn.Module) -> nn.Module:
    """A float64 copy with torch's activation modules (ours converted back), in eval."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise NotPiecewiseLinearError(
            f"modules in train mode ({', '.join(training[:3])}{', ...' if len(training) > 3 else ''}"
            f"): call model.eval() first (BatchNorm must use its running statistics, dropout be "
            f"off)" + _SAMPLED_HINT)
    return convert(copy.deepcopy(model), reverse=True).double().eval()


def _as_pairs(x0, x1) -> tuple[torch.Tensor, torch.Tensor]:
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


def _walk(wm: nn.Module, x0: torch.Tensor, x1: torch.Tensor, layout: Layout,
          max_pieces: int, progress: bool):
    S = x0.shape[0]
    d = x1 - x0
    view = (-1,) + (1,) * (x0.dim() - 1)
    t = torch.zeros(S, dtype=torch.float64)
    prev_switch = torch.full((S,), -1, dtype=torch.int64)
    active = torch.arange(S)
    flags: dict[int, torch.Tensor] = {}
    seg_out, start_out, words_out, switch_out = [], [], [], []
    kinds = None
    n_pieces = torch.zeros(S, dtype=torch.int64)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(desc="walk", unit="piece")
    with torch.no_grad():
        while active.numel():
            ta = t[active]
            p = x0[active] + ta.view(view) * d[active]
            walk = _Walk(active.numel(), flags)
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
    seg = torch.cat(seg_out)
    order = torch.sort(seg, stable=True).indices  # within a segment: step order = t order
    return (seg[order], torch.cat(start_out)[order], torch.cat(words_out)[order],
            torch.cat(switch_out)[order], kinds or [])


# ---- layer by layer (chains) ------------------------------------------------------------

_PASS = (nn.Flatten, nn.Dropout, nn.Identity, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
           nn.ConvTranspose3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _chain(model: nn.Module) -> list[nn.Module] | None:
    """The modules of a plain chain (nested Sequentials flattened), or None."""
    if not isinstance(model, nn.Sequential):
        return None
    out = []
    for m in model:
        if isinstance(m, nn.Sequential):
            sub = _chain(m)
            if sub is None:
                return None
            out += sub
        elif isinstance(m, (nn.ReLU, nn.LeakyReLU, ReLU)) or isinstance(m, _PASS + _AFFINE):
            out.append(m)
        else:
            return None
    return out


def _layers(chain: list[nn.Module], x0: torch.Tensor, x1: torch.Tensor, max_pieces: int):
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
    k = 0
    with torch.no_grad():
        for m in chain:
            if isinstance(m, _PASS):
                a, b = m(a), m(b)  # linear, no offset
                continue
            if isinstance(m, _AFFINE):
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
            k += 1
    # every site's words to the final pieces: follow parents backwards
    n_final = seg.shape[0]
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
    return seg, lo, codes, split_site


def _affine(m: nn.Module, a: torch.Tensor, b: torch.Tensor, lo: torch.Tensor,
            seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An affine layer on every piece: the direction through its linear part (one batched
    call), the value at each piece's start exactly for the first piece of each segment and by
    continuity for the others (``z(lo_j) = a_{j-1} + (lo_j - lo_{j-1}) b_{j-1}``): the layer's
    matrix is applied to the directions only."""
    if isinstance(m, nn.Linear):
        bl = F.linear(b, m.weight)           # linear part: no bias
    elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        bl = m._conv_forward(b, m.weight, None)
    else:
        bl = m(b) - m(torch.zeros_like(b[:1]))
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
        batch: segments advanced together.
        max_pieces: ValueError when a segment has more pieces.
        progress: a tqdm bar of the pieces found.

    Returns:
        a :class:`SegmentRegions` (codes in the layout of :func:`~activation_hash.record.record`).
    """
    check_choice(method, "method", ("auto", "walk", "layers"))
    batch = check_int(batch, "batch", min=1)
    max_pieces = check_int(max_pieces, "max_pieces", min=1)
    x0, x1 = _as_pairs(x0, x1)
    wm = _walk_model(model)
    if x0.shape[0] == 0:
        raise ValueError("x0 and x1 hold no segment")
    sites = find_sites(wm, x0[:1])
    layout = Layout(tuple(s.name for s in sites), tuple(s.shape for s in sites))
    chain = _chain(wm)
    if method == "layers" and chain is None:
        raise ValueError("method='layers' needs a plain nn.Sequential chain of Linear/Conv/"
                         "BatchNorm/ReLU/LeakyReLU/Flatten/Dropout/AvgPool modules; use "
                         "method='walk'")
    use_layers = chain is not None and method != "walk"
    parts = []
    for lo in range(0, x0.shape[0], batch):
        a, b = x0[lo:lo + batch], x1[lo:lo + batch]
        if use_layers:
            seg, starts, words, split = _layers(chain, a, b, max_pieces)
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
    g = _group_codes(torch.cat([seg[:, None], words], 1))
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
    x0, x1 = _as_pairs(x0, x1)
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
            out[i] = _group_codes(rec.codes).n_groups
    return out
