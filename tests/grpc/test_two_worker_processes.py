"""Two SDK worker processes share one sidecar; one is killed (SIGKILL) mid-run, and the other
finishes everything: what the dead one held is dispatched again at once, not at lease expiry."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import trio
from durabletask.client import OrchestrationStatus
from sidecar_harness import Sidecar

SCRIPT = Path(__file__).with_name("worker_process.py")
COUNT = 20
STEPS = 3


def started_activities(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line != "ready"]


async def wait_for(log: Path, predicate, timeout: float = 15) -> None:
    with trio.fail_after(timeout):
        while not predicate(log.read_text().splitlines()):
            await trio.sleep(0.02)


async def test_a_killed_worker_process_loses_nothing(sidecar: Sidecar, tmp_path: Path) -> None:
    logs = [tmp_path / "survivor.log", tmp_path / "victim.log"]
    processes = []
    for log in logs:
        with log.open("w") as out:
            processes.append(subprocess.Popen(
                [sys.executable, str(SCRIPT), sidecar.address], stdout=out,
                stderr=subprocess.DEVNULL,
            ))
    survivor, victim = logs
    try:
        for log in logs:
            await wait_for(log, lambda lines: "ready" in lines)
        start = sidecar.client.schedule_new_orchestration
        ids = [await sidecar.call(start, "chain", input=STEPS) for _ in range(COUNT)]
        # Killed with activities of its own running (each takes 0.3 s).
        await wait_for(victim, lambda lines: len(lines) > 3)
        processes[1].send_signal(signal.SIGKILL)
        processes[1].wait()
        held = set(started_activities(victim))
        killed_at = trio.current_time()

        wait = sidecar.client.wait_for_orchestration_completion
        for iid in ids:
            state = await sidecar.call(wait, iid, timeout=15)
            assert state.runtime_status == OrchestrationStatus.COMPLETED
            assert state.serialized_output == str(sum(n * n for n in range(STEPS)))
        # Far sooner than a lease runs out (15 s for steps, 30 s for activities).
        assert trio.current_time() - killed_at < 15
        # What the dead worker was running ran again on the survivor.
        assert held & set(started_activities(survivor))
    finally:
        for process in processes:
            process.kill()
            process.wait()
