"""Issue 14: crash loops (bench/kill_loops.py with a small N): SIGKILL at random points of
extraction into a store, store writes (Writer append/finish, CodeBook.save overwrite) and a
sweep, then resume: the result equals an uninterrupted run's bit for bit (codes, labels,
collision count; sweep rows but their timings), and nothing on disk is ever half-written."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import kill_loops  # noqa: E402


@pytest.mark.parametrize("target,kills", [("extract", 3), ("writer", 3), ("save", 3),
                                          ("sweep", 2)])
def test_kill_loop(target, kills):
    r = kill_loops.loop(target, kills, seed=3)
    assert r["kills"] + r["finished_before_kill"] == kills
    assert r["kills"] >= 1
    assert r["results_changed"] == 0 and r["results_lost"] == 0
