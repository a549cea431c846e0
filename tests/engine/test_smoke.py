from datetime import timedelta

import dtrio
from dtrio.testing import open_test_engine

registry = dtrio.Registry()


@registry.activity
async def say_hello(ctx, city):
    return f"Hello, {city}!"


@registry.orchestrator
async def sequence(ctx, _):
    await ctx.create_timer(timedelta(days=30))
    return [await ctx.call_activity(say_hello, input=c) for c in ("Tokyo", "London")]


async def test_thirty_day_timer_under_mock_clock(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        iid = await engine.client.schedule_new_orchestration(sequence)
        state = await engine.client.wait_for_orchestration_completion(
            iid, timeout=timedelta(days=31)
        )
        assert state.runtime_status == dtrio.OrchestrationStatus.COMPLETED
        assert state.output == ["Hello, Tokyo!", "Hello, London!"]
        assert state.completed_at - state.created_at >= timedelta(days=30)
