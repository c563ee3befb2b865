"""The switch rules of the exact walks: how each piecewise-linear op decides, at a point of a
segment, which of its linear pieces holds just after it (the right-hand limit), and how far
ahead along the segment it switches.

:class:`SwitchMode` is a ``TorchFunctionMode``: the model runs on ``cat([p, q])`` (S rows
each), ``q = p + direction``, and every switch decides on ``p`` and applies the same decision
to ``q``, so ``q - p`` is the derivative along the segment through every layer (biases
cancel). Rules: ReLU / LeakyReLU / PReLU (in the code), ``abs``, ``hardtanh`` / ``clamp`` /
``relu6`` (two kinks), max-pooling (the argmax of a window changes). Linear ops pass through;
known non-piecewise-linear ops raise :class:`NotPiecewiseLinearError`. Used by
:mod:`activation_hash.regions` (segments) and :mod:`activation_hash.slices` (planes: a
subclass with ``copies=3``, rows ``[x, x + e0, x + e1]``, that overrides ``_decide`` and
``_pool_decide`` to apply each face's fixed decisions).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from activation_hash.nn import convert
from activation_hash.ops import pack_signs
from activation_hash.taps import RELU_LIKE_FUNCTIONS

__all__ = ["TOL", "NotPiecewiseLinearError", "SwitchMode", "walk_copy", "SAMPLED_HINT"]

TOL = 1e-12  # right-hand limit: a unit is on after t when z + TOL * dz > 0 (t units)
SAMPLED_HINT = ("; the exact walk handles piecewise-linear models only: use "
                 "sampled_segment_regions (or folding(..., steps=n)) for this model")


class NotPiecewiseLinearError(ValueError):
    """The model computes something the exact walk cannot follow."""


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


class SwitchMode(TorchFunctionMode):
    """One step of the walk: the model runs on ``cat([p, q])`` (S rows each); every switch
    decides on ``p``'s right-hand limit and applies the same decision to ``q``."""

    def __init__(self, S: int, flags: dict[int, torch.Tensor], copies: int = 2):
        super().__init__()
        self.S = S
        self.copies = copies          # row blocks of S: the point, then its direction(s)
        self.flags = flags            # switch index -> bool [S, n]: units at 0 at this t
        self.k = 0                    # switches seen so far in this forward (call order)
        self.steps: list[torch.Tensor] = []   # per switch: float64 [S, n] distance ahead
        self.kinds: list[tuple[str, bool]] = []  # per switch: (op, in_code)
        self.words: list[torch.Tensor] = []   # per code site: int64 [S, w]
        self.shapes: list[tuple[int, ...]] = []

    def _rep(self, t: torch.Tensor) -> torch.Tensor:
        """A decision of the S points [S, ...] for every row block."""
        return torch.cat([t] * self.copies)

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
        both = self._rep(on)
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
            return x * torch.where(self._rep(on), 1.0, -1.0).to(x.dtype)
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
                                          "exact walk" + SAMPLED_HINT)
        out = x
        both_above_lo = both_above_hi = None
        if lo is not None:
            above, _ = self._decide(x - float(lo))
            self.kinds.append((f"{op}_min", False))
            both_above_lo = self._rep(above)
        if hi is not None:
            above, _ = self._decide(x - float(hi))
            self.kinds.append((f"{op}_max", False))
            both_above_hi = self._rep(above)
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
                                          "supported by the exact walk" + SAMPLED_HINT)

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
        win = self._pool_decide(w)
        self.kinds.append((f"max_pool{dims}d", False))
        return w.gather(-1, self._rep(win)).squeeze(-1)

    def _pool_decide(self, w: torch.Tensor) -> torch.Tensor:
        """The winner [S, ..., 1] of each window w [2S, ..., k] just after p (and the step
        ahead to the next change)."""
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
        self.k += 1
        return win

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = RELU_LIKE_FUNCTIONS.get(func)
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
                                          f"linear" + SAMPLED_HINT)
        if func is F.batch_norm and (kwargs.get("training") or (len(args) > 5 and args[5])):
            raise NotPiecewiseLinearError("batch_norm with batch statistics (training=True)"
                                          + SAMPLED_HINT)
        if func in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout) and (
                kwargs.get("training", len(args) <= 2 or args[2])):
            raise NotPiecewiseLinearError(f"{name} in training mode" + SAMPLED_HINT)
        return func(*args, **kwargs)


def check_eval(model: nn.Module) -> None:
    """TypeError unless an nn.Module; NotPiecewiseLinearError when a module is in train mode."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise NotPiecewiseLinearError(
            f"modules in train mode ({', '.join(training[:3])}{', ...' if len(training) > 3 else ''}"
            f"): call model.eval() first (BatchNorm must use its running statistics, dropout be "
            f"off)" + SAMPLED_HINT)


def walk_copy(model: nn.Module) -> nn.Module:
    """A float64 copy with torch's activation modules (ours converted back), in eval."""
    check_eval(model)
    return convert(copy.deepcopy(model), reverse=True).double().eval()
