"""Recording: the neural code of every batch a model sees, and the activation *sites* it has.

A *site* is one ReLU-like activation of the forward pass: an activation module (ours, or
torch's ``nn.ReLU``/``nn.LeakyReLU``/``nn.PReLU``) or a functional call (``torch.relu``,
``F.relu``, ``F.leaky_relu``, ``F.prelu``, ``Tensor.relu``) made inside some module's
``forward``. Each site contributes the packed signs of its pre-activation (bit 1 where > 0).

What recording costs (about one forward pass): our :class:`~activation_hash.nn.ReLU` /
:class:`~activation_hash.nn.LeakyReLU` hand over the words their fused kernel computes anyway;
the model's and torch's activation modules' ``forward`` are *tapped* (an instance attribute
that dispatches to this thread's recorders; no hooks, so torch's fast call path stays), the
latter costing one ``pack_signs`` pass; functional calls need a ``TorchFunctionMode`` (it sees
every op) and the stack of the modules that make them. Whether a model makes functional calls
is found once per model, on its first recorded batch (hooks on every module and the mode),
or declared with ``functional=True/False``.

Threads: a recorder belongs to the thread that entered it; other threads running the same
model are not recorded by it (each thread may use its own recorder at the same time).
``nn.DataParallel`` runs replicas in worker threads that no recorder sees, so recording a
model that contains one raises TypeError (record ``model.module``, or use
DistributedDataParallel: one process per device, each recording its own batches).

Example::

    with record(model) as rec, torch.no_grad():
        model(x)                  # x [B, ...]
    rec.codes                     # int64 [B, W]
    rec.layout.names, rec.sites   # layer names; Site(name, kind, module, op, shape) each
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from activation_hash.codes import unpack_codes
from activation_hash.layout import Layout
from activation_hash.nn import ACTIVE_RECORDERS, ReLU
from activation_hash.ops import pack_signs
from activation_hash.taps import TORCH_ACTIVATIONS, ModelFacts, Tap, model_facts, tap, untap
from activation_hash.validation import check_bool

__all__ = ["record", "Recorder", "Site", "find_sites"]

# The functional ReLU-like calls and their op names (the exact walks reuse this table).
RELU_LIKE_FUNCTIONS = {
    torch.relu: "relu", torch.relu_: "relu", F.relu: "relu", F.relu_: "relu",
    torch.Tensor.relu: "relu", torch.Tensor.relu_: "relu",
    F.leaky_relu: "leaky_relu", F.leaky_relu_: "leaky_relu",
    torch._C._nn.leaky_relu: "leaky_relu", torch._C._nn.leaky_relu_: "leaky_relu",
    F.prelu: "prelu", torch.prelu: "prelu",
}


@dataclass(frozen=True, eq=False)
class Site:
    """One ReLU-like activation of a forward pass, in call order.

    Attributes:
        name: its layer name in the Layout (module path; functional calls
            ``"<module path>.<function>"``; a repeated call gets ``#k``).
        kind: ``"module"`` (an activation module) or ``"function"`` (a functional call).
        module: the activation module, or the module whose ``forward`` makes the call.
        op: ``"relu"``, ``"leaky_relu"`` or ``"prelu"``.
        shape: per-sample pre-activation shape (C order gives the bit order).
    """

    name: str
    kind: str
    module: nn.Module
    op: str
    shape: tuple[int, ...]


def _op_of(module: nn.Module) -> str | None:
    if isinstance(module, ReLU):
        return "leaky_relu" if module.negative_slope else "relu"
    return TORCH_ACTIVATIONS.get(type(module))


class _FunctionalActivations(TorchFunctionMode):
    """Sees every functional ReLU-like call while the model's forward runs."""

    def __init__(self, recorder: "Recorder"):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = RELU_LIKE_FUNCTIONS.get(func)
        if op is not None:
            x = args[0] if args else kwargs.get("input", kwargs.get("self"))
            if isinstance(x, torch.Tensor):
                self.recorder._add_functional(op, x)
        return func(*args, **kwargs)


class Recorder:
    """What :func:`record` collects: one packed code per forward call of the model.

    Attributes:
        layout: :class:`Layout` of the code rows (set by the first batch).
        full_layout: layout of every site (``layout`` is its ``layers`` selection).
        sites: the :class:`Site` of each layer of ``full_layout`` (set by the first batch).
        batches: list of int64 ``[B, W]`` codes, one per forward call (``keep=True``).
    """

    def __init__(self, model: nn.Module, layers: Iterable[int | str] | None = None,
                 keep: bool = True,
                 on_batch: Callable[[torch.Tensor, Layout], None] | None = None,
                 functional: bool | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"record expects an nn.Module, got {type(model).__name__}")
        if functional is not None:
            check_bool(functional, "functional")
        self.model = model
        self.layers = None if layers is None else list(layers)
        self.keep = keep
        self.on_batch = on_batch
        self.functional = functional
        self.layout: Layout | None = None
        self.full_layout: Layout | None = None
        self.sites: tuple[Site, ...] = ()
        self.batches: list[torch.Tensor] = []
        self._selected: list[int] | None = None    # site indices of `layout`
        self._signature: tuple | None = None        # ((key, shape), ...) of the first batch
        self._facts: ModelFacts | None = None
        self._depth = 0                             # model forward calls in progress
        self._stack: list[nn.Module] = []           # modules whose forward is running
        self._pending: list[tuple[tuple, tuple[int, ...], torch.Tensor]] = []
        self._taps: list[Tap] = []
        self._handles: list = []
        self._mode: _FunctionalActivations | None = None
        self._mode_on = False
        self._token = None

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
        if self.layout is None:
            return torch.zeros(self.codes.shape[0], 0, dtype=torch.bool)
        return unpack_codes(self.codes, self.layout)

    # -- collection (called from our modules, the taps, hooks and the function mode; all
    #    of them run only in the thread that entered this recorder)
    def _add_words(self, module: nn.Module, x: torch.Tensor, words: torch.Tensor) -> None:
        """Our ReLU modules hand over the words of their fused kernel."""
        if self._depth:
            self._pending.append(((module, None), x.shape[1:], words))

    def _add_module_input(self, module: nn.Module, x: torch.Tensor) -> None:
        """A torch activation module's input (its pre-activation)."""
        if self._depth:
            self._pending.append(((module, None), x.shape[1:], pack_signs(x.detach())))

    def _add_functional(self, op: str, x: torch.Tensor) -> None:
        if not self._depth:
            return
        owner = self._stack[-1] if self._stack else self.model
        if _op_of(owner) is not None:
            return  # an activation module records itself (torch's nn.ReLU calls F.relu)
        self._pending.append(((owner, op), x.shape[1:], pack_signs(x.detach())))

    def _site_name(self, key: tuple, seen: dict[str, int]) -> str:
        where = self._facts.names.get(id(key[0]))
        if where is None:
            raise ValueError(f"a {type(key[0]).__name__} that is not a submodule of the "
                             f"recorded model ran inside its forward: make it a submodule")
        name = where if key[1] is None else (f"{where}.{key[1]}" if where else key[1])
        k = seen.get(name, 0)
        seen[name] = k + 1
        return name if k == 0 else f"{name}#{k}"

    def _first_batch(self, pending) -> None:
        facts = self._facts
        if facts.first is not None and self._matches(pending, facts.first[0]):
            self._signature, self.sites, self.full_layout = facts.first
        else:
            seen: dict[str, int] = {}
            sites = []
            for key, shape, _ in pending:
                module, fn = key
                sites.append(Site(self._site_name(key, seen), "module" if fn is None else
                                  "function", module, fn if fn is not None else _op_of(module),
                                  tuple(shape)))
            self.sites = tuple(sites)
            self._signature = tuple((k, s) for k, s, _ in pending)
            self.full_layout = Layout(tuple(s.name for s in sites), tuple(s.shape for s in sites))
            facts.first = (self._signature, self.sites, self.full_layout)
        if self.layers is None:
            self.layout = self.full_layout
        else:
            self._selected = [self.full_layout.index(layer) for layer in self.layers]
            self.layout, _ = self.full_layout.select(self.layers)
        if facts.owners is None and self.functional is None:
            facts.owners = {id(s.module) for s in self.sites if s.kind == "function"}
            if not torch.compiler.is_compiling():
                # sites found: from now on hook only what they need (not from inside a graph
                # that torch.compile traces: there the hooks stay as they are)
                self._install(bool(self._facts.owners))

    def _begin(self) -> None:
        self._depth += 1
        if self._depth == 1:
            self._pending = []
            self._stack.clear()
            if self._mode is not None:
                self._mode.__enter__()
                self._mode_on = True

    def _abort(self) -> None:
        """The forward raised: nothing of this batch is kept."""
        self._depth -= 1
        if self._depth == 0:
            self._pending = []
            self._mode_off()

    def _mode_off(self) -> None:
        if self._mode_on:
            self._mode_on = False
            self._mode.__exit__(None, None, None)

    def _end(self) -> None:
        self._depth -= 1
        if self._depth:
            return
        if self._mode_on:
            self._mode_off()
        pending, self._pending = self._pending, []
        if not pending:
            return
        n = pending[0][2].shape[0]
        for _, _, w in pending:
            if w.shape[0] != n:
                seen: dict[str, int] = {}
                raise ValueError(f"recorded activations disagree on the batch size: "
                                 f"{[(self._site_name(k, seen), w.shape[0]) for k, _, w in pending]}")
        if self._signature is None:
            self._first_batch(pending)
        elif not self._matches(pending, self._signature):
            seen: dict[str, int] = {}
            got = [(self._site_name(k, seen), list(s)) for k, s, _ in pending]
            first = [(n_, list(s)) for n_, s in zip(self.full_layout.names,
                                                    self.full_layout.shapes)]
            raise ValueError(f"this forward pass recorded layers {got}, the first one {first}")
        if len(pending) == 1 and self._selected is None:
            code = pending[0][2]
        else:
            words = [w for _, _, w in pending]
            if self._selected is not None:
                words = [words[i] for i in self._selected]
            code = (torch.cat(words, dim=1) if len(words) > 1 else words[0]) if words else \
                torch.zeros(n, 0, dtype=torch.int64, device=pending[0][2].device)
        if self.keep:
            self.batches.append(code)
        if self.on_batch is not None:
            self.on_batch(code, self.layout)

    @staticmethod
    def _matches(pending, signature) -> bool:
        """Does this batch call the sites of ``signature``, in order, with those shapes?"""
        if len(pending) != len(signature):
            return False
        for (k, s, _), (sk, ss) in zip(pending, signature):
            if k[0] is not sk[0] or k[1] != sk[1] or s != ss:
                return False
        return True

    # -- what runs per batch
    def _stack_hooks(self, module: nn.Module) -> None:
        def pre(mod, args):
            if self._depth and self._mine():
                self._stack.append(mod)

        def post(mod, args, output):
            if self._stack and self._stack[-1] is mod and self._mine():
                self._stack.pop()
        self._handles.append(module.register_forward_pre_hook(pre))
        self._handles.append(module.register_forward_hook(post, always_call=True))

    def _mine(self) -> bool:
        """Is this hook call in the thread that entered the recorder?"""
        return self in ACTIVE_RECORDERS.get()

    def _install(self, functional: bool | str) -> None:
        """(Re)install what each batch needs: the module stack and the function mode for
        functional sites (``"discover"``: every module, to find them; True: the modules that
        own them; False: none)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if functional is False:
            self._mode = None
            return
        facts = self._facts
        if functional == "discover" or (functional is True and facts.owners is None):
            stacked = list(facts.modules.values())
        elif functional:
            stacked = [m for m in facts.modules.values()
                       if id(m) in facts.owners or _op_of(m) is not None]
        else:
            stacked = []
        for m in stacked:
            self._stack_hooks(m)
        self._mode = _FunctionalActivations(self) if functional else None

    # -- context
    def __enter__(self) -> "Recorder":
        if self._token is not None:
            raise RuntimeError("this recorder is already in use; make a new record(model)")
        facts = self._facts = model_facts(self.model)
        if facts.data_parallel:
            raise TypeError("record() cannot see the replicas nn.DataParallel runs in its worker "
                            "threads: record model.module on one device, or use "
                            "DistributedDataParallel (one process per device)")
        self._taps = [tap(self.model, "model", facts.taps)]
        if facts.torch_activations:
            self._taps += [tap(m, "activation", facts.taps) for m in facts.torch_activations]
        functional = (self.functional if self.functional is not None else
                      "discover" if facts.owners is None else bool(facts.owners))
        if functional is not False:
            self._install(functional)
        self._token = ACTIVE_RECORDERS.set(ACTIVE_RECORDERS.get() + (self,))
        return self

    def __exit__(self, *exc) -> None:
        ACTIVE_RECORDERS.reset(self._token)
        self._token = None
        self._mode_off()
        if self._handles:
            for h in self._handles:
                h.remove()
            self._handles.clear()
        for t in self._taps:
            untap(t)
        self._taps = []
        self._mode = None
        self._depth = 0


def record(model: nn.Module, *, layers: Iterable[int | str] | None = None, keep: bool = True,
           on_batch: Callable[[torch.Tensor, Layout], None] | None = None,
           functional: bool | None = None) -> Recorder:
    """Record the neural code of every batch ``model`` sees inside the ``with`` block.

    Every ReLU-like site of the forward pass contributes the packed signs of its
    pre-activation (bit 1 where it is > 0): our :class:`~activation_hash.nn.ReLU` /
    :class:`~activation_hash.nn.LeakyReLU` (free, from the fused kernel), unconverted
    ``nn.ReLU``/``nn.LeakyReLU``/``nn.PReLU`` and functional ``torch.relu``/``F.relu``/
    ``F.leaky_relu``/``F.prelu``/``Tensor.relu`` calls made inside the model's forward. Works
    in eval and train mode and under ``torch.no_grad()``.

    Args:
        model: the network; each call of ``model(...)`` is one batch.
        layers: keep only these layers (names or indices into the full layout), in that order.
        keep: keep the codes in memory (``rec.batches`` / ``rec.codes``).
        on_batch: called with ``(codes [B, W], layout)`` after each batch (for streaming).
        functional: whether the model makes functional activation calls: None (default)
            finds out on the first batch; False never watches them (cheapest); True always.

    Returns:
        a :class:`Recorder`; ``rec.codes`` is int64 ``[N, W]``, ``rec.layout`` its layout,
        ``rec.sites`` the :class:`Site` of each layer.
    """
    return Recorder(model, layers=layers, keep=keep, on_batch=on_batch, functional=functional)


def find_sites(model: nn.Module, *inputs, **kwargs) -> tuple[Site, ...]:
    """The activation sites of ``model(*inputs, **kwargs)`` (one forward, no grad), in call
    order; the model's train/eval mode is left as it is."""
    with record(model, keep=False) as rec, torch.no_grad():
        model(*inputs, **kwargs)
    return rec.sites
