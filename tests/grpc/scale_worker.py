"""An official SDK worker in a process of its own, for the scale-out test on PostgreSQL.

    python scale_worker.py ADDRESS NAME DATABASE_URL

Prints "ready" once started. Each activity records its side effect as a row in the `effects`
table of DATABASE_URL (with NAME, the sidecar this worker is connected to); each instance's
output names the sidecar whose worker ran its last step.
"""

from __future__ import annotations

import sys
import threading
from datetime import timedelta
from typing import Any

import psycopg
from durabletask import entities, task, worker
from durabletask.entities import EntityInstanceId

NAME = sys.argv[2] if len(sys.argv) > 2 else "?"
DATABASE = sys.argv[3] if len(sys.argv) > 3 else ""
COUNTER = EntityInstanceId("counter", "total")
_local = threading.local()


def _effects() -> psycopg.Connection[Any]:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = psycopg.connect(DATABASE, autocommit=True)
    return conn


def effect(ctx: task.ActivityContext, key: str) -> int:
    _effects().execute("INSERT INTO effects (key, sidecar) VALUES (%s, %s)", (key, NAME))
    return len(key)


def counter(ctx: entities.EntityContext, amount: Any) -> Any:
    value = ctx.get_state(int, 0)
    if ctx.operation == "add":
        ctx.set_state(value + amount)
    return ctx.get_state(int, 0)


def child(ctx: task.OrchestrationContext, key: str):
    return (yield ctx.call_activity(effect, input=f"{key}:child"))


def mixed(ctx: task.OrchestrationContext, n: int):
    """Fan-out, a timer, an external event, a sub-orchestration and an entity signal."""
    key = ctx.instance_id
    fanned = yield task.when_all(
        [ctx.call_activity(effect, input=f"{key}:fan{i}") for i in range(3)])
    yield ctx.create_timer(timedelta(milliseconds=100))
    extra = yield ctx.wait_for_external_event("go")
    below = yield ctx.call_sub_orchestrator(child, input=key, instance_id=f"{key}-child")
    ctx.signal_entity(COUNTER, "add", 1)
    return {"n": n, "total": sum(fanned) + below + extra, "finished_by": NAME}


if __name__ == "__main__":
    sdk_worker = worker.TaskHubGrpcWorker(host_address=sys.argv[1])
    sdk_worker.add_orchestrator(mixed)
    sdk_worker.add_orchestrator(child)
    sdk_worker.add_activity(effect)
    sdk_worker.add_entity(counter)
    sdk_worker.start()
    print("ready", flush=True)
    threading.Event().wait()  # until killed
