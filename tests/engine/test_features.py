"""The whole engine in process, under trio's MockClock with autojump: every orchestration
feature."""

import sqlite3
import threading
from datetime import datetime, timedelta

import pytest
import trio

import dtrio
from dtrio.testing import open_test_engine

S = dtrio.OrchestrationStatus
registry = dtrio.Registry()


@registry.activity
async def hello(ctx, name):
    return f"Hello, {name}!"


@registry.activity
def blocking_hello(ctx, name):
    # Plain functions run in a worker thread, never on the Trio thread.
    assert threading.current_thread() is not threading.main_thread()
    return f"Hi, {name}!"


@registry.activity
async def fail(ctx, message):
    raise ValueError(message)


@registry.activity
async def square(ctx, n):
    return n * n


@registry.orchestrator
async def sequence(ctx, _):
    return [await ctx.call_activity(hello, input=c) for c in ("Tokyo", "London", "Seattle")]


@registry.orchestrator
async def threaded(ctx, name):
    return await ctx.call_activity(blocking_hello, input=name)


@registry.orchestrator
async def fan_out(ctx, n):
    return sum(await dtrio.when_all([ctx.call_activity(square, input=i) for i in range(n)]))


@registry.orchestrator
async def race(ctx, _):
    timer = ctx.create_timer(timedelta(hours=1))
    event = ctx.wait_for_external_event("Go")
    winner = await dtrio.when_any([timer, event])
    return "event" if winner is event else "timer"


@registry.orchestrator
async def long_sleep(ctx, _):
    await ctx.create_timer(timedelta(days=30))
    return ctx.now.isoformat()


@registry.orchestrator
async def approval(ctx, _):
    try:
        return await ctx.wait_for_external_event("Approval", timeout=timedelta(hours=1))
    except TimeoutError:
        return "escalated"


@registry.orchestrator
async def two_waits(ctx, _):
    first = await ctx.wait_for_external_event("step", timeout=timedelta(minutes=1))
    await ctx.create_timer(timedelta(minutes=5))  # the first wait's timer fires meanwhile
    second = await ctx.wait_for_external_event("step", timeout=timedelta(minutes=30))
    return [first, second]


@registry.orchestrator
async def child(ctx, n):
    if n < 0:
        raise RuntimeError(f"negative input {n}")
    return await ctx.call_activity(square, input=n)


@registry.orchestrator
async def parent(ctx, _):
    a = ctx.call_sub_orchestrator(child, input=3)
    b = ctx.call_sub_orchestrator(child, input=4, instance_id=f"{ctx.instance_id}-explicit")
    results = await dtrio.when_all([a, b])
    try:
        await ctx.call_sub_orchestrator(child, input=-1)
    except dtrio.TaskFailedError as exc:
        results.append(exc.details.message)
    return results


@registry.orchestrator
async def catches_activity_failure(ctx, _):
    try:
        await ctx.call_activity(fail, input="no luck")
    except dtrio.TaskFailedError as exc:
        return {"type": exc.details.error_type, "message": exc.details.message,
                "has_stack": "raise ValueError" in (exc.details.stack_trace or "")}


@registry.orchestrator
async def unhandled(ctx, _):
    await ctx.call_activity(fail, input="boom")


@registry.orchestrator
async def sleeps_with_trio(ctx, _):
    await trio.sleep(5)


@registry.orchestrator
async def calls_unknown_activity(ctx, _):
    return await ctx.call_activity("no_such_activity")


async def run(engine, orchestrator, input=None, **kw):
    iid = await engine.client.schedule_new_orchestration(orchestrator, input=input, **kw)
    return await engine.client.wait_for_orchestration_completion(iid, timeout=timedelta(days=60))


async def test_sequence(autojump_clock):
    async with open_test_engine(registry) as engine:
        state = await run(engine, sequence)
    assert state.runtime_status == S.COMPLETED
    assert state.output == ["Hello, Tokyo!", "Hello, London!", "Hello, Seattle!"]


