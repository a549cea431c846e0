"""The child process of test_crash.py: runs an engine on a SQLite file until it is killed.

    python crash_worker.py start  DB LOG   schedule the instances, then run them
    python crash_worker.py resume DB LOG   run an engine on the same file until all are done

Every activity appends `instance_id,task_index` to LOG (fsynced before it returns), so the
parent can count side effects that happened before and after the kill.
"""

from __future__ import annotations

import os
import sys

import trio

import dtrio

INSTANCES = 30
TASKS = 3
# Small so an instance's work spans the kill and few activities are in flight at once.
MAX_CONCURRENT_ACTIVITIES = 4
# Short leases, so the resumed engine takes over what the killed one held within a second.
OPTIONS = {
    "max_concurrent_activities": MAX_CONCURRENT_ACTIVITIES,
    "activity_lease": 1.0,
    "orchestration_lease": 1.0,
    "max_poll_interval": 0.05,
    "shutdown_grace": 1.0,
}

registry = dtrio.Registry()
log_path = ""


def instance_ids() -> list[str]:
    return [f"crash-{i}" for i in range(INSTANCES)]


def expected_output(n: int) -> list[int]:
    return [n * (k + 1) for k in range(TASKS)]


@registry.activity
async def side_effect(ctx: dtrio.ActivityContext, task: dict) -> int:
    # Blocking on purpose: the line must be on disk before anything else can happen.
    with open(log_path, "a") as f:  # noqa: ASYNC230
        f.write(f"{ctx.orchestration_id},{task['k']}\n")
        f.flush()
        os.fsync(f.fileno())
    await trio.sleep(0.02)
    return task["n"] * (task["k"] + 1)


@registry.orchestrator
async def three_steps(ctx: dtrio.OrchestrationContext, n: int) -> list[int]:
    return [await ctx.call_activity(side_effect, input={"n": n, "k": k}) for k in range(TASKS)]


async def main(mode: str, db: str) -> None:
    async with dtrio.open_engine(registry, db=db, **OPTIONS) as engine:
        if mode == "start":
            for n, iid in enumerate(instance_ids()):
                await engine.client.schedule_new_orchestration(
                    three_steps, input=n, instance_id=iid
                )
            print("scheduled", flush=True)
        for iid in instance_ids():
            await engine.client.wait_for_orchestration_completion(iid, timeout=20)
        print("done", flush=True)


if __name__ == "__main__":
    mode, db, log_path = sys.argv[1:4]
    trio.run(main, mode, db)
