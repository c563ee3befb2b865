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


class Tap:
    """Stands in for the recorded model's ``forward`` (an instance attribute, so torch's fast
    call path stays: no hooks) while some recorder in tap mode needs it, in any thread: it
    marks the start and end of a batch for the recorders of this model that this thread
    entered (``ACTIVE_RECORDERS``)."""

    def __init__(self, module: nn.Module):
        self.module, self.users = module, 0
        self.inner = module.__dict__.get("forward")  # an earlier instance attribute, if any
        self.forward = module.forward

    def __call__(self, *args, **kwargs):
        recorders = ACTIVE_RECORDERS.get()
        if not recorders:
            return self.forward(*args, **kwargs)
        if len(recorders) == 1:  # the common case: one recorder, of this model, not nested
            rec = recorders[0]
            if rec.model is not self.module:  # another model's recorder (we run inside it)
                return self.forward(*args, **kwargs)
            if not rec._depth:
                return rec._run(self.forward, args, kwargs)
            mine = recorders
        else:
            mine = [rec for rec in recorders if rec.model is self.module]
            if not mine:
                return self.forward(*args, **kwargs)
        for rec in mine:
            rec._begin()
        try:
            out = self.forward(*args, **kwargs)
        except BaseException:
            for rec in mine:
                rec._abort()
            raise
        for rec in mine:
            rec._end()
        return out


_TAP_LOCK = threading.Lock()


def tap(module: nn.Module, cache: dict | None = None) -> Tap:
    """Install (or share) the tap of ``module``; ``cache`` (id -> Tap, e.g. a model's facts)
    keeps taps between recorders, so that entering one costs a dict lookup."""
    with _TAP_LOCK:
        tap = module.__dict__.get("forward")
        if not isinstance(tap, Tap):
            cached = cache.get(id(module)) if cache is not None else None
            if cached is not None and cached.module is module and cached.inner is tap:
                tap = cached
            else:
                tap = Tap(module)
                if cache is not None:
                    cache[id(module)] = tap
            module.__dict__["forward"] = tap  # not nn.Module.__setattr__: a plain attribute
        tap.users += 1
        return tap


def untap(tap: Tap) -> None:
    with _TAP_LOCK:
        tap.users -= 1
        if tap.users == 0:
            if tap.inner is None:
                del tap.module.__dict__["forward"]
            else:
                tap.module.__dict__["forward"] = tap.inner


# torch's activation modules hand their inputs to this thread's recorders through a forward
# of their own, an instance attribute like a Tap, installed while any recorder needs it (counted
# across threads). Not by replacing their class's forward: a class changed on every recorder
# entered and left made each recorded forward pass of the 784-64 MLP of bench/record.py about
# 3 us slower (the interpreter's caches of the class start over), nor by hooks (torch's slow
# call path). Where the forward it had is torch's own and no gradient is wanted, nn.ReLU and
# nn.LeakyReLU (slope != 0, not in place) compute their output and its words in one relu_pack
# pass: the same values as torch's.
_TORCH_FORWARDS = {cls: cls.forward for cls in TORCH_ACTIVATIONS}


class Handing:
    """Stands in for the ``forward`` of one of torch's activation modules while some recorder
    needs it, in any thread: it hands the module's input (its packed signs) to the recorders
    this thread entered, and runs the forward the module had."""

    __slots__ = ("module", "users", "inner", "saved", "fuse", "leaky", "forward")

    def __init__(self, module: nn.Module):
        self.module, self.users = module, 0
        self.inner = module.__dict__.get("forward")  # an earlier instance attribute, if any
        self.leaky = type(module) is nn.LeakyReLU
        self.saved, self.fuse = module.forward, False
        self.forward = MethodType(_hand_inputs, self)

    def install(self) -> None:
        """(its first user, under _TAP_LOCK) Runs the forward the module has now: its class's
        (someone else's patch included) or an earlier instance attribute."""
        module = self.module
        self.saved = module.forward
        cls = type(module)
        self.fuse = (self.inner is None and cls in (nn.ReLU, nn.LeakyReLU)
                     and cls.forward is _TORCH_FORWARDS[cls])
        module.__dict__["forward"] = self.forward

    def uninstall(self) -> None:
        """(its last user, under _TAP_LOCK)"""
        if self.inner is None:
            del self.module.__dict__["forward"]
        else:
            self.module.__dict__["forward"] = self.inner


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
    for rec in recorders:
        rec._add_words(module, input, words, True)
    return out


def hand_inputs(modules, cache: dict) -> list[Handing]:
    """While the list returned is not given to :func:`stop_handing`, these of torch's
    activation modules (``TORCH_ACTIVATIONS``, exact types) hand their inputs to the recorders
    of the thread that runs them. ``cache`` (id -> Handing, a model's facts) keeps the
    :class:`Handing` objects between recorders."""
    handings = []
    with _TAP_LOCK:
        for module in modules:
            current = module.__dict__.get("forward")
            handing = getattr(current, "__self__", None)
            if type(handing) is not Handing or handing.module is not module:
                # not handing yet (another model's recorder may have made it hand: shared)
                handing = cache.get(id(module))
                if handing is None or handing.module is not module or handing.inner is not current:
                    handing = cache[id(module)] = Handing(module)
                handing.install()
            handing.users += 1
            handings.append(handing)
    return handings


def stop_handing(handings: list[Handing]) -> None:
    with _TAP_LOCK:
        for handing in handings:
            handing.users -= 1
            if not handing.users:
                handing.uninstall()


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
