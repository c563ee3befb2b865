"""The core of a recorder: its state and the three entry points each recorded forward pass
calls, ``__init__``, ``__enter__``/``__exit__`` and ``_add_words``.

:data:`RecorderCore` is the base of :class:`activation_hash.record.Recorder`: the C type
``activation_hash._C.RecorderCore`` (csrc/recorder.cpp) where the extension is built, else
:class:`PyRecorderCore`. Both hold the same fields; the C entry points finish the common case of
direct mode themselves and hand every other call, unchanged, to the recorder's
``_enter_general`` / ``_exit_general`` / ``_add_words_general``, which handle every case
(PyRecorderCore always hands over). On the 784-64 MLP of bench/record.py a recorder cost
2.4-3.4 us a batch in Python, 1.7-2.2 us with the C core (a 49-53 us forward pass);
docs/design.md, section 8.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

from torch import nn

from activation_hash import ops
from activation_hash.nn import ACTIVE_RECORDERS
from activation_hash.taps import _FACTS_KEY, _GENERATION
from activation_hash.validation import check_bool

if TYPE_CHECKING:
    import torch

    from activation_hash.layout import Layout

__all__ = ["RecorderCore", "PyRecorderCore", "RECORDER_FIELDS"]

# The fields of a recorder (the C type's members have these names too).
RECORDER_FIELDS = ("model", "layers", "keep", "on_batch", "functional", "batches", "_keys",
                   "_words", "_first", "_layout", "_selected", "_facts", "_watch", "_token",
                   "_direct", "_expected", "_shapes", "_inputs", "_odd", "_taps", "_handing",
                   "_pos", "_depth")


class PyRecorderCore:
    """The recorder's core in Python: the fields and the entry points, which all hand over to
    the general methods (the C type's behaviour, without its fast paths)."""

    # slots: no instance dict to build (a recorder per forward pass is the common case)
    __slots__ = RECORDER_FIELDS

    def __init__(self, model: nn.Module, *, layers: Iterable[int | str] | None = None,
                 keep: bool = True, on_batch: Callable[[torch.Tensor, Layout], None] | None = None,
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
        self.batches = []
        # the batch in progress: (key, per-sample shape) of each site (tap mode; direct mode
        # only for a batch of odd shapes) and its words; _keys is a list once a batch starts
        self._keys = ()
        self._words = []
        self._first = None      # the sites of the first batch (taps.FirstBatch)
        self._layout = None     # the `layers` selection of the full layout
        self._selected = None   # site indices of `layout`
        self._token = None      # of ACTIVE_RECORDERS, while entered
        self._handing = ()      # torch's activation modules handing us inputs
        self._direct = ()       # direct mode: the sites' modules, in order
        # direct mode, set on entering: _expected, the sites each batch should have; _shapes,
        # their shapes (None: this batch's differ, collected in _odd); _inputs, the cache of
        # their input shapes (FirstBatch.inputs). _facts and _taps are set on entering too.
        self._odd = None
        self._pos = 0           # direct mode: sites seen of this batch
        self._depth = 0         # tap mode: model forward calls in progress
        self._watch = None      # tap mode: of the functional sites (taps.FunctionalWatch)

    def __enter__(self):
        return self._enter_general()

    def __exit__(self, exc_type, exc, tb):
        return self._exit_general(exc_type, exc, tb)

    def _add_words(self, module, x, words, theirs=False):
        return self._add_words_general(module, x, words, theirs)


if ops.HAS_EXTENSION:
    from activation_hash._C import RecorderCore, recorder_setup

    recorder_setup(ACTIVE_RECORDERS, _GENERATION, _FACTS_KEY, nn.Module)
else:
    RecorderCore = PyRecorderCore
