"""An official SDK worker in a process of its own, for tests that stop or starve the sidecar
under it (it must reconnect by itself).

    python faults_worker.py ADDRESS EXECUTIONS [big]

Appends a line "<instance ID> <step>" to the file EXECUTIONS as each activity starts, so that a
test can count how often each one ran. `payload` returns only once the file EXECUTIONS.go
exists. With `big` the worker registers only `big` and `payload`, and asks the sidecar for only
those. Prints "ready" once started.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from durabletask import task, worker
from durabletask.grpc_options import GrpcWorkerResiliencyOptions

STEPS = 3
STEP_SECONDS = 0.3
PAYLOAD_BYTES = 100_000

_executions = -1  # the file descriptor of EXECUTIONS
_go = ""  # the path of EXECUTIONS.go


def _record(ctx: task.ActivityContext, what: object) -> None:
    # One write to a file opened for appending: lines from threads never interleave.
    os.write(_executions, f"{ctx.orchestration_id} {what}\n".encode())


def step(ctx: task.ActivityContext, args: list[int]) -> int:
    n, i = args
    _record(ctx, i)
    time.sleep(STEP_SECONDS)
    return n * 10 + i


def steps(ctx: task.OrchestrationContext, n: int):
    """[n*10, n*10+1, n*10+2], one slow activity at a time."""
    results = []
    for i in range(STEPS):
        results.append((yield ctx.call_activity(step, input=[n, i])))
    return results


def payload(ctx: task.ActivityContext, n: int) -> str:
    _record(ctx, "payload")
    while not os.path.exists(_go):
        time.sleep(0.01)
    return f"{n}:" + "x" * PAYLOAD_BYTES


def big(ctx: task.OrchestrationContext, n: int):
    """The length of a ~100 KB activity result (which the sidecar stores)."""
    result = yield ctx.call_activity(payload, input=n)
    return len(result)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    _go = sys.argv[2] + ".go"
    _executions = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sdk_worker = worker.TaskHubGrpcWorker(
        host_address=sys.argv[1],
        # Enough threads that every activity a drain lets finish runs at once.
        concurrency_options=worker.ConcurrencyOptions(maximum_thread_pool_workers=32),
        # Reconnecting within about a second of the sidecar's return keeps tests short; the
        # reconnecting itself is the SDK's own.
        resiliency_options=GrpcWorkerResiliencyOptions(
            reconnect_backoff_base_seconds=0.1, reconnect_backoff_cap_seconds=1.0),
    )
    sdk_worker.add_orchestrator(big)
    sdk_worker.add_activity(payload)
    if sys.argv[3:] == ["big"]:
        sdk_worker.use_work_item_filters()
    else:
        sdk_worker.add_orchestrator(steps)
        sdk_worker.add_activity(step)
    sdk_worker.start()
    print("ready", flush=True)
    threading.Event().wait()  # until killed
