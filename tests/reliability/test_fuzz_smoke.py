"""Issue 14: the smoke run of bench/fuzz.py's targets in CI (no atheris: the seeds, hostile
files and malicious pickles included, then cheap mutants): every reader refuses bad input
only with its documented errors, and no input runs code or deletes a file outside a store."""
import os
import pickle
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import fuzz_targets as ft  # noqa: E402

N = {"index_file": 50}  # inputs per reader (default 100; all together: about 10 s)


@pytest.mark.parametrize("name", list(ft.TARGETS))
def test_reader_survives_fuzz_smoke(name):
    n = N.get(name, 100)
    r = ft.smoke(name, n, seed=1)  # raises ft.Crash on any crash
    assert r["inputs"] == n
    if name != "sweep_points":  # unreadable point files are skipped (recomputed), not refused
        assert r["errors"], "no input was refused: the mutants never reached the checks"


class _Unsafe(ft.Target):
    """A reader that unpickles (what the CIFAR reader must never do)."""
    name = "unsafe"
    expected = (Exception,)

    def setup(self):
        self.seeds = ft.gadget_pickles(self.marker)[:1]

    def run(self, data):
        self.write(data, "x")
        pickle.loads(data)


def test_the_code_execution_sentinel_fires(tmp_path):
    t = _Unsafe(str(tmp_path))
    t.fresh()
    with pytest.raises(ft.Crash, match="code from the input ran"):
        ft.one(t, t.seeds[0], {})


def test_the_deletion_sentinel_fires(tmp_path):
    t = _Unsafe(str(tmp_path))
    t.fresh()
    os.remove(os.path.join(t.case, ft.VICTIM))
    with pytest.raises(ft.Crash, match="outside the store"):
        ft.one(t, b"N.", {})


def test_an_unexpected_error_is_a_crash(tmp_path):
    class Strict(_Unsafe):
        expected = (ValueError,)
    t = Strict(str(tmp_path))
    t.fresh()
    with pytest.raises(pickle.UnpicklingError):
        ft.one(t, b"\xff", {})
