"""Comparisons shared by the tests."""
import torch

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def assert_same_values(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit-for-bit equal, except that any NaN equals any NaN (payloads are not specified)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    nan_a, nan_e = torch.isnan(actual), torch.isnan(expected)
    assert torch.equal(nan_a, nan_e), "NaN positions differ"
    a = actual.masked_fill(nan_a, 0).contiguous().view(_INT_OF_SIZE[actual.element_size()])
    e = expected.masked_fill(nan_e, 0).contiguous().view(_INT_OF_SIZE[expected.element_size()])
    bad = (a != e).nonzero()
    assert bad.numel() == 0, f"{bad.shape[0]} values differ, first at {bad[0].tolist()}: " \
        f"{actual[tuple(bad[0])]} vs {expected[tuple(bad[0])]}"
