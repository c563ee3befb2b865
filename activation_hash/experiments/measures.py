"""Sweep measures: named functions ``(model, split) -> dict`` whose keys become sweep columns.

At every sweep point :func:`run_measures` calls each measure of the sweep's list (in order)
with the model (eval mode) and a :class:`Split` (the samples trained on, the test set, the
settings ``k``, ``seed``, ``layers``, and the neural codes of both, extracted once on first
use by :meth:`Split.codes`), and merges the dicts they return into the point's row. When the
codes were extracted, the row starts with ``t_extract`` (seconds) and ``n_bits``.

Registered here (:data:`MEASURES`):

- ``"collisions"``: ``t_collisions``, ``redundancy_train`` / ``redundancy_test`` ((N - distinct
  codes) / N), ``n_distinct_train`` / ``n_distinct_test``, ``mixed_samples_train`` (training
  samples in regions shared by several labels);
- ``"knn"``: ``knn_train``, ``knn_test`` (Hamming K-NN with ``k`` neighbours), ``t_probes``;
- ``"probes"``: ``t_probes`` and the eight columns of :func:`activation_hash.categorize` (K-NN,
  K-Means purity and Hungarian, logistic regression; train and test);
- ``"accuracy"``: the network's own ``acc_train`` (on the samples trained on) and ``acc_test``.

The sweep's older ``probes`` setting names a list (:data:`PROBE_MEASURES`): ``"all"`` (True) =
collisions, probes, accuracy; ``"knn"`` = collisions, knn, accuracy; ``"none"`` (False) =
collisions, accuracy. A new measure becomes a sweep column by registering it::

    @register_measure("n_active")
    def n_active(model, split):
        train_codes, _ = split.codes(model)
        return {"n_active": ...}

    SweepConfig(factors={"width": [2, 8]}, measures=[*PROBE_MEASURES["knn"], "n_active"])

Two measures may not give the same column (``"knn"`` and ``"probes"`` both give ``knn_*``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from activation_hash.experiments.training import accuracy
from activation_hash.validation import check_bool, check_choice, check_int

__all__ = ["MEASURES", "PROBE_MEASURES", "CODE_COLUMNS", "Split", "register_measure",
           "resolve_measures", "run_measures", "extract", "PROBE_COLUMNS"]

MEASURES: dict[str, Callable] = {}
PROBE_MEASURES = {"all": ("collisions", "probes", "accuracy"),
                  "knn": ("collisions", "knn", "accuracy"),
                  "none": ("collisions", "accuracy")}
CODE_COLUMNS = ("t_extract", "n_bits")  # added by run_measures when the codes were extracted
_PROBE_SETTINGS = (True, False, None, "all", "knn", "none")


def register_measure(name: str, *, replace: bool = False):
    """Decorator: register ``fn(model, split) -> dict`` under ``name`` in :data:`MEASURES`
    (``replace=True`` to redefine one); returns ``fn`` unchanged."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a measure name is a non-empty str, got {name!r}")
    replace = check_bool(replace, "replace")

    def deco(fn: Callable) -> Callable:
        if not callable(fn):
            raise TypeError(f"measure {name!r} must be a function (model, split) -> dict")
        if name in MEASURES and not replace and MEASURES[name] is not fn:
            raise ValueError(f"a measure named {name!r} is already registered "
                             f"({MEASURES[name].__qualname__}); pass replace=True to redefine it")
        MEASURES[name] = fn
        return fn
    return deco


def resolve_measures(measures=None, probes=True) -> list[str]:
    """The measure names of a sweep: ``measures`` (a list of registered names) or, when it is
    None, the list of the older ``probes`` setting (:data:`PROBE_MEASURES`; True = ``"all"``,
    False / None = ``"none"``). Giving ``measures`` with a ``probes`` other than its default
    True is an error (one of the two says what to measure)."""
    if measures is None:
        probes = check_choice(probes, "probes", _PROBE_SETTINGS)
        return list(PROBE_MEASURES[{True: "all", False: "none", None: "none"}.get(probes, probes)])
    if probes is not True:
        raise ValueError(f"give either measures ({measures!r}) or probes ({probes!r}), not both")
    if isinstance(measures, (str, bytes)) or not hasattr(measures, "__iter__"):
        raise TypeError(f"measures must be a list of measure names, got {measures!r}")
    names = [check_choice(m, "measure", sorted(MEASURES)) for m in measures]
    dupes = sorted({m for m in names if names.count(m) > 1})
    if dupes:
        raise ValueError(f"measures {dupes} are listed more than once in {names}")
    return names


