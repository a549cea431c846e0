"""One activity call, however many times it runs: `ctx.attempt` counts its attempts across
retries (new tasks after a retry policy's wait) and redeliveries (the same task run again), and
`ctx.idempotency_key` stays the same for all of them."""

from __future__ import annotations

from datetime import timedelta

import trio

import dtrio
from dtrio.testing import open_test_engine

registry = dtrio.Registry()
# (attempt, idempotency key, task ID) of every run of `charge`, in order.
runs: list[tuple[int, str, int]] = []
# Set when `charge` has started an attempt that hangs until its engine goes away.
hanging: trio.Event | None = None

POLICY = dtrio.RetryPolicy(max_attempts=4, first_retry_interval=timedelta(seconds=5))


@registry.activity
async def charge(ctx: dtrio.ActivityContext, plan: dict) -> str:
    runs.append((ctx.attempt, ctx.idempotency_key, ctx.task_id))
    if ctx.attempt in plan.get("hang", ()):
        assert hanging is not None
        hanging.set()
        await trio.sleep_forever()
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt} timed out")
    return f"charged on attempt {ctx.attempt}"


@registry.activity
async def note(ctx: dtrio.ActivityContext, _) -> None:
    runs.append((ctx.attempt, ctx.idempotency_key, ctx.task_id))


@registry.orchestrator
async def order(ctx: dtrio.OrchestrationContext, plan: dict) -> str:
    await ctx.call_activity(note)  # a call of its own, task #0; the charge's first task is #1
    return await ctx.call_activity(charge, input=plan, retry_policy=POLICY)


async def test_retries_count_attempts_and_keep_the_key(autojump_clock):
    runs.clear()
    async with open_test_engine(registry) as engine:
        await engine.client.schedule_new_orchestration(order, input={}, instance_id="order-1")
        state = await engine.client.wait_for_orchestration_completion("order-1", timeout=60)
    assert state.output == "charged on attempt 3"
    # The charge: three tasks (a retry waits on a timer, which takes a task ID too), one call.
    assert runs == [(1, "order-1:0", 0),
                    (1, "order-1:1", 1), (2, "order-1:1", 3), (3, "order-1:1", 5)]


async def test_a_redelivery_counts_as_an_attempt(autojump_clock, tmp_path):
    """The first attempt's process goes away while it runs (its engine stops, giving the task
    back); the next engine runs that task again as attempt 2, which fails, and the retry is
    attempt 3, under the same key."""
    global hanging
    runs.clear()
    hanging = trio.Event()
    db = tmp_path / "attempts.sqlite3"
    options = {"max_poll_interval": None, "shutdown_grace": 0}
    async with dtrio.open_engine(registry, db=db, **options) as engine:
        await engine.client.schedule_new_orchestration(
            order, input={"hang": [1]}, instance_id="order-2")
        await hanging.wait()
    async with dtrio.open_engine(registry, db=db, **options) as engine:
        state = await engine.client.wait_for_orchestration_completion("order-2", timeout=60)
    assert state.output == "charged on attempt 3"
    assert runs == [(1, "order-2:0", 0),
                    (1, "order-2:1", 1), (2, "order-2:1", 1), (3, "order-2:1", 3)]