async def test_plain_function_activity_runs_in_a_thread(autojump_clock):
    async with open_test_engine(registry) as engine:
        state = await run(engine, threaded, "Oslo")
    assert state.output == "Hi, Oslo!"


async def test_fan_out_fan_in(autojump_clock):
    async with open_test_engine(registry, max_concurrent_activities=7) as engine:
        state = await run(engine, fan_out, 100)
    assert state.output == sum(i * i for i in range(100))


async def test_thirty_day_timer_is_durable_time(autojump_clock):
    async with open_test_engine(registry) as engine:
        state = await run(engine, long_sleep)
    fired = datetime.fromisoformat(state.output)
    assert fired - state.created_at >= timedelta(days=30)
    assert state.completed_at >= fired


async def test_when_any_timer_vs_event(autojump_clock):
    async with open_test_engine(registry) as engine:
        by_timer = await run(engine, race)
        iid = await engine.client.schedule_new_orchestration(race)
        await engine.client.wait_for_orchestration_start(iid)
        await engine.client.raise_orchestration_event(iid, "go")
        by_event = await engine.client.wait_for_orchestration_completion(iid)
    assert by_timer.output == "timer"
    assert by_event.output == "event"


async def test_external_event_raised_before_the_wait_is_buffered(autojump_clock):
    async with open_test_engine(registry) as engine:
        iid = await engine.client.schedule_new_orchestration(approval, start_at=None)
        await engine.client.raise_orchestration_event(iid, "APPROVAL", {"by": "ana"})
        state = await engine.client.wait_for_orchestration_completion(iid)
    assert state.output == {"by": "ana"}


async def test_external_event_timeout(autojump_clock):
    async with open_test_engine(registry) as engine:
        start = trio.current_time()
        state = await run(engine, approval)
        waited = trio.current_time() - start
    assert state.output == "escalated"
    assert 3600 <= waited < 3700


async def test_stale_event_timer_does_not_affect_a_later_wait(autojump_clock):
    async with open_test_engine(registry) as engine:
        iid = await engine.client.schedule_new_orchestration(two_waits)
        await engine.client.raise_orchestration_event(iid, "step", 1)
        await trio.sleep(600)  # both the 5-minute timer and the stale 1-minute timer have fired
        await engine.client.raise_orchestration_event(iid, "step", 2)
        state = await engine.client.wait_for_orchestration_completion(iid)
    assert state.output == [1, 2]


async def test_sub_orchestrations(autojump_clock):
    async with open_test_engine(registry) as engine:
        state = await run(engine, parent, instance_id="p1")
        explicit = await engine.client.get_orchestration_state("p1-explicit")
        derived = await engine.client.get_orchestration_state("p1:0000")
    assert state.runtime_status == S.COMPLETED
    assert state.output == [9, 16, "negative input -1"]
    assert explicit.output == 16 and explicit.parent_instance_id == "p1"
    assert derived.output == 9


async def test_activity_failure_is_a_task_failed_error(autojump_clock):
    async with open_test_engine(registry) as engine:
        state = await run(engine, catches_activity_failure)
    assert state.output == {"type": "ValueError", "message": "no luck", "has_stack": True}


async def test_unhandled_exception_fails_the_instance(autojump_clock):
    async with open_test_engine(registry) as engine:
        state = await run(engine, unhandled)
    assert state.runtime_status == S.FAILED
    assert state.failure_details.error_type == "TaskFailedError"
    assert "boom" in state.failure_details.message
    assert state.failure_details.stack_trace


async def test_trio_sleep_in_an_orchestrator_fails_with_advice(autojump_clock):
    async with open_test_engine(registry) as engine:
        state = await run(engine, sleeps_with_trio)
        # The engine is unharmed and keeps serving.
        assert (await run(engine, sequence)).runtime_status == S.COMPLETED
    assert state.runtime_status == S.FAILED
    assert state.failure_details.error_type == "OrchestratorAwaitError"
    assert "ctx.create_timer" in state.failure_details.message


