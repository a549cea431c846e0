"""Every call that takes a duration takes a timedelta or seconds (int or float), in process under
MockClock; anything else is refused at the call, before any instance or entity is touched."""

import math
from datetime import timedelta

import pytest
import trio

import dtrio
from dtrio.testing import open_test_engine

S = dtrio.OrchestrationStatus
registry = dtrio.Registry()


@registry.orchestrator
async def waits_for_approval(ctx, timeout):
    try:
        return await ctx.wait_for_external_event("approval", timeout=timeout)
    except TimeoutError:
        return "escalated"


@registry.orchestrator
async def sleeps(ctx, seconds):
    await ctx.create_timer(seconds)
    await ctx.create_timer(ctx.now + timedelta(seconds=seconds))  # a datetime still works
    return "woke"


@registry.orchestrator
async def bad_timeout(ctx, _):
    try:
        await ctx.wait_for_external_event("approval", timeout="5")
    except dtrio.InvalidInput as exc:
        return str(exc)


FLAKY_FAILURES = {"left": 2}


@registry.activity
async def flaky(ctx, _):
    if FLAKY_FAILURES["left"]:
        FLAKY_FAILURES["left"] -= 1
        raise ConnectionError("try again")
    return "done"


@registry.orchestrator
async def retries_in_seconds(ctx, _):
    policy = dtrio.RetryPolicy(max_attempts=3, first_retry_interval=5, backoff_coefficient=2,
                               max_retry_interval=7.5)
    return await ctx.call_activity(flaky, retry_policy=policy)


@registry.entity
async def counter(ctx, amount):
    if ctx.operation == "add":
        ctx.set_state(ctx.get_state(0) + amount)
    elif ctx.operation == "add_later":
        ctx.signal_entity(ctx.entity_id, "add", amount, signal_time=30)


@registry.orchestrator
async def signals_later(ctx, _):
    ctx.signal_entity("@counter@o", "add", 1, signal_time=45.5)


async def run(engine, orchestrator, input=None):
    iid = await engine.client.schedule_new_orchestration(orchestrator, input=input)
    return await engine.client.wait_for_orchestration_completion(iid, timeout=3600.0)


