"""The child process of the crash-point sweep (crash_sweep.py): a fixed mixed workload on a store.

    python sweep_worker.py DB LOG [K before|after]

Schedules the workload's instances (those not there yet) and runs an engine until all of them
finish, then prints a JSON report of their states and of the entities. With K, the process dies
(`os._exit`, no cleanup, as SIGKILL) at its K-th storage commit: just before the COMMIT runs, or
just after it returned.

The crash hook lives here, not in dtrio: the store class the SQLite backend opens is replaced by
a subclass whose connection counts its COMMITs. Every write, lease and renewal of the engine
commits through that one connection, so K runs over every commit the workload makes.

Every activity appends `instance|token|attempt` to LOG, fsynced before it returns, so the parent
can count how often each ran.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from datetime import timedelta
from typing import Any

import trio

import dtrio
from dtrio import OrchestrationStatus as S
from dtrio.backend import sqlite as sqlite_backend
from dtrio.backend.sqlite_store import SqliteStore

KILLED = 77  # the exit status of a process that died at its crash point

OPTIONS = {
    "max_concurrent_activities": 4,
    "activity_lease": 2.0,
    "orchestration_lease": 2.0,
    "max_poll_interval": 0.02,
    "shutdown_grace": 1.0,
}

FAN_OUT = 4
LOOPS = 3
BANKS = 3
FLAKY_FAILURES = 2
ALL = frozenset(S)
registry = dtrio.Registry()
log_path = ""


def record(ctx: dtrio.ActivityContext, token: str) -> None:
    # Blocking on purpose: the line must be on disk before anything else can happen.
    with open(log_path, "a") as f:  # noqa: ASYNC230
        f.write(f"{ctx.orchestration_id}|{token}|{ctx.attempt}\n")
        f.flush()
        os.fsync(f.fileno())


@registry.activity
async def effect(ctx: dtrio.ActivityContext, task: dict) -> int:
    record(ctx, task["token"])
    await trio.sleep(0.005)
    return int(task["value"])


@registry.activity
async def flaky(ctx: dtrio.ActivityContext, value: int) -> int:
    record(ctx, "flaky")
    if ctx.attempt <= FLAKY_FAILURES:
        raise RuntimeError(f"attempt {ctx.attempt} fails")
    return value * 10


@registry.orchestrator
async def fan_out(ctx: dtrio.OrchestrationContext, n: int) -> int:
    tasks = [
        ctx.call_activity(effect, input={"token": f"fan{k}", "value": n * 10 + k})
        for k in range(FAN_OUT)
    ]
    return sum(await dtrio.when_all(tasks))


@registry.orchestrator
async def waiter(ctx: dtrio.OrchestrationContext, _: None) -> str:
    data = await ctx.wait_for_external_event("go", timeout=timedelta(seconds=60))
    late = ctx.wait_for_external_event("never")
    timer = ctx.create_timer(timedelta(milliseconds=20))
    first = await dtrio.when_any([late, timer])
    return f"{data}:{'timer' if first is timer else 'event'}"


@registry.orchestrator
async def timers_and_events(ctx: dtrio.OrchestrationContext, _: None) -> list[Any]:
    child_id = f"{ctx.instance_id}:waiter"
    child = ctx.call_sub_orchestrator(waiter, instance_id=child_id)
    await ctx.create_timer(timedelta(milliseconds=30))
    ctx.send_event(child_id, "go", "hello")
    sub = await ctx.call_sub_orchestrator(fan_out, input=7)
    return [await child, sub]


@registry.orchestrator
async def loop(ctx: dtrio.OrchestrationContext, state: dict) -> list[int]:
    i, seen = state["i"], state["seen"]
    seen = [*seen, await ctx.call_activity(effect, input={"token": f"loop{i}", "value": i})]
    if i + 1 < LOOPS:
        ctx.continue_as_new({"i": i + 1, "seen": seen})
        return []
    return seen


@registry.orchestrator
async def retried(ctx: dtrio.OrchestrationContext, value: int) -> int:
    policy = dtrio.RetryPolicy(max_attempts=5, first_retry_interval=timedelta(milliseconds=10))
    return await ctx.call_activity(flaky, input=value, retry_policy=policy)


@registry.entity
async def account(ctx: dtrio.EntityContext, amount: int) -> int:
    if ctx.operation == "add":
        ctx.set_state(ctx.get_state(0) + amount)
    return ctx.get_state(0)


@registry.orchestrator
async def bank(ctx: dtrio.OrchestrationContext, amount: int) -> str:
    a, b = dtrio.EntityId("account", "a"), dtrio.EntityId("account", "b")
    async with ctx.lock_entities([a, b]):
        await ctx.call_entity(a, "add", 100)
        await ctx.call_entity(a, "add", -amount)
        await ctx.call_entity(b, "add", amount)
    ctx.signal_entity(dtrio.EntityId("account", "transfers"), "add", 1)
    return f"moved {amount}"


# instance id -> (orchestrator, input, expected output)
WORKLOAD: dict[str, tuple[Any, Any, Any]] = {
    **{f"fan-{n}": (fan_out, n, sum(n * 10 + k for k in range(FAN_OUT))) for n in range(2)},
    "timers": (timers_and_events, None, ["hello:timer", sum(70 + k for k in range(FAN_OUT))]),
    "loop": (loop, {"i": 0, "seen": []}, list(range(LOOPS))),
    "retry": (retried, 4, 40),
    **{f"bank-{n}": (bank, 10 * (n + 1), f"moved {10 * (n + 1)}") for n in range(BANKS)},
}
# instance id -> token -> how often it runs without a crash
EFFECTS: dict[str, dict[str, int]] = {
    **{f"fan-{n}": {f"fan{k}": 1 for k in range(FAN_OUT)} for n in range(2)},
    "timers:0003": {f"fan{k}": 1 for k in range(FAN_OUT)},
    "loop": {f"loop{i}": 1 for i in range(LOOPS)},
    "retry": {"flaky": FLAKY_FAILURES + 1},
}
ENTITIES = {
    "@account@a": sum(100 - 10 * (n + 1) for n in range(BANKS)),
    "@account@b": sum(10 * (n + 1) for n in range(BANKS)),
    "@account@transfers": BANKS,
}


class _CountingConnection:
    """A connection that dies at its K-th COMMIT; everything else passes through."""

    def __init__(self, conn: sqlite3.Connection, crash_at: int, when: str) -> None:
        self._conn = conn
        self._crash_at = crash_at
        self._when = when
        self.commits = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, sql: str, *params: Any) -> sqlite3.Cursor:
        if sql != "COMMIT":
            return self._conn.execute(sql, *params)
        self.commits += 1
        hit = self.commits == self._crash_at
        if hit and self._when == "before":
            os._exit(KILLED)
        cursor = self._conn.execute(sql)
        if hit:
            os._exit(KILLED)
        return cursor


def install_crash_point(crash_at: int, when: str) -> list[_CountingConnection]:
    """Make every store opened from now on die at its K-th commit; the connections opened."""
    opened: list[_CountingConnection] = []

    class CrashingStore(SqliteStore):
        def __init__(self, conn: sqlite3.Connection, *args: Any) -> None:
            counting = _CountingConnection(conn, crash_at, when)
            opened.append(counting)
            super().__init__(counting, *args)  # type: ignore[arg-type]

    sqlite_backend.SqliteStore = CrashingStore  # type: ignore[misc]
    return opened


async def settled_entities(client: dtrio.Client) -> dict[str, Any]:
    """The entities' states once the messages sent to them (by instances that all finished)
    have all been processed."""
    while True:
        found = {entity: await client.get_entity(entity) for entity in ENTITIES}
        if all(e is not None and e.backlog_queue_size == 0 and e.locked_by is None
               for e in found.values()):
            return {entity: e.state for entity, e in found.items()}  # type: ignore[union-attr]
        await trio.sleep(0.01)


async def main(db: str, crash_at: int, when: str) -> None:
    opened = install_crash_point(crash_at, when)
    async with dtrio.open_engine(registry, db=db, **OPTIONS) as engine:
        client = engine.client
        for iid, (orchestrator, data, _) in WORKLOAD.items():
            await client.schedule_new_orchestration(
                orchestrator, input=data, instance_id=iid,
                reuse_policy=dtrio.ReusePolicy(ignore=ALL),
            )
        report: dict[str, Any] = {"instances": {}, "entities": {}}
        for iid in WORKLOAD:
            state = await client.wait_for_orchestration_completion(iid, timeout=60)
            report["instances"][iid] = [state.runtime_status.name, state.output]
        report["entities"] = await settled_entities(client)
    report["commits"] = sum(conn.commits for conn in opened)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    db, log_path = sys.argv[1:3]
    crash_at, when = (int(sys.argv[3]), sys.argv[4]) if len(sys.argv) > 3 else (0, "never")
    trio.run(main, db, crash_at, when)
