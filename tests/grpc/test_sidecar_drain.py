"""SIGTERM drains `python -m dtrio serve`: the work items that SDK workers hold are completed
within the grace, nothing new goes out, the process exits 0; started again on the same store and
port, the same SDK worker process reconnects by itself and everything finishes exactly once."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections import Counter
from pathlib import Path

from durabletask.client import OrchestrationStatus, TaskHubGrpcClient
from sidecar_process import executions, listening_port, serve, start_worker, wait_until

INSTANCES = 50
STEPS = 3  # faults_worker.STEPS


def test_sigterm_drains_and_the_sdk_worker_reconnects_to_the_next_start(tmp_path: Path) -> None:
    db, ran = tmp_path / "store.sqlite3", tmp_path / "executions.txt"
    ran.touch()
    logs = [tmp_path / "first.log", tmp_path / "second.log", tmp_path / "worker.log"]
    processes: list[subprocess.Popen[str]] = []
    try:
        first = serve(logs[0], "--port", "0", "--db", str(db))
        processes.append(first)
        port = listening_port(first, logs[0])
        address = f"127.0.0.1:{port}"
        processes.append(start_worker(address, ran, logs[2]))
        client = TaskHubGrpcClient(host_address=address)
        ids = [client.schedule_new_orchestration("steps", input=n, instance_id=f"drain-{n}")
               for n in range(INSTANCES)]
        # The worker is busy: activities are running, and most orchestrations have more to do.
        wait_until("activities run", lambda: len(executions(ran)) >= INSTANCES // 2)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0, logs[0].read_text()
        first_log = logs[0].read_text()
        assert "SIGTERM: shutting down" in first_log
        # Activities were running when the signal came, and they all finished within the grace.
        held = re.search(r"draining: (\d+) activity work items in flight", first_log)
        assert held and int(held.group(1)) > 0, first_log
        assert "drained: every activity work item in flight finished" in first_log, first_log
        assert "did not finish" not in first_log, first_log
        assert "sidecar drained" in first_log, first_log
        # Draining sent out nothing new: the orchestrations had steps left.
        during_first = len(executions(ran))
        assert during_first < INSTANCES * STEPS

        second = serve(logs[1], "--port", str(port), "--db", str(db))
        processes.append(second)
        assert listening_port(second, logs[1]) == port
        client = TaskHubGrpcClient(host_address=address)
        for n, iid in enumerate(ids):
            state = client.wait_for_orchestration_completion(iid, timeout=30)
            assert state is not None and state.runtime_status == OrchestrationStatus.COMPLETED, (
                iid, state, logs[1].read_text())
            assert json.loads(state.serialized_output) == [n * 10 + i for i in range(STEPS)]
            history = client.get_orchestration_history(iid)
            kinds = [type(event).__name__ for event in history]
            assert kinds.count("ExecutionCompletedEvent") == 1, (iid, kinds)

        counts = Counter(executions(ran))
        assert set(counts) == {(iid, str(i)) for iid in ids for i in range(STEPS)}
        duplicated = {key: count for key, count in counts.items() if count > 1}
        print(f"{during_first} activity executions before the restart; "
              f"{len(duplicated)} of {len(counts)} ran more than once")
        # The grace (10 s) outlasts every activity the worker held: none ran twice.
        assert not duplicated, duplicated

        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0, logs[1].read_text()
    finally:
        for process in processes:
            process.kill()
            process.wait()
