"""Recording: the neural code of every batch a model sees, and the activation *sites* it has.

A *site* is one ReLU-like activation of the forward pass: an activation module (ours, or
torch's ``nn.ReLU``/``nn.LeakyReLU``/``nn.PReLU``) or a functional call (``torch.relu``,
``F.relu``, ``F.leaky_relu``, ``F.prelu``, ``Tensor.relu``) made inside some module's
``forward``. Each site contributes the packed signs of its pre-activation (bit 1 where > 0).

Our :class:`~activation_hash.nn.ReLU` / :class:`~activation_hash.nn.LeakyReLU` hand over the
words their fused kernel computes anyway; torch's activation modules through a ``forward`` of
their own (an instance attribute), there while a recorder is active. Once a first recorder has
seen a model whose every site is an activation module called once per forward in a fixed order,
later recorders touch nothing else (*direct mode*: the modules mark the batches; a forward
that calls them in another order raises ValueError, ``functional=True`` records it batch by
batch); otherwise the model's ``forward`` is *tapped*, and functional calls need a
``TorchFunctionMode``. The recorder's fields and per-forward entry points are its core
(``record_core``: C where the extension is built), which hands all but direct mode's common
case to the ``*_general`` methods here. How and why: docs/design.md, section 8.

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

import inspect

import torch
from torch import nn

from activation_hash.codes import unpack_codes
from activation_hash.layout import Layout
from activation_hash.nn import ACTIVE_RECORDERS
from activation_hash.ops import pack_signs
from activation_hash.record_core import PyRecorderCore, RecorderCore
from activation_hash.taps import (FirstBatch, FunctionalWatch, Site, model_facts, op_of,
                                  hand_inputs, stop_handing, tap, untap)

__all__ = ["record", "Recorder", "Site", "find_sites"]

class _Recording:
    """What a recorder does, on the state of its core (record_core: the fields, and the entry
    points that take direct mode's common case and hand every other call to the ``*_general``
    methods here)."""

    __slots__ = ()

    # -- results
    @property
    def layout(self) -> Layout | None:
        """The :class:`Layout` of the code rows (None before the first batch)."""
        return self._layout if self._layout is not None else self.full_layout

    @property
    def full_layout(self) -> Layout | None:
        """The layout of every site (``layout`` is its ``layers`` selection)."""
        return None if self._first is None else self._first.layout

    @property
    def sites(self) -> tuple[Site, ...]:
        """The :class:`Site` of each layer of ``full_layout``, in call order."""
        return () if self._first is None else self._first.sites

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
    def _add_words_general(self, module: nn.Module, x: torch.Tensor, words: torch.Tensor,
                           theirs: bool = False) -> None:
        """An activation module hands over the words of its input ``x`` (ours: of the fused
        kernel; torch's, ``theirs``: from any model this thread runs, only this one's count).
        (``_add_words`` of the core; with the extension, the direct mode's common case does
        not come here.)"""
        direct = self._direct
        if not direct:  # tap mode: inside the model's forward only
            if self._depth and (not theirs or id(module) in self._facts.modules):
                self._keys.append(((module, None), x.shape[1:]))
                self._words.append(words)
            return
        # direct mode: the sites come in the known order, and the last one ends the batch
        i = self._pos
        if module is not direct[i]:
            return self._direct_miss(module)
        shape = x.shape
        if shape != self._inputs[i]:  # (cheaper than comparing the per-sample shape each time)
            if shape[1:] != self._shapes[i]:
                return self._direct_odd_shape(shape[1:], words)
            self._inputs[i] = shape
        if i + 1 < len(direct):
            self._words.append(words)
            self._pos = i + 1
            return
        self._pos = 0
        if self._first is not self._expected:  # this recorder's first batch
            self._adopt(self._expected)
        # delivered here as _emit_batch does, not through a shared helper: on the 784-64 MLP
        # of bench/record.py one call more measured about 0.03 lower ratios
        if i or self._selected is not None:
            batch = self._words
            batch.append(words)
            try:  # (the list is reused by the next batch, whatever happens here)
                words = self._join(batch)
            finally:
                batch.clear()
        if self.keep:
            self.batches.append(words)
        if self.on_batch is not None:
            self.on_batch(words, self.layout)

    def _direct_odd_shape(self, shape: torch.Size, words: torch.Tensor) -> None:
        """A site of a direct batch whose shape is not the expected one: the batch's shapes are
        collected (the later sites come here too) and, at its end, learned when it is this
        recorder's first batch, refused later (ValueError)."""
        i = self._pos
        if self._odd is None:  # the first odd site of this batch
            self._odd = list(self._expected.shapes[:i])
            self._shapes = self._inputs = [None] * len(self._direct)  # no shape equals None
        self._odd.append(shape)
        if i + 1 < len(self._direct):
            self._words.append(words)
            self._pos = i + 1
            return
        shapes, batch = self._odd, self._words
        self._reset_direct_batch()
        self._keys = [((m, None), s) for m, s in zip(self._direct, shapes)]
        self._words = batch
        batch.append(words)
        self._emit()
        self._expected = self._first
        self._shapes, self._inputs = self._first.shapes, self._first.inputs

    def _reset_direct_batch(self) -> None:
        """Direct mode: the batch in progress is dropped (the next site starts a new one)."""
        self._pos, self._keys, self._words, self._odd = 0, [], [], None
        self._shapes, self._inputs = self._expected.shapes, self._expected.inputs

    def _direct_miss(self, module: nn.Module) -> None:
        if id(module) not in self._facts.modules:
            return  # a module of another model, run inside this one's recording
        expected = self._facts.names[id(self._direct[self._pos])]
        got = self._facts.names[id(module)]
        self._reset_direct_batch()
        raise ValueError(
            f"record(model): the activation {got!r} ran where {expected!r} was expected (the "
            f"order of the model's earlier forward passes); a model that varies it, a "
            f"submodule called on its own, or a forward pass that raised inside the with "
            f"block is recorded batch by batch with record(model, functional=True)")

    def _add_functional(self, op: str, x: torch.Tensor) -> None:
        if not self._depth:
            return
        owner = self._watch.owner() or self.model
        if op_of(owner) is not None:
            return  # an activation module records itself (torch's nn.ReLU calls F.relu)
        self._keys.append(((owner, op), x.shape[1:]))
        self._words.append(pack_signs(x.detach()))

    def _site_name(self, key: tuple, seen: dict[str, int]) -> str:
        where = self._facts.names.get(id(key[0]))
        if where is None:
            raise ValueError(f"a {type(key[0]).__name__} that is not a submodule of the "
                             f"recorded model ran inside its forward: make it a submodule")
        name = where if key[1] is None else (f"{where}.{key[1]}" if where else key[1])
        k = seen.get(name, 0)
        seen[name] = k + 1
        return name if k == 0 else f"{name}#{k}"

    def _first_batch(self, keys: list, words: list) -> None:
        """Learn the sites from this recorder's first batch (or take an earlier recorder's,
        when this batch calls the same ones)."""
        facts = self._facts
        if facts.first is not None and keys == facts.first.signature:
            self._adopt(facts.first)
        else:
            seen: dict[str, int] = {}
            sites = []
            for key, shape in keys:
                module, fn = key
                sites.append(Site(self._site_name(key, seen), "module" if fn is None else
                                  "function", module, fn if fn is not None else op_of(module),
                                  tuple(shape)))
            full = Layout(tuple(s.name for s in sites), tuple(s.shape for s in sites))
            facts.set_first(FirstBatch(list(keys), tuple(sites), full,
                                       [shape for _, shape in keys], [None] * len(sites)))
            self._adopt(facts.first)
        if facts.owners is None and self.functional is None:
            facts.set_owners({id(s.module) for s in self.sites if s.kind == "function"})
            if not torch.compiler.is_compiling():
                # sites found: from now on hook only what they need (not from inside a graph
                # that torch.compile traces: there the hooks stay as they are)
                self._install(bool(self._facts.owners))

    def _adopt(self, first: FirstBatch) -> None:
        """Take the sites of a first batch."""
        self._first = first
        if self.layers is not None:
            self._selected = [first.layout.index(layer) for layer in self.layers]
            self._layout, _ = first.layout.select(self.layers)

    def _begin(self) -> None:
        self._depth += 1
        if self._depth == 1:
            self._keys, self._words = [], []
            if self._watch is not None:
                self._watch.start()

    def _abort(self) -> None:
        """The forward raised: nothing of this batch is kept."""
        self._depth -= 1
        if self._depth == 0:
            self._keys, self._words = [], []
            if self._watch is not None:
                self._watch.stop()

    def _run(self, forward, args, kwargs):
        """One batch: ``forward(*args, **kwargs)`` of the model (not nested), recorded."""
        self._begin()
        try:
            out = forward(*args, **kwargs)
        except BaseException:
            self._abort()
            raise
        self._end()
        return out

    def _end(self) -> None:
        self._depth -= 1
        if self._depth:
            return
        if self._watch is not None:
            self._watch.stop()
        if self._keys:
            self._emit()

    def _emit(self) -> None:
        """The batch in progress becomes one code, its sites checked against the first
        batch's (for the first batch: learned)."""
        keys, words = self._keys, self._words
        try:
            self._emit_batch(keys, words)
        finally:
            keys.clear()  # the lists are reused by the next batch
            words.clear()

    def _emit_batch(self, keys: list, words: list) -> None:
        if self._first is None:
            first = self._facts.first
            if (first is not None and keys == first.signature
                    and (self._facts.owners is not None or self.functional is not None)):
                self._adopt(first)  # the sites an earlier recorder found: nothing to learn
            else:
                self._first_batch(keys, words)
        elif keys != self._first.signature:
            seen: dict[str, int] = {}
            got = [(self._site_name(k, seen), list(s)) for k, s in keys]
            first = [(n_, list(s)) for n_, s in zip(self.full_layout.names,
                                                    self.full_layout.shapes)]
            raise ValueError(f"this forward pass recorded layers {got}, the first one {first}")
        code = words[0] if len(words) == 1 and self._selected is None else self._join(words)
        if self.keep:
            self.batches.append(code)
        if self.on_batch is not None:
            self.on_batch(code, self.layout)

    def _join(self, words: list[torch.Tensor]) -> torch.Tensor:
        """The code rows of one batch from its sites' words (the selected layers)."""
        n, device = words[0].shape[0], words[0].device
        if any(w.shape[0] != n for w in words):
            names = self.full_layout.names
            raise ValueError(f"recorded activations disagree on the batch size: "
                             f"{[(names[i], w.shape[0]) for i, w in enumerate(words)]}")
        if self._selected is not None:
            words = [words[i] for i in self._selected]
        if not words:
            return torch.zeros(n, 0, dtype=torch.int64, device=device)
        return torch.cat(words, dim=1) if len(words) > 1 else words[0]

    def _install(self, functional: bool | str) -> None:
        """(Re)install what each batch needs for functional sites (``"discover"``: watch
        every module, to find them; True: the modules that own them; False: nothing)."""
        if self._watch is not None:
            self._watch.remove()
            self._watch = None
        if functional is False:
            return
        facts = self._facts
        if functional == "discover" or facts.owners is None:
            watched = list(facts.modules.values())
        else:
            watched = [m for m in facts.modules.values()
                       if id(m) in facts.owners or op_of(m) is not None]
        self._watch = FunctionalWatch(self, watched)

    # -- context
    def _enter_general(self) -> "Recorder":
        if self._token is not None:
            raise RuntimeError("this recorder is already in use; make a new record(model)")
        facts = self._facts = model_facts(self.model)
        direct = facts.direct  # (None for a model with DataParallel: it never had a batch)
        if direct is None and facts.data_parallel:
            raise TypeError("record() cannot see the replicas nn.DataParallel runs in its worker "
                            "threads: record model.module on one device, or use "
                            "DistributedDataParallel (one process per device)")
        if facts.torch_activations:
            self._handing = hand_inputs(facts.torch_activations, facts.handings)
        if direct is not None and self.functional is not True:
            # every site is an activation module, each called once per forward, all known:
            # they mark the batches themselves (no tap on the model: no hooks, no wrapper)
            expected = self._expected = self._first or facts.first
            self._direct, self._shapes, self._inputs = direct, expected.shapes, expected.inputs
            self._token = ACTIVE_RECORDERS.set(ACTIVE_RECORDERS.get() + (self,))
            return self
        self._taps = [tap(self.model, facts.taps)]
        functional = (self.functional if self.functional is not None else
                      "discover" if facts.owners is None else bool(facts.owners))
        if functional is not False:
            self._install(functional)
        self._token = ACTIVE_RECORDERS.set(ACTIVE_RECORDERS.get() + (self,))
        return self

    def _exit_general(self, exc_type, exc, tb) -> None:
        ACTIVE_RECORDERS.reset(self._token)
        self._token = None
        direct = self._direct
        if not direct:
            if self._watch is not None:
                self._watch.remove()
                self._watch = None
            for t in self._taps:
                untap(t)
            self._taps = []
            self._depth = 0
        if self._handing:  # after untap: a model that is itself a torch activation is tapped
            stop_handing(self._handing)  # over its Handing
            self._handing = ()
        if direct:
            partial, self._direct = self._pos, ()
            if partial:
                self._reset_direct_batch()
            if partial and exc_type is None:
                names = [self._facts.names[id(m)] for m in direct]
                raise ValueError(f"record(model): the last forward pass ran {names[:partial]} "
                                 f"of the activations {names} of the model's earlier ones; a "
                                 f"model that varies them is recorded batch by batch with "
                                 f"record(model, functional=True)")