def extract(model, x: torch.Tensor, labels=None, *, layers=None, batch_size: int = 1024):
    """Neural codes of ``x`` (eval mode, no grad) as a :class:`~activation_hash.CodeBook`
    (with ``labels`` when given)."""
    import activation_hash as ah

    data = x if labels is None else (x, labels)  # extract_codes restores the modules' modes
    return ah.extract_codes(model, data, layers=layers, batch_size=batch_size, progress=False)


@dataclass
class Split:
    """What a sweep point is measured on: the samples trained on (``x_train``, ``y_train``:
    the labels trained on, noisy with label noise), the test set (clean labels), the K-NN
    ``k``, the probes' ``seed`` and the code ``layers`` (None: all). Make one per measured
    model state: :meth:`codes` extracts once and keeps the result."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    k: int = 9
    seed: int = 0
    layers: list | None = None
    t_extract: float | None = field(default=None, init=False)
    n_bits: int | None = field(default=None, init=False)
    _codes: tuple | None = field(default=None, init=False, repr=False)
    _model_id: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.k = check_int(self.k, "k", min=1)
        self.seed = check_int(self.seed, "seed")

    def codes(self, model) -> tuple:
        """``(train CodeBook, test CodeBook)`` of ``model`` (labelled), extracted on first call
        (``t_extract`` records the seconds, ``n_bits`` the code length)."""
        if self._codes is None:
            t = time.perf_counter()
            self._codes = (extract(model, self.x_train, self.y_train, layers=self.layers),
                           extract(model, self.x_test, self.y_test, layers=self.layers))
            self.t_extract = time.perf_counter() - t
            self.n_bits = self._codes[0].n_bits
            self._model_id = id(model)
        elif self._model_id != id(model):
            raise ValueError("this Split holds the codes of another model; make one per model")
        return self._codes


def run_measures(model, split: Split, names) -> dict:
    """One row: the columns of every measure in ``names`` (in order), preceded by
    :data:`CODE_COLUMNS` when a measure extracted the codes."""
    row: dict = {}
    owner: dict = {}
    for name in names:
        if name not in MEASURES:
            check_choice(name, "measure", sorted(MEASURES))
        out = MEASURES[name](model, split)
        if not isinstance(out, dict):
            raise TypeError(f"measure {name!r} returned {type(out).__name__}; a measure returns "
                            f"a dict of columns")
        for col in out:
            if col in owner or col in CODE_COLUMNS:
                raise ValueError(f"measures {owner.get(col, 'codes')!r} and {name!r} both give "
                                 f"column {col!r}")
            owner[col] = name
        row.update(out)
    if split.t_extract is not None:
        row = {"t_extract": split.t_extract, "n_bits": split.n_bits, **row}
    return row


# ---- the registered measures -----------------------------------------------------------------

@register_measure("collisions")
def collisions_measure(model, split: Split) -> dict:
    """Redundancy ratio and distinct-code counts of the train and test codes."""
    cb_tr, cb_te = split.codes(model)
    t = time.perf_counter()
    from activation_hash.collisions import count_collisions

    r_tr, r_te = count_collisions(cb_tr), count_collisions(cb_te)
    return {"t_collisions": time.perf_counter() - t, "redundancy_train": float(r_tr.redundancy),
            "redundancy_test": float(r_te.redundancy), "n_distinct_train": int(r_tr.n_distinct),
            "n_distinct_test": int(r_te.n_distinct), "mixed_samples_train": r_tr.mixed_samples}


@register_measure("knn")
def knn_measure(model, split: Split) -> dict:
    """Hamming K-NN accuracy on the codes (fit on the train codes; train and test)."""
    import activation_hash as ah

    cb_tr, cb_te = split.codes(model)
    c_tr, c_te = (cb_tr.codes, cb_tr.labels), (cb_te.codes, cb_te.labels)
    t = time.perf_counter()
    row = {"knn_train": float(ah.knn_accuracy(c_tr, c_tr, k=split.k)),
           "knn_test": float(ah.knn_accuracy(c_tr, c_te, k=split.k))}
    row["t_probes"] = time.perf_counter() - t
    return row


PROBE_COLUMNS = ("knn_train", "knn_test", "kmeans_purity_train", "kmeans_hungarian_train",
                 "kmeans_purity_test", "kmeans_hungarian_test", "logreg_train", "logreg_test")


@register_measure("probes")
def probes_measure(model, split: Split) -> dict:
    """All probes of :func:`activation_hash.categorize` (K-NN, K-Means, logistic regression)."""
    import activation_hash as ah

    cb_tr, cb_te = split.codes(model)
    t = time.perf_counter()
    rep = ah.categorize(cb_tr, cb_te, k=split.k, seed=split.seed)
    row = {"t_probes": time.perf_counter() - t}
    row.update({name: float(getattr(rep, name)) for name in PROBE_COLUMNS})
    return row


@register_measure("accuracy")
def accuracy_measure(model, split: Split) -> dict:
    """The network's own accuracy on the samples trained on and on the test set."""
    return {"acc_train": accuracy(model, split.x_train, split.y_train),
            "acc_test": accuracy(model, split.x_test, split.y_test)}


