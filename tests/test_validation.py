"""activation_hash.validation: the shared parameter checks."""
import numpy as np
import pytest

from activation_hash.validation import check_bool, check_choice, check_float, check_int


def test_check_int_accepts_numpy_and_bounds():
    assert check_int(np.int64(3), "k", min=1) == 3 and type(check_int(np.int32(3), "k")) is int
    assert check_int(5, "k", min=5, max=5) == 5


@pytest.mark.parametrize("bad, exc", [(True, TypeError), (2.0, TypeError), ("3", TypeError),
                                      (0, ValueError), (11, ValueError)])
def test_check_int_refuses(bad, exc):
    with pytest.raises(exc, match="k must be an integer in \\[1, 10\\]"):
        check_int(bad, "k", min=1, max=10)


def test_check_float():
    assert check_float(1, "lr", min=0, min_open=True) == 1.0
    with pytest.raises(ValueError, match=r"lr must be a finite number in \(0"):
        check_float(0.0, "lr", min=0, min_open=True)
    with pytest.raises(ValueError, match="got nan"):
        check_float(float("nan"), "lr")
    with pytest.raises(TypeError, match="lr must be a number, got bool"):
        check_float(False, "lr")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        check_float(1.0, "p", min=0, max=1, max_open=True)


def test_check_bool_and_choice():
    assert check_bool(False, "b") is False
    with pytest.raises(TypeError, match="b must be True or False, got str 'false'"):
        check_bool("false", "b")
    with pytest.raises(TypeError):
        check_bool(1, "b")
    assert check_choice("a", "mode", ["a", "b"]) == "a"
    with pytest.raises(ValueError, match="mode must be one of 'a', 'b', got 'c'"):
        check_choice("c", "mode", ["a", "b"])
    with pytest.raises(ValueError):
        check_choice(["a"], "mode", ["a", "b"])
