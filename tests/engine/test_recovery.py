"""Work a process held when it was killed (SIGKILL) is taken over within seconds by the next
process on the same store, with the default leases: on the same host, a dead owner is known to be
gone, so its leases need not lapse first. The takeover is logged, naming the owner and the item."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("recovery_worker.py")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs SIGKILL and /proc")


def run(mode: str, db: Path, log: Path, kind: str, **kw) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), mode, str(db), str(log), kind], text=True,
        stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)}, **kw)


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def killed_holding(db: Path, log: Path, kind: str, table: str) -> str:
    """Start instance `kind`, SIGKILL its process once it runs the part that hangs; the owner the
    dead process held it under."""
    out = log.with_suffix(".start")
    with out.open("w") as output:
        proc = run("start", db, log, kind, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not lines(log):
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, f"it never ran:\n{out.read_text()}"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    with sqlite3.connect(db) as conn:
        [(owner,)] = conn.execute(
            f"SELECT lock_owner FROM {table} WHERE lock_owner IS NOT NULL").fetchall()
    assert owner.split(":")[1] == str(proc.pid)
    return owner


def resume(db: Path, log: Path, kind: str) -> str:
    """Run a new process on the store until the instance completes (within its RESUME_BOUND
    of 10 seconds, less than a lease, or it fails); its log."""
    proc = run("resume", db, log, kind, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert out.split()[0] == "COMPLETED", out + err
    return err


def test_a_long_activity_of_a_killed_process_runs_again_within_seconds(tmp_path: Path) -> None:
    db, log = tmp_path / "store.sqlite3", tmp_path / "ran.log"
    owner = killed_holding(db, log, "activity", "activities")
    err = resume(db, log, "activity")
    # The same call, delivered again: its second attempt, under the same key.
    assert lines(log) == ["activity 1 activity:0", "activity 2 activity:0"]
    assert (f"activity 'hold' (#0) of 'activity' taken over from {owner}, which is gone"
            in err), err


def test_a_step_of_a_killed_process_runs_again_within_seconds(tmp_path: Path) -> None:
    db, log = tmp_path / "store.sqlite3", tmp_path / "ran.log"
    owner = killed_holding(db, log, "step", "instances")
    err = resume(db, log, "step")
    assert lines(log) == ["step start", "step resume"]
    assert f"orchestration 'step' taken over from {owner}, which is gone" in err, err


def test_a_step_killed_in_its_activitys_commit_loses_nothing(tmp_path: Path) -> None:
    """The step an activity's result wakes runs in that activity's commit: killed there, the
    activity is still leased (the step's transaction never committed), so it runs again and
    the step after it too."""
    db, log = tmp_path / "store.sqlite3", tmp_path / "ran.log"
    owner = killed_holding(db, log, "after", "activities")
    err = resume(db, log, "after")
    assert lines(log) == ["after start 1", "after resume 2"]
    assert f"activity 'quick' (#0) of 'after' taken over from {owner}, which is gone" in err, err
