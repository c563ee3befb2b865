"""Datasets of the experiments, as in-memory tensors.

- ``digits``: scikit-learn's 8x8 digits (embedded, the default), a fixed stratified 75/25 split.
- ``mnist`` / ``fashion-mnist``: the four IDX files (raw or ``.gz``; named
  ``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``) from a directory you give.
- ``cifar10``: the python batches (read by a restricted unpickler) or the binary batches.
- ``moons`` / ``circles`` / ``spirals``: synthetic 2-D sets; ``random``: Gaussian inputs with
  random labels.

Every loader returns a :class:`DataSplit` (images ``[N, C, H, W]``, vectors ``[N, D]``, float32,
standardized with statistics of the training part; labels int64). :func:`stratified_subset` and
:func:`add_label_noise` give the seeded subsets and the exact-rate label noise of the sweeps.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from activation_hash.experiments.readers import (RefusedPickleError, check_labels,
                                                 load_cifar_batch, read_idx)
from activation_hash.validation import check_float, check_int

__all__ = ["DataSplit", "DATASETS", "RefusedPickleError", "load_dataset", "read_idx",
           "load_cifar_batch", "stratified_subset", "add_label_noise", "stratified_split", "data_root", "idx_names"]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "moons", "circles", "spirals", "random")


@dataclass
class DataSplit:
    """A dataset's train and test parts.

    Attributes:
        x_train: float32 ``[N, *input_shape]``; y_train: int64 ``[N]`` (possibly noisy labels).
        x_test, y_test: the same for the test part (labels never noised).
        n_classes: number of classes; meta: provenance (``dataset``, ``seed``, ``n_train``,
            ``n_test``, ``label_noise`` requested / ``noise_rate_true`` applied, ...).
        y_train_clean: the training labels before label noise (None without noise).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    meta: dict = field(default_factory=dict)
    y_train_clean: torch.Tensor | None = None  # the labels before label noise (if any)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (f"DataSplit({self.name!r}, train={tuple(self.x_train.shape)}, "
                f"test={tuple(self.x_test.shape)}, n_classes={self.n_classes})")


def data_root(root: str | os.PathLike | None) -> Path:
    """The directory searched for downloaded datasets: ``root``, else ``$ACTIVATION_HASH_DATA``,
    else ``./data``."""
    if root is None:
        root = os.environ.get("ACTIVATION_HASH_DATA", "data")
    return Path(root).expanduser()


# ---- splitting, subsets, noise ---------------------------------------------------------------

def _allocate(counts: np.ndarray, n: int) -> np.ndarray:
    """Per-class sample counts summing to n, proportional to counts (largest remainder)."""
    total = counts.sum()
    exact = counts * (n / total)
    take = np.floor(exact).astype(np.int64)
    rest = n - take.sum()
    order = np.argsort(-(exact - take), kind="stable")
    take[order[:rest]] += 1
    return np.minimum(take, counts)


