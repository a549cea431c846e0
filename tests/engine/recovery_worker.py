"""The child process of test_recovery.py: an engine with the default leases on a SQLite file.

    python recovery_worker.py start  DB LOG KIND   start instance KIND and hang in it until killed
    python recovery_worker.py resume DB LOG KIND   run an engine on the same file until instance
                                                   KIND completes, within RESUME_BOUND seconds

KIND "activity" hangs in a long activity, "step" in an orchestration step, "after" in the step
that an activity's result wakes (which runs in the activity's commit). What ran is appended to
LOG (fsynced) as it runs: `activity <attempt> <idempotency key>`, `step <mode>`,
`after <mode> <activity output>`.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import trio

import dtrio

# Well under the default leases (15 s for steps, 30 s for activities): a resumed engine that
# waited for them to lapse would not make it.
RESUME_BOUND = 10

registry = dtrio.Registry()
mode = log_path = ""


def record(line: str) -> None:
    # Blocking on purpose: the line must be on disk before the process can be killed.
    with open(log_path, "a") as f:  # noqa: ASYNC230
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@registry.activity
async def hold(ctx: dtrio.ActivityContext, _) -> str:
    record(f"activity {ctx.attempt} {ctx.idempotency_key}")
    if mode == "start":
        await trio.sleep_forever()  # a long activity: it runs until its process is killed
    return "held"


@registry.orchestrator
async def activity(ctx: dtrio.OrchestrationContext, _) -> str:
    return await ctx.call_activity(hold)


@registry.orchestrator
async def step(ctx: dtrio.OrchestrationContext, _) -> str:
    record(f"step {mode}")
    if mode == "start":
        time.sleep(3600)  # a step that takes long: its lease is held until the process is killed
    return "stepped"


@registry.activity
async def quick(ctx: dtrio.ActivityContext, _) -> int:
    return ctx.attempt


@registry.orchestrator
async def after(ctx: dtrio.OrchestrationContext, _) -> str:
    attempt = await ctx.call_activity(quick)
    if not ctx.is_replaying:
        record(f"after {mode} {attempt}")
        if mode == "start":
            time.sleep(3600)  # in the commit of the activity's result, until killed
    return "stepped"


async def main(kind: str, db: str) -> None:
    async with dtrio.open_engine(registry, db=db) as engine:
        if mode == "start":
            await engine.client.schedule_new_orchestration(kind, instance_id=kind)
        state = await engine.client.wait_for_orchestration_completion(kind, timeout=RESUME_BOUND)
        print(state.runtime_status.name, state.output, flush=True)


if __name__ == "__main__":
    mode, db, log_path, kind = sys.argv[1:5]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    trio.run(main, kind, db)
