"""The crash-point sweep: kill an engine process at its k-th storage commit (just before the COMMIT,
or just after it), run a new process on the same SQLite file until the workload is done, and
check that nothing was lost or done twice.

    python tests/engine/crash_sweep.py [--sample N] [--seed S] [--jobs J]

runs every crash point of the workload (`--sample N`: N of them, drawn with seed S) and prints how
many were tried and what survived. test_crash_sweep.py runs a short seeded sample of it.

What each trial checks, after the second process finished:
- every instance is COMPLETED with the output its input determines (sub-orchestrations too);
- no history step was applied twice: in every history each scheduled action has one event ID
  and each completion (of a task, timer, sub-orchestration, entity call, lock, event) one event;
- every activity ran at least once, and at most once more than it runs without a crash (and
  exactly as often when nothing crashed);
- the entities' states are exact (no operation lost or applied twice);
- every lease the killed process left has an expiry within one lease from the kill, and none is
  held once the second process has stopped;
- no inbox or activity row is left, and `PRAGMA integrity_check` is ok.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import betterproto2

sys.path.insert(0, str(Path(__file__).parent))
import sweep_worker as worker

from dtrio import _pb as pb

WORKER = Path(__file__).with_name("sweep_worker.py")
ROOT = Path(__file__).resolve().parents[2]
WHEN = ("before", "after")
LEASE_US = int(max(worker.OPTIONS["activity_lease"], worker.OPTIONS["orchestration_lease"]) * 1e6)


@dataclass(frozen=True)
class Outcome:
    crash_at: int
    when: str
    died: bool  # False: the workload made fewer commits than crash_at, so nothing was killed
    reran: int  # activity runs beyond those of a run without a crash
    failure: str | None = None


def run_worker(db: Path, log: Path, *crash: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WORKER), str(db), str(log), *crash], capture_output=True, text=True,
        stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
        check=False,
    )


def report_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout}{done.stderr}"
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def baseline_commits() -> int:
    """How many commits the workload makes when nothing crashes (it varies a little)."""
    with tempfile.TemporaryDirectory() as tmp:
        db, log = Path(tmp) / "store.sqlite3", Path(tmp) / "effects.log"
        report = report_of(run_worker(db, log))
        check_store(db, log, report, reran_allowed=0)
        return int(report["commits"])


def trial(crash_at: int, when: str) -> Outcome:
    with tempfile.TemporaryDirectory() as tmp:
        db, log = Path(tmp) / "store.sqlite3", Path(tmp) / "effects.log"
        first = run_worker(db, log, str(crash_at), when)
        died = first.returncode == worker.KILLED
        if not died:
            report_of(first)  # it finished before its crash point: it must have finished well
            return Outcome(crash_at, when, died=False, reran=0)
        try:
            check_leases_at_kill(db)
            report = report_of(run_worker(db, log))
            reran = check_store(db, log, report, reran_allowed=1)
        except AssertionError as exc:
            return Outcome(crash_at, when, died=True, reran=0, failure=str(exc) or repr(exc))
        return Outcome(crash_at, when, died=True, reran=reran)


def check_leases_at_kill(db: Path) -> None:
    now = time.time_ns() // 1000
    with sqlite3.connect(db) as conn:
        for table, expiry in (("instances", "lock_expires"), ("entities", "lock_expires"),
                              ("activities", "available_at")):
            held = conn.execute(
                f"SELECT instance_id, {expiry} FROM {table} WHERE lock_owner IS NOT NULL"
            ).fetchall()
            for iid, expires in held:
                assert expires is not None and expires <= now + LEASE_US, (
                    f"{table} {iid}: a lease with no expiry, or one further than a lease away"
                )


def check_store(db: Path, log: Path, report: dict[str, Any], *, reran_allowed: int) -> int:
    """Check the store and the effects after the workload finished; the activity reruns."""
    assert report["instances"] == {
        iid: ["COMPLETED", output] for iid, (_, _, output) in worker.WORKLOAD.items()
    }
    assert report["entities"] == worker.ENTITIES
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        statuses = dict(conn.execute("SELECT instance_id, status FROM instances"))
        assert set(statuses.values()) == {int(pb.OrchestrationStatus.COMPLETED)}, statuses
        for table in ("inbox", "entity_inbox", "activities"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
        for table in ("instances", "entities"):
            held = conn.execute(
                f"SELECT instance_id FROM {table} WHERE lock_owner IS NOT NULL").fetchall()
            assert not held, f"leases still held in {table} after a clean stop: {held}"
        history: dict[str, list[pb.HistoryEvent]] = {}
        for iid, data in conn.execute(
                "SELECT i.instance_id, h.event FROM history h JOIN instances i "
                "ON i.id = h.instance_key ORDER BY h.seq"):
            history.setdefault(iid, []).append(pb.HistoryEvent.parse(data))
    finally:
        conn.close()
    assert set(history) == set(statuses)
    for iid, events in history.items():
        check_history(iid, events)
    return check_effects(log, reran_allowed)


def _key(event: pb.HistoryEvent) -> tuple[Any, ...] | None:
    """What an event records once only in a history: its action, or what it completes."""
    kind, body = betterproto2.which_one_of(event, "eventType")
    match kind:
        case "orchestrator_started" | "orchestrator_completed":
            return None
        case "execution_started" | "execution_completed":
            return (kind,)
        case "task_completed" | "task_failed":
            return ("task", body.task_scheduled_id)
        case "sub_orchestration_instance_completed" | "sub_orchestration_instance_failed":
            return ("sub", body.task_scheduled_id)
        case "timer_fired":
            return ("timer", body.timer_id)
        case "entity_operation_completed" | "entity_operation_failed":
            return ("entity", body.request_id)
        case "entity_lock_granted":
            return ("lock", body.critical_section_id)
        case "event_raised":
            return ("event", body.name, body.input)
    assert event.event_id >= 0, f"{kind} with no event ID"
    return ("action", event.event_id)


def check_history(iid: str, events: list[pb.HistoryEvent]) -> None:
    keys = Counter(key for key in map(_key, events) if key is not None)
    twice = [key for key, n in keys.items() if n > 1]
    assert not twice, f"{iid}: history steps applied twice: {twice}"
    assert keys[("execution_started",)] == 1 and keys[("execution_completed",)] == 1, iid


def check_effects(log: Path, reran_allowed: int) -> int:
    # A line cut short by the kill has no newline: its fsync never returned, so it is not counted.
    lines = log.read_text().split("\n")[:-1] if log.exists() else []
    ran = Counter(tuple(line.split("|")[:2]) for line in lines)
    expected = Counter({(iid, token): n for iid, tokens in worker.EFFECTS.items()
                        for token, n in tokens.items()})
    assert set(ran) == set(expected), f"activities ran that should not have: {ran - expected}"
    for pair, n in expected.items():
        # A retried activity may need fewer runs after a crash: a delivery whose process died
        # before the body ran still counts as an attempt, and it fails only its first attempts.
        least = 1 if reran_allowed else n
        assert least <= ran[pair] <= n + reran_allowed, f"{pair} ran {ran[pair]} times, not {n}"
    return sum((ran - expected).values())


def crash_points(commits: int, sample: int | None, seed: int) -> list[tuple[int, str]]:
    every = [(k, when) for k in range(1, commits + 1) for when in WHEN]
    if sample is None or sample >= len(every):
        return every
    return sorted(random.Random(seed).sample(every, sample))


def sweep(points: list[tuple[int, str]], jobs: int) -> list[Outcome]:
    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(lambda point: trial(*point), points))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, help="crash points to draw (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    started = time.monotonic()
    commits = baseline_commits()
    points = crash_points(commits, args.sample, args.seed)
    print(f"workload: {len(worker.WORKLOAD)} instances, {commits} commits without a crash; "
          f"trying {len(points)} crash points with {args.jobs} jobs", flush=True)
    outcomes = sweep(points, args.jobs)
    died = [o for o in outcomes if o.died]
    failed = [o for o in died if o.failure]
    for o in failed:
        print(f"FAILED: crash at commit {o.crash_at} ({o.when}): {o.failure}")
    print("\n| crash point | tried | killed | survived | activity reruns |")
    print("| --- | --- | --- | --- | --- |")
    for when in WHEN:
        mine = [o for o in died if o.when == when]
        print(f"| just {when} a commit | {sum(o.when == when for o in outcomes)} | {len(mine)} "
              f"| {sum(not o.failure for o in mine)} | {sum(o.reran for o in mine)} |")
    print(f"\n{len(died)} crash points killed the process, {len(failed)} failed "
          f"({len(outcomes) - len(died)} came after the workload's last commit); "
          f"{time.monotonic() - started:.0f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
