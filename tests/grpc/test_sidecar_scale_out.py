"""Scale-out on PostgreSQL with the official Python SDK: three `python -m dtrio serve` processes
on one database, an SDK worker on each of two of them, and a client on the third.

The sidecars poll only every two minutes, so work and waits cross between them by the
announcements of `LISTEN`/`NOTIFY` alone (the waits give up long before a poll). Partway through,
one sidecar is SIGKILLed: the others take its work over, every instance completes exactly once,
every activity's side effect is in the `effects` table (twice only for work the killed sidecar
had out), and the entity counter counts each instance once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg
from durabletask.client import OrchestrationStatus, TaskHubGrpcClient
from durabletask.entities import EntityInstanceId
from sidecar_process import listening_port, serve, wait_until

WORKER = Path(__file__).with_name("scale_worker.py")
COUNT = 300
POLL = "120"  # seconds: far longer than any wait below
WAIT = 60.0


def expected_total(iid: str, n: int) -> int:
    return sum(len(f"{iid}:fan{i}") for i in range(3)) + len(f"{iid}:child") + n % 7


def expected_effects(ids: list[str]) -> set[str]:
    return {f"{iid}:{part}" for iid in ids for part in ("fan0", "fan1", "fan2", "child")}


def test_three_sidecars_share_the_work_and_survive_one_killed(postgres_db, tmp_path):
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE effects (key text NOT NULL, sidecar text NOT NULL)")
    processes: dict[str, subprocess.Popen[str]] = {}
    try:
        ports = {}
        for name in "ABC":
            log = tmp_path / f"sidecar-{name}.log"
            processes[name] = serve(log, "--port", "0", "--db", postgres_db,
                                    "--max-poll-interval", POLL)
        for name in "ABC":
            ports[name] = listening_port(processes[name], tmp_path / f"sidecar-{name}.log")
        for name in "AB":
            with (tmp_path / f"worker-{name}.log").open("w") as err:
                processes[f"worker-{name}"] = subprocess.Popen(
                    [sys.executable, str(WORKER), f"127.0.0.1:{ports[name]}", name, postgres_db],
                    stdout=subprocess.PIPE, stderr=err, text=True)
        for name in "AB":
            assert processes[f"worker-{name}"].stdout.readline().strip() == "ready"

        client = TaskHubGrpcClient(host_address=f"127.0.0.1:{ports['C']}")
        ids = [f"m{n:03d}" for n in range(COUNT)]
        for n, iid in enumerate(ids):
            client.schedule_new_orchestration("mixed", input=n, instance_id=iid)
        half = COUNT // 2
        first, second = ids[:half], ids[half:]
        for n, iid in enumerate(first):
            client.raise_orchestration_event(iid, "go", data=n % 7)
        finished_by = Counter()
        for iid in first:
            state = client.wait_for_orchestration_completion(iid, timeout=WAIT)
            assert state.runtime_status == OrchestrationStatus.COMPLETED, state
            finished_by[json.loads(state.serialized_output)["finished_by"]] += 1
        # Waits on C ended for instances whose last step A's worker ran.
        assert finished_by["A"] > 0 and finished_by["B"] > 0

        for n, iid in enumerate(second, start=half):
            client.raise_orchestration_event(iid, "go", data=n % 7)

        def children_done() -> int:
            with psycopg.connect(postgres_db) as conn:
                return conn.execute(
                    "SELECT count(*) FROM effects WHERE key LIKE %s AND key >= %s",
                    ("%:child", second[0])).fetchone()[0]

        wait_until("the second half is under way", lambda: children_done() >= len(second) // 8,
                   timeout=WAIT)
        processes["A"].send_signal(signal.SIGKILL)
        processes["A"].wait()

        for n, iid in enumerate(ids):
            state = client.wait_for_orchestration_completion(iid, timeout=WAIT)
            assert state.runtime_status == OrchestrationStatus.COMPLETED, state
            assert json.loads(state.serialized_output)["total"] == expected_total(iid, n)
            history = client.get_orchestration_history(iid)
            assert [type(e).__name__ for e in history].count("ExecutionCompletedEvent") == 1

        with psycopg.connect(postgres_db) as conn:
            rows = conn.execute("SELECT key, sidecar FROM effects").fetchall()
        runs = Counter(key for key, _ in rows)
        assert set(runs) == expected_effects(ids)
        by_a = {key for key, sidecar in rows if sidecar == "A"}
        # Run twice only when the killed sidecar had it out.
        assert {key for key, times in runs.items() if times > 1} <= by_a
        assert any(key >= second[0] for key in by_a)  # A was killed mid-work

        counter = EntityInstanceId("counter", "total")
        deadline = time.monotonic() + WAIT
        while True:
            meta = client.get_entity(counter)
            if meta is not None and meta.get_state(int) >= COUNT:
                break
            assert time.monotonic() < deadline, "the counter did not reach the count"
            time.sleep(0.1)
        assert meta.get_state(int) == COUNT
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
