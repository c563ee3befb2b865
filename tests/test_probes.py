"""Categorization probes against scikit-learn on small data."""
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from activation_hash import probes
from activation_hash import reference as ref

import sklearn  # noqa: E402,F401  (a hard dependency: never skipped)


def clustered(n, n_bits=128, classes=4, flip=0.25, seed=0):
    """Codes around one random prototype per class (each bit flipped with prob ``flip``)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(classes, n_bits, generator=g) < 0.5
    y = torch.randint(classes, (n,), generator=g)
    bits = protos[y] ^ (torch.rand(n, n_bits, generator=g) < flip)
    return ref.pack_bits(bits), y, bits


@pytest.fixture(scope="module")
def split():
    c, y, bits = clustered(400, flip=0.3, seed=1)
    return (c[:300], y[:300], bits[:300]), (c[300:], y[300:], bits[300:])


@pytest.mark.parametrize("k", [1, 4, 9])
@pytest.mark.parametrize("backend", ["ours", "faiss"])
def test_knn_equals_sklearn_where_no_boundary_tie(split, k, backend):
    from sklearn.neighbors import KNeighborsClassifier

    (tc, ty, tb), (qc, qy, qb) = split
    pred = probes.knn_predict((tc, ty), (qc, qy), k, backend=backend)
    sk = KNeighborsClassifier(n_neighbors=k, metric="hamming", algorithm="brute")
    sk.fit(tb.numpy(), ty.numpy())
    want = sk.predict(qb.numpy())
    # Where the k-th and (k+1)-th distances differ, the neighbour set does not depend on how
    # equal distances are ordered, and both vote ties go to the lowest label.
    d = np.sort(ref.hamming_distance(qc, tc).numpy(), axis=1)
    clean = d[:, k - 1] < d[:, k]
    assert clean.sum() >= 30
    assert np.array_equal(pred.numpy()[clean], want[clean])
    acc = probes.knn_accuracy((tc, ty), (qc, qy), k, backend=backend)
    assert acc == pytest.approx(float((pred == qy).double().mean()))


def test_knn_vote_ties_go_to_lowest_label():
    # query at distance 1 from a row of class 5 and a row of class 2: k=2 ties -> 2
    train = (torch.tensor([[0b01], [0b10], [0b111]]), torch.tensor([5, 2, 7]))
    q = torch.tensor([[0b11]])
    assert probes.knn_predict(train, q, 2).tolist() == [2]
    # equal distances in the neighbour set: lower training index first
    train = (torch.tensor([[0b11], [0b11], [0]]), torch.tensor([3, 1, 0]))
    assert probes.knn_predict(train, q, 1).tolist() == [3]


def _manual_scores(assign, y):
    clusters, classes = sorted(set(assign)), sorted(set(y))
    n = len(y)
    purity = sum(max(sum(1 for a, t in zip(assign, y) if a == c and t == l) for l in classes)
                 for c in clusters) / n
    best = 0
    for perm in itertools.permutations(classes, min(len(clusters), len(classes))):
        best = max(best, sum(1 for a, t in zip(assign, y)
                             if a in clusters[:len(perm)] and perm[clusters.index(a)] == t))
    if len(clusters) > len(classes):  # map classes to clusters instead
        for perm in itertools.permutations(clusters, len(classes)):
            best = max(best, sum(1 for a, t in zip(assign, y) if perm[classes.index(t)] == a))
    return purity, best / n


def test_cluster_scores_match_manual_computation():
    rng = np.random.default_rng(0)
    for n_clusters, n_classes in [(3, 3), (2, 4), (4, 3)]:
        assign = rng.integers(n_clusters, size=60)
        y = rng.integers(n_classes, size=60) * 10
        s = probes.cluster_scores(assign, y)
        purity, hung = _manual_scores(list(assign), list(y))
        assert s["purity"] == pytest.approx(purity) and s["hungarian"] == pytest.approx(hung)


def test_kmeans_sklearn_backend_equals_sklearn_kmeans_plus_mapping(split):
    from sklearn.cluster import KMeans

    (tc, ty, tb), _ = split
    bits = ref.unpack_bits(tc, 64 * tc.shape[1]).float().numpy()
    for n_init in (1, 3):
        got = probes.kmeans_accuracy((tc, ty), seed=3, backend="sklearn", n_init=n_init,
                                     features="dense")
        assign = KMeans(n_clusters=4, random_state=3, n_init=n_init, max_iter=20).fit_predict(bits)
        purity, hung = _manual_scores(list(assign), list(ty.numpy()))
        assert got["purity"] == pytest.approx(purity) and got["hungarian"] == pytest.approx(hung)
        assert got["n_clusters"] == 4 and got["n_init"] == n_init and got["n_train"] == 300
        assert got["backend"] == "sklearn" and got["niter"] == 20


def test_kmeans_settings_default_n_init_and_faiss_sample(split):
    (tc, ty, _), _ = split
    r = probes.kmeans_accuracy((tc, ty), seed=0)
    assert r["backend"] == "faiss" and r["n_init"] == 10 and r["n_train"] == 300  # < 256 * 4
    r = probes.kmeans_accuracy((tc, ty), seed=0, points_per_centroid=20, n_init=2)
    assert r["n_train"] == 80 and r["n_init"] == 2
    with pytest.raises(ValueError, match="n_init must be an integer >= 1"):
        probes.kmeans_accuracy((tc, ty), n_init=0)


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_kmeans_finds_well_separated_classes(backend):
    c, y, _ = clustered(300, flip=0.05, seed=2, classes=3)
    r = probes.kmeans_accuracy(c, y, seed=0, backend=backend)
    assert r["purity"] == 1.0 and r["hungarian"] == 1.0
    r = probes.kmeans_accuracy(SimpleNamespace(codes=c, labels=y), n_clusters=6, seed=0,
                               backend=backend)
    assert r["purity"] == 1.0 and r["hungarian"] <= 1.0 and r["n_clusters"] == 6
    assert probes.kmeans_accuracy(c, y, seed=5) == probes.kmeans_accuracy(c, y, seed=5)


@pytest.mark.parametrize("multi_class", ["ovo", "ovr", "multinomial"])
def test_logreg_equals_sklearn(split, multi_class):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsOneClassifier, OneVsRestClassifier

    (tc, ty, tb), (qc, qy, qb) = split
    got = probes.logreg_accuracy((tc, ty), (qc, qy), multi_class=multi_class)
    base = LogisticRegression(C=1.0, max_iter=1000, random_state=0)
    model = {"ovo": OneVsOneClassifier(base), "ovr": OneVsRestClassifier(base),
             "multinomial": base}[multi_class]
    # 128 bits = 2 whole words: the probe's features (all 64 W bits) are exactly these bits
    model.fit(tb.numpy().astype(np.float32), ty.numpy())
    assert got == pytest.approx(model.score(qb.numpy().astype(np.float32), qy.numpy()))
    assert got > 0.8


def test_bits_and_csr_by_chunks(monkeypatch):
    c, _, bits = clustered(37, n_bits=100, flip=0.1, seed=6)
    monkeypatch.setattr(probes, "_CHUNK_BYTES", 4 * 128 * 5)  # 5 rows a chunk
    assert probes._chunk_rows(c) == 5
    want = ref.unpack_bits(c, 128).numpy().astype(np.float32)
    dense = probes._bits(c)
    assert dense.dtype == np.float32 and np.array_equal(dense, want)
    nnz = probes._nnz(c)
    assert nnz == int(bits.sum())
    csr = probes._csr_bits(c, nnz)
    assert csr.dtype == np.float32 and csr.nnz == nnz and np.array_equal(csr.toarray(), want)
    assert probes._csr_bits(c[:0], 0).shape == (0, 128)


def test_features_pick_the_smaller_matrix():
    import scipy.sparse

    sparse_codes, _, _ = clustered(50, n_bits=128, flip=0.0, seed=7)
    sparse_codes = sparse_codes & ref.pack_bits(torch.rand(50, 128) < 0.2)  # ~10% ones
    dense_codes = ~sparse_codes  # ~90% ones
    assert scipy.sparse.issparse(probes._features(sparse_codes, "auto", None, "x"))
    assert isinstance(probes._features(dense_codes, "auto", None, "x"), np.ndarray)
    assert scipy.sparse.issparse(probes._features(dense_codes, "sparse", None, "x"))
    with pytest.raises(ValueError, match="features must be one of"):  # checked at the boundary
        probes.kmeans_accuracy(dense_codes, torch.zeros(50, dtype=torch.int64),
                               backend="sklearn", features="csr")


@pytest.mark.parametrize("features", ["dense", "sparse"])
def test_dense_and_sparse_features_give_the_same_probes(split, features):
    (tc, ty, _), (qc, qy, _) = split
    want = probes.logreg_accuracy((tc, ty), (qc, qy), multi_class="ovr", features="dense")
    assert probes.logreg_accuracy((tc, ty), (qc, qy), multi_class="ovr",
                                  features=features) == pytest.approx(want)
    km = probes.kmeans_accuracy((tc, ty), seed=1, backend="sklearn", n_init=2, features="dense")
    got = probes.kmeans_accuracy((tc, ty), seed=1, backend="sklearn", n_init=2,
                                 features=features)
    assert got["purity"] == pytest.approx(km["purity"], abs=0.02)


def test_memory_limit_is_a_clear_error(split):
    (tc, ty, _), (qc, qy, _) = split
    # 300 x 128 bits: dense float32 150 KiB; the limit of 10 KiB is below either form
    with pytest.raises(ValueError, match=r"logistic regression on 300 codes x 128 bits needs .*"
                                         r"max_dense_bytes=10000.*Subsample"):
        probes.logreg_accuracy((tc, ty), (qc, qy), max_dense_bytes=10_000)
    with pytest.raises(ValueError, match=r"sklearn K-Means on 300 codes x 128 bits needs"):
        probes.kmeans_accuracy((tc, ty), backend="sklearn", max_dense_bytes=10_000)
    with pytest.raises(ValueError, match=r"FAISS K-Means trains on 300 codes .* points_per_centroid"):
        probes.kmeans_accuracy((tc, ty), max_dense_bytes=10_000)
    with pytest.raises(ValueError, match="max_dense_bytes=10000"):
        probes.categorize((tc, ty), (qc, qy), max_dense_bytes=10_000)
    # within the limit (dense: 153 600 bytes) the probes run
    assert probes.logreg_accuracy((tc, ty), (qc, qy), features="dense",
                                  max_dense_bytes=153_600) > 0.8
    r = probes.kmeans_accuracy((tc, ty), points_per_centroid=5, max_dense_bytes=4 * 20 * 128)
    assert r["n_train"] == 20


def test_categorize_report(split):
    (tc, ty, _), (qc, qy, _) = split
    train = SimpleNamespace(codes=tc, labels=ty)
    r = probes.categorize(train, (qc, qy), k=5, seed=0, progress=True)
    assert r.knn_test == probes.knn_accuracy(train, (qc, qy), 5)
    assert r.knn_train == probes.knn_accuracy(train, train, 5)
    km = probes.kmeans_accuracy((qc, qy), seed=0)
    assert r.kmeans_purity_test == km["purity"] and r.kmeans_hungarian_test == km["hungarian"]
    assert r.logreg_test == pytest.approx(probes.logreg_accuracy(train, (qc, qy)))
    d = r.to_dict()
    assert d["settings"]["k"] == 5 and d["settings"]["logreg"]["multi_class"] == "ovo"
    km = d["settings"]["kmeans"]
    assert km["backend"] == "faiss" and km["n_init"] == 10 and km["niter"] == 20
    assert km["n_train_train"] == 300 and km["n_train_test"] == 100
    assert "many-to-one" in km["purity"] and "one-to-one" in km["hungarian"]
    assert set(d) >= {"knn_train", "knn_test", "kmeans_purity_train", "kmeans_hungarian_train",
                      "kmeans_purity_test", "kmeans_hungarian_test", "logreg_train",
                      "logreg_test", "settings"}
    assert all(0.0 <= v <= 1.0 for key, v in d.items() if key != "settings")


def test_errors(split):
    (tc, ty, _), (qc, qy, _) = split
    with pytest.raises(ValueError, match="train has no labels"):
        probes.knn_accuracy(tc, (qc, qy))
    with pytest.raises(ValueError, match="test has no labels"):
        probes.knn_accuracy((tc, ty), qc)
    with pytest.raises(ValueError, match="needs labels"):
        probes.kmeans_accuracy(tc)
    with pytest.raises(ValueError, match="train has no labels"):
        probes.logreg_accuracy(SimpleNamespace(codes=tc, labels=None), (qc, qy))
    with pytest.raises(ValueError, match="multi_class"):
        probes.logreg_accuracy((tc, ty), (qc, qy), multi_class="softmax")
    with pytest.raises(ValueError, match=r"k \(at most the training samples\) must be an integer in \[1, 300\]"):
        probes.knn_accuracy((tc, ty), (qc, qy), k=301)
    with pytest.raises(ValueError, match="backend"):
        probes.knn_accuracy((tc, ty), (qc, qy), backend="annoy")
    with pytest.raises(ValueError, match="n_clusters"):
        probes.kmeans_accuracy(tc, ty, n_clusters=0)
    with pytest.raises(ValueError, match=r"labels must be 1-D class labels of shape \[300\]"):
        probes.kmeans_accuracy(tc, ty[:5])
    with pytest.raises(TypeError, match="integer class labels"):
        probes.knn_accuracy((tc, ty.float()), (qc, qy))


@pytest.mark.parametrize("bad", [lambda y: y.float(), lambda y: y.double().numpy(),
                                 lambda y: y.float().tolist(), lambda y: y.bool()])
def test_float_labels_are_a_type_error(split, bad):
    (tc, ty, _), (qc, qy, _) = split
    with pytest.raises(TypeError, match=r"labels must be integer class labels.*(float|bool)"):
        probes.kmeans_accuracy(tc, bad(ty))
    with pytest.raises(TypeError, match="labels must be integer class labels"):
        probes.knn_predict(SimpleNamespace(codes=tc, labels=bad(ty)), qc)
    with pytest.raises(TypeError, match="labels must be integer class labels"):
        probes.logreg_accuracy((tc, ty), (qc, bad(qy)))
    with pytest.raises(TypeError, match="labels must be integer class labels"):
        probes.categorize((tc, bad(ty)), (qc, qy))
    with pytest.raises(TypeError, match="labels must hold integers, got dtype float"):
        probes.cluster_scores(np.zeros(3, dtype=np.int64), np.zeros(3))


def test_real_codebooks():
    from activation_hash.codes import CodeBook
    from activation_hash.index import CodeIndex, to_bytes
    from activation_hash.layout import Layout

    layout = Layout(("l1", "l2"), ((70,), (2, 29)))  # words 2 + 1, padding in both blocks
    c, y, bits = clustered(200, n_bits=128, classes=3, flip=0.2, seed=4)
    rows = torch.zeros(200, 3, dtype=torch.int64)
    rows[:, :2] = ref.pack_bits(bits[:, :70])
    rows[:, 2:] = ref.pack_bits(bits[:, 70:])
    train, test = CodeBook(rows[:150], layout, labels=y[:150]), CodeBook(rows[150:], layout,
                                                                         labels=y[150:])
    assert np.array_equal(to_bytes(train.codes), train.as_bytes())
    r = probes.categorize(train, test, k=3)
    assert r.knn_test == probes.knn_accuracy((train.codes, train.labels), (test.codes, test.labels), 3)
    assert r.knn_test > 0.8 and r.logreg_test > 0.8
    d, ids = CodeIndex("flat", device="cpu").add(train).search(test, 3)
    from activation_hash.hamming import hamming_topk

    assert torch.equal(d, hamming_topk(test, train, 3)[0])
