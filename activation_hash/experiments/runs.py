"""Run directories: the work of each ``activation-hash`` command, callable from Python.

Every ``run_*`` function writes one run directory ``out`` (created if needed; None: a new
``runs/<kind>-<time>``): its results, ``settings.json`` (``settings``, the caller's record of
options, e.g. the command line's, plus what the function resolved) and, where the command has
one, ``report.html``; ``say(line)``, when given, receives the command's printed summary. The
command line (:mod:`activation_hash.cli`) only parses arguments and calls one of them.

- :func:`run_train`: train one model -> ``model.pt`` (:func:`save_trained` / :func:`load_trained`),
  ``metrics.json``, ``history.json`` (:func:`write_train_metrics`), ``training.png``,
  ``checkpoints/epoch_NNNN.pt`` when asked.
- :func:`run_extract`: the codes of a trained model on its train / test data ->
  ``train.codes`` / ``test.codes`` (CodeBooks; :func:`load_codes`).
- :func:`run_collisions`: ``collisions.json``; :func:`run_categorize`: ``categorization.json``.
- :func:`run_sweep_report`: :func:`~activation_hash.experiments.sweep.run_sweep`, then its
  plots and report.
- :func:`run_phase_chart`: the phase chart and table of a finished sweep.

Every file is written atomically (:mod:`activation_hash.fileio`). A missing input (trained
model, code file, sweep results) raises ``FileNotFoundError`` naming what was expected.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Callable

from activation_hash.fileio import atomic_path, atomic_write_json
from activation_hash.validation import check_bool, check_choice, check_int

__all__ = ["new_run_dir", "write_settings", "save_trained", "load_trained", "write_train_metrics",
           "load_codes", "run_train", "run_extract", "run_collisions", "run_categorize",
           "run_sweep_report", "run_phase_chart", "CHECKPOINT_SCHEDULES"]

CHECKPOINT_SCHEDULES = ("none", "paper", "log")
Say = Callable[[str], None] | None


def _silent(line: str) -> None:
    pass


def new_run_dir(kind: str, out=None) -> Path:
    """``out`` (created), or a new ``runs/<kind>-<YYYYmmdd-HHMMSS>[-k]`` directory."""
    if out:
        path = Path(out)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{kind}-{stamp}"
        k = 1
        while path.exists():
            k += 1
            path = Path("runs") / f"{kind}-{stamp}-{k}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_settings(out, settings: dict | None = None, **extra) -> dict:
    """Write ``out/settings.json``: ``settings`` (made JSON-safe: other values as ``str``), then
    ``extra``; returns what was written."""
    d = json.loads(json.dumps(dict(settings or {}), default=str))
    d.update(extra)
    atomic_write_json(Path(out) / "settings.json", d, indent=1, default=str)
    return d


def _jsonable(o):
    import torch

    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


# ---- trained models -------------------------------------------------------------------------

def save_trained(path, model, *, model_cfg: dict, data_cfg: dict, input_shape, n_classes: int,
                 seed: int, train_idx=None) -> Path:
    """Save a trained model with what rebuilds it and its data: ``{"model": model_cfg, "data":
    data_cfg, "input_shape", "n_classes", "seed", "state_dict", "train_idx"}`` (tensors and
    plain types only, so :func:`load_trained` reads it with ``weights_only=True``)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save({"model": model_cfg, "data": data_cfg, "input_shape": list(input_shape),
                    "n_classes": n_classes, "seed": seed, "state_dict": model.state_dict(),
                    "train_idx": train_idx}, tmp)
    return Path(path)


def load_trained(path):
    """``(model in eval mode, checkpoint dict)`` from a :func:`run_train` directory or its
    ``model.pt``."""
    import torch

    from activation_hash.experiments.models import build_model

    p = Path(path)
    if p.is_dir():
        p = p / "model.pt"
    if not p.is_file():
        raise FileNotFoundError(f"no trained model at {str(p)!r} (expected the model.pt of an "
                                f"`activation-hash train` run)")
    import pickle

    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{str(p)!r} is refused: not a model.pt of `activation-hash train` "
                         f"readable with weights_only=True (no code is run from it): "
                         f"{first}") from None
    need = ("model", "input_shape", "n_classes", "state_dict")
    if not isinstance(ck, dict) or any(k not in ck for k in need):
        raise ValueError(f"{str(p)!r} is not a model.pt of `activation-hash train` (needs keys "
                         f"{list(need)})")
    model = build_model(ck["model"], ck["input_shape"], ck["n_classes"])
    try:
        model.load_state_dict(ck["state_dict"])
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{str(p)!r}: its weights do not fit its model spec "
                         f"({str(err).splitlines()[0]})") from None
    return model.eval(), ck


def write_train_metrics(out, result, data) -> dict:
    """``metrics.json`` (final accuracies, stopped epoch, seconds, applied label-noise rate)
    and ``history.json`` (per-epoch records) of a training run; returns the metrics."""
    out = Path(out)
    metrics = {"train_accuracy": result.train_accuracy, "val_accuracy": result.val_accuracy,
               "test_accuracy": result.test_accuracy, "stopped_epoch": result.stopped,
               "seconds": result.seconds, "noise_rate_true": data.meta["noise_rate_true"]}
    atomic_write_json(out / "metrics.json", metrics, indent=1)
    atomic_write_json(out / "history.json", result.history, indent=1)
    return metrics