async def test_event_timeouts_and_timers_take_seconds(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        start = trio.current_time()
        timed_out = await run(engine, waits_for_approval, 0.2)
        waited = trio.current_time() - start
        iid = await engine.client.schedule_new_orchestration(waits_for_approval, input=60)
        await engine.client.raise_orchestration_event(iid, "approval", "yes")
        approved = await engine.client.wait_for_orchestration_completion(iid, timeout=60)
        start = trio.current_time()
        slept = await run(engine, sleeps, 90)
        slept_for = trio.current_time() - start
    assert timed_out.output == "escalated" and 0.2 <= waited < 1
    assert approved.output == "yes"
    assert slept.output == "woke" and 180 <= slept_for < 185


async def test_a_bad_timeout_is_refused_at_the_orchestrators_call(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        state = await run(engine, bad_timeout)
    assert state.runtime_status == S.COMPLETED
    assert state.output == (
        "wait_for_external_event(timeout=...) takes a timedelta or seconds (int or float), "
        "not str '5'"
    )


async def test_retry_intervals_take_seconds(autojump_clock, store):
    FLAKY_FAILURES["left"] = 2
    async with open_test_engine(registry, db=store) as engine:
        start = trio.current_time()
        state = await run(engine, retries_in_seconds)
        took = trio.current_time() - start
    assert state.output == "done"
    assert 12.5 <= took < 15  # 5 s, then 10 s capped at 7.5 s


async def test_entity_signals_take_a_delay_in_seconds_from_clients_orchestrators_and_entities(
    autojump_clock, store
):
    async with open_test_engine(registry, db=store) as engine:
        client = engine.client
        await client.signal_entity("@counter@c", "add", 1, signal_time=20)
        await client.signal_entity("@counter@e", "add_later", 1)
        await run(engine, signals_later)
        await trio.sleep(10)
        assert [await client.get_entity(f"@counter@{k}") for k in "ceo"] == [None] * 3
        await trio.sleep(50)
        states = [(await client.get_entity(f"@counter@{k}")).state for k in "ceo"]
    assert states == [1, 1, 1]


@pytest.mark.parametrize("timeout, message", [
    ("30", "not str '30'"),
    (True, "not bool True"),
    (-1, "must be zero or more, not -1"),
    (math.nan, "must be a finite number of seconds, not nan"),
])
async def test_client_waits_refuse_bad_timeouts_naming_them(autojump_clock, timeout, message):
    async with open_test_engine(registry) as engine:
        iid = await engine.client.schedule_new_orchestration(waits_for_approval, input=None)
        with pytest.raises(dtrio.InvalidInput) as completion:
            await engine.client.wait_for_orchestration_completion(iid, timeout=timeout)
        with pytest.raises(dtrio.InvalidInput) as start:
            await engine.client.wait_for_orchestration_start(iid, timeout=timeout)
    assert str(completion.value).startswith("wait_for_orchestration_completion(timeout=...) ")
    assert str(start.value).startswith("wait_for_orchestration_start(timeout=...) ")
    assert str(completion.value).endswith(message) and str(start.value).endswith(message)


async def test_client_waits_take_infinity_as_no_limit(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        iid = await engine.client.schedule_new_orchestration(sleeps, input=1)
        state = await engine.client.wait_for_orchestration_completion(iid, timeout=math.inf)
    assert state.output == "woke"


async def test_a_bad_signal_time_is_refused_before_the_entity_exists(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        with pytest.raises(dtrio.InvalidInput, match=r"signal_entity\(signal_time=...\) must be "
                           "zero or more, not -5"):
            await engine.client.signal_entity("@counter@x", "add", 1, signal_time=-5)
        assert await engine.client.get_entity("@counter@x") is None


def test_engine_options_take_timedeltas_and_keep_seconds():
    options = dtrio.EngineOptions(
        orchestration_lease=timedelta(minutes=2), activity_lease=600,
        max_poll_interval=timedelta(milliseconds=500), shutdown_grace=timedelta(0),
    )
    assert (options.orchestration_lease, options.activity_lease) == (120.0, 600.0)
    assert (options.max_poll_interval, options.shutdown_grace) == (0.5, 0.0)
    assert dtrio.EngineOptions(max_poll_interval=None).max_poll_interval is None
    with pytest.raises(dtrio.InvalidInput, match=r"EngineOptions\(shutdown_grace=...\) takes a "
                       r"timedelta or seconds \(int or float\), not str '10'"):
        dtrio.EngineOptions(shutdown_grace="10")
    with pytest.raises(dtrio.InvalidInput, match=r"EngineOptions\(activity_lease=...\) must be "
                       "positive, not 0"):
        dtrio.EngineOptions(activity_lease=0)


async def test_an_engine_opens_with_timedelta_options(autojump_clock, store):
    async with open_test_engine(registry, db=store, shutdown_grace=timedelta(seconds=1),
                                orchestration_lease=timedelta(minutes=1)) as engine:
        state = await run(engine, sleeps, 1)
    assert state.output == "woke"


async def test_a_scheduled_start_takes_a_delay_and_refuses_bad_ones(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        client = engine.client
        start = trio.current_time()
        iid = await client.schedule_new_orchestration(sleeps, input=1, start_at=90)
        await client.wait_for_orchestration_start(iid, timeout=timedelta(minutes=5))
        started_after = trio.current_time() - start
        with pytest.raises(dtrio.InvalidInput, match=r"schedule_new_orchestration\(start_at="
                           r"...\) takes a timezone-aware datetime, a timedelta or seconds "
                           r"\(int or float\), not str 'soon'"):
            await client.schedule_new_orchestration(sleeps, start_at="soon", instance_id="x")
        assert await client.get_orchestration_state("x") is None
    assert 90 <= started_after < 95
