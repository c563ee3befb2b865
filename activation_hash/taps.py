"""How a recorder sees a forward pass: *taps*, the function mode and per-model facts.

A :class:`Tap` stands in for a recorded model's ``forward`` (an instance attribute, so torch's
fast call path stays) and marks the batches for the recorders this thread entered
(``nn.ACTIVE_RECORDERS``); :func:`tap` / :func:`untap` install and remove it, counting users
across threads. :func:`hand_inputs` gives torch's activation modules a forward (a
:class:`Handing`) that hands their inputs to those recorders.
:class:`FunctionalActivations` (a ``TorchFunctionMode``) sees the functional ReLU-like calls
(``RELU_LIKE_FUNCTIONS``); :class:`FunctionalWatch` pairs it with the stack of the modules
that make them. :func:`model_facts` caches what a model's structure tells (module
names, torch activation modules, DataParallel, the sites of a first batch, whether the model
can be recorded in direct mode) until any module anywhere registers a submodule.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from types import MethodType
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from activation_hash.layout import Layout
from activation_hash.nn import ACTIVE_RECORDERS, ReLU
from activation_hash.ops import pack_signs, relu_pack

__all__ = ["TORCH_ACTIVATIONS", "RELU_LIKE_FUNCTIONS", "op_of", "FunctionalActivations",
           "FunctionalWatch", "Tap", "tap", "untap", "Handing", "hand_inputs", "stop_handing",
           "Site", "FirstBatch", "ModelFacts", "model_facts"]

# torch's activation modules that are sites, and their op names
TORCH_ACTIVATIONS = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.PReLU: "prelu"}

# The functional ReLU-like calls and their op names (the exact walks reuse this table).
RELU_LIKE_FUNCTIONS = {
    torch.relu: "relu", torch.relu_: "relu", F.relu: "relu", F.relu_: "relu",
    torch.Tensor.relu: "relu", torch.Tensor.relu_: "relu",
    F.leaky_relu: "leaky_relu", F.leaky_relu_: "leaky_relu",
    torch._C._nn.leaky_relu: "leaky_relu", torch._C._nn.leaky_relu_: "leaky_relu",
    F.prelu: "prelu", torch.prelu: "prelu",
}



def op_of(module: nn.Module) -> str | None:
    """The op name of an activation module (ours or torch's), None for other modules."""
    if isinstance(module, ReLU):
        return "leaky_relu" if module.negative_slope else "relu"
    return TORCH_ACTIVATIONS.get(type(module))


class FunctionalActivations(TorchFunctionMode):
    """Sees every functional ReLU-like call while the model's forward runs."""

    def __init__(self, recorder):
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


class FunctionalWatch:
    """What a tapped recorder needs to see functional sites: the function mode, on while the
    model's forward runs, and the stack of the watched modules whose ``forward`` is running
    (hooks that act only in the recorder's own thread), which tells who made a call."""

    def __init__(self, recorder, modules):
        self.recorder, self.stack, self.on = recorder, [], False
        self.mode = FunctionalActivations(recorder)
        self.handles = []
        for m in modules:
            self.handles.append(m.register_forward_pre_hook(self._pre))
            self.handles.append(m.register_forward_hook(self._post, always_call=True))

    def _pre(self, module, args):
        if self.recorder._depth and self.recorder in ACTIVE_RECORDERS.get():
            self.stack.append(module)

    def _post(self, module, args, output):
        if self.stack and self.stack[-1] is module and self.recorder in ACTIVE_RECORDERS.get():
            self.stack.pop()

    def owner(self) -> nn.Module | None:
        """The innermost watched module whose forward is running (None: the model's own)."""
        return self.stack[-1] if self.stack else None

    def start(self) -> None:
        self.stack = []
        self.mode.__enter__()
        self.on = True

    def stop(self) -> None:
        if self.on:
            self.on = False
            self.mode.__exit__(None, None, None)

    def remove(self) -> None:
        self.stop()
        for h in self.handles:
            h.remove()
        self.handles = []


_TAP_LOCK = threading.Lock()


class _StandIn:
    """An instance ``forward`` put over a module's own while it has users, in any thread
    (counted under _TAP_LOCK; an instance attribute keeps torch's fast call path: no hooks).
    ``inner``: the instance attribute it covers (None: the class's forward); ``saved``: the
    forward it runs, taken when installed (someone else's patch included). A subclass says what
    it installs (``entry``) and how to recognise an installed one (``found``)."""

    __slots__ = ("module", "users", "inner", "saved")

    def __init__(self, module: nn.Module):
        self.module, self.users = module, 0
        self.inner = module.__dict__.get("forward")
        self.saved = module.forward

    def install(self) -> None:
        self.saved = self.module.forward
        self.module.__dict__["forward"] = self.entry  # not nn.Module.__setattr__: plain

    def uninstall(self) -> None:
        if self.inner is None:
            del self.module.__dict__["forward"]
        else:
            self.module.__dict__["forward"] = self.inner


def _attach(kind: type, module: nn.Module, cache: dict) -> _StandIn:
    """(under _TAP_LOCK) One user more of the ``kind`` stand-in of ``module``: the one
    installed (shared, e.g. with another model's recorder), else the one in ``cache`` (id ->
    stand-in, a model's facts) when it still covers the same forward, else a new one."""
    current = module.__dict__.get("forward")
    standin = kind.found(current)
    if standin is None or standin.module is not module:
        standin = cache.get(id(module))
        if standin is None or standin.module is not module or standin.inner is not current:
            standin = cache[id(module)] = kind(module)
        standin.install()
    standin.users += 1
    return standin


def _detach(standin: _StandIn) -> None:
    """(under _TAP_LOCK) One user less; the last one removes it."""
    standin.users -= 1
    if not standin.users:
        standin.uninstall()


class Tap(_StandIn):
    """Stands in for the recorded model's ``forward`` while some recorder in tap mode needs
    it: it marks the start and end of a batch for the recorders of this model that this thread
    entered (``ACTIVE_RECORDERS``)."""

    __slots__ = ()

    @property
    def entry(self):
        return self

    @staticmethod
    def found(current) -> "Tap | None":
        return current if type(current) is Tap else None

    def __call__(self, *args, **kwargs):
        recorders = ACTIVE_RECORDERS.get()
        if not recorders:
            return self.saved(*args, **kwargs)
        if len(recorders) == 1:  # the common case: one recorder, of this model, not nested
            rec = recorders[0]
            if rec.model is not self.module:  # another model's recorder (we run inside it)
                return self.saved(*args, **kwargs)
            if not rec._depth:
                return rec._run(self.saved, args, kwargs)
            mine = recorders
        else:
            mine = [rec for rec in recorders if rec.model is self.module]
            if not mine:
                return self.saved(*args, **kwargs)
        for rec in mine:
            rec._begin()
        try:
            out = self.saved(*args, **kwargs)
        except BaseException:
            for rec in mine:
                rec._abort()
            raise
        for rec in mine:
            rec._end()
        return out


def tap(module: nn.Module, cache: dict | None = None) -> Tap:
    """Install (or share) the tap of ``module``; ``cache`` (id -> Tap, e.g. a model's facts)
    keeps taps between recorders, so that entering one costs a dict lookup."""
    with _TAP_LOCK:
        return _attach(Tap, module, {} if cache is None else cache)


def untap(tap: Tap) -> None:
    with _TAP_LOCK:
        _detach(tap)


# torch's activation modules hand their inputs to this thread's recorders through a forward
# of their own (a Handing), installed while any recorder needs it. Not by replacing their
# class's forward: a class changed on every recorder entered and left made each recorded
# forward pass of the 784-64 MLP of bench/record.py about 3 us slower (the interpreter's caches
# of the class start over). Where the forward it had is torch's own and no gradient is wanted,
# nn.ReLU and nn.LeakyReLU (slope != 0, not in place) compute their output and its words in
# one relu_pack pass: the same values as torch's.
_TORCH_FORWARDS = {cls: cls.forward for cls in TORCH_ACTIVATIONS}


class Handing(_StandIn):
    """Stands in for the ``forward`` of one of torch's activation modules while some recorder
    needs it: it hands the module's input (its packed signs) to the recorders this thread
    entered, and runs the forward the module had."""

    __slots__ = ("fuse", "leaky", "entry")

    def __init__(self, module: nn.Module):
        super().__init__(module)
        self.leaky, self.fuse = type(module) is nn.LeakyReLU, False
        self.entry = MethodType(_hand_inputs, self)

    @staticmethod
    def found(current) -> "Handing | None":
        handing = getattr(current, "__self__", None)
        return handing if type(handing) is Handing else None

    def install(self) -> None:
        super().install()
        cls = type(self.module)
        self.fuse = (self.inner is None and cls in (nn.ReLU, nn.LeakyReLU)
                     and cls.forward is _TORCH_FORWARDS[cls])


def _hand_inputs(handing: Handing, input: torch.Tensor) -> torch.Tensor:
    recorders = ACTIVE_RECORDERS.get()
    if not recorders:
        return handing.saved(input)
    module = handing.module
    if (handing.fuse and not module.inplace
            and (not handing.leaky or module.negative_slope != 0.0)
            and not (input.requires_grad and torch.is_grad_enabled())):
        out, words = relu_pack(input, module.negative_slope if handing.leaky else 0.0)
    else:
        words = pack_signs(input.detach())  # before an in-place forward
        out = handing.saved(input)
    if torch.compiler.is_compiling():  # torch.compile traces Python, not the C core
        for rec in recorders:
            rec._add_words_general(module, input, words, True)
    else:
        for rec in recorders:
            rec._add_words(module, input, words, True)
    return out


def hand_inputs(modules, cache: dict) -> list[Handing]:
    """While the list returned is not given to :func:`stop_handing`, these of torch's
    activation modules (``TORCH_ACTIVATIONS``, exact types) hand their inputs to the recorders
    of the thread that runs them. ``cache`` (id -> Handing, a model's facts) keeps the
    :class:`Handing` objects between recorders."""
    with _TAP_LOCK:
        return [_attach(Handing, module, cache) for module in modules]


def stop_handing(handings: list[Handing]) -> None:
    with _TAP_LOCK:
        for handing in handings:
            _detach(handing)


# Bumped whenever any module anywhere registers a submodule (torch's global registration
# hook): the facts of a model computed at an older generation are computed again.
_GENERATION = [0]


def _bump(module, name, submodule):
    _GENERATION[0] += 1


nn.modules.module.register_module_module_registration_hook(_bump)


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


class FirstBatch(NamedTuple):
    """What a model's first recorded batch showed, reused by its later recorders."""

    signature: list   # [(key, per-sample shape)]; key (module, None) or (owner, function op)
    sites: tuple      # the Site of each layer
    layout: Layout    # the full layout
    shapes: list      # the signature's shapes alone (what the direct mode compares)
    inputs: list      # direct mode's cache: the last input shape (batch size too) seen at
                      # each site whose per-sample shape was checked


class ModelFacts:
    """What one model's structure tells, computed once per model (and again after any module
    registration): module names, torch activation modules, DataParallel, functional owners,
    the sites of the first batch recorded (reused by later recorders of the same model
    when their first batch calls the same sites), and the model's taps.

    Kept in the model's own ``__dict__`` (so they die with it: a global table of models
    would keep every recorded model alive); a copy or a pickle of the model gets stale facts,
    computed again on its first recording."""

    def __init__(self, model: nn.Module):
        named = list(model.named_modules())
        self.generation = _GENERATION[0]
        self.model_id = id(model)
        self.taps: dict[int, Tap] = {}
        self.names = {id(m): name for name, m in named}
        self.modules = {id(m): m for _, m in named}
        self.torch_activations = [m for _, m in named if type(m) in TORCH_ACTIVATIONS]
        self.handings: dict[int, Handing] = {}  # of the torch activations (hand_inputs)
        self.data_parallel = any(isinstance(m, nn.DataParallel) for _, m in named)
        self.owners: set[int] | None = None  # modules that make functional calls (discovered)
        self.first: FirstBatch | None = None  # the sites of a first batch
        self.direct: tuple[nn.Module, ...] | None = None
        self.ours = [m for _, m in named if isinstance(m, ReLU)]

    def set_first(self, first: FirstBatch) -> None:
        self.first = first
        self._update_direct()

    def set_owners(self, owners: set[int]) -> None:
        self.owners = owners
        self._update_direct()

    def _update_direct(self) -> None:
        """``direct``: the sites' modules in call order when the model can be recorded without
        a tap on its forward (the activation modules mark the batches): every site known is an
        activation module (ours or torch's), each called once per forward, every one of the
        model's is a site, and the model makes no functional calls."""
        self.direct = None
        if self.first is None or self.owners is None or self.owners:
            return
        sites = self.first.sites
        modules = tuple(s.module for s in sites)
        if (sites and all(s.kind == "module" for s in sites)
                and len({id(m) for m in modules}) == len(modules)
                == len(self.ours) + len(self.torch_activations)):
            self.direct = modules

    def __reduce__(self):
        # copy.deepcopy / pickle of a model: None, computed again on its first recording (a
        # pickle then names no activation_hash object: it loads where the package is absent)
        return (type(None), ())


_FACTS_KEY = "_activation_hash_facts"


def model_facts(model: nn.Module) -> ModelFacts:
    """The facts of ``model``, computed again when stale (any module registration since,
    or a copy of another model's)."""
    facts = model.__dict__.get(_FACTS_KEY)
    if facts is None or facts.generation != _GENERATION[0] or facts.model_id != id(model):
        facts = ModelFacts(model)
        model.__dict__[_FACTS_KEY] = facts  # a plain attribute: not a module, not state
    return facts
