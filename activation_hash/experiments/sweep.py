"""Factor sweeps: train, extract codes, measure the encoding properties at every grid point.

A sweep is a grid over one or more *factors* (:data:`FACTORS`) times a list of seeds. At every
point it trains a model (``epochs`` is special: one training run per other setting, measured
at its checkpoint epochs), extracts the neural codes of the samples trained on and of the test
set, and records:

- ``redundancy_train`` / ``redundancy_test`` (and distinct-code counts; ``mixed_samples_train``:
  training samples in regions shared by several labels) from
  :func:`activation_hash.collisions.collisions` on codes of
  :func:`activation_hash.codes.extract_codes`;
- the probe accuracies of :func:`activation_hash.probes.categorize` (K-NN, K-Means purity and
  Hungarian, logistic regression; train and test);
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
from activation_hash.experiments.models import build_model
from activation_hash.experiments.training import TrainConfig, accuracy, train
from activation_hash.fileio import atomic_write_text

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
    and the probe settings (``k`` of K-NN; ``probes``: ``"all"`` (True) = K-NN, K-Means and
    logistic regression, ``"knn"`` = K-NN only (fast), ``"none"`` (False) = redundancy only)."""

    factors: dict
    data: dict = field(default_factory=lambda: {"name": "digits"})
    model: dict = field(default_factory=lambda: {"arch": "mlp", "width": 32, "depth": 1})
    train: dict = field(default_factory=dict)
    seeds: list = field(default_factory=lambda: [0])
    k: int = 9
    probes: bool | str = True
    layers: list | None = None

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
        if "epochs" in fixed and any((not isinstance(e, int) or e < 0) for e in fixed["epochs"]):
            raise ValueError(f"epochs values must be ints >= 0, got {fixed['epochs']}")
        if self.probes not in (True, False, "all", "knn", "none"):
            raise ValueError(f"probes must be 'all', 'knn' or 'none', got {self.probes!r}")
        self.factors = fixed
        if "seed" in self.factors:
            self.seeds = list(self.factors.pop("seed"))
            self.factors["seed"] = self.seeds  # keep it visible as a factor
        TrainConfig.from_dict({k: v for k, v in self.train.items() if k != "checkpoints"})

    def to_dict(self) -> dict:
        return asdict(self)

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


def plan_points(config: SweepConfig) -> list[_Run]:
    """The training runs of a sweep and the keyed points each one measures."""
    names = [n for n in config.factors if n not in ("epochs", "seed")]
    runs = []
    for combo in itertools.product(*(config.factors[n] for n in names)):
        for seed in config.seeds:
            cfg = {"data": dict(config.data), "model": dict(config.model),
                   "train": {k: v for k, v in config.train.items() if k != "checkpoints"},
                   "seed": int(seed), "measure": {"k": config.k, "probes": config.probes,
                                                  "layers": config.layers}}
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


def extract(model, x: torch.Tensor, labels=None, *, layers=None, batch_size: int = 1024):
    """Neural codes of ``x`` (eval mode, no grad) as a :class:`~activation_hash.codes.CodeBook`
    (with ``labels`` when given)."""
    from activation_hash.codes import extract_codes

    data = x if labels is None else (x, labels)  # extract_codes restores the modules' modes
    return extract_codes(model, data, layers=layers, batch_size=batch_size, progress=False)


def measure(model, x_train, y_train, x_test, y_test, *, k: int = 9, seed: int = 0,
            probes: bool = True, layers=None) -> dict:
    """Encoding properties of ``model`` on a train and a test set (one flat dict)."""
    from activation_hash.collisions import collisions

    row: dict = {}
    t = time.perf_counter()
    cb_tr = extract(model, x_train, y_train, layers=layers)
    cb_te = extract(model, x_test, y_test, layers=layers)
    row["t_extract"] = time.perf_counter() - t
    row["n_bits"] = cb_tr.n_bits
    t = time.perf_counter()
    r_tr, r_te = collisions(cb_tr), collisions(cb_te)
    row["t_collisions"] = time.perf_counter() - t
    row.update(redundancy_train=float(r_tr.redundancy), redundancy_test=float(r_te.redundancy),
               n_distinct_train=int(r_tr.n_distinct), n_distinct_test=int(r_te.n_distinct),
               mixed_samples_train=r_tr.mixed_samples)
    c_tr, c_te = (cb_tr.codes, cb_tr.labels), (cb_te.codes, cb_te.labels)
    probes = {True: "all", False: "none", None: "none"}.get(probes, probes)
    if probes not in ("all", "knn", "none"):
        raise ValueError(f"probes must be 'all', 'knn' or 'none', got {probes!r}")
    if probes == "knn":
        from activation_hash.probes import knn_accuracy

        t = time.perf_counter()
        row["knn_train"] = float(knn_accuracy(c_tr, c_tr, k=k))
        row["knn_test"] = float(knn_accuracy(c_tr, c_te, k=k))
        row["t_probes"] = time.perf_counter() - t
    elif probes == "all":
        from activation_hash.probes import categorize

        t = time.perf_counter()
        rep = categorize(cb_tr, cb_te, k=k, seed=seed)
        row["t_probes"] = time.perf_counter() - t
        for name in ("knn_train", "knn_test", "kmeans_purity_train", "kmeans_hungarian_train",
                     "kmeans_purity_test", "kmeans_hungarian_test", "logreg_train", "logreg_test"):
            row[name] = float(getattr(rep, name))
    row["acc_train"] = accuracy(model, x_train, y_train)
    row["acc_test"] = accuracy(model, x_test, y_test)
    return row


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
        return json.loads((out / "results.json").read_text())["rows"]
    return [json.loads(p.read_text()) for p in sorted((out / "points").glob("*.json"))]


