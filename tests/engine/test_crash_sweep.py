"""A short crash-point sweep on SQLite: a seeded sample of the full sweep's crash points (run it
all with `python tests/engine/crash_sweep.py`); see crash_sweep.py for what each trial checks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import crash_sweep

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs os._exit mid-commit")

# The workload makes about a hundred commits; its first ones schedule the instances.
FIRST = [(k, when) for k in (1, 2, 3) for when in crash_sweep.WHEN]
POINTS = sorted(set(FIRST + crash_sweep.crash_points(90, 18, seed=16)))


def test_a_sample_of_crash_points_loses_nothing_and_repeats_nothing() -> None:
    outcomes = crash_sweep.sweep(POINTS, jobs=2)
    failures = [f"commit {o.crash_at} ({o.when}): {o.failure}" for o in outcomes if o.failure]
    assert not failures, "\n".join(failures)
    # Every sampled point lies within the workload, so every trial killed its process.
    assert len(outcomes) == len(POINTS) >= 20
    assert all(o.died for o in outcomes)
