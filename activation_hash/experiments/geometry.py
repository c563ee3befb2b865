"""The geometry commands (``activation-hash regions`` / ``folding``) and their plots.

- :func:`run_regions`: exact linear regions crossed by segments between random test pairs of a
  trained model (``model=`` a ``train`` run) or of an architecture at initialization
  (``arch=``): ``regions.json`` and ``regions_per_segment.png``.
- :func:`run_folding`: exact folding of intra- and inter-class paths: ``folding.json``,
  ``folding_hist.png`` (intra vs inter) and ``folding_depth.png`` (mean folding of the code up
  to each layer).
- :func:`depth_folding_figure`: folding vs depth next to the network's test accuracy, from the
  rows of a depth sweep with the ``folding`` measure (the demo draws it).
"""
from __future__ import annotations

from typing import Callable

import torch

from activation_hash.fileio import atomic_write_json
from activation_hash.validation import check_int

__all__ = ["run_regions", "run_folding", "depth_folding_figure", "model_and_data"]

Say = Callable[[str], None] | None


def model_and_data(model=None, *, arch: dict | None = None, data: dict | None = None,
                   data_root=None, seed: int = 0):
    """``(model in eval mode, dataset, description)``: a trained model (a ``train`` run
    directory or its ``model.pt``, with the data it was trained on), or ``arch`` (a
    :func:`~activation_hash.experiments.models.build_model` spec) at initialization on
    ``data`` (default digits)."""
    from activation_hash.experiments.models import build_model
    from activation_hash.experiments.runs import load_data, load_trained

    seed = check_int(seed, "seed")
    if (model is None) == (arch is None):
        raise ValueError("give either a trained model (model=) or an architecture (arch=)")
    if model is not None:
        net, ck = load_trained(model)
        return net, load_data(ck["data"], data_root, ck["seed"]), f"trained model {model}"
    ds = load_data(data or {"name": "digits"}, data_root, seed)
    torch.manual_seed(seed)
    net = build_model(arch, ds.x_train.shape[1:], ds.n_classes).eval()
    return net, ds, f"{arch} at initialization (seed {seed})"