async def test_unknown_names_fail_the_instance_clearly(autojump_clock):
    async with open_test_engine(registry) as engine:
        unknown_activity = await run(engine, calls_unknown_activity)
        unknown_orchestrator = await run(engine, "no_such_orchestrator")
    assert unknown_activity.runtime_status == S.FAILED
    assert "'no_such_activity' is not registered" in unknown_activity.failure_details.message
    assert unknown_orchestrator.runtime_status == S.FAILED
    assert (
        "'no_such_orchestrator' is not registered"
        in unknown_orchestrator.failure_details.message
    )


async def test_bad_client_input(autojump_clock):
    async with open_test_engine(registry) as engine:
        with pytest.raises(dtrio.SerializationError, match="input of orchestrator 'sequence'"):
            await engine.client.schedule_new_orchestration(sequence, input={1, object()})
        await engine.client.schedule_new_orchestration(sequence, instance_id="dup")
        with pytest.raises(dtrio.InstanceAlreadyExists, match="'dup'"):
            await engine.client.schedule_new_orchestration(sequence, instance_id="dup")
        with pytest.raises(dtrio.InstanceNotFound):
            await engine.client.raise_orchestration_event("nobody", "x")
        with pytest.raises(dtrio.InvalidInput):
            await engine.client.schedule_new_orchestration(sequence, instance_id="a\nb")
        with pytest.raises(dtrio.InvalidInput):
            await engine.client.schedule_new_orchestration(sequence, instance_id="x" * 101)
        with pytest.raises(dtrio.NotRegistered):
            await engine.client.schedule_new_orchestration(lambda ctx, _: None)
        assert await engine.client.get_orchestration_state("nobody") is None


async def test_wait_timeouts_raise_timeout_error(autojump_clock):
    async with open_test_engine(registry) as engine:
        iid = await engine.client.schedule_new_orchestration(long_sleep)
        with pytest.raises(TimeoutError, match="did not complete within 60 seconds"):
            await engine.client.wait_for_orchestration_completion(iid, timeout=60)
        with pytest.raises(dtrio.InstanceNotFound):
            await engine.client.wait_for_orchestration_completion("nobody", timeout=1)


async def test_scheduled_start_time_is_honoured(autojump_clock):
    async with open_test_engine(registry) as engine:
        start_at = engine.clock.now_dt() + timedelta(hours=2)
        iid = await engine.client.schedule_new_orchestration(sequence, start_at=start_at)
        await trio.sleep(3600)
        assert (await engine.client.get_orchestration_state(iid)).runtime_status == S.PENDING
        started = await engine.client.wait_for_orchestration_start(iid)
        assert started.runtime_status != S.PENDING
        state = await engine.client.wait_for_orchestration_completion(iid)
    assert state.last_updated_at >= start_at
    assert state.scheduled_start == start_at.replace(microsecond=state.scheduled_start.microsecond)


async def test_results_do_not_depend_on_the_run_cache(autojump_clock):
    async with open_test_engine(registry, cache_size=0) as engine:
        assert (await run(engine, parent, instance_id="nc")).output == [9, 16, "negative input -1"]
        assert (await run(engine, fan_out, 20)).output == sum(i * i for i in range(20))


async def test_concurrency_limits_are_respected(autojump_clock):
    reg = dtrio.Registry()
    running = peak = 0

    @reg.activity
    async def slow(ctx, _):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1

    @reg.orchestrator
    async def many(ctx, n):
        await dtrio.when_all([ctx.call_activity(slow) for _ in range(n)])

    async with open_test_engine(reg, max_concurrent_activities=3) as engine:
        assert (await run(engine, many, 12)).runtime_status == S.COMPLETED
    assert peak == 3


