"""An embedded engine (`dtrio.open_engine`) in a process of its own, for the scale-out tests on
PostgreSQL.

    python scale_engine.py DATABASE_URL NAME

Runs the orchestrations, activities and entity below, polling only every two minutes, and takes
commands on stdin, one a line, answering each on stdout:

    start COUNT       schedule instances m000.. of `mixed`          -> "started"
    go FIRST LAST     raise "go" on instances FIRST..LAST-1         -> "raised"
    wait FIRST LAST   wait for them: a JSON line per instance       -> "waited"
    count             the counter entity's state                    -> the number

Each activity records its side effect as a row in the `effects` table (with NAME); each
instance's output names the process that ran its last step.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from functools import partial

import psycopg
import trio

import dtrio

URL, NAME = sys.argv[1], sys.argv[2]
COUNTER = dtrio.EntityId("counter", "total")
registry = dtrio.Registry()


def _record(key: str) -> None:
    # The application's own writes ride out a database restart too.
    for _ in range(150):
        try:
            with psycopg.connect(URL, autocommit=True) as conn:
                conn.execute("INSERT INTO effects (key, sidecar) VALUES (%s, %s)", (key, NAME))
            return
        except psycopg.OperationalError:
            time.sleep(0.2)
    raise RuntimeError(f"could not record {key}")


@registry.activity
async def effect(ctx, key):
    await trio.to_thread.run_sync(_record, key)
    return len(key)


@registry.entity
async def counter(ctx: dtrio.EntityContext, amount):
    if ctx.operation == "add":
        ctx.set_state(ctx.get_state(0) + amount)
    return ctx.get_state(0)


@registry.orchestrator
async def child(ctx, key):
    return await ctx.call_activity(effect, input=f"{key}:child")


@registry.orchestrator
async def mixed(ctx, n):
    """Fan-out, a timer, an external event, a sub-orchestration and an entity signal."""
    key = ctx.instance_id
    fanned = await dtrio.when_all(
        [ctx.call_activity(effect, input=f"{key}:fan{i}") for i in range(3)])
    await ctx.create_timer(timedelta(milliseconds=100))
    extra = await ctx.wait_for_external_event("go")
    below = await ctx.call_sub_orchestrator(child, input=key, instance_id=f"{key}-child")
    ctx.signal_entity(COUNTER, "add", 1)
    return {"n": n, "total": sum(fanned) + below + extra, "finished_by": NAME}


def ids(first: int, last: int) -> list[str]:
    return [f"m{n:03d}" for n in range(first, last)]


async def serve(client: dtrio.Client) -> None:
    while line := await trio.to_thread.run_sync(sys.stdin.readline):
        command, *args = line.split()
        numbers = [int(a) for a in args]
        if command == "start":
            for n, iid in enumerate(ids(0, numbers[0])):
                await client.schedule_new_orchestration(mixed, input=n, instance_id=iid)
            print("started", flush=True)
        elif command == "go":
            for n, iid in enumerate(ids(*numbers), start=numbers[0]):
                await client.raise_orchestration_event(iid, "go", n % 7)
            print("raised", flush=True)
        elif command == "wait":
            for iid in ids(*numbers):
                state = await client.wait_for_orchestration_completion(iid, timeout=60)
                failure = state.failure_details
                print(json.dumps({"id": iid, "status": state.runtime_status.name,
                                  "output": state.output,
                                  "failure": failure and failure.message}), flush=True)
            print("waited", flush=True)
        elif command == "count":
            meta = await client.get_entity(COUNTER)
            print(meta.state if meta is not None else 0, flush=True)


async def main() -> None:
    async with dtrio.open_engine(registry, db=URL, max_poll_interval=120,
                                 shutdown_grace=0.0) as engine:
        print("ready", flush=True)
        await serve(engine.client)


if __name__ == "__main__":
    trio.run(partial(main))
