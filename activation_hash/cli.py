"""The ``activation-hash`` command line (``activation-hash <cmd> --help``): ``demo``, ``train``,
``extract``, ``collisions``, ``categorize``, ``sweep``, ``regions``, ``folding``, ``slice``,
``evolution``, ``phase-chart``, ``report``. Every command writes a run directory (``--out
DIR``; default a new folder under ``runs/``). Options can come from a TOML (or YAML) file (``--config FILE``; long
option names, tables flattened), type- and range-checked like the flags; flags win.
Every user error prints one line ``activation-hash <command>: error: ...`` on stderr and exits
with status 2; ``--debug`` (anywhere on the command line) shows the traceback instead.

This module only parses arguments: each command is one call of a Python function (``run_demo``,
the ``run_*`` of ``experiments.runs`` and ``experiments.geometry``, ``write_report``).
"""
from __future__ import annotations

import argparse
import sys
import time

from activation_hash.experiments.config import (OptionParser as _Parser, UsageError,
                                                check_option as _config_value,
                                                float_option as _float, int_option as _int,
                                                csv_list as _csv,
                                                number_csv as _numbers,
                                                phase_options as _phase_opts,
                                                scan_argv as _scan, seed_list as _seed_list,
                                                sweep_factors as _sweep_factors,
                                                thresholds_of as _thresholds)

__all__ = ["main", "build_parser", "UsageError"]


# ---- helpers --------------------------------------------------------------------------------

def _print(line: str) -> None:
    print(line, flush=True)


def _sayer(args):
    """Where a command's summary lines go: stdout, or nowhere with ``--quiet``."""
    return None if getattr(args, "quiet", False) else _print


def _threads(args) -> None:
    import torch

    if getattr(args, "threads", None) is not None:
        torch.set_num_threads(int(args.threads))


def _load_config(path: str) -> dict:
    """The options of a ``--config`` file (:func:`activation_hash.experiments.config.load_config`);
    a missing file or a YAML file without PyYAML exits, an option given twice raises
    ``ValueError``."""
    from activation_hash.experiments.config import load_config

    try:
        return load_config(path)
    except (FileNotFoundError, ImportError) as e:
        raise UsageError(str(e)) from None


# ---- shared option groups -------------------------------------------------------------------

def _common(p: argparse.ArgumentParser, out: bool = True) -> None:
    g = p.add_argument_group("run")
    if out:
        g.add_argument("--out", metavar="DIR", help="run directory (default: a new folder under runs/)")
    g.add_argument("--config", metavar="FILE", help="TOML (or YAML) file of options")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bars or messages")
    g.add_argument("--threads", type=_int(1, 4096), default=1,
                   help="torch CPU threads (default 1: fastest for small models; results are "
                        "deterministic for a given thread count)")


def _data_opts(p: argparse.ArgumentParser) -> None:
    from activation_hash.experiments.datasets import DATASETS

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits", choices=DATASETS, help="dataset (default digits)")
    g.add_argument("--data-root", metavar="DIR", help="directory of MNIST/Fashion-MNIST/CIFAR-10 files "
                                                    "(default $ACTIVATION_HASH_DATA or ./data)")
    g.add_argument("--n-train", type=_int(1), help="seeded stratified training subset size")
    g.add_argument("--n-test", type=_int(1), help="seeded stratified test subset size")
    g.add_argument("--label-noise", type=_float(0, 1), default=0.0,
                   help="exact symmetric label-noise rate")


def _model_opts(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="mlp", choices=["mlp", "cnn", "vgg", "resnet"])
    g.add_argument("--width", type=_int(1), default=32, help="MLP hidden width (default 32)")
    g.add_argument("--depth", type=_int(1), default=1, help="MLP hidden layers (default 1)")
    g.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=False,
                   help="BatchNorm after each Linear/conv (the paper's MLP recipe uses it)")
    g.add_argument("--dropout", type=_float(0, 1, hi_open=True), default=0.0)