def _pairs(n_test: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(n_test, (n,), generator=g)
    j = (i + 1 + torch.randint(n_test - 1, (n,), generator=g)) % n_test
    return torch.stack([i, j], 1)


def run_regions(out, model=None, *, arch=None, data=None, data_root=None, n_pairs: int = 32,
                seed: int = 0, settings: dict | None = None, say: Say = None) -> dict:
    """Linear regions between ``n_pairs`` random test pairs -> ``out/regions.json`` and
    ``out/regions_per_segment.png``. Returns the JSON dict."""
    from activation_hash.experiments.plots import save_png
    from activation_hash.experiments.runs import new_run_dir, write_settings
    from activation_hash.regions import segment_regions

    n_pairs = check_int(n_pairs, "n_pairs", min=1)
    net, ds, what = model_and_data(model, arch=arch, data=data, data_root=data_root, seed=seed)
    out = new_run_dir("regions", out)
    write_settings(out, settings, model=what, n_pairs=n_pairs, seed=seed)
    pairs = _pairs(ds.x_test.shape[0], n_pairs, seed)
    r = segment_regions(net, ds.x_test[pairs[:, 0]], ds.x_test[pairs[:, 1]])
    counts = r.counts.double()
    res = {"model": what, "method": r.method, "n_pairs": n_pairs, "pairs": pairs.tolist(),
           "pieces": r.counts.tolist(), "distinct_codes": r.n_distinct.tolist(),
           "pieces_mean": float(counts.mean()), "pieces_median": float(counts.median()),
           "layers": list(r.codes.layout.names)}
    atomic_write_json(out / "regions.json", res, indent=1)
    fig = _hist_figure([r.counts.tolist()], ["segments"], "linear pieces per segment",
                       f"regions crossed between test pairs: {what}")
    save_png(fig, out / "regions_per_segment.png")
    (say or (lambda s: None))(f"{n_pairs} segments: {res['pieces_mean']:.1f} pieces on average "
                              f"(median {res['pieces_median']:.0f}, {r.method}) -> {out}")
    return res


def run_folding(out, model=None, *, arch=None, data=None, data_root=None, n_pairs: int = 64,
                seed: int = 0, settings: dict | None = None, say: Say = None) -> dict:
    """Exact folding of ``n_pairs`` intra- and ``n_pairs`` inter-class test paths ->
    ``out/folding.json``, ``folding_hist.png``, ``folding_depth.png``. Returns the JSON dict."""
    from activation_hash.experiments.plots import save_png
    from activation_hash.experiments.runs import new_run_dir, write_settings
    from activation_hash.folding import folding_pairs

    n_pairs = check_int(n_pairs, "n_pairs", min=1)
    net, ds, what = model_and_data(model, arch=arch, data=data, data_root=data_root, seed=seed)
    out = new_run_dir("folding", out)
    write_settings(out, settings, model=what, n_pairs=n_pairs, seed=seed)
    reps = {mode: folding_pairs(net, ds.x_test, ds.y_test, mode=mode, n_pairs=n_pairs,
                                seed=seed) for mode in ("intra", "inter")}
    res = {"model": what, **{mode: rep.to_dict() for mode, rep in reps.items()},
           "layers": list(reps["intra"].folding.layers)}
    atomic_write_json(out / "folding.json", res, indent=1, default=str)
    save_png(_hist_figure([reps[m].folding.chi.tolist() for m in reps], list(reps),
                          "folding chi", f"space folding of test paths: {what}"),
             out / "folding_hist.png")
    save_png(_depth_figure({m: reps[m].folding.per_layer.mean(0).tolist() for m in reps},
                           res["layers"], what), out / "folding_depth.png")
    for mode, rep in reps.items():
        (say or (lambda s: None))(f"{mode}-class: mean {rep.mean:.4f} median {rep.median:.4f} "
                                  f"max {rep.max:.4f} non-zero {rep.frac_nonzero:.2f} "
                                  f"TMLR aggregate {rep.tmlr_aggregate:.4f}")
    return res


def _hist_figure(series, labels, xlabel, title):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    for values, label in zip(series, labels):
        ax.hist(values, bins=20, alpha=0.6, label=f"{label} (n={len(values)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("paths")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    return fig


def _depth_figure(per_mode: dict, layers, title):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    for mode, values in per_mode.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=f"{mode}-class")
    ax.set_xticks(range(1, len(layers) + 1), layers, fontsize=7)
    ax.set_xlabel("code up to layer")
    ax.set_ylabel("mean folding chi")
    ax.set_title(f"folding vs depth: {title}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    return fig


def depth_folding_figure(rows: list[dict], title: str = "folding vs depth"):
    """Mean folding (over seeds) and the network's test accuracy vs ``depth`` from sweep rows
    with the ``folding`` and ``accuracy`` measures."""
    from matplotlib.figure import Figure

    depths = sorted({int(r["depth"]) for r in rows})

    def mean(col, d):
        vals = [float(r[col]) for r in rows if int(r["depth"]) == d and r.get(col) not in
                (None, "")]
        return sum(vals) / len(vals) if vals else float("nan")
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    ax.plot(depths, [mean("folding_mean", d) for d in depths], marker="o", label="folding (mean)")
    ax.plot(depths, [mean("folding_max", d) for d in depths], marker="^", label="folding (max)")
    ax.set_xlabel("depth (hidden layers)")
    ax.set_ylabel("folding chi")
    ax2 = ax.twinx()
    ax2.plot(depths, [mean("acc_test", d) for d in depths], color="k", ls="--", marker="s",
             label="test accuracy")
    ax2.set_ylabel("network test accuracy")
    ax.set_title(title, fontsize=9)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="best")
    fig.tight_layout()
    return fig
