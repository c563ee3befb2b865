"""Drop-in ReLU modules that save 1 bit per unit for backward.

- :class:`ReLU`, :class:`LeakyReLU`: same outputs and gradients as torch's, computed by the
  fused ``relu_pack`` kernel; autograd keeps only the packed signs (1 bit per unit). While a
  recorder is active (:func:`activation_hash.record.record`) they hand it those signs: a
  converted model is recorded at no cost beyond its forward pass.
- :func:`convert`: swap every ``nn.ReLU`` / ``nn.LeakyReLU`` of a model for ours (and back).

Example::

    model = convert(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    model(torch.randn(5, 4))     # same values as before the conversion
"""
from __future__ import annotations

from contextvars import ContextVar

import torch
from torch import nn

from activation_hash.ops import relu_pack
from activation_hash.validation import check_float

__all__ = ["ReLU", "LeakyReLU", "convert"]

# The recorders active in this thread (activation_hash.record pushes and pops them). A context
# variable, not a global list: each thread sees only the recorders it entered itself.
ACTIVE_RECORDERS: ContextVar[tuple] = ContextVar("activation_hash_recorders", default=())
_is_compiling = torch.compiler.is_compiling


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
        recorders = ACTIVE_RECORDERS.get()
        if recorders:
            if _is_compiling():  # torch.compile traces Python, not the C core's fast path
                for rec in recorders:
                    rec._add_words_general(self, x, words)
            else:
                for rec in recorders:
                    rec._add_words(self, x, words)
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
        self.negative_slope = check_float(negative_slope, "negative_slope")

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