def _train_opts(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--preset", choices=["none", "paper_mlp"], default="none",
                   help="paper_mlp: Adam 1e-2, x0.1 every 20 epochs, batch 64, 200 epochs, "
                        "patience 10, 20%% validation, L2 on the kernels only (flags below "
                        "override it)")
    g.add_argument("--epochs", type=_int(0), help="maximum epochs (default 20)")
    g.add_argument("--batch-size", type=_int(1), help="default 64")
    g.add_argument("--optimizer", choices=["adam", "sgd"], help="default adam")
    g.add_argument("--lr", type=_float(0, lo_open=True), help="learning rate (default 0.01)")
    g.add_argument("--weight-decay", type=_float(0), help="coupled L2 coefficient (default 0)")
    g.add_argument("--decay-bias-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="apply --weight-decay to biases and BatchNorm parameters too (default "
                        "yes; the paper_mlp preset: no, kernels only like Keras l2)")
    g.add_argument("--lr-step", type=_int(1), help="decay the learning rate every N epochs")
    g.add_argument("--lr-gamma", type=_float(0, lo_open=True))
    g.add_argument("--val-fraction", type=_float(0, 1, hi_open=True))
    g.add_argument("--patience", type=_int(1), help="early stopping patience (needs --val-fraction)")
    g.add_argument("--epoch-size", type=_int(1), help="samples per epoch (tiles small training sets)")
    g.add_argument("--seed", type=_int(0), default=0)


def _data_cfg(args) -> dict:
    d = {"name": args.dataset, "n_train": args.n_train, "n_test": args.n_test,
         "label_noise": args.label_noise or None}
    return {k: v for k, v in d.items() if v is not None}


def _model_cfg(args) -> dict:
    m = {"arch": args.arch, "batch_norm": bool(args.batch_norm)}
    if args.arch == "mlp":
        m.update(width=args.width, depth=args.depth)
    if args.dropout:
        m["dropout"] = args.dropout
    return m


_TRAIN_FLAGS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "decay_bias_bn",
                "lr_step", "lr_gamma", "val_fraction", "patience", "epoch_size")


def _train_cfg(args) -> dict:
    from activation_hash.experiments.training import preset_options

    return preset_options(args.preset, **{k: getattr(args, k, None) for k in _TRAIN_FLAGS},
                          seed=args.seed)


# ---- commands: one call each (the work is in activation_hash.experiments) -----------------

def _args_settings(args) -> dict:
    """The parsed options, as recorded in a run's ``settings.json``."""
    return {k: v for k, v in vars(args).items() if k != "func" and not callable(v)}


def cmd_train(args) -> None:
    from activation_hash.experiments.runs import run_train

    run_train(args.out, _data_cfg(args), _model_cfg(args), _train_cfg(args),
              data_root=args.data_root, save_checkpoints=args.save_checkpoints,
              progress=not args.quiet, settings=_args_settings(args), say=_sayer(args))


def cmd_extract(args) -> None:
    from activation_hash.experiments.runs import run_extract

    run_extract(args.out, args.model, data_root=args.data_root,
                layers=args.layers.split(",") if args.layers else None,
                trained_only=args.trained_only, settings=_args_settings(args), say=_sayer(args))


def cmd_collisions(args) -> None:
    from activation_hash.experiments.runs import run_collisions

    run_collisions(args.out, args.codes, per_layer=args.per_layer, top=args.top,
                   settings=_args_settings(args), say=_sayer(args))


def cmd_categorize(args) -> None:
    from activation_hash.experiments.runs import run_categorize

    run_categorize(args.out, args.train, args.test, k=args.k, seed=args.seed,
                   progress=not args.quiet, settings=_args_settings(args), say=_sayer(args))


