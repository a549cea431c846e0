"""An official SDK worker in a process of its own, for tests that kill it mid-run.

    python worker_process.py ADDRESS

Prints "ready" once connected, then a line "<instance ID> <n>" as each activity starts.
"""

from __future__ import annotations

import sys
import threading
import time

from durabletask import task, worker


def slow_square(ctx: task.ActivityContext, n: int) -> int:
    print(ctx.orchestration_id, n, flush=True)
    time.sleep(0.3)
    return n * n


def chain(ctx: task.OrchestrationContext, count: int):
    total = 0
    for n in range(count):
        total += yield ctx.call_activity(slow_square, input=n)
    return total


if __name__ == "__main__":
    sdk_worker = worker.TaskHubGrpcWorker(host_address=sys.argv[1])
    sdk_worker.add_orchestrator(chain)
    sdk_worker.add_activity(slow_square)
    sdk_worker.start()
    print("ready", flush=True)
    threading.Event().wait()  # until killed