def load_data(data_cfg: dict, root, seed: int):
    """The dataset split that ``data_cfg`` (a ``data`` settings dict) names, read from ``root``."""
    from activation_hash.experiments.datasets import load_dataset

    opts = dict(data_cfg)
    return load_dataset(opts.pop("name", "digits"), root=root, seed=seed, **opts)


def run_train(out, data: dict, model: dict, train: dict, *, data_root=None,
              save_checkpoints: str = "none", progress: bool = False,
              settings: dict | None = None, say: Say = None) -> dict:
    """Train one model into ``out``.

    ``data``: :func:`~activation_hash.experiments.datasets.load_dataset` options with ``name``;
    ``model``: a :func:`~activation_hash.experiments.models.build_model` spec; ``train``:
    :class:`~activation_hash.experiments.training.TrainConfig` options (its ``seed``, default 0,
    also seeds the data subsets and the weights). ``save_checkpoints``: ``"paper"`` (epochs
    0, 1, 3, 6, 10, 20, ...) or ``"log"`` (log-spaced) writes ``checkpoints/epoch_NNNN.pt``.

    Returns ``{"out", "model", "result" (TrainResult), "metrics", "model_path", "report"}``.
    """
    import torch

    from activation_hash.experiments.models import build_model
    from activation_hash.experiments.plots import history_figure, save_png
    from activation_hash.experiments.report import write_report
    from activation_hash.experiments.training import (TrainConfig, log_checkpoints,
                                                      paper_checkpoints)
    from activation_hash.experiments.training import train as train_model

    save_checkpoints = check_choice(save_checkpoints, "save_checkpoints", CHECKPOINT_SCHEDULES)
    out = new_run_dir("train", out)
    train = dict(train)
    seed = check_int(train.setdefault("seed", 0), "seed")
    tcfg = TrainConfig.from_dict(train)
    write_settings(out, settings, data_cfg=data, model_cfg=model, train_cfg=train)
    split = load_data(data, data_root, seed)
    torch.manual_seed(seed)
    net = build_model(model, split.input_shape, split.n_classes)
    on_ckpt = None
    if save_checkpoints != "none":
        pick = paper_checkpoints if save_checkpoints == "paper" else log_checkpoints
        tcfg.checkpoints = pick(tcfg.epochs)
        (out / "checkpoints").mkdir(exist_ok=True)

        def on_ckpt(epoch, m, _res):
            with atomic_path(out / "checkpoints" / f"epoch_{epoch:04d}.pt") as tmp:
                torch.save(m.state_dict(), tmp)
    res = train_model(net, split, tcfg, on_checkpoint=on_ckpt, progress=progress)
    model_path = save_trained(out / "model.pt", net, model_cfg=model, data_cfg=data,
                              input_shape=split.input_shape, n_classes=split.n_classes,
                              seed=seed, train_idx=res.train_idx)
    metrics = write_train_metrics(out, res, split)
    if res.history:
        save_png(history_figure(res.history, f"{data.get('name', 'digits')} "
                                             f"{model.get('arch', 'mlp')}"), out / "training.png")
    report = write_report(out, "activation-hash train")
    (say or _silent)(f"test accuracy {res.test_accuracy:.4f} after {res.stopped} epochs; "
                     f"model: {model_path}")
    return {"out": out, "model": net, "result": res, "metrics": metrics,
            "model_path": model_path, "report": report}


# ---- codes ----------------------------------------------------------------------------------

def load_codes(path):
    """The CodeBook saved at ``path`` (a ``*.codes`` store written by :func:`run_extract`)."""
    import activation_hash as ah

    if not Path(path).exists():
        raise FileNotFoundError(f"no codes at {str(path)!r} (expected the output of "
                                f"`activation-hash extract`, e.g. RUN/train.codes)")
    return ah.CodeBook.load(path)


def run_extract(out, model_path, *, data_root=None, layers=None, trained_only: bool = True,
                settings: dict | None = None, say: Say = None) -> dict:
    """The neural codes of a trained model (:func:`load_trained`) on its dataset, rebuilt from
    the model's record: ``out/train.codes`` (with ``trained_only``, the samples it was trained
    on, not its validation split) and ``out/test.codes``, each with labels.

    Returns ``{"out", "train": CodeBook, "test": CodeBook, "paths": {"train", "test"}}``."""
    from activation_hash.experiments.measures import extract

    trained_only = check_bool(trained_only, "trained_only")
    out = new_run_dir("extract", out)
    model, ck = load_trained(model_path)
    write_settings(out, settings, trained=ck["model"], data_cfg=ck["data"])
    data = load_data(ck["data"], data_root, ck["seed"])
    x_tr, y_tr = data.x_train, data.y_train
    if trained_only and ck.get("train_idx") is not None:
        x_tr, y_tr = x_tr[ck["train_idx"]], y_tr[ck["train_idx"]]
    res: dict = {"out": out, "paths": {}}
    for part, x, y in (("train", x_tr, y_tr), ("test", data.x_test, data.y_test)):
        cb = extract(model, x, y, layers=list(layers) if layers else None)
        cb.save(out / f"{part}.codes", overwrite=True)
        res[part], res["paths"][part] = cb, out / f"{part}.codes"
        (say or _silent)(f"{part}: {len(cb)} codes of {cb.n_bits} bits -> {res['paths'][part]}")
    return res