async def test_same_results_every_run(autojump_clock):
    outputs = []
    for _ in range(2):
        async with open_test_engine(registry) as engine:
            outputs.append([
                (await run(engine, o, i)).output for o, i in ((parent, None), (approval, None))
            ])
    assert outputs[0] == outputs[1]


async def test_shutdown_lets_in_flight_activities_finish_within_grace(autojump_clock, tmp_path):
    reg = dtrio.Registry()
    finished = []

    @reg.activity
    async def work(ctx, seconds):
        await trio.sleep(seconds)
        finished.append(seconds)

    @reg.orchestrator
    async def job(ctx, seconds):
        await ctx.call_activity(work, input=seconds)

    db = tmp_path / "grace.sqlite3"
    async with dtrio.open_engine(reg, db=db, max_poll_interval=None, shutdown_grace=10.0) as engine:
        await engine.client.schedule_new_orchestration(job, input=2, instance_id="quick")
        await engine.client.schedule_new_orchestration(job, input=100, instance_id="slow")
        await trio.sleep(1)
        begin = trio.current_time()
    # Leaving the block drained: the 2-second activity finished, the 100-second one was abandoned.
    assert finished == [2]
    assert trio.current_time() - begin == pytest.approx(10.0, abs=0.5)
    conn = sqlite3.connect(db)
    locked = conn.execute(
        "SELECT count(*) FROM activities WHERE lock_token IS NOT NULL"
    ).fetchone()[0] + conn.execute(
        "SELECT count(*) FROM instances WHERE lock_token IS NOT NULL"
    ).fetchone()[0]
    assert locked == 0
    assert conn.execute("SELECT instance_id FROM activities").fetchall() == [("slow",)]

    async with dtrio.open_engine(reg, db=db, max_poll_interval=None) as engine:
        state = await engine.client.wait_for_orchestration_completion("slow", timeout=1000)
    assert state.runtime_status == S.COMPLETED
    assert finished == [2, 100]


async def test_local_work_wakes_dispatchers_without_polling(autojump_clock, tmp_path):
    # An hour between polls: only in-process wakeups can make this take no virtual time.
    async with dtrio.open_engine(
        registry, db=tmp_path / "w.sqlite3", max_poll_interval=3600
    ) as engine:
        begin = trio.current_time()
        state = await run(engine, sequence)
        assert state.runtime_status == S.COMPLETED
        assert trio.current_time() - begin < 0.001


async def test_work_written_by_another_process_is_found_by_polling(autojump_clock, tmp_path):
    from dtrio.backend import open_sqlite_backend
    from dtrio.client import Client
    from dtrio.clock import Clock

    db = tmp_path / "shared.sqlite3"
    async with dtrio.open_engine(registry, db=db, max_poll_interval=2.0) as engine:
        await trio.sleep(60)  # idle: the poller has backed off to its 2-second cap
        other = open_sqlite_backend(db, Clock())  # a second connection, as another process has
        try:
            client = Client(other, Clock(), poll_interval=None)
            iid = await client.schedule_new_orchestration(sequence)
        finally:
            await other.aclose()
        begin = trio.current_time()
        state = await engine.client.wait_for_orchestration_completion(iid, timeout=10)
        assert state.output == ["Hello, Tokyo!", "Hello, London!", "Hello, Seattle!"]
        assert trio.current_time() - begin <= 2.0 + 0.001


async def test_event_raised_before_a_scheduled_start_waits_for_it(autojump_clock):
    async with open_test_engine(registry) as engine:
        start_at = engine.clock.now_dt() + timedelta(hours=1)
        iid = await engine.client.schedule_new_orchestration(approval, start_at=start_at)
        await engine.client.raise_orchestration_event(iid, "Approval", "early")
        await trio.sleep(1800)
        assert (await engine.client.get_orchestration_state(iid)).runtime_status == S.PENDING
        state = await engine.client.wait_for_orchestration_completion(iid)
    assert state.output == "early"
    assert state.completed_at >= start_at