def stratified_subset(labels, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` samples drawn without replacement, class proportions kept, seeded.

    Returns int64 ``[n]`` in a seeded random order. ``n`` may equal ``len(labels)``.
    """
    y = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
    seed = check_int(seed, "seed")
    n = check_int(n, "subset size", min=1, max=len(y))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    take = _allocate(counts, int(n))
    short = int(n) - take.sum()  # only when a class is exhausted
    picked = []
    for c, k in zip(classes, take):
        idx = np.flatnonzero(y == c)
        picked.append(rng.choice(idx, size=k, replace=False))
    out = np.concatenate(picked)
    if short:
        left = np.setdiff1d(np.arange(len(y)), out)
        out = np.concatenate([out, rng.choice(left, size=short, replace=False)])
    return torch.from_numpy(rng.permutation(out))


def stratified_split(labels, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stratified split: ``(keep_idx, held_idx)`` with about ``fraction`` of each class
    held out (at least one sample held when ``fraction > 0``)."""
    y = torch.as_tensor(labels)
    fraction = check_float(fraction, "split fraction", min=0.0, max=1.0, max_open=True)
    n_held = int(round(float(fraction) * len(y)))
    if fraction > 0:
        n_held = max(1, n_held)
    if n_held == 0:
        return torch.arange(len(y)), torch.zeros(0, dtype=torch.int64)
    held = stratified_subset(y, n_held, seed)
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[held] = False
    return mask.nonzero().flatten(), held.sort().values


def add_label_noise(labels, rate: float, n_classes: int, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Symmetric label noise at an exact rate.

    Exactly ``round(rate * N)`` labels, chosen uniformly without replacement (seeded), are each
    replaced by a different class drawn uniformly among the ``n_classes - 1`` others.

    Returns ``(noisy int64 [N], info)`` with info ``{"rate": asked, "true_rate": changed / N,
    "n_changed": changed, "changed": bool [N] mask}``.
    """
    y = torch.as_tensor(labels, dtype=torch.int64).clone()
    seed = check_int(seed, "seed")
    rate = check_float(rate, "label noise rate", min=0.0, max=1.0)
    if n_classes < 2 and rate > 0:
        raise ValueError(f"label noise needs at least 2 classes, got n_classes={n_classes}")
    n = len(y)
    m = int(round(rate * n))
    g = torch.Generator().manual_seed(seed)
    which = torch.randperm(n, generator=g)[:m]
    shift = torch.randint(1, max(n_classes, 2), (m,), generator=g)
    y[which] = (y[which] + shift) % n_classes
    changed = torch.zeros(n, dtype=torch.bool)
    changed[which] = True
    return y, {"rate": float(rate), "true_rate": (m / n) if n else 0.0, "n_changed": m,
               "changed": changed}


def _standardize(x_train: torch.Tensor, x_test: torch.Tensor, per_channel: bool = False):
    if per_channel and x_train.dim() == 4:
        mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
        std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    else:
        mean, std = x_train.mean(), x_train.std().clamp_min(1e-8)
    return (x_train - mean) / std, (x_test - mean) / std


# ---- digits ---------------------------------------------------------------------------------

DIGITS_SPLIT_SEED = 1234  # fixed: the digits train/test split never depends on a run's seed


def load_digits(test_fraction: float = 0.25) -> DataSplit:
    """scikit-learn's 1797 8x8 digits as ``[N, 1, 8, 8]``, pixels/16 then standardized.

    The split is stratified with a fixed seed (1348 train, 449 test by default).
    """
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    tr, te = stratified_split(y, test_fraction, DIGITS_SPLIT_SEED)
    xtr, xte = _standardize(x[tr], x[te])
    return DataSplit("digits", xtr, y[tr], xte, y[te], 10)


# ---- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------------

IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def idx_names(stem: str) -> list[str]:
    """The file names an IDX file goes by: ``train-images-idx3-ubyte`` (the distributed name),
    ``train-images.idx3-ubyte`` (a common renaming), each raw or ``.gz``."""
    dotted = stem.replace("-idx", ".idx")
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


def _find(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in idx_names(stem):
            if (d / name).is_file():
                return d / name
    return None


def load_idx_dataset(name: str, root=None) -> DataSplit:
    """MNIST or Fashion-MNIST from ``root`` (or ``root/<name>``, ``root/<name>/raw``)."""
    base = data_root(root)
    sub = {"mnist": ["mnist", "MNIST"], "fashion-mnist": ["fashion-mnist", "FashionMNIST"]}[name]
    dirs = [base] + [base / s for s in sub] + [base / s / "raw" for s in sub]
    found = {k: _find(dirs, stem) for k, stem in IDX_FILES.items()}
    missing = [IDX_FILES[k] for k, p in found.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"{name}: missing IDX file(s) {missing} (raw or .gz; '-idx' or '.idx' before the "
            f"type, e.g. train-images.idx3-ubyte). Expected the four files "
            f"{list(IDX_FILES.values())} in one of: {[str(d) for d in dirs]}. "
            f"Pass --data-root DIR or set ACTIVATION_HASH_DATA.")
    arrays = {k: read_idx(p) for k, p in found.items()}
    for part in ("train", "test"):
        xi, yi = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if xi.ndim != 3 or yi.ndim != 1 or len(xi) != len(yi):
            raise ValueError(f"{name} {part}: images {xi.shape} and labels {yi.shape} do not match "
                             f"(expected [N, H, W] and [N])")
        check_labels(yi, 10, found[f"{part}_labels"])
    xtr = torch.tensor(arrays["train_images"], dtype=torch.float32).unsqueeze(1) / 255.0
    xte = torch.tensor(arrays["test_images"], dtype=torch.float32).unsqueeze(1) / 255.0
    xtr, xte = _standardize(xtr, xte)
    ytr = torch.tensor(arrays["train_labels"], dtype=torch.int64)
    yte = torch.tensor(arrays["test_labels"], dtype=torch.int64)
    return DataSplit(name, xtr, ytr, xte, yte, 10, {"files": {k: str(p) for k, p in found.items()}})


CIFAR_PY = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]


def load_cifar10(root=None) -> DataSplit:
    """CIFAR-10 from ``cifar-10-batches-py`` (python) or ``cifar-10-batches-bin`` (binary)."""
    base = data_root(root)
    tried = []
    for d, suffix in [(base / "cifar-10-batches-py", ""), (base, ""),
                      (base / "cifar-10-batches-bin", ".bin"), (base, ".bin")]:
        files = [d / (f + suffix) for f in CIFAR_PY]
        tried.append(str(d) + (" (binary .bin)" if suffix else " (python)"))
        if all(f.is_file() for f in files):
            parts = [load_cifar_batch(f) for f in files]
            xtr = np.concatenate([p[0] for p in parts[:5]])
            ytr = np.concatenate([p[1] for p in parts[:5]])
            xte, yte = parts[5]
            xtr_t = torch.tensor(xtr, dtype=torch.float32) / 255.0
            xte_t = torch.tensor(xte, dtype=torch.float32) / 255.0
            xtr_t, xte_t = _standardize(xtr_t, xte_t, per_channel=True)
            return DataSplit("cifar10", xtr_t, torch.from_numpy(ytr), xte_t,
                             torch.from_numpy(np.ascontiguousarray(yte)), 10,
                             {"dir": str(d), "format": "binary" if suffix else "python"})
    raise FileNotFoundError(
        f"cifar10: expected the python batches {CIFAR_PY} or the binary ones "
        f"{[f + '.bin' for f in CIFAR_PY]} in one of: {tried}. "
        f"Pass --data-root DIR or set ACTIVATION_HASH_DATA.")


# ---- synthetic ------------------------------------------------------------------------------

def _synthetic(name: str, n: int, jitter: float, seed: int, n_classes: int = 2, dim: int = 2):
    rng = np.random.default_rng(seed)
    if name == "moons":
        from sklearn.datasets import make_moons
        x, y = make_moons(n, noise=jitter, random_state=seed)
    elif name == "circles":
        from sklearn.datasets import make_circles
        x, y = make_circles(n, noise=jitter, factor=0.5, random_state=seed)
    elif name == "spirals":
        y = np.arange(n) % n_classes
        t = rng.uniform(0.25, 1.0, n)
        angle = 3.0 * np.pi * t + 2.0 * np.pi * y / n_classes
        x = np.stack([t * np.cos(angle), t * np.sin(angle)], 1) + rng.normal(0, jitter, (n, 2))
    elif name == "random":
        x = rng.normal(size=(n, dim))
        y = rng.integers(0, n_classes, n)
    else:
        raise ValueError(name)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


# ---- entry point ----------------------------------------------------------------------------

def load_dataset(name: str = "digits", *, root=None, n_train: int | None = None,
                 n_test: int | None = None, label_noise: float = 0.0, seed: int = 0,
                 n_samples: int = 1000, jitter: float = 0.1, n_classes: int | None = None,
                 dim: int = 2) -> DataSplit:
    """Load a dataset by name (one of :data:`DATASETS`).

    Args:
        root: directory of downloaded files (mnist, fashion-mnist, cifar10).
        n_train / n_test: seeded stratified subsets of that size (None: all).
        label_noise: exact rate of symmetric noise on the training labels (see
            :func:`add_label_noise`); ``meta["label_noise"]`` records the requested rate,
            ``meta["noise_rate_true"]`` the rate applied (changed labels / N) and
            ``meta["n_noisy"]`` the number of changed labels.
        seed: seed of subsets and label noise (and of the synthetic data).
        n_samples, jitter, n_classes, dim: size / standard deviation of the Gaussian jitter
            added to the points (moons, circles, spirals; ``meta["jitter"]``; it is not label
            noise) / classes / dimension of the synthetic sets (``random``: ``dim``-D Gaussian
            inputs, ``n_classes`` random labels); 25% test.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")
    seed = check_int(seed, "seed")
    if name == "digits":
        data = load_digits()
    elif name in ("mnist", "fashion-mnist"):
        data = load_idx_dataset(name, root)
    elif name == "cifar10":
        data = load_cifar10(root)
    else:
        k = n_classes or (10 if name == "random" else 2)
        x, y = _synthetic(name, int(n_samples), float(jitter), seed, k, int(dim))
        tr, te = stratified_split(y, 0.25, seed) if name != "random" else (
            torch.arange(int(n_samples * 0.75)), torch.arange(int(n_samples * 0.75), n_samples))
        xtr, xte = x[tr], x[te]
        if name != "random":
            xtr, xte = _standardize(xtr, xte)
        data = DataSplit(name, xtr, y[tr], xte, y[te], k,
                         {"n_samples": int(n_samples), "jitter": float(jitter)})
    meta = dict(data.meta, dataset=name, seed=seed)
    if n_train is not None and n_train != len(data.y_train):
        idx = stratified_subset(data.y_train, n_train, seed)
        data = replace(data, x_train=data.x_train[idx], y_train=data.y_train[idx])
    if n_test is not None and n_test != len(data.y_test):
        idx = stratified_subset(data.y_test, n_test, seed + 1)
        data = replace(data, x_test=data.x_test[idx], y_test=data.y_test[idx])
    meta["n_train"], meta["n_test"] = len(data.y_train), len(data.y_test)
    meta["label_noise"], meta["noise_rate_true"] = float(label_noise), 0.0
    if label_noise:
        noisy, info = add_label_noise(data.y_train, label_noise, data.n_classes, seed)
        meta["noise_rate_true"] = info["true_rate"]
        meta["n_noisy"] = info["n_changed"]
        data = replace(data, y_train=noisy, y_train_clean=data.y_train)
    data.meta = meta
    return data