def run_collisions(out, code_paths, *, per_layer: bool = False, top: int = 10,
                   settings: dict | None = None, say: Say = None) -> dict:
    """Collision reports of saved codes -> ``out/collisions.json`` (``{path: report dict}``).
    Returns ``{path: CollisionReport}``."""
    from activation_hash.collisions import count_collisions

    per_layer = check_bool(per_layer, "per_layer")
    top = check_int(top, "top", min=0)
    out = new_run_dir("collisions", out)
    write_settings(out, settings)
    say = say or _silent
    reports = {}
    for path in map(str, code_paths):
        rep = reports[path] = count_collisions(load_codes(path), per_layer=per_layer, top=top)
        say(f"{path}: N={rep.n} distinct={rep.n_distinct} redundancy={rep.redundancy:.4f}")
        for name, r in rep.per_layer or []:
            say(f"  code up to layer {name}: redundancy={r:.4f}")
    atomic_write_json(out / "collisions.json", {p: r.to_dict() for p, r in reports.items()},
                      indent=1, default=_jsonable)
    return reports


def run_categorize(out, train_codes, test_codes, *, k: int = 9, seed: int = 0,
                   progress: bool = False, settings: dict | None = None, say: Say = None) -> dict:
    """K-NN / K-Means / logistic-regression probes (:func:`activation_hash.categorize`) fit on
    the saved ``train_codes`` and scored on ``test_codes`` -> ``out/categorization.json``.
    Returns the report's dict."""
    import activation_hash as ah

    out = new_run_dir("categorize", out)
    write_settings(out, settings)
    rep = ah.categorize(load_codes(train_codes), load_codes(test_codes), k=k, seed=seed,
                        progress=progress)
    d = rep.to_dict()
    atomic_write_json(out / "categorization.json", d, indent=1, default=_jsonable)
    for name, v in d.items():
        if isinstance(v, float):
            (say or _silent)(f"{name:24s} {v:.4f}")
    return d


# ---- sweeps and phase charts ----------------------------------------------------------------

def run_sweep_report(config, out, *, thresholds=None, progress: bool = False, root=None,
                     force: bool = False, settings: dict | None = None, say: Say = None) -> dict:
    """:func:`~activation_hash.experiments.sweep.run_sweep` (resumes), then its plots
    (:func:`~activation_hash.experiments.plots.sweep_plots`, the phase chart with
    ``thresholds``) and ``report.html``. Returns ``{"out", "rows", "plots", "report"}``."""
    from activation_hash.experiments.plots import sweep_plots
    from activation_hash.experiments.report import write_report
    from activation_hash.experiments.sweep import SweepConfig, run_sweep

    if isinstance(config, dict):
        config = SweepConfig.from_dict(config)
    out = new_run_dir("sweep", out)
    write_settings(out, settings, sweep=config.to_dict())
    rows = run_sweep(config, out, progress=progress, root=root, force=force)
    plots = sweep_plots(rows, list(config.factors), out, thresholds)
    report = write_report(out, "activation-hash sweep")
    (say or _silent)(f"{len(rows)} points -> {out / 'results.csv'}; report: {report}")
    return {"out": out, "rows": rows, "plots": plots, "report": report}


def run_phase_chart(results, out, *, x: str = "epochs", y: str = "width", thresholds=None,
                    settings: dict | None = None, say: Say = None) -> dict:
    """The phase chart of a finished sweep (its directory or its ``results.json``):
    ``out/phase_<y>_x_<x>.png`` / ``.csv`` and ``report.html``. Returns
    :func:`~activation_hash.experiments.phase.write_phase`'s dict plus ``"out"``, ``"counts"``
    (cells per regime) and ``"report"``."""
    from activation_hash.experiments.phase import regime_counts, write_phase
    from activation_hash.experiments.report import write_report
    from activation_hash.experiments.sweep import load_results, result_rows

    src = Path(results)
    if src.is_file():
        rows = result_rows(src.read_bytes(), src)
    elif src.is_dir():
        rows = load_results(src)
    else:
        raise FileNotFoundError(f"{str(src)!r} is neither a sweep directory nor its results.json")
    if not rows:
        raise FileNotFoundError(f"no results in {str(src)!r}")
    out = new_run_dir("phase", out)
    write_settings(out, settings)
    res = write_phase(rows, out, x, y, thresholds)
    res["out"], res["counts"] = out, regime_counts(res["table"])
    res["report"] = write_report(out, "activation-hash phase chart")
    (say or _silent)(f"regimes {res['counts']}; chart: {res['png']}; table: {res['csv']}; "
                     f"report: {res['report']}")
    return res
