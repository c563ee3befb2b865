"""Drop-in ReLU modules that save 1 bit per unit for backward, and recording of neural codes.

- :class:`ReLU`, :class:`LeakyReLU`: same outputs and gradients as torch's, computed by the
  fused ``relu_pack`` kernel; autograd keeps only the packed signs (1 bit per unit).
- :func:`convert`: swap every ``nn.ReLU`` / ``nn.LeakyReLU`` of a model for ours (and back).
- :func:`record`: context manager that collects the neural code of every batch a model sees.

Example::

    model = convert(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    with record(model) as rec, torch.no_grad():
        model(torch.randn(5, 4))
    rec.codes.shape      # torch.Size([5, 1]): 8 bits in one int64 word
    rec.layout.names     # ('1',)
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from activation_hash.layout import Layout
from activation_hash.ops import pack_signs, relu_pack

__all__ = ["ReLU", "LeakyReLU", "convert", "record", "Recorder"]


class ReLU(nn.Module):
    """``nn.ReLU`` that saves only the packed signs (1 bit per unit) for backward.

    Shape: input ``[B, *]`` (float32/64, float16, bfloat16), output the same. Outputs equal
    ``torch.relu`` (including -0.0 and NaN); gradients equal torch's except at NaN inputs,
    where torch passes the gradient and we give 0 (the unit's bit is 0 there).
    ``inplace`` is accepted for drop-in compatibility; the result is computed out of place,
    which costs no saved memory since neither input nor output is kept for backward.
    """

    negative_slope = 0.0

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, words = relu_pack(x, self.negative_slope)
        for rec in _ACTIVE:
            rec._add(self, x, words)
        return y

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class LeakyReLU(ReLU):
    """``nn.LeakyReLU`` that saves only the packed signs for backward (see :class:`ReLU`).

    With ``negative_slope == 0`` it behaves as :class:`ReLU` (a zero gradient below 0, also
    for infinite incoming gradients, where torch's LeakyReLU(0) gives NaN).
    """

    def __init__(self, negative_slope: float = 1e-2, inplace: bool = False):
        super().__init__(inplace)
        if not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool):
            raise TypeError(f"negative_slope must be a float, got {type(negative_slope).__name__}")
        self.negative_slope = float(negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


def convert(model: nn.Module, *, reverse: bool = False) -> nn.Module:
    """Swap every ``nn.ReLU``/``nn.LeakyReLU`` in ``model`` for ours (``reverse=True``: back).

    Modifies ``model`` in place and returns it (a new module when ``model`` itself is one of
    the swapped types). Parameters, buffers and every other module are left as they are.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(model).__name__}")

    def swap(m: nn.Module) -> nn.Module | None:
        if reverse:
            if isinstance(m, LeakyReLU):
                return nn.LeakyReLU(m.negative_slope, inplace=m.inplace)
            if isinstance(m, ReLU):
                return nn.ReLU(inplace=m.inplace)
        else:
            if type(m) is nn.LeakyReLU:
                return LeakyReLU(m.negative_slope, inplace=m.inplace)
            if type(m) is nn.ReLU:
                return ReLU(inplace=m.inplace)
        return None

    top = swap(model)
    if top is not None:
        return top.train(model.training)
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            new = swap(child)
            if new is not None:
                setattr(parent, name, new.train(child.training))
    return model


# ---- recording -----------------------------------------------------------------------------

_ACTIVE: list["Recorder"] = []

_TORCH_RELU_MODULES = (nn.ReLU, nn.LeakyReLU, nn.PReLU)
_FUNCTIONAL = {
    torch.relu: "relu", torch.relu_: "relu", F.relu: "relu", F.relu_: "relu",
    torch.Tensor.relu: "relu", torch.Tensor.relu_: "relu",
    F.leaky_relu: "leaky_relu", F.leaky_relu_: "leaky_relu",
    torch._C._nn.leaky_relu: "leaky_relu", torch._C._nn.leaky_relu_: "leaky_relu",
    F.prelu: "prelu", torch.prelu: "prelu",
}


class _FunctionalActivations(TorchFunctionMode):
    """Sees every functional ReLU-like call while a recorder is active."""

    def __init__(self, recorder: "Recorder"):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        short = _FUNCTIONAL.get(func)
        if short is not None:
            x = args[0] if args else kwargs.get("input", kwargs.get("self"))
            if isinstance(x, torch.Tensor):
                self.recorder._add_functional(short, x)
        return func(*args, **kwargs)


class Recorder:
    """What :func:`record` collects: one packed code per forward call of the model.

    Attributes:
        layout: :class:`Layout` of the code rows (set by the first batch).
        batches: list of int64 ``[B, W]`` codes, one per forward call (``keep=True``).
    """

    def __init__(self, model: nn.Module, layers: Iterable[int | str] | None = None,
                 keep: bool = True,
                 on_batch: Callable[[torch.Tensor, Layout], None] | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"record expects an nn.Module, got {type(model).__name__}")
        self.model = model
        self.layers = None if layers is None else list(layers)
        self.keep = keep
        self.on_batch = on_batch
        self.layout: Layout | None = None
        self.full_layout: Layout | None = None
        self.batches: list[torch.Tensor] = []
        self._columns: torch.Tensor | None = None
        self._names = {id(m): name for name, m in model.named_modules()}
        self._stack: list[str] = []
        self._pending: list[tuple[str, tuple[int, ...], torch.Tensor]] = []
        self._seen: dict[str, int] = {}
        self._handles: list = []
        self._mode = _FunctionalActivations(self)

    # -- results
    @property
    def codes(self) -> torch.Tensor:
        """All recorded codes, int64 ``[N, W]`` (batches concatenated in call order)."""
        if not self.batches:
            width = self.layout.total_words if self.layout is not None else 0
            return torch.zeros(0, width, dtype=torch.int64)
        return torch.cat(self.batches) if len(self.batches) > 1 else self.batches[0]

    def bits(self) -> torch.Tensor:
        """All recorded codes unpacked, bool ``[N, total_bits]`` (padding dropped)."""
        from activation_hash.ops import unpack_bits

        codes = self.codes
        if self.layout is None:
            return torch.zeros(codes.shape[0], 0, dtype=torch.bool)
        return torch.cat([unpack_bits(codes[:, o:o + w], n) for o, w, n in zip(
            self.layout.word_offsets, self.layout.words_per_layer, self.layout.units)], dim=1)

    # -- collection (called from modules, hooks and the function mode)
    def _name(self, name: str) -> str:
        k = self._seen.get(name, 0)
        self._seen[name] = k + 1
        return name if k == 0 else f"{name}#{k}"

    def _push(self, name: str, x: torch.Tensor, words: torch.Tensor) -> None:
        self._pending.append((self._name(name), tuple(x.shape[1:]), words))

    def _add(self, module: nn.Module, x: torch.Tensor, words: torch.Tensor) -> None:
        name = self._names.get(id(module))
        if name is not None:
            self._push(name, x, words)

    def _add_functional(self, short: str, x: torch.Tensor) -> None:
        if not self._stack:
            return  # not inside this recorder's model
        where = self._stack[-1]
        owner = self.model.get_submodule(where) if where else self.model
        if isinstance(owner, ReLU):
            return  # our module records itself (the reference relu_pack calls torch.relu)
        name = where if isinstance(owner, _TORCH_RELU_MODULES) else (
            f"{where}.{short}" if where else short)
        self._push(name, x, pack_signs(x.detach()))

    def _begin(self) -> None:
        self._pending, self._seen = [], {}

    def _end(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        batch = {w.shape[0] for _, _, w in pending}
        if len(batch) != 1:
            raise ValueError(f"recorded activations disagree on the batch size: "
                             f"{[(n, w.shape[0]) for n, _, w in pending]}")
        full = Layout(tuple(n for n, _, _ in pending), tuple(s for _, s, _ in pending))
        if self.full_layout is None:
            self.full_layout = full
            if self.layers is None:
                self.layout = full
            else:
                self.layout, self._columns = full.select(self.layers)
        elif full != self.full_layout:
            raise ValueError(f"this forward pass recorded layers {list(full.names)} with shapes "
                             f"{list(full.shapes)}, the first one {list(self.full_layout.names)} "
                             f"with {list(self.full_layout.shapes)}")
        code = torch.cat([w for _, _, w in pending], dim=1)
        if self._columns is not None:
            code = code[:, self._columns.to(code.device)]
        if self.keep:
            self.batches.append(code)
        if self.on_batch is not None:
            self.on_batch(code, self.layout)

    # -- context
    def __enter__(self) -> "Recorder":
        for name, m in self.model.named_modules():
            self._handles.append(m.register_forward_pre_hook(self._pre_hook(name, m)))
            self._handles.append(m.register_forward_hook(self._post_hook(m)))
        _ACTIVE.append(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        _ACTIVE.remove(self)
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre_hook(self, name: str, module: nn.Module):
        def hook(mod, args):
            if mod is self.model:
                self._stack.clear()
                self._begin()
            self._stack.append(name)
        return hook

    def _post_hook(self, module: nn.Module):
        def hook(mod, args, output):
            if self._stack:
                self._stack.pop()
            if mod is self.model:
                self._end()
        return hook


def record(model: nn.Module, *, layers: Iterable[int | str] | None = None, keep: bool = True,
           on_batch: Callable[[torch.Tensor, Layout], None] | None = None) -> Recorder:
    """Record the neural code of every batch ``model`` sees inside the ``with`` block.

    Every ReLU-like activation of the forward pass contributes the packed signs of its
    pre-activation (bit 1 where it is > 0): our :class:`ReLU`/:class:`LeakyReLU` (free, from
    the fused kernel), unconverted ``nn.ReLU``/``nn.LeakyReLU``/``nn.PReLU`` and functional
    ``torch.relu``/``F.relu``/``F.leaky_relu``/``F.prelu``/``Tensor.relu`` calls made inside
    the model's forward. Works in eval and train mode and under ``torch.no_grad()``.

    Args:
        model: the network; each call of ``model(...)`` is one batch.
        layers: keep only these layers (names or indices into the full layout), in that order.
        keep: keep the codes in memory (``rec.batches`` / ``rec.codes``).
        on_batch: called with ``(codes [B, W], layout)`` after each batch (for streaming).

    Returns:
        a :class:`Recorder`; ``rec.codes`` is int64 ``[N, W]``, ``rec.layout`` its layout.
    """
    return Recorder(model, layers=layers, keep=keep, on_batch=on_batch)