def cmd_geometry(args) -> None:
    """``regions`` / ``folding`` / ``slice``: a trained model (--model) or an architecture at init."""
    from activation_hash.experiments import geometry, slicing

    run = {"regions": geometry.run_regions, "folding": geometry.run_folding,
           "slice": slicing.run_slice}[args.command]
    extra = {"n_pairs": args.pairs} if args.command != "slice" else {
        k: getattr(args, k) for k in ("samples", "classes", "margin", "max_faces", "sampled",
                                      "resolution")}
    model = args.model
    run(args.out, model, arch=None if model else _model_cfg(args),
        data=None if model else _data_cfg(args), data_root=args.data_root, seed=args.seed,
        settings=_args_settings(args), say=_sayer(args), **extra)


def cmd_evolution(args) -> None:
    from activation_hash.experiments.evolution import run_evolution

    run_evolution(args.out, datasets=_csv(args.datasets), epochs=args.epochs,
                  snapshots=_numbers(args.snapshots), widths=_numbers(args.widths),
                  n_samples=args.n_samples,
                  seed=args.seed, quick=args.quick, minwidth=args.minwidth,
                  minwidth_options={"tol": args.tol}, settings=_args_settings(args),
                  say=_sayer(args))


def cmd_sweep(args) -> None:
    from activation_hash.experiments.runs import run_sweep_report
    from activation_hash.experiments.sweep import SweepConfig

    train_cfg = _train_cfg(args)
    train_cfg.pop("seed")
    measures = args.measures.split(",") if isinstance(args.measures, str) else args.measures
    cfg = SweepConfig(factors=_sweep_factors(args.factor), data=_data_cfg(args), model=_model_cfg(args),
                      train=train_cfg, seeds=_seed_list(args.seeds), k=args.k,
                      probes=True if measures else args.probes, measures=measures or None)
    run_sweep_report(cfg, args.out, thresholds=_thresholds(args), progress=not args.quiet,
                     root=args.data_root, force=args.force, settings=_args_settings(args),
                     say=_sayer(args))


def cmd_phase_chart(args) -> None:
    from activation_hash.experiments.runs import run_phase_chart

    run_phase_chart(args.results, args.out, x=args.x, y=args.y, thresholds=_thresholds(args),
                    settings=_args_settings(args), say=_sayer(args))


def cmd_report(args) -> None:
    from activation_hash.experiments.report import write_report

    print(write_report(args.run_dir, args.title))


def cmd_demo(args) -> None:
    """On digits, a one-hidden-layer MLP (Linear -> BN -> ReLU): a width sweep (all probes), a
    width x training-time grid and a width x sample-size grid (K-NN only), their plots, the
    two phase charts and the HTML report."""
    from activation_hash.experiments.demo import run_demo

    t0 = time.perf_counter()
    res = run_demo(args.out, seed=args.seed, thresholds=_thresholds(args), progress=not args.quiet,
                   say=_sayer(args), settings=_args_settings(args))
    print(f"report: {res['report'].resolve()}  ({time.perf_counter() - t0:.0f} s)")


# ---- parser ---------------------------------------------------------------------------------

