"""An orchestrator that awaits what ctx did not give it fails with `OrchestratorAwaitError`,
whose message names the awaited call as the code wrote it, never trio's or asyncio's internals."""

import asyncio

import pytest
import trio

import dtrio
from dtrio.testing import open_test_engine

registry = dtrio.Registry()


async def nap(ctx):
    # The orchestrator's own helper: the call to name is the one it makes.
    await trio.sleep(2.5)


class Doorbell:
    def __await__(self):
        yield "ring"


@registry.orchestrator
async def sleeps_with_trio(ctx, _):
    await trio.sleep(1)


@registry.orchestrator
async def sleeps_in_a_helper(ctx, _):
    await nap(ctx)


@registry.orchestrator
async def waits_for_a_trio_event(ctx, _):
    await trio.Event().wait()


@registry.orchestrator
async def sleeps_zero_with_asyncio(ctx, _):
    await asyncio.sleep(0)


@registry.orchestrator
async def sleeps_with_asyncio(ctx, _):
    await asyncio.sleep(1)


@registry.orchestrator
async def awaits_a_future(ctx, _):
    loop = asyncio.SelectorEventLoop()
    try:
        await loop.create_future()
    finally:
        loop.close()


@registry.orchestrator
async def awaits_its_own_awaitable(ctx, _):
    await Doorbell()


@pytest.mark.parametrize("orchestrator, awaited", [
    (sleeps_with_trio, "trio.sleep(1), which is not a dtrio task"),
    (sleeps_in_a_helper, "trio.sleep(2.5), which is not a dtrio task"),
    (waits_for_a_trio_event, "trio.Event.wait(), which is not a dtrio task"),
    (sleeps_zero_with_asyncio, "asyncio.sleep(0), which is not a dtrio task"),
    (sleeps_with_asyncio, "asyncio.sleep(1), which needs an event loop that does not run "
     "orchestrators (no running event loop)"),
    (awaits_a_future, "an asyncio Future, which is not a dtrio task"),
    (awaits_its_own_awaitable, "a Doorbell object, which is not a dtrio task"),
])
async def test_the_message_names_what_was_awaited(autojump_clock, orchestrator, awaited):
    async with open_test_engine(registry) as engine:
        iid = await engine.client.schedule_new_orchestration(orchestrator)
        state = await engine.client.wait_for_orchestration_completion(iid, timeout=60)
    assert state.failure_details.error_type == "OrchestratorAwaitError"
    message = state.failure_details.message
    assert message.startswith(f"orchestrator '{orchestrator.__name__}' awaited {awaited}. ")
    assert "ctx.create_timer(...) instead of trio.sleep/asyncio.sleep" in message
    assert "WaitTaskRescheduled" not in message and "abort_func" not in message
