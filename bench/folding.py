"""Exact space folding of digit pairs, against the sampled estimates it replaces.

MLP 64-64-64-64 (digits input, three hidden ReLU layers of 64, 10 outputs), trained for a few
epochs on scikit-learn's digits; 1000 random test pairs (100 with --quick):
  exact         our exact walk (every linear piece of every path), chi per path
  sampled_11    11 equally spaced points per path (what the ESANN 2023 code used)
  sampled_dense 1001 equally spaced points per path (a careful sampler)
Ratios: each sampler's time / the exact walk's (keys ``sampled_11``, ``sampled_dense``).
Errors of each sampler against the exact chi: mean and max absolute error, and the fraction
of paths whose folding it gets wrong by more than 1e-9. The exact walk's pieces are checked
against the dense sampler's patterns first: every pattern a sample meets is one the walk
found on that path (a sampler can miss pieces, never add them).
"""
import copy

import torch

from activation_hash import record
from activation_hash.experiments.datasets import load_dataset
from activation_hash.experiments.models import MLP
from activation_hash.experiments.training import TrainConfig, train
from activation_hash.folding import folding
from activation_hash.regions import segment_regions
from common import cpu_only, median, parse_args, timeit_interleaved, write_json


def trained_mlp(split, epochs: int):
    torch.manual_seed(0)
    net = MLP(split.input_shape, split.n_classes, width=64, depth=3)
    train(net, split, TrainConfig(epochs=epochs, batch_size=64, lr=1e-3), progress=False)
    return net.eval()


def check_exact_covers_samples(net, x0, x1, n: int = 8) -> None:
    """Every pattern that 1001 dense samples meet on a path is a pattern of the exact walk on
    that path (the first ``n`` paths)."""
    walk = segment_regions(net, x0[:n], x1[:n])
    wm = copy.deepcopy(net).double()
    ts = torch.linspace(0, 1, 1001, dtype=torch.float64).view(-1, *[1] * (x0.dim() - 1))
    for i in range(n):
        pts = x0[i:i + 1].double() + ts * (x1[i:i + 1] - x0[i:i + 1]).double()
        with record(wm) as rec, torch.no_grad():
            wm(pts)
        seen = {tuple(r) for r in rec.codes.tolist()}
        walked = {tuple(r) for r in walk.segment(i).codes.tolist()}
        assert seen <= walked, f"path {i}: dense samples met a pattern the exact walk missed"


def main():
    args = parse_args(__doc__.splitlines()[0])
    cpu_only(args, "folding", "the exact walk is measured against CPU samplers")
    n_pairs = 100 if args.quick else 1000
    split = load_dataset("digits", seed=0)
    net = trained_mlp(split, epochs=10 if args.quick else 30)
    g = torch.Generator().manual_seed(1)
    X = split.x_test
    i = torch.randint(X.shape[0], (n_pairs,), generator=g)
    j = torch.randint(X.shape[0], (n_pairs,), generator=g)
    keep = i != j
    x0, x1 = X[i[keep]], X[j[keep]]
    n_pairs = int(x0.shape[0])
    with torch.no_grad():
        acc = float((net(X).argmax(1) == split.y_test).double().mean())

    runs = {
        "exact": lambda: folding(net, x0, x1, method="exact"),
        "sampled_11": lambda: folding(net, x0, x1, method="sampled", steps=11),
        "sampled_dense": lambda: folding(net, x0, x1, method="sampled", steps=1001),
    }
    out = {k: f() for k, f in runs.items()}
    check_exact_covers_samples(net, x0, x1)
    times = timeit_interleaved(runs, repeat=3 if args.quick else 5, warmup=0)
    t = {k: median(v) for k, v in times.items()}
    exact = out["exact"].chi
    results, ratios = [], {}
    for k in runs:
        err = (out[k].chi - exact).abs()
        row = {"label": f"{k}, {n_pairs} digit pairs, MLP 64-64-64-64", "seconds": t[k],
               "pairs_per_second": n_pairs / t[k], "chi_mean": float(out[k].chi.mean()),
               "patterns_per_path_mean": float(out[k].n_patterns.double().mean())}
        if k != "exact":
            row.update(abs_error_mean=float(err.mean()), abs_error_max=float(err.max()),
                       frac_paths_wrong=float((err > 1e-9).double().mean()))
            ratios[k] = t[k] / t["exact"]
        results.append(row)
        print(f"{k:14s} {t[k]:8.3f} s  chi mean {row['chi_mean']:.4f}  patterns/path "
              f"{row['patterns_per_path_mean']:.1f}" +
              (f"  |err| mean {row['abs_error_mean']:.4f} max {row['abs_error_max']:.4f} "
               f"wrong {row['frac_paths_wrong']:.2f}" if k != "exact" else ""))
    for k, v in ratios.items():
        print(f"ratio {k:30s} {v:6.2f}")
    write_json(args.json, "folding", {"quick": args.quick, "pairs": n_pairs,
                                      "test_accuracy": acc}, results, ratios)


if __name__ == "__main__":
    main()
