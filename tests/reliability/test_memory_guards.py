"""Issue 14, memory guards: every allocation that grows with the data is checked against the
available memory first (activation_hash.memory.check_fits), with the exact message naming
the streaming or store option. ACTIVATION_HASH_MEMORY_BYTES pretends the machine is small."""
import re

import pytest
import torch
from torch import nn

from activation_hash import memory
from activation_hash import reference as ref
from activation_hash.codes import CodeBook, unpack_codes
from activation_hash.collisions import count_collisions
from activation_hash.extract import extract_codes
from activation_hash.hamming import hamming_distance, hamming_topk
from activation_hash.layout import Layout
from activation_hash.memory import MemoryLimitError
from activation_hash.probes import kmeans_accuracy

N, BITS = 200, 128
LAYOUT = Layout(("a",), ((BITS,),))


@pytest.fixture
def small(monkeypatch):
    """The machine has 1000 bytes free."""
    monkeypatch.setenv(memory.ENV, "1000")


def codes(n=N):
    g = torch.Generator().manual_seed(0)
    return ref.pack_bits(torch.rand(n, BITS, generator=g) < 0.5)


def refused(fn, message):
    with pytest.raises(MemoryLimitError, match="^" + re.escape(message) + "$"):
        fn()


def test_error_is_memory_and_value_error():
    assert issubclass(MemoryLimitError, MemoryError) and issubclass(MemoryLimitError, ValueError)


def test_available_bytes(monkeypatch):
    monkeypatch.setenv(memory.ENV, "12345")
    assert memory.available_bytes() == 12345
    monkeypatch.setenv(memory.ENV, "0")  # off
    assert memory.available_bytes() is None
    memory.check_fits(1 << 60, "x", "y")
    monkeypatch.setenv(memory.ENV, "lots")
    with pytest.raises(ValueError, match="ACTIVATION_HASH_MEMORY_BYTES must be an integer "
                                         "number of bytes, got 'lots'"):
        memory.available_bytes()
    monkeypatch.delenv(memory.ENV)
    real = memory.available_bytes()  # /proc/meminfo here (Linux)
    assert real is None or real > 0


def test_no_meminfo_means_no_guard(monkeypatch):
    monkeypatch.delenv(memory.ENV, raising=False)
    monkeypatch.setattr(memory, "_meminfo", lambda: None)
    monkeypatch.setattr(memory, "_cgroup_left", lambda: None)
    assert memory.available_bytes() is None
    memory.check_fits(1 << 60, "x", "y")  # not Linux: nothing refused


def test_check_fits_message(small):
    memory.check_fits(1000, "x", "y")  # fits exactly
    refused(lambda: memory.check_fits(3 << 30, "the thing", "do it in parts"),
            "the thing needs 3.00 GiB but only 1000 B of memory are available; do it in parts")


def test_extract_codes_in_memory(small, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 70), nn.ReLU())
    x = torch.randn(N, 4)
    refused(lambda: extract_codes(model, x, progress=False),
            f"the codes of {N} samples x 2 words needs 6.25 KiB but only 1000 B of memory are "
            "available; pass store=DIR to extract_codes(...): chunks on disk, returned "
            "memory-mapped")
    cb = extract_codes(model, x, progress=False, store=tmp_path / "s")  # the option named works
    assert cb.codes.shape == (N, 2)


def test_unpack_codes(small):
    cb = CodeBook(codes(), LAYOUT)
    msg = (f"unpacking {N} codes x {BITS} bits into bools needs 50.00 KiB but only 1000 B of "
           "memory are available; unpack a slice of rows at a time (unpack_codes(cb.codes[i:j], "
           "cb.layout)), or work on the packed words (hamming_*, count_collisions take them)")
    refused(cb.bits, msg)
    refused(lambda: unpack_codes(cb.codes, LAYOUT), msg)
    assert unpack_codes(cb.codes[:3], LAYOUT).shape == (3, BITS)


def test_hamming_distance_matrix(small):
    c = codes()
    refused(lambda: hamming_distance(c, c),
            f"the int32 distance matrix {N} x {N} needs 156.25 KiB but only 1000 B of memory are "
            "available; use hamming_topk(a, b, k) for the nearest rows (it streams the base: no "
            "matrix), or pass a in row blocks")
    assert hamming_distance(c[:5], c[:5]).shape == (5, 5)


def test_hamming_topk_outputs(small):
    c = codes()
    refused(lambda: hamming_topk(c, c, 10),
            f"the top-10 of {N} queries (int32 distances + int64 indices, and their "
            "concatenation) needs 46.88 KiB but only 1000 B of memory are available; pass the "
            "queries in batches (hamming_topk(queries[i:j], base, k)), or "
            "hamming_topk_out_of_core(queries, store, k) for a base on disk")
    d, i = hamming_topk(c[:4], c, 10)
    assert d.shape == i.shape == (4, 10)


def test_count_collisions(small):
    cb = CodeBook(codes(), LAYOUT)
    refused(lambda: count_collisions(cb),
            f"grouping {N} codes (sort keys, permutation, group ids) needs 9.38 KiB but only "
            "1000 B of memory are available; count in batches with CollisionCounter (update() per "
            "batch), or count_collisions_out_of_core(store, memory_budget=...) over a store")
    refused(lambda: count_collisions(cb, per_layer=True),
            f"grouping {N} codes (sort keys, permutation, group ids, per layer) needs 10.94 KiB "
            "but only 1000 B of memory are available; count in batches with CollisionCounter "
            "(update() per batch), or count_collisions_out_of_core(store, memory_budget=...) over "
            "a store")
    assert count_collisions(cb[:10]).n_distinct == 10


def test_dense_probe_features(small):
    cb = CodeBook(codes(), LAYOUT, torch.arange(N) % 2)
    refused(lambda: kmeans_accuracy(cb, backend="sklearn", features="dense"),
            f"sklearn K-Means on {N} codes x {BITS} bits (dense float32 features) needs 100.00 "
            "KiB but only 1000 B of memory are available; subsample the codes "
            "(cb[torch.randperm(len(cb))[:n]]) or use features='sparse'")
    refused(lambda: kmeans_accuracy(cb, points_per_centroid=4),
            f"FAISS K-Means on a sample of 8 codes x {BITS} bits (dense float32) needs 4.00 KiB "
            "but only 1000 B of memory are available; lower points_per_centroid")


def test_guards_silent_with_real_memory(monkeypatch):
    monkeypatch.delenv(memory.ENV, raising=False)
    c = codes()
    assert hamming_distance(c, c).shape == (N, N)
    assert count_collisions(c).n_distinct == N
