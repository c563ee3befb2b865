"""Factor sweeps: train, extract codes, measure the encoding properties at every grid point.

A sweep is a grid over one or more *factors* (:data:`FACTORS`) times a list of seeds. At every
point it trains a model (``epochs`` is special: one training run per other setting, measured
at its checkpoint epochs) and runs the sweep's *measures* (:mod:`activation_hash.experiments.
measures`: named functions ``(model, split) -> dict`` whose keys are columns) on the samples
trained on and the test set. The default measures (``probes="all"``) record:

- ``redundancy_train`` / ``redundancy_test`` (and distinct-code counts; ``mixed_samples_train``:
  training samples in regions shared by several labels) from the collision count of the codes
  of :func:`activation_hash.extract_codes` (``n_bits``);
- the probe accuracies of :func:`activation_hash.categorize` (K-NN, K-Means purity and
  Hungarian, logistic regression; train and test); ``probes="knn"``: K-NN only, ``"none"``:
  none; ``measures=[...]`` names the list itself (a registered measure is a column);
- the network's own accuracy (``acc_train`` on the samples trained on, ``acc_test``);
- timings (``t_train``, ``t_extract``, ``t_collisions``, ``t_probes``, seconds);
- the sizes: ``n_train`` (the training set or its requested subset) and ``n_trained`` (the
  samples actually trained on, i.e. without the ``val_fraction`` validation split: the codes
  of ``*_train`` columns are theirs), ``n_test``.

Every finished point is written at once to ``<out>/points/<key>.json`` (atomic rename) and the
tables ``results.json`` / ``results.csv`` are rewritten. ``key`` hashes the point's full
configuration, so a rerun with the same (or an extended) grid skips every finished point; the
key of an ``epochs`` point holds its checkpoint epoch, not the run's last one, so adding epoch
values keeps the finished checkpoints. An interrupted or extended ``epochs`` run is retrained
(deterministically, up to its last missing checkpoint) but only its missing checkpoints are
measured.

Training is deterministic for a given torch thread count, not across counts: ``sweep.json``
records ``torch_threads`` (every row too), and resuming with another count is refused unless
``force=True``.

With label noise, the probes are fit on the (noisy) labels the network was trained on and
scored on the clean test labels.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import io
import itertools
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from activation_hash.experiments.datasets import load_dataset
from activation_hash.experiments.measures import Split, extract, resolve_measures, run_measures
from activation_hash.experiments.models import build_model
from activation_hash.experiments.training import TrainConfig, train
from activation_hash.fileio import atomic_write_json, atomic_write_text, exclusive_lock
from activation_hash.validation import check_int

__all__ = ["FACTORS", "SweepConfig", "run_sweep", "measure", "extract", "point_key",
           "load_results", "atomic_write_text", "plan_points"]

# factor name -> (section of the point config, option name); "epochs"/"seed" are special.
FACTORS = {
    "width": ("model", "width"),
    "depth": ("model", "depth"),
    "batch_norm": ("model", "batch_norm"),
    "dropout": ("model", "dropout"),
    "epochs": ("train", "epochs"),
    "weight_decay": ("train", "weight_decay"),
    "lr": ("train", "lr"),
    "n_train": ("data", "n_train"),
    "label_noise": ("data", "label_noise"),
    "seed": (None, "seed"),
}
ALIASES = {"sample_size": "n_train", "samples": "n_train", "noise": "label_noise", "bn": "batch_norm",
           "training_time": "epochs", "wd": "weight_decay", "seeds": "seed"}


@dataclass
class SweepConfig:
    """A sweep: the grid of ``factors`` (name -> values; their product), the fixed settings of
    data (:func:`load_dataset` options, ``name`` the dataset), model (:func:`build_model` spec)
    and training (:class:`TrainConfig` options), the ``seeds`` repeated at every grid point,
    and what is measured: ``k`` of K-NN, and either ``measures``, a list of registered measure
    names (:data:`~activation_hash.experiments.measures.MEASURES`; their columns, in order),
    or the older ``probes``: ``"all"`` (True) = redundancy, K-NN, K-Means and logistic
    regression, ``"knn"`` = redundancy and K-NN only (fast), ``"none"`` (False) = redundancy
    only (each with the network's accuracy; see
    :data:`~activation_hash.experiments.measures.PROBE_MEASURES`). ``layers``: the code layers
    kept (None: all)."""

    factors: dict
    data: dict = field(default_factory=lambda: {"name": "digits"})
    model: dict = field(default_factory=lambda: {"arch": "mlp", "width": 32, "depth": 1})
    train: dict = field(default_factory=dict)
    seeds: list = field(default_factory=lambda: [0])
    k: int = 9
    probes: bool | str = True
    layers: list | None = None
    measures: list | None = None

    def __post_init__(self):
        if not isinstance(self.factors, dict) or not self.factors:
            raise ValueError(f"a sweep needs at least one factor, e.g. {{'width': [4, 8]}}; "
                             f"got {self.factors!r}")
        fixed = {}
        for name, values in self.factors.items():
            canon = ALIASES.get(name, name)
            if canon not in FACTORS:
                raise ValueError(f"unknown sweep factor {name!r}; expected one of "
                                 f"{sorted(FACTORS)} (or aliases {sorted(ALIASES)})")
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
                raise TypeError(f"values of factor {name!r} must be a list, got {values!r}")
            values = list(values)
            if not values:
                raise ValueError(f"factor {name!r} has no values")
            fixed[canon] = values
        if "epochs" in fixed:
            fixed["epochs"] = [check_int(e, "epochs values", min=0) for e in fixed["epochs"]]
        self.k = check_int(self.k, "k", min=1)
        names = resolve_measures(self.measures, self.probes)
        if self.measures is not None:
            self.measures = names
        self.factors = fixed
        if "seed" in self.factors:
            self.seeds = list(self.factors.pop("seed"))
            self.factors["seed"] = self.seeds  # keep it visible as a factor
        TrainConfig.from_dict({k: v for k, v in self.train.items() if k != "checkpoints"})

    @property
    def measure_names(self) -> list[str]:
        """The measures run at every point (``measures``, or those of ``probes``)."""
        return resolve_measures(self.measures, self.probes)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["measures"] is None:  # a probes-only config is written as before measures existed
            del d["measures"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SweepConfig":
        return cls(**d)


def point_key(point: dict) -> str:
    """Stable 16-hex-digit hash of a point's full configuration."""
    text = json.dumps(point, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class _Run:
    """One training run: its config and the points (checkpoint epochs) measured from it."""

    cfg: dict
    points: list  # (key, point dict, epoch)


def _measure_settings(config: SweepConfig) -> dict:
    """What a point's key records of its measures (a probes-only config: as before measures
    existed, so the keys of finished points stay valid)."""
    if config.measures is None:
        return {"k": config.k, "probes": config.probes, "layers": config.layers}
    return {"k": config.k, "measures": list(config.measures), "layers": config.layers}


def plan_points(config: SweepConfig) -> list[_Run]:
    """The training runs of a sweep and the keyed points each one measures."""
    names = [n for n in config.factors if n not in ("epochs", "seed")]
    runs = []
    for combo in itertools.product(*(config.factors[n] for n in names)):
        for seed in config.seeds:
            cfg = {"data": dict(config.data), "model": dict(config.model),
                   "train": {k: v for k, v in config.train.items() if k != "checkpoints"},
                   "seed": int(seed), "measure": _measure_settings(config)}
            for n, v in zip(names, combo):
                section, opt = FACTORS[n]
                cfg[section][opt] = v
            cfg["train"]["seed"] = int(seed)
            epochs = config.factors.get("epochs")
            if epochs is not None:
                cfg["train"]["epochs"] = max(epochs)
                pts = []
                for e in epochs:
                    # The model at checkpoint e depends only on the first e epochs (same seed,
                    # schedule and stopping rule), not on how long the run goes on: the key
                    # holds e, so adding epochs to the sweep keeps the finished checkpoints.
                    p = copy.deepcopy(cfg)
                    p["train"]["epochs"] = int(e)
                    p["checkpoint"] = int(e)
                    pts.append((point_key(p), p, int(e)))
            else:
                cfg["train"].setdefault("epochs", TrainConfig().epochs)
                pts = [(point_key(cfg), cfg, None)]
            runs.append(_Run(cfg, pts))
    return runs


def measure(model, x_train, y_train, x_test, y_test, *, k: int = 9, seed: int = 0,
            probes: bool | str = True, layers=None, measures=None) -> dict:
    """Encoding properties of ``model`` on a train and a test set (one flat dict): the columns
    of ``measures`` (registered names), or of the ``probes`` setting's list (see
    :class:`SweepConfig`)."""
    names = resolve_measures(measures, probes)
    split = Split(x_train, y_train, x_test, y_test, k=k, seed=seed, layers=layers)
    return run_measures(model, split, names)


def _flat_settings(cfg: dict, data, epoch) -> dict:
    m, tr = cfg["model"], cfg["train"]
    return {"dataset": cfg["data"].get("name", "digits"), "arch": m.get("arch", "mlp"),
            "width": m.get("width"), "depth": m.get("depth", 1),
            "batch_norm": bool(m.get("batch_norm", False)), "dropout": float(m.get("dropout", 0.0)),
            "epochs": tr["epochs"] if epoch is None else epoch,
            "weight_decay": float(tr.get("weight_decay", 0.0)), "lr": float(tr.get("lr", TrainConfig.lr)),
            "n_train": data.meta["n_train"], "n_test": data.meta["n_test"],
            "label_noise": data.meta["label_noise"], "noise_rate_true": data.meta["noise_rate_true"],
            "seed": cfg["seed"]}


def load_results(out_dir: str | os.PathLike) -> list[dict]:
    """Rows of a sweep directory (``results.json``), or of its point files when that is missing."""
    out = Path(out_dir)
    if (out / "results.json").is_file():
        return result_rows((out / "results.json").read_bytes(), out / "results.json")
    return [r for p in sorted((out / "points").glob("*.json")) if (r := _point(p)) is not None]


def result_rows(raw: bytes, path) -> list[dict]:
    """The ``rows`` of a ``results.json`` (its bytes): ValueError naming the file unless it is
    a JSON object whose ``rows`` is a list of objects."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not (isinstance(rows, list) and all(isinstance(r, dict) for r in rows)):
        raise ValueError(f"{path} is not the results.json of a sweep (expected an object whose "
                         f"'rows' is a list of objects)")
    return rows


def _point(f: Path) -> dict | None:
    """A finished point's row, or None when its file is unreadable or not a JSON object (such
    a point is computed again)."""
    try:
        row = json.loads(f.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError, OSError):
        return None
    return row if isinstance(row, dict) else None


def _write_tables(out: Path, rows: list[dict], config: SweepConfig) -> None:
    atomic_write_json(out / "results.json", {"factors": list(config.factors),
                                             "config": config.to_dict(), "rows": rows},
                      indent=1, default=str)
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())


def _check_threads(out: Path, threads: int, force: bool) -> None:
    """Refuse (or with ``force`` warn) to add points computed with another torch thread count
    than the one recorded in ``out/sweep.json`` (results are reproducible per thread count)."""
    f = out / "sweep.json"
    if not f.is_file() or not any((out / "points").glob("*.json")):
        return
    try:
        before = json.loads(f.read_bytes().decode("utf-8")).get("torch_threads")
    except (ValueError, RecursionError, AttributeError):  # not JSON, or not an object
        return
    if not isinstance(before, int) or isinstance(before, bool) or before == threads:
        return  # none recorded (or not a count: nothing to compare with)
    msg = (f"sweep {str(out)!r} was run with {before} torch thread(s), this run uses {threads}; "
           f"training is deterministic only for a given thread count, so new points may not "
           f"match a run with {before}")
    if not force:
        raise ValueError(msg + f" (use torch.set_num_threads({before}) / --threads {before}, "
                               f"or force=True / --force to mix them)")
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


@dataclass
class _Sweep:
    """One :func:`run_sweep` call: its config and directory, the points in grid order, the
    rows done so far (``key -> row``), the thread count, the progress bar and callback."""

    config: SweepConfig
    out: Path
    order: list
    done: dict
    threads: int
    bar: object = None
    on_point: Callable[[dict], None] | None = None

    def rows(self) -> list[dict]:
        return [self.done[k] for k in self.order if k in self.done]


def _load_done(out: Path, runs: list[_Run]) -> dict[str, dict]:
    """The rows of the points already saved in ``out/points``."""
    done = {}
    for run in runs:
        for key, _, _ in run.points:
            f = out / "points" / f"{key}.json"
            if f.is_file() and (row := _point(f)) is not None:
                done[key] = row  # a torn file cannot exist (atomic writes), but never trust it
    return done


def _save_point(sweep: _Sweep, key: str, row: dict) -> None:
    """Write a finished point, rewrite the tables, advance the bar, call ``on_point``."""
    atomic_write_json(sweep.out / "points" / f"{key}.json", row, indent=1, default=str)
    sweep.done[key] = row
    _write_tables(sweep.out, sweep.rows(), sweep.config)
    if sweep.bar is not None:
        sweep.bar.update(1)
    if sweep.on_point is not None:
        sweep.on_point(row)


def _run_data(cfg: dict, root, cache: dict):
    """The dataset of a training run (the last one is kept: runs of one grid share it)."""
    dkey = json.dumps([cfg["data"], cfg["seed"]], sort_keys=True, default=str)
    if dkey not in cache:
        opts = dict(cfg["data"])
        name = opts.pop("name", "digits")
        cache.clear()
        cache[dkey] = load_dataset(name, root=opts.pop("root", root), seed=cfg["seed"], **opts)
    return cache[dkey]


def _point_row(sweep: _Sweep, key: str, p: dict, epoch, model, result, data,
               t_train: float) -> dict:
    """The row of one point: key, factor values, settings, sizes, then the measures."""
    row = {"key": key}
    for n in sweep.config.factors:
        section, opt = FACTORS[n]
        row[f"factor_{n}"] = epoch if n == "epochs" else (
            p["seed"] if n == "seed" else p[section].get(opt))
    row.update(_flat_settings(p, data, epoch))
    row["n_trained"] = len(result.train_idx)
    row["torch_threads"] = sweep.threads
    meas = p["measure"]
    t0 = time.perf_counter()
    row.update(measure(model, data.x_train[result.train_idx], data.y_train[result.train_idx],
                       data.x_test, data.y_test, k=meas["k"], seed=p["seed"],
                       probes=meas.get("probes", True), measures=meas.get("measures"),
                       layers=meas["layers"]))
    row["t_train"] = t_train
    row["t_measure"] = time.perf_counter() - t0
    row["stopped_epoch"] = result.stopped
    return row


class _MeasureCheckpoints:
    """``on_checkpoint`` of an ``epochs`` run: measures and saves each wanted checkpoint;
    ``t_train`` excludes the time spent measuring the earlier ones."""

    def __init__(self, sweep: _Sweep, wanted: dict, data):
        self.sweep, self.wanted, self.data = sweep, wanted, data
        self.t_start, self.measured = time.perf_counter(), 0.0

    def __call__(self, epoch: int, model, result) -> None:
        t0 = time.perf_counter()
        key, p = self.wanted[epoch]
        t_train = time.perf_counter() - self.t_start - self.measured
        _save_point(self.sweep, key, _point_row(self.sweep, key, p, epoch, model, result,
                                                self.data, t_train))
        self.measured += time.perf_counter() - t0


def _run_points(sweep: _Sweep, run: _Run, todo: list, data) -> None:
    """Train the run's model and measure its missing points (checkpoints of an ``epochs``
    run, training up to the last missing one; else the trained model)."""
    cfg = run.cfg
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg["model"], data.input_shape, data.n_classes)
    tcfg = TrainConfig.from_dict(cfg["train"])
    if sweep.config.factors.get("epochs") is not None:
        wanted = {e: (key, p) for key, p, e in todo}
        tcfg.checkpoints = sorted(wanted)
        tcfg.epochs = max(wanted)  # no need to train past the last missing checkpoint
        train(model, data, tcfg, on_checkpoint=_MeasureCheckpoints(sweep, wanted, data))
    else:
        result = train(model, data, tcfg)
        (key, p, _), = todo
        _save_point(sweep, key, _point_row(sweep, key, p, None, model, result, data,
                                           result.seconds))


def run_sweep(config: SweepConfig | dict, out_dir: str | os.PathLike, *, progress: bool = True,
              on_point: Callable[[dict], None] | None = None, root=None,
              force: bool = False) -> list[dict]:
    """Run (or resume) a sweep into ``out_dir``; returns the rows in grid order.

    ``on_point(row)`` is called after each newly measured point has been saved. ``root`` is
    the data directory for downloaded datasets. ``sweep.json`` records the config and the
    torch thread count (``torch_threads``; also a column of every row); resuming with another
    thread count raises ``ValueError`` unless ``force`` (then a ``RuntimeWarning``).
    The directory is locked while the sweep runs (``out_dir/.lock``): a second sweep into it
    raises :class:`~activation_hash.fileio.LockedError` naming the first.
    """
    if isinstance(config, dict):
        config = SweepConfig.from_dict(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out / ".lock", f"sweep directory {str(out)!r}"):
        return _run_sweep(config, out, progress, on_point, root, force)


def _run_sweep(config, out: Path, progress, on_point, root, force) -> list[dict]:
    (out / "points").mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    _check_threads(out, threads, force)
    atomic_write_json(out / "sweep.json", dict(config.to_dict(), torch_threads=threads),
                      indent=1, default=str)
    runs = plan_points(config)
    sweep = _Sweep(config, out, [key for r in runs for key, _, _ in r.points],
                   _load_done(out, runs), threads, on_point=on_point)
    if progress:
        from tqdm.auto import tqdm
        sweep.bar = tqdm(total=len(sweep.order), initial=len(sweep.done), desc="sweep",
                         unit="point")
    data_cache: dict = {}
    try:
        for run in runs:
            todo = [(key, p, e) for key, p, e in run.points if key not in sweep.done]
            if todo:
                _run_points(sweep, run, todo, _run_data(run.cfg, root, data_cache))
    finally:
        if sweep.bar is not None:
            sweep.bar.close()
    return sweep.rows()
