"""The ``activation-hash`` command line.

Subcommands: ``demo``, ``train``, ``extract``, ``collisions``, ``categorize``, ``sweep``,
``phase-chart``, ``report`` (``activation-hash <cmd> --help``). Every command writes a run
directory (``--out DIR``; default a new folder under ``runs/``) holding ``settings.json``, its
results and plots; ``report`` writes ``report.html`` into the directory it is given. Options can
come from a TOML file (``--config FILE``; keys are the long option names, ``-`` or ``_``,
tables are flattened and an option set in two of them is an error; YAML too when PyYAML is
installed); flags given on the command line win.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

__all__ = ["main", "build_parser"]


# ---- helpers --------------------------------------------------------------------------------

def _floats(text: str) -> list:
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        low = part.lower()
        if low in ("true", "false"):
            out.append(low == "true")
            continue
        try:
            out.append(int(part))
        except ValueError:
            try:
                out.append(float(part))
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return out


def _factor(text: str) -> tuple[str, list]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"a factor is NAME=V1,V2,... (e.g. width=2,4,8), got {text!r}")
    name, values = text.split("=", 1)
    return name.strip(), _floats(values)


def _out_dir(args, kind: str) -> Path:
    if getattr(args, "out", None):
        out = Path(args.out)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{kind}-{stamp}"
        k = 1
        while out.exists():
            k += 1
            out = Path("runs") / f"{kind}-{stamp}-{k}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _settings(args, out: Path, **extra) -> dict:
    d = {k: v for k, v in vars(args).items() if k not in ("func",) and not callable(v)}
    d = json.loads(json.dumps(d, default=str))
    d.update(extra)
    from activation_hash.fileio import atomic_write_json

    atomic_write_json(out / "settings.json", d, indent=1, default=str)
    return d


def _say(args, *msg) -> None:
    if not getattr(args, "quiet", False):
        print(*msg, flush=True)


def _threads(args) -> None:
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))


def _load_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"activation-hash: config file {path!r} not found")
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise SystemExit(f"activation-hash: {path!r} is YAML but PyYAML is not installed; "
                             f"use a TOML file or `pip install pyyaml`") from None
        cfg = yaml.safe_load(p.read_text()) or {}
    else:
        import tomllib

        try:
            cfg = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise SystemExit(f"activation-hash: {path}: bad TOML: {e}") from None
    try:
        return _flatten_config(cfg)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _flatten_config(cfg: dict) -> dict:
    """Option name -> value from a nested config (tables flattened; ``factor`` kept as a
    table). A name given twice (e.g. ``seed`` in ``[data]`` and ``[train]``, or ``n-train`` and
    ``n_train``) raises ``ValueError`` naming it and both places."""
    flat: dict = {}
    where: dict = {}

    def walk(d, section):
        for k, v in d.items():
            key = str(k).replace("-", "_")
            if isinstance(v, dict) and key != "factor":
                walk(v, f"{section}.{k}" if section else str(k))
                continue
            here = f"[{section}]" if section else "the top level"
            if key in flat:
                raise ValueError(f"option {key!r} is set both in {where[key]} and in {here}; "
                                 f"tables are flattened into one set of options, so give it once")
            flat[key], where[key] = v, here
    walk(cfg, "")
    return flat


# ---- shared option groups -------------------------------------------------------------------

def _common(p: argparse.ArgumentParser, out: bool = True) -> None:
    g = p.add_argument_group("run")
    if out:
        g.add_argument("--out", metavar="DIR", help="run directory (default: a new folder under runs/)")
    g.add_argument("--config", metavar="FILE", help="TOML (or YAML) file of options")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bars or messages")
    g.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: fastest for small models; results are "
                        "deterministic for a given thread count)")


def _data_opts(p: argparse.ArgumentParser) -> None:
    from activation_hash.experiments.datasets import DATASETS

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits", choices=DATASETS, help="dataset (default digits)")
    g.add_argument("--data-root", metavar="DIR", help="directory of MNIST/Fashion-MNIST/CIFAR-10 files "
                                                    "(default $ACTIVATION_HASH_DATA or ./data)")
    g.add_argument("--n-train", type=int, help="seeded stratified training subset size")
    g.add_argument("--n-test", type=int, help="seeded stratified test subset size")
    g.add_argument("--label-noise", type=float, default=0.0, help="exact symmetric label-noise rate")


def _model_opts(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="mlp", choices=["mlp", "cnn", "vgg", "resnet"])
    g.add_argument("--width", type=int, default=32, help="MLP hidden width (default 32)")
    g.add_argument("--depth", type=int, default=1, help="MLP hidden layers (default 1)")
    g.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=False,
                   help="BatchNorm after each Linear/conv (the paper's MLP recipe uses it)")
    g.add_argument("--dropout", type=float, default=0.0)


def _train_opts(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--preset", choices=["none", "paper_mlp"], default="none",
                   help="paper_mlp: Adam 1e-2, x0.1 every 20 epochs, batch 64, 200 epochs, "
                        "patience 10, 20%% validation, L2 on the kernels only (flags below "
                        "override it)")
    g.add_argument("--epochs", type=int, help="maximum epochs (default 20)")
    g.add_argument("--batch-size", type=int, help="default 64")
    g.add_argument("--optimizer", choices=["adam", "sgd"], help="default adam")
    g.add_argument("--lr", type=float, help="learning rate (default 0.01)")
    g.add_argument("--weight-decay", type=float, help="coupled L2 coefficient (default 0)")
    g.add_argument("--decay-bias-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="apply --weight-decay to biases and BatchNorm parameters too (default "
                        "yes; the paper_mlp preset: no, kernels only like Keras l2)")
    g.add_argument("--lr-step", type=int, help="decay the learning rate every N epochs")
    g.add_argument("--lr-gamma", type=float)
    g.add_argument("--val-fraction", type=float)
    g.add_argument("--patience", type=int, help="early stopping patience (needs --val-fraction)")
    g.add_argument("--epoch-size", type=int, help="samples per epoch (tiles small training sets)")
    g.add_argument("--seed", type=int, default=0)


def _data_cfg(args) -> dict:
    d = {"name": args.dataset}
    for k in ("n_train", "n_test"):
        if getattr(args, k) is not None:
            d[k] = getattr(args, k)
    if args.label_noise:
        d["label_noise"] = args.label_noise
    return d


def _model_cfg(args) -> dict:
    m = {"arch": args.arch, "batch_norm": bool(args.batch_norm)}
    if args.arch == "mlp":
        m.update(width=args.width, depth=args.depth)
    if args.dropout:
        m["dropout"] = args.dropout
    return m


def _train_cfg(args) -> dict:
    from activation_hash.experiments.training import TrainConfig, paper_mlp

    base = paper_mlp().to_dict() if args.preset == "paper_mlp" else {"epochs": 20, "lr": 1e-2}
    base.pop("checkpoints", None)
    for k in ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "decay_bias_bn",
              "lr_step", "lr_gamma", "val_fraction", "patience", "epoch_size"):
        v = getattr(args, k, None)
        if v is not None:
            base[k] = v
    base["seed"] = args.seed
    TrainConfig.from_dict(base)  # validate early
    return base


# ---- commands -------------------------------------------------------------------------------

def cmd_train(args) -> Path:
    import torch

    from activation_hash.experiments.datasets import load_dataset
    from activation_hash.experiments.models import build_model
    from activation_hash.experiments.plots import history_figure, save_png
    from activation_hash.experiments.report import write_report
    from activation_hash.experiments.training import TrainConfig, train
    from activation_hash.fileio import atomic_path, atomic_write_json

    out = _out_dir(args, "train")
    data_cfg, model_cfg, train_cfg = _data_cfg(args), _model_cfg(args), _train_cfg(args)
    _settings(args, out, data_cfg=data_cfg, model_cfg=model_cfg, train_cfg=train_cfg)
    data = load_dataset(data_cfg["name"], root=args.data_root, seed=args.seed,
                        **{k: v for k, v in data_cfg.items() if k != "name"})
    torch.manual_seed(args.seed)
    model = build_model(model_cfg, data.input_shape, data.n_classes)
    tcfg = TrainConfig.from_dict(train_cfg)
    on_ckpt = None
    if args.save_checkpoints != "none":
        from activation_hash.experiments.training import log_checkpoints, paper_checkpoints

        pick = paper_checkpoints if args.save_checkpoints == "paper" else log_checkpoints
        tcfg.checkpoints = pick(tcfg.epochs)
        (out / "checkpoints").mkdir(exist_ok=True)

        def on_ckpt(epoch, m, _res):
            with atomic_path(out / "checkpoints" / f"epoch_{epoch:04d}.pt") as tmp:
                torch.save(m.state_dict(), tmp)
    res = train(model, data, tcfg, on_checkpoint=on_ckpt, progress=not args.quiet)
    with atomic_path(out / "model.pt") as tmp:
        torch.save({"model": model_cfg, "data": data_cfg, "input_shape": list(data.input_shape),
                    "n_classes": data.n_classes, "seed": args.seed,
                    "state_dict": model.state_dict(), "train_idx": res.train_idx}, tmp)
    metrics = {"train_accuracy": res.train_accuracy, "val_accuracy": res.val_accuracy,
               "test_accuracy": res.test_accuracy, "stopped_epoch": res.stopped,
               "seconds": res.seconds, "noise_rate_true": data.meta["noise_rate_true"]}
    atomic_write_json(out / "metrics.json", metrics, indent=1)
    atomic_write_json(out / "history.json", res.history, indent=1)
    if res.history:
        save_png(history_figure(res.history, f"{args.dataset} {args.arch}"), out / "training.png")
    write_report(out, "activation-hash train")
    _say(args, f"test accuracy {res.test_accuracy:.4f} after {res.stopped} epochs; model: "
               f"{out / 'model.pt'}")
    return out


def _load_trained(path: str):
    import torch

    from activation_hash.experiments.models import build_model

    p = Path(path)
    if p.is_dir():
        p = p / "model.pt"
    if not p.is_file():
        raise SystemExit(f"activation-hash: no trained model at {str(p)!r} "
                         f"(expected the model.pt of an `activation-hash train` run)")
    ck = torch.load(p, map_location="cpu", weights_only=True)
    model = build_model(ck["model"], ck["input_shape"], ck["n_classes"])
    model.load_state_dict(ck["state_dict"])
    return model.eval(), ck


def _load_codes(path: str):
    from activation_hash.codes import CodeBook

    if not Path(path).exists():
        raise SystemExit(f"activation-hash: no codes at {path!r} (expected the output of "
                         f"`activation-hash extract`, e.g. RUN/train.codes)")
    return CodeBook.load(path)


def cmd_extract(args) -> Path:
    from activation_hash.experiments.datasets import load_dataset
    from activation_hash.experiments.sweep import extract

    out = _out_dir(args, "extract")
    model, ck = _load_trained(args.model)
    _settings(args, out, trained=ck["model"], data_cfg=ck["data"])
    d = dict(ck["data"])
    name = d.pop("name")
    data = load_dataset(name, root=args.data_root, seed=ck["seed"], **d)
    layers = [s for s in args.layers.split(",")] if args.layers else None
    x_tr, y_tr = data.x_train, data.y_train
    if args.trained_only and ck.get("train_idx") is not None:
        x_tr, y_tr = x_tr[ck["train_idx"]], y_tr[ck["train_idx"]]
    for part, x, y in (("train", x_tr, y_tr), ("test", data.x_test, data.y_test)):
        cb = extract(model, x, y, layers=layers)
        cb.save(out / f"{part}.codes", overwrite=True)
        _say(args, f"{part}: {len(cb)} codes of {cb.n_bits} bits -> {out / (part + '.codes')}")
    return out


def cmd_collisions(args) -> Path:
    from activation_hash.collisions import collisions

    out = _out_dir(args, "collisions")
    _settings(args, out)
    res = {}
    for path in args.codes:
        cb = _load_codes(path)
        rep = collisions(cb, per_layer=args.per_layer, top=args.top)
        res[path] = rep.to_dict()
        _say(args, f"{path}: N={rep.n} distinct={rep.n_distinct} redundancy={rep.redundancy:.4f}")
        for name, r in rep.per_layer or []:
            _say(args, f"  code up to layer {name}: redundancy={r:.4f}")
    from activation_hash.fileio import atomic_write_json

    atomic_write_json(out / "collisions.json", res, indent=1, default=_jsonable)
    return out


def _jsonable(o):
    try:
        import torch

        if isinstance(o, torch.Tensor):
            return o.tolist()
    except ImportError:
        pass
    return str(o)


def cmd_categorize(args) -> Path:
    from activation_hash.probes import categorize

    out = _out_dir(args, "categorize")
    _settings(args, out)
    rep = categorize(_load_codes(args.train), _load_codes(args.test), k=args.k, seed=args.seed,
                     progress=not args.quiet)
    d = rep.to_dict()
    from activation_hash.fileio import atomic_write_json

    atomic_write_json(out / "categorization.json", d, indent=1, default=_jsonable)
    for k, v in d.items():
        if isinstance(v, float):
            _say(args, f"{k:24s} {v:.4f}")
    return out


SIZE_FACTORS = ("width", "depth")
TIME_FACTORS = ("epochs", "n_train")


def _plots_for(rows: list[dict], factors: list[str], out: Path, th=None) -> list[Path]:
    """Factor plots (other factors at their largest value) and, for a (size x time/samples)
    grid, the phase chart."""
    from activation_hash.experiments.phase import Thresholds, write_phase
    from activation_hash.experiments.plots import factor_figure, save_png

    made = []
    grid = [f for f in factors if f != "seed"]
    for f in grid:
        where = {}
        for g in grid:
            if g != f:
                vals = sorted({r[g] for r in rows}, key=lambda v: (isinstance(v, str), v))
                where[g] = vals[-1]
        desc = ", ".join(f"{k}={v}" for k, v in where.items())
        made.append(save_png(factor_figure(rows, f, where=where,
                                           title=f"vs {f}" + (f" ({desc})" if desc else "")),
                             out / f"factor_{f}.png"))
    ys = [f for f in grid if f in SIZE_FACTORS]
    xs = [f for f in grid if f in TIME_FACTORS]
    if ys and xs and len(grid) == 2:
        made.append(write_phase(rows, out, xs[0], ys[0], th or Thresholds())["png"])
    return made


def _sweep_factors(args) -> dict:
    spec = args.factor
    if isinstance(spec, dict):
        return {k: list(v) for k, v in spec.items()}
    if not spec:
        raise SystemExit("activation-hash sweep: give at least one --factor NAME=V1,V2,... "
                         "(e.g. --factor width=2,4,8,16)")
    out = {}
    for item in spec:
        name, values = _factor(item) if isinstance(item, str) else item
        out[name] = values
    return out


def cmd_sweep(args) -> Path:
    from activation_hash.experiments.report import write_report
    from activation_hash.experiments.sweep import SweepConfig, run_sweep

    out = _out_dir(args, "sweep")
    factors = _sweep_factors(args)
    train_cfg = _train_cfg(args)
    train_cfg.pop("seed")
    cfg = SweepConfig(factors=factors, data=_data_cfg(args), model=_model_cfg(args),
                      train=train_cfg, seeds=_seed_list(args.seeds), k=args.k, probes=args.probes)
    _settings(args, out, sweep=cfg.to_dict())
    try:
        rows = run_sweep(cfg, out, progress=not args.quiet, root=args.data_root, force=args.force)
    except ValueError as e:
        if "torch thread" not in str(e):
            raise
        raise SystemExit(f"activation-hash sweep: {e}") from None
    _plots_for(rows, list(cfg.factors), out, _thresholds(args))
    rep = write_report(out, "activation-hash sweep")
    _say(args, f"{len(rows)} points -> {out / 'results.csv'}; report: {rep}")
    return out


def _seed_list(seeds) -> list[int]:
    if isinstance(seeds, str):
        seeds = _floats(seeds)
    elif isinstance(seeds, int):
        seeds = [seeds]
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise SystemExit(f"activation-hash sweep: --seeds must be comma-separated ints, got {seeds!r}")
    return list(seeds)


def _thresholds(args):
    from activation_hash.experiments.phase import Thresholds

    return Thresholds(r_hi=args.r_hi, r_lo=args.r_lo, acc_eps=args.acc_eps,
                      saturation=args.saturation, redundancy=args.redundancy_col,
                      accuracy=args.accuracy_col)


def cmd_phase_chart(args) -> Path:
    from activation_hash.experiments.phase import write_phase
    from activation_hash.experiments.report import write_report
    from activation_hash.experiments.sweep import load_results

    src = Path(args.results)
    if src.is_file():
        rows = json.loads(src.read_text())["rows"]
    elif src.is_dir():
        rows = load_results(src)
    else:
        raise SystemExit(f"activation-hash phase-chart: {str(src)!r} is neither a sweep directory "
                         f"nor its results.json")
    if not rows:
        raise SystemExit(f"activation-hash phase-chart: no results in {str(src)!r}")
    out = _out_dir(args, "phase")
    _settings(args, out)
    res = write_phase(rows, out, args.x, args.y, _thresholds(args))
    counts = {}
    for c in res["table"]:
        counts[c["regime"]] = counts.get(c["regime"], 0) + 1
    rep = write_report(out, "activation-hash phase chart")
    _say(args, f"regimes {counts}; chart: {res['png']}; table: {res['csv']}; report: {rep}")
    return out


def cmd_report(args) -> Path:
    from activation_hash.experiments.report import write_report

    rep = write_report(args.run_dir, args.title)
    print(rep)
    return Path(args.run_dir)


def cmd_demo(args) -> Path:
    """On digits, a one-hidden-layer MLP (Linear -> BN -> ReLU): a width sweep (all probes), a
    width x training-time grid and a width x sample-size grid (K-NN only), their plots, the
    two phase charts and the HTML report."""
    from activation_hash.experiments.phase import write_phase
    from activation_hash.experiments.plots import factor_figure, save_png
    from activation_hash.experiments.report import write_report
    from activation_hash.experiments.sweep import SweepConfig, run_sweep

    t0 = time.perf_counter()
    out = _out_dir(args, "demo")
    widths = [1, 2, 4, 8, 16, 32, 64]
    epochs = [0, 1, 3, 6, 10, 20]
    model = {"arch": "mlp", "depth": 1, "batch_norm": True}
    train = {"lr": 1e-2, "batch_size": 64, "lr_step": 10, "lr_gamma": 0.3}
    time_cfg = SweepConfig(factors={"width": widths, "epochs": epochs}, data={"name": "digits"},
                           model=model, train=train, seeds=[args.seed], probes="knn")
    width_cfg = SweepConfig(factors={"width": widths}, data={"name": "digits"}, model=model,
                            train=dict(train, epochs=max(epochs)), seeds=[args.seed], probes="all")
    size_cfg = SweepConfig(factors={"width": [2, 8, 32], "n_train": [100, 300, 1348]},
                           data={"name": "digits"}, model=model, train=dict(train, epochs=10),
                           seeds=[args.seed], probes="knn")
    th = _thresholds(args)
    _settings(args, out, width_sweep=width_cfg.to_dict(), time_sweep=time_cfg.to_dict(),
              size_sweep=size_cfg.to_dict())
    _say(args, f"demo: digits, 1-hidden-layer MLP (Linear -> BN -> ReLU); widths {widths} x "
               f"epochs {epochs}, then widths x sample sizes -> {out}")
    last = run_sweep(width_cfg, out / "width", progress=not args.quiet)
    rows = run_sweep(time_cfg, out / "width_x_epochs", progress=not args.quiet)
    size_rows = run_sweep(size_cfg, out / "width_x_samples", progress=not args.quiet)
    save_png(factor_figure(last, "width", title=f"width sweep after {max(epochs)} epochs"),
             out / "1_width.png")
    save_png(factor_figure(rows, "epochs", where={"width": 16}, title="training time, width 16"),
             out / "2_epochs_width16.png")
    ph = write_phase(rows, out, "epochs", "width", th, name="3_phase_width_x_epochs")
    ph2 = write_phase(size_rows, out, "n_train", "width", th, name="4_phase_width_x_samples")
    from activation_hash.fileio import atomic_write_bytes, atomic_write_json

    for sub in ("width", "width_x_epochs", "width_x_samples"):
        atomic_write_bytes(out / f"results_{sub}.csv", (out / sub / "results.csv").read_bytes())
    # the report's results table: the width sweep
    atomic_write_json(out / "results.json", {"rows": last}, indent=None, default=str)
    rep = write_report(out, "activation-hash demo: digits, one-hidden-layer MLP")
    regimes = {}
    for c in ph["table"]:
        regimes[c["regime"]] = regimes.get(c["regime"], 0) + 1
    for r in last:
        _say(args, f"  width {r['width']:3d}: R_train={r['redundancy_train']:.3f} "
                   f"R_test={r['redundancy_test']:.3f} knn={r.get('knn_test', float('nan')):.3f} "
                   f"net={r['acc_test']:.3f}")
    _say(args, f"phase chart (width x epochs) regimes: {regimes}; {ph['png']}, {ph2['png']}")
    print(f"report: {rep.resolve()}  ({time.perf_counter() - t0:.0f} s)")
    return out


# ---- parser ---------------------------------------------------------------------------------

def _phase_opts(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("phase-chart regimes (see activation_hash.experiments.phase)")
    g.add_argument("--r-hi", type=float, default=0.1,
                   help="under-expressive when redundancy R >= r_hi (default 0.1)")
    g.add_argument("--r-lo", type=float, default=0.01,
                   help="sufficiently-expressive needs R <= r_lo (default 0.01) ...")
    g.add_argument("--acc-eps", type=float, default=0.02,
                   help="... and accuracy >= saturated accuracy - acc_eps (default 0.02); "
                        "otherwise critically-expressive")
    g.add_argument("--saturation", choices=["global", "row", "column"], default="global",
                   help="saturated accuracy = max over the chart / the model-size row / the column")
    g.add_argument("--redundancy-col", default="redundancy_train", help="redundancy column")
    g.add_argument("--accuracy-col", default="knn_test", help="accuracy column (e.g. acc_test)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="activation-hash",
        description="ReLU networks as hash encoders: train, extract neural codes, count "
                    "collisions, categorize, sweep factors, draw the phase chart, report.")
    from activation_hash import __version__

    p.add_argument("--version", action="version", version=f"activation-hash {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("demo", help="width and training-time sweeps on digits, phase chart, report",
                       description=cmd_demo.__doc__)
    _common(s)
    s.add_argument("--seed", type=int, default=0)
    _phase_opts(s)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("train", help="train one model; saves model.pt, history, metrics, plot")
    _common(s)
    _data_opts(s)
    _model_opts(s)
    _train_opts(s)
    s.add_argument("--save-checkpoints", choices=["none", "paper", "log"], default="none",
                   help="save weights at epochs {0,1,3,6,10,20,...} (paper) or log-spaced ones")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("extract", help="neural codes of a trained model on its train/test data")
    _common(s)
    s.add_argument("--model", required=True, metavar="PATH", help="a train run directory or its model.pt")
    s.add_argument("--data-root", metavar="DIR")
    s.add_argument("--layers", help="comma-separated layer names to keep (default all)")
    s.add_argument("--trained-only", action=argparse.BooleanOptionalAction, default=True,
                   help="training codes of the samples trained on (not the validation split)")
    s.set_defaults(func=cmd_extract)

    s = sub.add_parser("collisions", help="redundancy ratio and region occupancy of saved codes")
    _common(s)
    s.add_argument("codes", nargs="+", help="code files written by `extract` (e.g. RUN/train.codes)")
    s.add_argument("--per-layer", action="store_true", help="also the redundancy of each layer")
    s.add_argument("--top", type=int, default=10, help="largest groups to list")
    s.set_defaults(func=cmd_collisions)

    s = sub.add_parser("categorize", help="K-NN / K-Means / logistic regression on saved codes")
    _common(s)
    s.add_argument("--train", required=True, help="training codes (with labels)")
    s.add_argument("--test", required=True, help="test codes (with labels)")
    s.add_argument("--k", type=int, default=9, help="K-NN neighbours (default 9)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_categorize)

    s = sub.add_parser("sweep", help="sweep factors; CSV/JSON results, plots, phase chart, report",
                       description="Grid over --factor NAME=V1,V2 (repeatable): width, depth, "
                                   "epochs (checkpoints of one run), n_train, weight_decay, "
                                   "dropout, batch_norm, label_noise, lr, seed. Resumes: rerun "
                                   "with the same --out to skip finished points.")
    _common(s)
    s.add_argument("--factor", action="append", metavar="NAME=V1,V2,...",
                   help="a factor and its values (repeat for a grid)")
    s.add_argument("--seeds", default="0", help="comma-separated seeds repeated at every point")
    s.add_argument("--k", type=int, default=9, help="K-NN neighbours")
    s.add_argument("--probes", choices=["all", "knn", "none"], default="all",
                   help="all: K-NN, K-Means, logistic regression; knn: K-NN only; none")
    s.add_argument("--force", action="store_true",
                   help="resume even if --threads differs from the count the sweep was run with "
                        "(recorded in sweep.json; results depend on it)")
    _data_opts(s)
    _model_opts(s)
    _train_opts(s)
    _phase_opts(s)
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("phase-chart", help="label (size x time/samples) cells; PNG + CSV")
    _common(s)
    s.add_argument("results", help="a sweep directory or its results.json")
    s.add_argument("--x", default="epochs", help="x column: epochs or n_train (default epochs)")
    s.add_argument("--y", default="width", help="y column: width or depth (default width)")
    _phase_opts(s)
    s.set_defaults(func=cmd_phase_chart)

    s = sub.add_parser("report", help="write report.html for a run directory")
    s.add_argument("run_dir", help="run directory")
    s.add_argument("--title", default=None)
    s.add_argument("--config", metavar="FILE", help=argparse.SUPPRESS)
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        try:
            cfg = _load_config(args.config)
        except ValueError as e:
            raise SystemExit(f"activation-hash {args.command}: {e}") from None
        sub = parser._subparsers._group_actions[0].choices[args.command]
        dests = {a.dest for a in sub._actions}
        unknown = sorted(set(cfg) - dests)
        if unknown:
            raise SystemExit(f"activation-hash {args.command}: unknown option(s) {unknown} in "
                             f"{args.config}; known: {sorted(dests - {'help', 'config'})}")
        sub.set_defaults(**cfg)
        args = parser.parse_args(argv)  # flags on the command line override the file
    _threads(args)
    args.func(args)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
