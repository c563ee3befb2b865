"""How a recorder sees a forward pass: *taps*, the function mode and per-model facts.

A :class:`Tap` stands in for a recorded model's ``forward`` (an instance attribute, so torch's
fast call path stays) and marks the batches for the recorders this thread entered
(``nn.ACTIVE_RECORDERS``); :func:`tap` / :func:`untap` install and remove it, counting users
across threads. :func:`patch_activations` makes torch's activation classes hand their inputs
to those recorders.
:class:`FunctionalActivations` (a ``TorchFunctionMode``) sees the functional ReLU-like calls
(``RELU_LIKE_FUNCTIONS``); :class:`FunctionalWatch` pairs it with the stack of the modules
that make them. :func:`model_facts` caches what a model's structure tells (module
names, torch activation modules, DataParallel, the sites of a first batch, whether the model
can be recorded in direct mode) until any module anywhere registers a submodule.
"""
from __future__ import annotations

import threading
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from activation_hash.layout import Layout
from activation_hash.nn import ACTIVE_RECORDERS, ReLU
from activation_hash.ops import pack_signs, relu_pack

__all__ = ["TORCH_ACTIVATIONS", "RELU_LIKE_FUNCTIONS", "op_of", "FunctionalActivations",
           "FunctionalWatch", "Tap", "tap", "untap", "patch_activations", "unpatch_activations",
           "FirstBatch", "ModelFacts", "model_facts"]

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


# torch's activation modules hand their inputs to this thread's recorders through their
# class's forward, replaced while any recorder needs them (counted across threads): one class
# attribute per type, instead of an instance attribute per module (a change of a module's
# __dict__ slows its next calls) or hooks (torch's slow call path). Where the class's forward
# is torch's own and no gradient is wanted, nn.ReLU and nn.LeakyReLU (slope != 0, not in place)
# compute their output and its words in one relu_pack pass: the same values as torch's.
class _ClassPatch:
    """The patch of one of torch's activation classes: its users (across threads), the
    forward it had (restored when the last one leaves) and the handing forward."""

    __slots__ = ("cls", "torch_forward", "users", "own", "saved", "fuse", "forward")

    def __init__(self, cls):
        self.cls, self.torch_forward, self.users = cls, cls.forward, 0
        self.own = self.saved = None  # its own forward (None: inherited), the one it had
        self.fuse = False             # while patched: one relu_pack pass may replace `saved`
        self.forward = _handing_forward(self)


def _handing_forward(patch: _ClassPatch):
    cls = patch.cls
    leaky = cls is nn.LeakyReLU

    def forward(self, input):
        recorders = ACTIVE_RECORDERS.get()
        if recorders and type(self) is cls:  # a subclass is no site
            if (patch.fuse and not self.inplace and (not leaky or self.negative_slope != 0.0)
                    and not (input.requires_grad and torch.is_grad_enabled())):
                out, words = relu_pack(input, self.negative_slope if leaky else 0.0)
            else:
                words = pack_signs(input.detach())  # before an in-place forward
                out = patch.saved(self, input)
            for rec in recorders:
                rec._add_words(self, input, words, True)
            return out
        return patch.saved(self, input)
    forward.__doc__ = cls.forward.__doc__
    return forward


_PATCHES = {cls: _ClassPatch(cls) for cls in TORCH_ACTIVATIONS}


def patch_activations(classes) -> None:
    """While one call is not matched by :func:`unpatch_activations`, the modules of these of
    torch's activation classes (``TORCH_ACTIVATIONS``) hand their inputs to the recorders of
    the thread that runs them."""
    with _TAP_LOCK:
        for cls in classes:
            p = _PATCHES[cls]
            if p.users == 0:  # the forward it has now (someone else's patch included) is kept
                p.own, p.saved = cls.__dict__.get("forward"), cls.forward
                p.fuse = cls in (nn.ReLU, nn.LeakyReLU) and p.saved is p.torch_forward
                cls.forward = p.forward
            p.users += 1


def unpatch_activations(classes) -> None:
    with _TAP_LOCK:
        for cls in classes:
            p = _PATCHES[cls]
            p.users -= 1
            if p.users == 0:
                if p.own is None:
                    del cls.forward
                else:
                    cls.forward = p.own
                # p.saved stays: a call that found the handing forward just before may still
                # be on its way to it (another thread)


# Bumped whenever any module anywhere registers a submodule (torch's global registration
# hook): the facts of a model computed at an older generation are computed again.
_GENERATION = [0]


def _bump(module, name, submodule):
    _GENERATION[0] += 1


nn.modules.module.register_module_module_registration_hook(_bump)


class FirstBatch(NamedTuple):
    """What a model's first recorded batch showed, reused by its later recorders."""

    signature: list   # [(key, per-sample shape)]; key (module, None) or (owner, function op)
    sites: tuple      # the Site of each layer
    layout: Layout    # the full layout
    shapes: list      # the signature's shapes alone (what the direct mode compares)


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
        self.torch_classes = tuple({type(m): None for m in self.torch_activations})
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