def _write_tables(out: Path, rows: list[dict], config: SweepConfig) -> None:
    atomic_write_text(out / "results.json", json.dumps(
        {"factors": list(config.factors), "config": config.to_dict(), "rows": rows}, indent=1,
        default=str))
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
        before = json.loads(f.read_text()).get("torch_threads")
    except (json.JSONDecodeError, AttributeError):
        return
    if before is None or int(before) == threads:
        return
    msg = (f"sweep {str(out)!r} was run with {before} torch thread(s), this run uses {threads}; "
           f"training is deterministic only for a given thread count, so new points may not "
           f"match a run with {before}")
    if not force:
        raise ValueError(msg + f" (use torch.set_num_threads({before}) / --threads {before}, "
                               f"or force=True / --force to mix them)")
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def run_sweep(config: SweepConfig | dict, out_dir: str | os.PathLike, *, progress: bool = True,
              on_point: Callable[[dict], None] | None = None, root=None,
              force: bool = False) -> list[dict]:
    """Run (or resume) a sweep into ``out_dir``; returns the rows in grid order.

    ``on_point(row)`` is called after each newly measured point has been saved. ``root`` is
    the data directory for downloaded datasets. ``sweep.json`` records the config and the
    torch thread count (``torch_threads``; also a column of every row); resuming with another
    thread count raises ``ValueError`` unless ``force`` (then a ``RuntimeWarning``).
    """
    if isinstance(config, dict):
        config = SweepConfig.from_dict(config)
    out = Path(out_dir)
    (out / "points").mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    _check_threads(out, threads, force)
    atomic_write_text(out / "sweep.json", json.dumps(dict(config.to_dict(), torch_threads=threads),
                                                     indent=1, default=str))
    runs = plan_points(config)
    done: dict[str, dict] = {}
    for _, pts in ((r.cfg, r.points) for r in runs):
        for key, _, _ in pts:
            f = out / "points" / f"{key}.json"
            if f.is_file():
                try:
                    done[key] = json.loads(f.read_text())
                except json.JSONDecodeError:
                    pass  # a torn file cannot exist (atomic writes), but never trust it
    order = [key for r in runs for key, _, _ in r.points]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(order), initial=len(done), desc="sweep", unit="point")
    data_cache: dict[str, object] = {}

    def finish(key: str, row: dict) -> None:
        atomic_write_text(out / "points" / f"{key}.json", json.dumps(row, indent=1, default=str))
        done[key] = row
        _write_tables(out, [done[k] for k in order if k in done], config)
        if bar is not None:
            bar.update(1)
        if on_point is not None:
            on_point(row)

    try:
        for run in runs:
            todo = [(key, p, e) for key, p, e in run.points if key not in done]
            if not todo:
                continue
            cfg = run.cfg
            dkey = json.dumps([cfg["data"], cfg["seed"]], sort_keys=True, default=str)
            if dkey not in data_cache:
                opts = dict(cfg["data"])
                name = opts.pop("name", "digits")
                data_cache = {dkey: load_dataset(name, root=opts.pop("root", root), seed=cfg["seed"],
                                                 **opts)}
            data = data_cache[dkey]
            torch.manual_seed(cfg["seed"])
            model = build_model(cfg["model"], data.input_shape, data.n_classes)
            meas = cfg["measure"]
            factor_values = {n: None for n in config.factors}

            def point_row(key, p, epoch, model, result, t_train):
                ytr = data.y_train[result.train_idx]
                row = {"key": key}
                for n in config.factors:
                    section, opt = FACTORS[n]
                    factor_values[n] = epoch if n == "epochs" else (
                        p["seed"] if n == "seed" else p[section].get(opt))
                row.update({f"factor_{n}": v for n, v in factor_values.items()})
                row.update(_flat_settings(p, data, epoch))
                row["n_trained"] = len(result.train_idx)
                row["torch_threads"] = threads
                t0 = time.perf_counter()
                row.update(measure(model, data.x_train[result.train_idx], ytr, data.x_test,
                                   data.y_test, k=meas["k"], seed=p["seed"], probes=meas["probes"],
                                   layers=meas["layers"]))
                row["t_train"] = t_train
                row["t_measure"] = time.perf_counter() - t0
                row["stopped_epoch"] = result.stopped
                return row

            tcfg = TrainConfig.from_dict(cfg["train"])
            t_start = time.perf_counter()
            if config.factors.get("epochs") is not None:
                wanted = {e: (key, p) for key, p, e in todo}
                tcfg.checkpoints = sorted(wanted)
                tcfg.epochs = max(wanted)  # no need to train past the last missing checkpoint
                measured = [0.0]  # time spent measuring, excluded from t_train

                def on_ckpt(epoch, m, result):
                    t0 = time.perf_counter()
                    key, p = wanted[epoch]
                    row = point_row(key, p, epoch, m, result,
                                    time.perf_counter() - t_start - measured[0])
                    finish(key, row)
                    measured[0] += time.perf_counter() - t0

                train(model, data, tcfg, on_checkpoint=on_ckpt)
            else:
                result = train(model, data, tcfg)
                (key, p, _), = todo
                finish(key, point_row(key, p, None, model, result, result.seconds))
    finally:
        if bar is not None:
            bar.close()
    return [done[k] for k in order if k in done]
