"""The repeated_in_runs op (csrc/cpu/runs.cpp) against its reference."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import activation_hash as ah
from activation_hash import ops
from activation_hash import reference as ref

needs_op = pytest.mark.skipif(not ops.HAS_RUNS, reason="no compiled repeated_in_runs")


def runs(lengths, values, seed):
    g = torch.Generator().manual_seed(seed)
    parts = [torch.sort(torch.randint(-values, values, (n,), generator=g)).values
             for n in lengths]
    keys = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
    ptr = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)
    return keys, ptr


def by_hand(keys, ptr):
    seen, out = {}, set()
    for v in keys.tolist():
        if v in seen:
            out.add(v)
        seen[v] = True
    return sorted(out)


@needs_op
@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 60), min_size=0, max_size=6),
       values=st.sampled_from([3, 50, 2**40]), seed=st.integers(0, 1000))
def test_repeated_in_runs_matches_the_reference_and_a_count_by_hand(lengths, values, seed):
    keys, ptr = runs(lengths, values, seed)
    got = ops.repeated_in_runs(keys, ptr)
    assert torch.equal(got, ref.repeated_in_runs(keys, ptr))
    assert got.tolist() == by_hand(keys, ptr)


@needs_op
def test_repeated_in_runs_edges():
    lo, hi = -2**63, 2**63 - 1
    keys = torch.tensor([lo, lo, 5, hi, lo, 5, hi], dtype=torch.int64)
    ptr = torch.tensor([0, 2, 4, 7])
    assert ops.repeated_in_runs(keys, ptr).tolist() == [lo, 5, hi]
    empty = torch.zeros(0, dtype=torch.int64)
    assert ops.repeated_in_runs(empty, torch.zeros(1, dtype=torch.int64)).numel() == 0
    one = torch.tensor([1, 2, 2, 3])
    assert ops.repeated_in_runs(one, torch.tensor([0, 4])).tolist() == [2]
    big, ptr2 = runs([100_000, 100_000], 2**20, 1)   # the two-run path at size
    assert torch.equal(ops.repeated_in_runs(big, ptr2), ref.repeated_in_runs(big, ptr2))


@needs_op
@pytest.mark.parametrize("keys, ptr, err", [
    (torch.tensor([3, 1]), torch.tensor([0, 2]), ValueError),           # a run not sorted
    (torch.tensor([1, 3]), torch.tensor([0, 1]), ValueError),           # ptr ends short
    (torch.tensor([1, 3]), torch.tensor([0, 2, 1, 2]), ValueError),     # ptr decreases
    (torch.tensor([1, 3]), torch.tensor([1, 2]), ValueError),           # ptr[0] != 0
    (torch.tensor([1, 3], dtype=torch.int32), torch.tensor([0, 2]), TypeError),
    (torch.tensor([1, 3]), torch.tensor([0.0, 2.0]), TypeError),
    (torch.tensor([[1, 3]]), torch.tensor([0, 2]), ValueError),
    (torch.tensor([1, 3]), torch.zeros(0, dtype=torch.int64), ValueError),
])
def test_repeated_in_runs_errors_match_the_reference(keys, ptr, err):
    with pytest.raises(err):
        ops.repeated_in_runs(keys, ptr)
    with pytest.raises(err):
        ref.repeated_in_runs(keys, ptr)


@needs_op
def test_opcheck_repeated_in_runs():
    keys, ptr = runs([30, 20, 25], 40, 3)
    torch.library.opcheck(torch.ops.activation_hash.repeated_in_runs, (keys, ptr))
    assert ah.backend() == "extension"