class Recorder(_Recording, RecorderCore):
    """Record the neural code of every batch ``model`` sees inside the ``with`` block:
    ``with record(model) as rec:`` (``record`` is this class; one packed code per forward call).

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
            finds out on the first batch; False never watches them (cheapest); True always
            (and marks batches by the model's forward, never in direct mode).

    Attributes:
        codes: all recorded codes, int64 ``[N, W]`` (the batches concatenated).
        layout: :class:`Layout` of the code rows (set by the first batch).
        full_layout: layout of every site (``layout`` is its ``layers`` selection).
        sites: the :class:`Site` of each layer of ``full_layout`` (set by the first batch).
        batches: list of int64 ``[B, W]`` codes, one per forward call (``keep=True``).
    """

    __slots__ = ()


Recorder.__signature__ = inspect.signature(PyRecorderCore.__init__).replace(parameters=list(
    inspect.signature(PyRecorderCore.__init__).parameters.values())[1:])  # for help()

# record(model, ...) is the class itself: a function returning one would cost a call more per
# recorder, and a recorder per forward pass is the common case
record = Recorder


def find_sites(model: nn.Module, *inputs, **kwargs) -> tuple[Site, ...]:
    """The activation sites of ``model(*inputs, **kwargs)`` (one forward, no grad), in call
    order; the model's train/eval mode is left as it is."""
    with record(model, keep=False) as rec, torch.no_grad():
        model(*inputs, **kwargs)
    return rec.sites
