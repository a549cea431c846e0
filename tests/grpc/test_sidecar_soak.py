"""The soak (benchmarks/soak.py), shortened: 300 orchestrations through `python -m dtrio serve`,
one official SDK worker process killed (SIGKILL) and started again mid-run, and the sidecar
stopped (SIGTERM) and started again on the same store; nothing is lost and nothing completes
twice. Memory and speed are the full script's to print, not this test's to judge."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from soak import soak  # noqa: E402

COUNT = 300


def test_nothing_is_lost_or_completed_twice_through_worker_kills_and_a_restart(
        tmp_path: Path) -> None:
    # kill_every outlasts the run: the one kill comes once an eighth have completed.
    result = soak(COUNT, tmp_path, workers=2, kill_every=3600, timeout=120)
    log = (tmp_path / "soak.log").read_text()
    assert (result.worker_kills, result.sidecar_restarts) == (1, 1), log
    assert result.not_completed == [], log
    assert result.wrong_output == []
    assert result.completed_twice == []
    assert result.task_completed_twice == []
