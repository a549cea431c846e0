"""Kill an engine process with SIGKILL mid-run; a second process on the same file finishes the job.

Nothing may be lost (every instance completes with the right output, exactly once) and nothing
may run twice except the activities that were in flight when the process died.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import betterproto2
import pytest

import dtrio
from dtrio import _pb as pb

sys.path.insert(0, str(Path(__file__).parent))
import crash_worker as worker

WORKER = Path(__file__).parent / "crash_worker.py"
TOTAL = worker.INSTANCES * worker.TASKS
# Kill once a third of the side effects have happened: well into the run, far from its end.
KILL_AFTER = TOTAL // 3

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")


def log_pairs(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    # A line cut short by the kill has no newline; it never reached fsync, so it does not count.
    lines = path.read_text().split("\n")[:-1]
    return [(iid, int(k)) for iid, k in (line.split(",") for line in lines)]


def in_flight_at_kill(db: Path) -> set[tuple[str, int]]:
    """Activities the dead process had leased and not completed: the only ones that may rerun."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT instance_id, input FROM activities WHERE lock_owner IS NOT NULL"
        ).fetchall()
    return {(iid, json.loads(data)["k"]) for iid, data in rows}


def start_and_kill(db: Path, log: Path, out: Path) -> None:
    """Run the worker until KILL_AFTER side effects are logged, then SIGKILL it."""
    with out.open("w") as stdout:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), "start", str(db), str(log)],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        # Only kill after every instance exists, so the resumed run knows all of them.
        while not ("scheduled" in out.read_text() and len(log_pairs(log)) >= KILL_AFTER):
            if proc.poll() is not None:
                pytest.fail(
                    f"worker exited ({proc.returncode}) before the kill:\n{out.read_text()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"worker made no progress:\n{out.read_text()}")
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()  # no-op once it is dead; stops a stray worker if the test failed
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert "done" not in out.read_text(), "the worker finished before the kill"


def test_sigkill_midway_then_resume_in_a_new_process(tmp_path: Path) -> None:
    db, log, out = tmp_path / "crash.sqlite3", tmp_path / "effects.log", tmp_path / "worker.out"

    start_and_kill(db, log, out)
    before = log_pairs(log)
    assert KILL_AFTER <= len(before) < TOTAL
    in_flight = in_flight_at_kill(db)
    assert len(in_flight) <= worker.MAX_CONCURRENT_ACTIVITIES

    resumed = subprocess.run(
        [sys.executable, str(WORKER), "resume", str(db), str(log)],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=25,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "done" in resumed.stdout

    with sqlite3.connect(db) as conn:
        instances = {
            iid: (status, output)
            for iid, status, output in conn.execute(
                "SELECT instance_id, status, output FROM instances"
            )
        }
        history = conn.execute(
            "SELECT i.instance_id, h.event FROM history h JOIN instances i "
            "ON i.id = h.instance_key ORDER BY i.instance_id, h.seq"
        ).fetchall()

    # Every instance completed once, with the output its input determines.
    assert sorted(instances) == sorted(worker.instance_ids())
    for n, iid in enumerate(worker.instance_ids()):
        status, output = instances[iid]
        assert status == int(dtrio.OrchestrationStatus.COMPLETED), iid
        assert json.loads(output) == worker.expected_output(n), iid
    completions = Counter(
        iid
        for iid, event in history
        if betterproto2.which_one_of(pb.HistoryEvent.parse(event), "eventType")[0]
        == "execution_completed"
    )
    assert completions == Counter(worker.instance_ids())

    # Every side effect happened; one happened twice only if its activity was in flight at the kill.
    after = log_pairs(log)[len(before) :]
    everything = Counter(before + after)
    assert set(everything) == {
        (iid, k) for iid in worker.instance_ids() for k in range(worker.TASKS)
    }
    assert max(Counter(before).values()) == 1
    assert max(Counter(after).values()) == 1
    repeated = {pair for pair, count in everything.items() if count > 1}
    assert repeated <= in_flight
    assert len(repeated) <= worker.MAX_CONCURRENT_ACTIVITIES
