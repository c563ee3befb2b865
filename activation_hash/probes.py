"""Categorization probes: how well simple learners classify from the codes alone.

``train`` / ``test`` are CodeBooks with labels (anything with ``.codes`` and ``.labels``) or
``(codes int64 [N, W], labels int [N])`` tuples. Labels must be integers (float or bool labels
are a TypeError).

- :func:`knn_accuracy` / :func:`knn_predict`: K-NN with the Hamming distance, majority vote;
- :func:`kmeans_accuracy`: K-Means on the bits (0/1), scored two ways (the original code used
  both, in different scripts): ``purity`` = many-to-one, each cluster mapped to its majority
  class; ``hungarian`` = one-to-one, the assignment of clusters to classes (Hungarian
  algorithm) that maximizes the matches;
- :func:`logreg_accuracy`: L2 logistic regression (C = 1) on the bits, one-vs-one,
  one-vs-rest or multinomial;
- :func:`categorize`: all three on train and test -> :class:`CategorizationReport` (whose
  ``settings`` record every choice below).

Backends (two names because they choose between different things):

- ``knn_backend`` / ``backend`` of K-NN: ``"ours"`` (exact :func:`~activation_hash.hamming.
  hamming_topk`, equal distances -> lower training index; the default) or ``"faiss"``
  (IndexBinaryFlat, FAISS's own tie order);
- ``kmeans_backend`` / ``backend`` of K-Means: ``"faiss"`` (faiss.Kmeans, trained on a sample of
  at most ``points_per_centroid`` (256) rows per cluster, then every row assigned; the default)
  or ``"sklearn"`` (sklearn.cluster.KMeans on all rows). Both run ``n_init`` (10, as
  scikit-learn < 1.4 did) seeded restarts and keep the best (FAISS: ``nredo``).

Memory: K-Means and logistic regression need the bits as a float32 matrix. It is built once,
dense (4 bytes per bit) or as a scipy.sparse CSR matrix of the 1-bits (8 bytes per 1-bit),
whichever is smaller; FAISS K-Means densifies only its training sample, and prediction /
assignment go by chunks of rows. Above ``max_dense_bytes`` (:data:`MAX_DENSE_BYTES`, 4 GiB,
by default) they raise ValueError with the size needed instead of swapping: subsample the codes
(``cb[idx]``) or raise the limit (for 60 000 x 277 000 bits the dense matrix would be ~66 GB).

``progress``: a bar over the chunks / steps; off by default here (the probes are quick next to
:func:`~activation_hash.extract.extract_codes`, whose bar is on by default); the CLI turns it on.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from activation_hash import ops
from activation_hash.codes import as_codes, as_labels
from activation_hash.hamming import hamming_topk
from activation_hash.memory import check_fits
from activation_hash.validation import check_choice, check_int

__all__ = ["CategorizationReport", "MAX_DENSE_BYTES", "categorize", "kmeans_accuracy",
           "knn_accuracy", "knn_predict", "logreg_accuracy"]

MAX_DENSE_BYTES = 4 << 30  # default limit of the feature matrix of K-Means / logistic regression
_CHUNK_BYTES = 64 << 20    # dense float32 bits unpacked at a time (prediction, assignment)
_FEATURES = ("auto", "dense", "sparse")


def _labelled(x: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    codes, labels = as_codes(x, name)
    if labels is None:
        raise ValueError(f"{name} has no labels: pass a CodeBook with labels or a "
                         "(codes, labels) tuple")
    return codes, labels


def _chunk_rows(codes: torch.Tensor) -> int:
    """Rows per chunk so that their dense float32 bits take about _CHUNK_BYTES."""
    return max(1, _CHUNK_BYTES // max(1, 4 * 64 * codes.shape[1]))


def _bits(codes: torch.Tensor) -> np.ndarray:
    """float32 0/1 ``[N, 64 W]`` (padding bits included: constant 0, they change nothing),
    filled chunk by chunk (no intermediate copy of the whole matrix)."""
    c = codes.detach()
    n, d = c.shape[0], 64 * c.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    step = _chunk_rows(c)
    for s in range(0, n, step):
        out[s:s + step] = ops.unpack_bits(c[s:s + step].cpu(), d).numpy()
    return out


def _csr_bits(codes: torch.Tensor, nnz: int):
    """The 1-bits of the codes as a scipy.sparse CSR float32 ``[N, 64 W]`` matrix."""
    import scipy.sparse

    c = codes.detach()
    n, d = c.shape[0], 64 * c.shape[1]
    itype = np.int32 if max(nnz, d) < 2**31 else np.int64
    indices = np.empty(nnz, dtype=itype)
    indptr = np.zeros(n + 1, dtype=itype)
    at, step = 0, _chunk_rows(c)
    for s in range(0, n, step):
        bits = ops.unpack_bits(c[s:s + step].cpu(), d).numpy()
        rows, cols = np.nonzero(bits)  # row-major: columns ascending within each row
        indices[at:at + len(cols)] = cols
        indptr[s + 1:s + 1 + bits.shape[0]] = at + np.cumsum(np.bincount(rows,
                                                                           minlength=bits.shape[0]))
        at += len(cols)
    data = np.ones(nnz, dtype=np.float32)
    return scipy.sparse.csr_matrix((data, indices, indptr), shape=(n, d))


def _nnz(codes: torch.Tensor) -> int:
    """Number of 1-bits of the codes (popcounts via the Hamming distance to a zero row)."""
    if codes.numel() == 0:
        return 0
    zero = codes.new_zeros((1, codes.shape[1]))
    return int(ops.hamming_distance(codes.detach(), zero).sum(dtype=torch.int64))


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def _features(codes: torch.Tensor, features: str, max_bytes: int | None, what: str):
    """The bits as a float32 matrix for scikit-learn: dense or CSR (``features="auto"``: the
    smaller one). Raises ValueError when it would take more than ``max_bytes``."""
    n, d = codes.shape[0], 64 * codes.shape[1]
    dense = 4 * n * d
    nnz = _nnz(codes)
    sparse = 8 * nnz + 8 * (n + 1)
    if features == "auto":
        features = "dense" if dense <= sparse else "sparse"
    need = dense if features == "dense" else sparse
    if max_bytes is not None and need > max_bytes:
        raise ValueError(
            f"{what} on {n} codes x {d} bits needs a {features} float32 matrix of {_gib(need)} "
            f"(dense: {_gib(dense)}, sparse CSR of the {nnz} 1-bits: {_gib(sparse)}), more than "
            f"max_dense_bytes={max_bytes} ({_gib(max_bytes)}). Subsample the codes (e.g. "
            "cb[torch.randperm(len(cb))[:n]]) or raise max_dense_bytes.")
    check_fits(need, f"{what} on {n} codes x {d} bits ({features} float32 features)",
               "subsample the codes (cb[torch.randperm(len(cb))[:n]])" +
               (" or use features='sparse'" if features == "dense" else ""))
    return _bits(codes) if features == "dense" else _csr_bits(codes, nnz)


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
    k = check_int(k, "k (at most the training samples)", min=1, max=tc.shape[0])
    check_choice(backend, "backend", ("ours", "faiss"))
    return _knn_predict(tc, tl, qc, k, backend, chunk, progress)


def _knn_predict(tc: torch.Tensor, tl: torch.Tensor, qc: torch.Tensor, k: int, backend: str,
                 chunk: int = 8192, progress: bool = False) -> torch.Tensor:
    """:func:`knn_predict` on checked codes ``[N, W]``, labels ``[N]``, queries ``[Q, W]``."""
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
    tc, tl = _labelled(train, "train")
    qc, ql = _labelled(test, "test")
    k = check_int(k, "k (at most the training samples)", min=1, max=tc.shape[0])
    check_choice(backend, "backend", ("ours", "faiss"))
    return _knn_accuracy(tc, tl, qc, ql, k, backend, progress)


def _knn_accuracy(tc, tl, qc, ql, k: int, backend: str, progress: bool) -> float:
    if ql.numel() == 0:
        raise ValueError("test is empty")
    pred = _knn_predict(tc, tl, qc, k, backend, progress=progress)
    return float((pred == ql.cpu()).double().mean())


# ---- K-Means ---------------------------------------------------------------------------------

def _kmeans_assign(codes: torch.Tensor, n_clusters: int, seed: int, backend: str, niter: int,
                   n_init: int, points_per_centroid: int, max_bytes: int | None,
                   features: str) -> tuple[np.ndarray, int]:
    """Cluster of every row and the number of rows the centroids were trained on."""
    n = codes.shape[0]
    if backend == "faiss":
        import faiss

        # Only the training sample (points_per_centroid rows per cluster) is unpacked to
        # floats; the assignment then runs chunk by chunk.
        n_train = min(n, points_per_centroid * n_clusters)
        need = 4 * n_train * 64 * codes.shape[1]
        if max_bytes is not None and need > max_bytes:
            raise ValueError(
                f"FAISS K-Means trains on {n_train} codes x {64 * codes.shape[1]} bits: a dense "
                f"float32 sample of {_gib(need)}, more than max_dense_bytes={max_bytes} "
                f"({_gib(max_bytes)}). Lower points_per_centroid or raise max_dense_bytes.")
        check_fits(need, f"FAISS K-Means on a sample of {n_train} codes x {64 * codes.shape[1]} "
                   "bits (dense float32)", "lower points_per_centroid")
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, n_train, replace=False)) if n_train < n else np.arange(n)
        x = _bits(codes[torch.from_numpy(sample).to(codes.device)])
        km = faiss.Kmeans(x.shape[1], n_clusters, niter=niter, nredo=n_init, seed=seed,
                          verbose=False, max_points_per_centroid=points_per_centroid)
        km.train(x)
        del x
        assign = np.empty(n, dtype=np.int64)
        step = _chunk_rows(codes)
        for s in range(0, n, step):
            _, a = km.index.search(_bits(codes[s:s + step]), 1)
            assign[s:s + step] = a[:, 0]
        return assign, n_train
    from sklearn.cluster import KMeans

    x = _features(codes, features, max_bytes, "sklearn K-Means")
    km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=n_init, max_iter=max(niter, 1))
    return km.fit_predict(x).astype(np.int64), n


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
                    backend: str = "faiss", niter: int = 20, n_init: int = 10,
                    points_per_centroid: int = 256, features: str = "auto",
                    max_dense_bytes: int | None = MAX_DENSE_BYTES) -> dict:
    """K-Means on the bits of the codes, scored against the labels.

    ``codes``: CodeBook / (codes, labels) / int64 ``[N, W]`` (then ``labels``, integers ``[N]``,
    is required). ``n_clusters`` defaults to the number of classes. ``backend``: ``"faiss"``
    (faiss.Kmeans; trains on at most ``points_per_centroid`` rows per cluster, drawn with
    ``seed``) or ``"sklearn"`` (KMeans on all rows; ``features``: ``"dense"``, ``"sparse"`` or
    ``"auto"``, see the module docstring). Both: ``niter`` iterations, ``n_init`` restarts
    (the best inertia is kept). ``max_dense_bytes``: see the module docstring.

    Returns ``{"purity", "hungarian", "n_clusters", "backend", "n_init", "niter",
    "n_train"}``: purity = many-to-one (cluster -> majority class), hungarian = one-to-one
    (best matching of clusters and classes); ``n_train`` = rows the centroids were fitted on.
    """
    c, lab = as_codes(codes, "codes")
    if labels is not None:
        lab = as_labels(labels, c.shape[0], "codes: labels")
    if lab is None:
        raise ValueError("kmeans_accuracy needs labels: pass labels=... or a labelled CodeBook")
    args = _kmeans_args(backend, niter, n_init, points_per_centroid, features)
    return _kmeans_accuracy(c, lab, n_clusters, seed, max_dense_bytes, **args)


def _kmeans_args(backend, niter, n_init, points_per_centroid, features) -> dict:
    return dict(backend=check_choice(backend, "backend", ("faiss", "sklearn")),
                niter=check_int(niter, "niter", min=0), n_init=check_int(n_init, "n_init", min=1),
                points_per_centroid=check_int(points_per_centroid, "points_per_centroid", min=1),
                features=check_choice(features, "features", _FEATURES))


def _kmeans_accuracy(c: torch.Tensor, lab: torch.Tensor, n_clusters, seed: int,
                     max_dense_bytes, *, backend, niter, n_init, points_per_centroid,
                     features) -> dict:
    """:func:`kmeans_accuracy` on checked codes ``[N, W]`` and labels ``[N]``."""
    if c.shape[0] == 0:
        raise ValueError("codes are empty")
    y = lab.cpu().numpy()
    if n_clusters is None:
        n_clusters = int(len(np.unique(y)))
    if not 1 <= n_clusters <= c.shape[0]:
        raise ValueError(f"n_clusters must be in [1, {c.shape[0]}], got {n_clusters}")
    assign, n_train = _kmeans_assign(c, n_clusters, seed, backend, niter, n_init,
                                     points_per_centroid, max_dense_bytes, features)
    return {**cluster_scores(assign, y), "n_clusters": n_clusters, "backend": backend,
            "n_init": n_init, "niter": niter, "n_train": n_train}


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


def _fit_logreg(tc: torch.Tensor, tl: torch.Tensor, multi_class: str, seed: int, C: float,
                max_iter: int, features: str = "auto", max_bytes: int | None = MAX_DENSE_BYTES):
    """Logistic regression fitted on checked train codes ``[N, W]`` and labels ``[N]``."""
    model = _logreg(multi_class, seed, C, max_iter)
    y = tl.cpu().numpy()
    if len(np.unique(y)) < 2:
        raise ValueError("logistic regression needs at least 2 classes in train")
    model.fit(_features(tc, features, max_bytes, "logistic regression"), y)
    return model


def _score(model, c: torch.Tensor, lab: torch.Tensor, name: str) -> float:
    if c.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    correct = 0
    y = lab.cpu().numpy()
    step = _chunk_rows(c)
    for s in range(0, c.shape[0], step):
        correct += int((model.predict(_bits(c[s:s + step])) == y[s:s + step]).sum())
    return correct / c.shape[0]


def logreg_accuracy(train, test, multi_class: str = "ovo", *, C: float = 1.0, seed: int = 0,
                    max_iter: int = 1000, features: str = "auto",
                    max_dense_bytes: int | None = MAX_DENSE_BYTES) -> float:
    """Test accuracy of an L2 logistic regression (scikit-learn, lbfgs, ``C=1``) fitted on the
    train bits: ``multi_class="ovo"`` (OneVsOneClassifier), ``"ovr"`` (OneVsRestClassifier) or
    ``"multinomial"`` (plain LogisticRegression). The train bits are one float32 matrix,
    ``features="dense"``, ``"sparse"`` (CSR of the 1-bits) or ``"auto"`` (the smaller), at most
    ``max_dense_bytes`` (else ValueError); the test bits are predicted by chunks."""
    tc, tl = _labelled(train, "train")
    qc, ql = _labelled(test, "test")
    _logreg(multi_class, seed, C, max_iter)  # validate before the work
    check_choice(features, "features", _FEATURES)
    model = _fit_logreg(tc, tl, multi_class, seed, C, max_iter, features, max_dense_bytes)
    return _score(model, qc, ql, "test")


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
               C: float = 1.0, n_init: int = 10, niter: int = 20, features: str = "auto",
               max_dense_bytes: int | None = MAX_DENSE_BYTES) -> CategorizationReport:
    """K-NN (train on itself and test against train), K-Means (on train and on test, each
    clustered alone) and logistic regression (fitted on train, scored on both).

    Backends, ``n_init``, ``features``, ``max_dense_bytes`` and ``progress``: see the module
    docstring. ``settings`` of the report records them, the K-Means training sample sizes and
    which K-Means score is which mapping.
    """
    tc, tl = _labelled(train_cb, "train")
    qc, ql = _labelled(test_cb, "test")
    k = check_int(k, "k (at most the training samples)", min=1, max=tc.shape[0])
    check_choice(knn_backend, "knn_backend", ("ours", "faiss"))
    km_args = _kmeans_args(kmeans_backend, niter, n_init, 256, features)
    _logreg(multi_class, seed, C, 1000)  # validate before the work
    steps = ["knn", "kmeans", "logreg"]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps), desc="categorize")

    def tick(name):
        if bar is not None:
            bar.set_postfix_str(name)
            bar.update(1)

    knn_train = _knn_accuracy(tc, tl, tc, tl, k, knn_backend, progress)
    knn_test = _knn_accuracy(tc, tl, qc, ql, k, knn_backend, progress)
    tick("knn")
    km_train = _kmeans_accuracy(tc, tl, n_clusters, seed, max_dense_bytes, **km_args)
    km_test = _kmeans_accuracy(qc, ql, n_clusters, seed, max_dense_bytes, **km_args)
    tick("kmeans")
    model = _fit_logreg(tc, tl, multi_class, seed, C, 1000, features, max_dense_bytes)
    lr_train, lr_test = _score(model, tc, tl, "train"), _score(model, qc, ql, "test")
    tick("logreg")
    if bar is not None:
        bar.close()
    settings = {"k": k, "seed": seed, "knn_backend": knn_backend,
                "knn_vote_ties": "lowest label", "n_clusters_train": km_train["n_clusters"],
                "n_clusters_test": km_test["n_clusters"], "kmeans_backend": kmeans_backend,
                "kmeans": {"backend": kmeans_backend, "n_init": n_init, "niter": niter,
                           "n_train_train": km_train["n_train"],
                           "n_train_test": km_test["n_train"],
                           "purity": "many-to-one: each cluster -> its majority class",
                           "hungarian": "one-to-one: Hungarian matching of clusters and classes"},
                "logreg": {"multi_class": multi_class, "C": C, "penalty": "l2",
                           "solver": "lbfgs", "features": features},
                "max_dense_bytes": max_dense_bytes}
    return CategorizationReport(knn_train, knn_test, km_train["purity"], km_train["hungarian"],
                                km_test["purity"], km_test["hungarian"], lr_train, lr_test,
                                settings)
