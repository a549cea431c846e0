"""`python -m dtrio serve` killed (SIGKILL) while an SDK worker runs an activity it handed out:
started again on the same store and port, it takes the activity over from its dead predecessor
at once, not when the activity's lease lapses, and the SDK worker (reconnecting by itself)
finishes the instance."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from pathlib import Path

from durabletask.client import OrchestrationStatus, TaskHubGrpcClient
from sidecar_process import executions, listening_port, serve, start_worker, wait_until

# Well under the default activity lease (30 s): a sidecar that waited for it would not make it.
BOUND = 15


def test_a_killed_sidecar_restarted_on_its_store_takes_over_what_it_held(tmp_path: Path) -> None:
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
        iid = client.schedule_new_orchestration("big", input=7, instance_id="held")
        # `payload` runs in the worker, and waits (for EXECUTIONS.go) with its work item held.
        wait_until("the activity runs", lambda: executions(ran) == [(iid, "payload")])
        first.send_signal(signal.SIGKILL)
        first.wait()
        with sqlite3.connect(db) as conn:
            [(owner,)] = conn.execute(
                "SELECT lock_owner FROM activities WHERE lock_owner IS NOT NULL").fetchall()
        assert owner.split(":")[1] == str(first.pid)
        ran.with_name(ran.name + ".go").touch()  # the activity may finish, wherever it runs

        second = serve(logs[1], "--port", str(port), "--db", str(db))
        processes.append(second)
        assert listening_port(second, logs[1]) == port
        state = TaskHubGrpcClient(host_address=address).wait_for_orchestration_completion(
            iid, timeout=BOUND)
        assert state is not None and state.runtime_status == OrchestrationStatus.COMPLETED, (
            state, logs[1].read_text())
        assert state.serialized_output == str(len("7:") + 100_000)
        assert (f"activity 'payload' (#1) of 'held' taken over from {owner}, which is gone"
                in logs[1].read_text()), logs[1].read_text()
    finally:
        for process in processes:
            process.kill()
            process.wait()