# ---- geometry (activation_hash.regions, activation_hash.folding) ------------------------------

GEOMETRY_PAIRS = 16  # test pairs per sweep point for the "regions" and "folding" measures


def _test_pairs(split: Split, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(split.seed)
    N = split.x_test.shape[0]
    if N < 2:
        raise ValueError("the geometry measures need at least 2 test samples")
    i = torch.randint(N, (n,), generator=g)
    j = (i + 1 + torch.randint(N - 1, (n,), generator=g)) % N  # j != i
    return torch.stack([i, j], 1)


@register_measure("regions")
def regions_measure(model, split: Split) -> dict:
    """Exact linear regions crossed by the segments between :data:`GEOMETRY_PAIRS` random
    test pairs (drawn with the split's seed): mean / median pieces and distinct codes."""
    from activation_hash.regions import segment_regions

    pairs = _test_pairs(split, GEOMETRY_PAIRS)
    t = time.perf_counter()
    r = segment_regions(model, split.x_test[pairs[:, 0]], split.x_test[pairs[:, 1]])
    counts = r.counts.double()
    return {"t_regions": time.perf_counter() - t, "regions_mean": float(counts.mean()),
            "regions_median": float(counts.median()),
            "regions_distinct_mean": float(r.n_distinct.double().mean())}


@register_measure("folding")
def folding_measure(model, split: Split) -> dict:
    """Exact space folding of the paths between :data:`GEOMETRY_PAIRS` random test pairs:
    mean, median, max, fraction non-zero, the TMLR aggregate (median over class pairs of the
    largest non-zero folding) and the mean folding of the code up to each layer."""
    from activation_hash.folding import folding_pairs

    t = time.perf_counter()
    rep = folding_pairs(model, split.x_test, split.y_test, mode="all", n_pairs=GEOMETRY_PAIRS,
                        seed=split.seed)
    per_layer = rep.folding.per_layer.mean(0).tolist()
    row = {"t_folding": time.perf_counter() - t, "folding_mean": rep.mean,
           "folding_median": rep.median, "folding_max": rep.max,
           "folding_frac_nonzero": rep.frac_nonzero, "folding_tmlr": rep.tmlr_aggregate}
    row.update({f"folding_layer{i + 1}": v for i, v in enumerate(per_layer)})
    return row
