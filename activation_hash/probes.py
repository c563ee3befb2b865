"""Categorization probes: how well simple learners classify from the codes alone.

``train`` / ``test`` are CodeBooks with labels (anything with ``.codes`` and ``.labels``) or
``(codes int64 [N, W], labels int [N])`` tuples.

- :func:`knn_accuracy`: K-NN with the Hamming distance, majority vote;
- :func:`kmeans_accuracy`: K-Means on the bits (0/1 floats), scored by cluster purity and by
  the Hungarian one-to-one matching of clusters to classes;
- :func:`logreg_accuracy`: L2 logistic regression (C = 1) on the bits, one-vs-one,
  one-vs-rest or multinomial;
- :func:`categorize`: all three on train and test -> :class:`CategorizationReport`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from activation_hash import ops
from activation_hash.hamming import as_codes, hamming_topk

__all__ = ["CategorizationReport", "categorize", "kmeans_accuracy", "knn_accuracy",
           "knn_predict", "logreg_accuracy"]

_BITS_CHUNK = 1 << 16  # rows unpacked to floats at a time


def _labelled(x: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    codes, labels = as_codes(x, name)
    if labels is None:
        raise ValueError(f"{name} has no labels: pass a CodeBook with labels or a "
                         "(codes, labels) tuple")
    return codes, labels


def _bits(codes: torch.Tensor) -> np.ndarray:
    """float32 0/1 ``[N, 64 W]`` (padding bits included: constant 0, they change nothing)."""
    c = codes.detach().cpu()
    return ops.unpack_bits(c, 64 * c.shape[1]).to(torch.float32).numpy()


# ---- K-NN ------------------------------------------------------------------------------------

def knn_predict(train, queries, k: int = 9, *, backend: str = "ours",
                chunk: int = 8192, progress: bool = False) -> torch.Tensor:
    """Majority vote of the k nearest training codes (Hamming) of each query -> int64 ``[Q]``.

    Neighbours: ``backend="ours"`` (:func:`hamming_topk`, equal distances -> lower training
    index) or ``"faiss"`` (IndexBinaryFlat; FAISS orders ties its own way). Vote ties go to the
    lowest class label (as scikit-learn's KNeighborsClassifier). Queries run ``chunk`` at a
    time (``progress``: a bar over the chunks).
    """
    tc, tl = _labelled(train, "train")
    qc, _ = as_codes(queries, "queries")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= tc.shape[0]:
        raise ValueError(f"k must be an int in [1, {tc.shape[0]}] (training samples), got {k!r}")
    if backend not in ("ours", "faiss"):
        raise ValueError(f"backend must be 'ours' or 'faiss', got {backend!r}")
    classes, tl_idx = torch.unique(tl.cpu(), sorted=True, return_inverse=True)
    if backend == "faiss":
        from activation_hash.index import CodeIndex

        index = CodeIndex("flat", device="cpu").add(tc)
    preds = []
    starts = range(0, qc.shape[0], chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"knn k={k}", unit="chunk", leave=False)
    for s in starts:
        q = qc[s:s + chunk]
        if backend == "ours":
            _, idx = hamming_topk(q.to(tc.device), tc, k)
        else:
            _, idx = index.search(q, k)
        votes = torch.zeros(q.shape[0], classes.numel(), dtype=torch.int64)
        votes.scatter_add_(1, tl_idx[idx.cpu()], torch.ones(idx.shape, dtype=torch.int64))
        preds.append(classes[votes.argmax(1)])  # first maximum: the lowest label
    if not preds:
        return torch.empty(0, dtype=torch.int64)
    return torch.cat(preds)


def knn_accuracy(train, test, k: int = 9, *, backend: str = "ours",
                 progress: bool = False) -> float:
    """Fraction of test codes whose K-NN vote (see :func:`knn_predict`) is their label. With
    ``test`` = ``train``, each sample is its own nearest neighbour (as scikit-learn's
    ``score(X_train, y_train)``)."""
    _, yl = _labelled(test, "test")
    if yl.numel() == 0:
        raise ValueError("test is empty")
    pred = knn_predict(train, test, k, backend=backend, progress=progress)
    return float((pred == yl.cpu()).double().mean())


# ---- K-Means ---------------------------------------------------------------------------------

def _kmeans_assign(codes: torch.Tensor, n_clusters: int, seed: int, backend: str,
                   niter: int) -> np.ndarray:
    n = codes.shape[0]
    if backend == "faiss":
        import faiss

        # FAISS samples max_points_per_centroid (256) points per centroid for training: only
        # that sample is unpacked to floats; assignment then runs chunk by chunk.
        rng = np.random.default_rng(seed)
        n_train = min(n, 256 * n_clusters)
        sample = np.sort(rng.choice(n, n_train, replace=False)) if n_train < n else np.arange(n)
        x = _bits(codes[torch.from_numpy(sample)])
        km = faiss.Kmeans(x.shape[1], n_clusters, niter=niter, seed=seed, verbose=False,
                          max_points_per_centroid=256)
        km.train(x)
        assign = np.empty(n, dtype=np.int64)
        for s in range(0, n, _BITS_CHUNK):
            _, a = km.index.search(_bits(codes[s:s + _BITS_CHUNK]), 1)
            assign[s:s + _BITS_CHUNK] = a[:, 0]
        return assign
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=n_clusters, random_state=seed, n_init=1,
                  max_iter=max(niter, 1)).fit_predict(_bits(codes)).astype(np.int64)


def cluster_scores(assign: np.ndarray, labels: np.ndarray) -> dict:
    """Purity (each cluster mapped to its majority class) and Hungarian accuracy (one-to-one
    map of clusters to classes maximizing the matches) of a clustering."""
    from scipy.optimize import linear_sum_assignment

    assign, labels = np.asarray(assign), np.asarray(labels)
    for name, a in (("assign", assign), ("labels", labels)):
        if a.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
    _, cl = np.unique(assign, return_inverse=True)
    _, lab = np.unique(labels, return_inverse=True)
    table = np.zeros((cl.max() + 1, lab.max() + 1), dtype=np.int64)
    np.add.at(table, (cl, lab), 1)
    rows, cols = linear_sum_assignment(-table)
    n = len(labels)
    return {"purity": float(table.max(1).sum() / n),
            "hungarian": float(table[rows, cols].sum() / n)}


def kmeans_accuracy(codes, labels=None, n_clusters: int | None = None, seed: int = 0, *,
                    backend: str = "faiss", niter: int = 20) -> dict:
    """K-Means on the bits of the codes, scored against the labels.

    ``codes``: CodeBook / (codes, labels) / int64 ``[N, W]`` (then ``labels`` is required).
    ``n_clusters`` defaults to the number of classes. ``backend``: ``"faiss"`` (faiss.Kmeans,
    seeded; trains on at most 256 points per centroid) or ``"sklearn"`` (KMeans, n_init=1).
    Returns ``{"purity", "hungarian", "n_clusters", "backend"}``.
    """
    c, lab = as_codes(codes, "codes")
    if labels is not None:  # checked as as_codes checks a (codes, labels) tuple: integers [N]
        _, lab = as_codes((c, labels), "codes")
    if lab is None:
        raise ValueError("kmeans_accuracy needs labels: pass labels=... or a labelled CodeBook")
    if c.shape[0] == 0:
        raise ValueError("codes are empty")
    if backend not in ("faiss", "sklearn"):
        raise ValueError(f"backend must be 'faiss' or 'sklearn', got {backend!r}")
    y = lab.cpu().numpy()
    if n_clusters is None:
        n_clusters = int(len(np.unique(y)))
    if not 1 <= n_clusters <= c.shape[0]:
        raise ValueError(f"n_clusters must be in [1, {c.shape[0]}], got {n_clusters}")
    assign = _kmeans_assign(c, n_clusters, seed, backend, niter)
    return {**cluster_scores(assign, y), "n_clusters": n_clusters, "backend": backend}


# ---- logistic regression ---------------------------------------------------------------------

def _logreg(multi_class: str, seed: int, C: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsOneClassifier, OneVsRestClassifier

    base = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)  # L2, lbfgs
    if multi_class == "ovo":
        return OneVsOneClassifier(base)
    if multi_class == "ovr":
        return OneVsRestClassifier(base)
    if multi_class == "multinomial":
        return base
    raise ValueError(f"multi_class must be 'ovo', 'ovr' or 'multinomial', got {multi_class!r}")


def _fit_logreg(train, multi_class: str, seed: int, C: float, max_iter: int):
    tc, tl = _labelled(train, "train")
    model = _logreg(multi_class, seed, C, max_iter)
    y = tl.cpu().numpy()
    if len(np.unique(y)) < 2:
        raise ValueError("logistic regression needs at least 2 classes in train")
    model.fit(_bits(tc), y)
    return model


def _score(model, data, name: str) -> float:
    c, lab = _labelled(data, name)
    if c.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    correct = 0
    y = lab.cpu().numpy()
    for s in range(0, c.shape[0], _BITS_CHUNK):
        correct += int((model.predict(_bits(c[s:s + _BITS_CHUNK])) == y[s:s + _BITS_CHUNK]).sum())
    return correct / c.shape[0]


def logreg_accuracy(train, test, multi_class: str = "ovo", *, C: float = 1.0, seed: int = 0,
                    max_iter: int = 1000) -> float:
    """Test accuracy of an L2 logistic regression (scikit-learn, ``C=1``) fitted on the train
    bits: ``multi_class="ovo"`` (OneVsOneClassifier), ``"ovr"`` (OneVsRestClassifier) or
    ``"multinomial"`` (plain LogisticRegression)."""
    _logreg(multi_class, seed, C, max_iter)  # validate before the work
    return _score(_fit_logreg(train, multi_class, seed, C, max_iter), test, "test")


# ---- everything ------------------------------------------------------------------------------

@dataclasses.dataclass
class CategorizationReport:
    """Accuracies of the three probes on train and test, and the settings used."""

    knn_train: float
    knn_test: float
    kmeans_purity_train: float
    kmeans_hungarian_train: float
    kmeans_purity_test: float
    kmeans_hungarian_test: float
    logreg_train: float
    logreg_test: float
    settings: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def categorize(train_cb, test_cb, *, k: int = 9, seed: int = 0, progress: bool = False,
               n_clusters: int | None = None, multi_class: str = "ovo",
               kmeans_backend: str = "faiss", knn_backend: str = "ours",
               C: float = 1.0) -> CategorizationReport:
    """K-NN (train on itself and test against train), K-Means (on train and on test, each
    clustered alone) and logistic regression (fitted on train, scored on both)."""
    _labelled(train_cb, "train")
    _labelled(test_cb, "test")
    steps = ["knn", "kmeans", "logreg"]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps), desc="categorize")

    def tick(name):
        if bar is not None:
            bar.set_postfix_str(name)
            bar.update(1)

    knn_train = knn_accuracy(train_cb, train_cb, k, backend=knn_backend, progress=progress)
    knn_test = knn_accuracy(train_cb, test_cb, k, backend=knn_backend, progress=progress)
    tick("knn")
    km_train = kmeans_accuracy(train_cb, n_clusters=n_clusters, seed=seed, backend=kmeans_backend)
    km_test = kmeans_accuracy(test_cb, n_clusters=n_clusters, seed=seed, backend=kmeans_backend)
    tick("kmeans")
    model = _fit_logreg(train_cb, multi_class, seed, C, 1000)
    lr_train, lr_test = _score(model, train_cb, "train"), _score(model, test_cb, "test")
    tick("logreg")
    if bar is not None:
        bar.close()
    settings = {"k": k, "seed": seed, "knn_backend": knn_backend,
                "knn_vote_ties": "lowest label", "n_clusters_train": km_train["n_clusters"],
                "n_clusters_test": km_test["n_clusters"], "kmeans_backend": kmeans_backend,
                "logreg": {"multi_class": multi_class, "C": C, "penalty": "l2"}}
    return CategorizationReport(knn_train, knn_test, km_train["purity"], km_train["hungarian"],
                                km_test["purity"], km_test["hungarian"], lr_train, lr_test,
                                settings)