def build_parser(defaults: dict | None = None) -> argparse.ArgumentParser:
    """The parser of every command; ``defaults``: ``{command: {option dest: value}}`` option
    defaults (a ``--config`` file's), which flags on the command line override."""
    def opts(name: str) -> dict:
        return dict((defaults or {}).get(name, {}))

    p = _Parser(
        prog="activation-hash",
        description="ReLU networks as hash encoders: train, extract neural codes, count "
                    "collisions, categorize, sweep factors, draw the phase chart, report.")
    from activation_hash import __version__

    p.add_argument("--version", action="version", version=f"activation-hash {__version__}")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an error (also accepted after the command)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("demo", help="width and training-time sweeps on digits, phase chart, report",
                       description=cmd_demo.__doc__)
    _common(s)
    s.add_argument("--seed", type=_int(0), default=0)
    _phase_opts(s)
    s.set_defaults(func=cmd_demo, **opts('demo'))

    s = sub.add_parser("train", help="train one model; saves model.pt, history, metrics, plot")
    _common(s)
    _data_opts(s)
    _model_opts(s)
    _train_opts(s)
    s.add_argument("--save-checkpoints", choices=["none", "paper", "log"], default="none",
                   help="save weights at epochs {0,1,3,6,10,20,...} (paper) or log-spaced ones")
    s.set_defaults(func=cmd_train, **opts('train'))

    s = sub.add_parser("extract", help="neural codes of a trained model on its train/test data")
    _common(s)
    s.add_argument("--model", required=True, metavar="PATH", help="a train run directory or its model.pt")
    s.add_argument("--data-root", metavar="DIR")
    s.add_argument("--layers", help="comma-separated layer names to keep (default all)")
    s.add_argument("--trained-only", action=argparse.BooleanOptionalAction, default=True,
                   help="training codes of the samples trained on (not the validation split)")
    s.set_defaults(func=cmd_extract, **opts('extract'))

    s = sub.add_parser("collisions", help="redundancy ratio and region occupancy of saved codes")
    _common(s)
    s.add_argument("codes", nargs="+", help="code files written by `extract` (e.g. RUN/train.codes)")
    s.add_argument("--per-layer", action="store_true", help="also the redundancy of each layer")
    s.add_argument("--top", type=_int(0), default=10, help="largest groups to list")
    s.set_defaults(func=cmd_collisions, **opts('collisions'))

    s = sub.add_parser("categorize", help="K-NN / K-Means / logistic regression on saved codes")
    _common(s)
    s.add_argument("--train", required=True, help="training codes (with labels)")
    s.add_argument("--test", required=True, help="test codes (with labels)")
    s.add_argument("--k", type=_int(1), default=9, help="K-NN neighbours (default 9)")
    s.add_argument("--seed", type=_int(0), default=0)
    s.set_defaults(func=cmd_categorize, **opts('categorize'))

    s = sub.add_parser("sweep", help="sweep factors; CSV/JSON results, plots, phase chart, report",
                       description="Grid over --factor NAME=V1,V2 (repeatable): width, depth, "
                                   "epochs (checkpoints of one run), n_train, weight_decay, "
                                   "dropout, batch_norm, label_noise, lr, seed. Resumes: rerun "
                                   "with the same --out to skip finished points.")
    _common(s)
    s.add_argument("--factor", action="append", metavar="NAME=V1,V2,...",
                   help="a factor and its values (repeat for a grid)")
    s.add_argument("--seeds", default="0", help="comma-separated seeds repeated at every point")
    s.add_argument("--k", type=_int(1), default=9, help="K-NN neighbours")
    s.add_argument("--probes", choices=["all", "knn", "none"], default="all",
                   help="all: K-NN, K-Means, logistic regression; knn: K-NN only; none")
    s.add_argument("--measures", metavar="NAME,...",
                   help="the measures of every point instead of --probes, in column order: "
                        "collisions, knn, probes, accuracy or any registered with "
                        "activation_hash.experiments.measures.register_measure")
    s.add_argument("--force", action="store_true",
                   help="resume even if --threads differs from the count the sweep was run with "
                        "(recorded in sweep.json; results depend on it)")
    _data_opts(s)
    _model_opts(s)
    _train_opts(s)
    _phase_opts(s)
    s.set_defaults(func=cmd_sweep, **opts('sweep'))

    for name, pairs, what in (("regions", 32, "exact linear regions between test pairs"),
                              ("folding", 64, "exact space folding of test paths, vs depth"),
                              ("slice", 0, "exact region map of a plane through 3 samples")):
        s = sub.add_parser(name, help=what, description=f"{what}: a trained model (--model) or "
                           "--arch/--width/--depth at initialization on --dataset")
        _common(s)
        s.add_argument("--model", metavar="PATH", help="a train run directory or its model.pt")
        if pairs:
            s.add_argument("--pairs", type=int, default=pairs, help=f"test pairs (default {pairs})")
        else:
            s.add_argument("--samples", metavar="I,J,K", help="three test sample indices")
            s.add_argument("--classes", metavar="A,B,C", help="the first test sample of 3 classes")
            s.add_argument("--margin", type=_float(0), default=0.25, help="window margin")
            s.add_argument("--max-faces", type=_int(1), default=1_000_000)
            s.add_argument("--sampled", action="store_true", help="a raster (not exact)")
            s.add_argument("--resolution", type=_int(2), default=256, help="raster size")
        s.add_argument("--seed", type=int, default=0, help="pairs and initialization seed")
        _data_opts(s)
        _model_opts(s)
        s.set_defaults(func=cmd_geometry, **opts(name))

    from activation_hash.experiments import evolution as ev
    s = sub.add_parser("evolution", help="region maps and counts through training (Qi & Wei)",
                       description=ev.__doc__.split("\n\n")[0])
    _common(s)
    for flag, default, what in (("datasets", ",".join(ev.TOY_DATASETS), "comma-separated"),
                                ("snapshots", ",".join(map(str, ev.SNAPSHOTS)), "epochs"),
                                ("widths", "16,16,16", "hidden widths")):
        s.add_argument(f"--{flag}", default=default, help=f"{what} (default {default})")
    s.add_argument("--epochs", type=_int(0), default=100)
    s.add_argument("--n-samples", type=_int(4), default=1000)
    s.add_argument("--seed", type=_int(0), default=0)
    s.add_argument("--quick", action="store_true", help="2 epochs, 2 data sets, small net")
    s.add_argument("--minwidth", action=argparse.BooleanOptionalAction, default=True,
                   help="also the 1-D minimum-width experiment")
    s.add_argument("--tol", type=_float(0, lo_open=True), default=0.01,
                   help="max abs error of a min-width fit (default 0.01)")
    s.set_defaults(func=cmd_evolution, **opts("evolution"))

    s = sub.add_parser("phase-chart", help="label (size x time/samples) cells; PNG + CSV")
    _common(s)
    s.add_argument("results", help="a sweep directory or its results.json")
    s.add_argument("--x", default="epochs", help="x column: epochs or n_train (default epochs)")
    s.add_argument("--y", default="width", help="y column: width or depth (default width)")
    _phase_opts(s)
    s.set_defaults(func=cmd_phase_chart, **opts('phase-chart'))

    s = sub.add_parser("report", help="write report.html for a run directory")
    s.add_argument("run_dir", help="run directory")
    s.add_argument("--title", default=None)
    s.add_argument("--config", metavar="FILE", help=argparse.SUPPRESS)
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(func=cmd_report, **opts('report'))
    p.commands = sub.choices
    for name, sp in sub.choices.items():  # options the config file gives are not required
        for a in sp.options:
            if a.dest in opts(name):
                a.required = False
                if a.nargs == "+":
                    a.nargs = "*"
    return p


def _run(argv: list[str]) -> int:
    cmd, cfg_path = _scan(argv)
    defaults = None
    commands = build_parser().commands
    if cfg_path and cmd in commands:
        cfg = _load_config(cfg_path)
        actions = {a.dest: a for a in commands[cmd].options if a.dest != "config"}
        unknown = sorted(set(cfg) - set(actions))
        if unknown:
            raise UsageError(f"unknown option(s) {unknown} in {cfg_path}; known: "
                             f"{sorted(actions)}")
        defaults = {cmd: {k: _config_value(actions[k], v, cfg_path) for k, v in cfg.items()}}
    args = build_parser(defaults).parse_args(argv)  # flags override the file
    _threads(args)
    args.func(args)
    return 0


def _user_errors() -> tuple:
    from activation_hash.fileio import LockedError

    return (UsageError, ValueError, TypeError, OSError, LockedError, ImportError)


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error prints one line on stderr and exits with status 2
    (``--debug``: the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        return _run(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("activation-hash: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except _user_errors() as e:
        if debug:
            raise
        cmd, _ = _scan(argv)
        msg = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
            msg += f": {e.filename}"
        print(f"activation-hash{' ' + cmd if cmd else ''}: error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
