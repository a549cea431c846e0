"""The orchestration lifecycle under MockClock on SQLite: continue-as-new, retries, custom
status, suspend/resume, terminate, purge, query, restart, rewind, reuse policy, versions."""

from datetime import timedelta

import pytest
import trio

import dtrio
from dtrio import _pb as pb
from dtrio import history as h
from dtrio.replay import OrchestrationRun
from dtrio.state import apply_step
from dtrio.testing import open_test_engine

S = dtrio.OrchestrationStatus
registry = dtrio.Registry()
calls: dict[str, int] = {}


@registry.activity
async def flaky(ctx, key):
    """Fails until its third attempt."""
    calls[key] = calls.get(key, 0) + 1
    if calls[key] < 3:
        raise ConnectionError(f"attempt {calls[key]} of {key} failed")
    return f"{key} ok after {calls[key]}"


@registry.activity
async def always_fails(ctx, message):
    calls["always"] = calls.get("always", 0) + 1
    raise ValueError(f"{message} #{calls['always']}")


@registry.activity
async def record(ctx, value):
    calls[f"record:{value}"] = calls.get(f"record:{value}", 0) + 1
    return value


@registry.orchestrator
async def counter(ctx, state):
    n, carried = state["n"], state.get("carried", [])
    if n >= state["stop"]:
        return {"n": n, "carried": carried}
    if state.get("wait"):
        carried = carried + [await ctx.wait_for_external_event("tick")]
    ctx.continue_as_new(
        {**state, "n": n + 1, "carried": carried}, save_events=state.get("save", False)
    )


@registry.orchestrator
async def status_reporter(ctx, _):
    ctx.set_custom_status({"stage": "waiting"})
    await ctx.wait_for_external_event("go")
    ctx.set_custom_status({"stage": "done"})
    return "finished"


POLICY = dtrio.RetryPolicy(max_attempts=3, first_retry_interval=timedelta(seconds=10),
                           backoff_coefficient=2.0)


@registry.orchestrator
async def retrying(ctx, key):
    return await ctx.call_activity(flaky, input=key, retry_policy=POLICY)


@registry.orchestrator
async def exhausting(ctx, _):
    policy = dtrio.RetryPolicy(max_attempts=4, first_retry_interval=timedelta(minutes=1),
                               backoff_coefficient=3.0, max_retry_interval=timedelta(minutes=5))
    return await ctx.call_activity(always_fails, input="nope", retry_policy=policy)


@registry.orchestrator
async def selective_retry(ctx, _):
    policy = dtrio.RetryPolicy(max_attempts=5, first_retry_interval=timedelta(seconds=1),
                               handle=lambda failure: failure.details.error_type != "ValueError")
    return await ctx.call_activity(always_fails, input="no retry", retry_policy=policy)


@registry.orchestrator
async def flaky_child(ctx, key):
    return await ctx.call_activity(flaky, input=key)


@registry.orchestrator
async def retrying_parent(ctx, key):
    return await ctx.call_sub_orchestrator(flaky_child, input=key,
                                           instance_id=f"{ctx.instance_id}-c",
                                           retry_policy=POLICY)


@registry.orchestrator
async def timer_then_value(ctx, _):
    await ctx.create_timer(timedelta(hours=1))
    return await ctx.wait_for_external_event("value")


@registry.orchestrator
async def sender(ctx, target):
    ctx.send_event(target, "value", {"from": ctx.instance_id})
    return "sent"


@registry.orchestrator
async def versioned(ctx, _):
    child = await ctx.call_sub_orchestrator(version_child)
    return [ctx.version, child]


@registry.orchestrator
async def version_child(ctx, _):
    return ctx.version


@registry.orchestrator
async def tree(ctx, depth):
    if depth == 0:
        await ctx.wait_for_external_event("never")
    await ctx.call_sub_orchestrator(tree, input=depth - 1)


@registry.orchestrator
async def quick(ctx, value):
    return value


@registry.orchestrator
async def fails_in_the_middle(ctx, key):
    first = await ctx.call_activity(record, input=f"{key}-first")
    second = await ctx.call_activity(flaky, input=key)  # fails twice, no retry policy
    return [first, second]


@registry.orchestrator
async def fails_in_child(ctx, key):
    done = await ctx.call_activity(record, input=f"{key}-parent")
    child = await ctx.call_sub_orchestrator(
        fails_in_the_middle, input=key, instance_id=f"{key}-child"
    )
    return [done, child]


async def run(engine, orchestrator, input=None, **kw):
    iid = await engine.client.schedule_new_orchestration(orchestrator, input=input, **kw)
    return await engine.client.wait_for_orchestration_completion(iid, timeout=timedelta(days=60))


async def wait_status(engine, iid, status):
    with trio.fail_after(3600):
        while True:
            state = await engine.client.get_orchestration_state(iid)
            if state is not None and state.runtime_status == status:
                return
            await trio.sleep(1)


# -- continue-as-new ---------------------------------------------------------------------


async def test_continue_as_new_resets_history(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        state = await run(engine, counter, {"n": 0, "stop": 50}, instance_id="loop")
        history = await engine.backend.load_history("loop")
    assert state.runtime_status == S.COMPLETED
    assert state.output == {"n": 50, "carried": []}
    assert state.input == {"n": 50, "stop": 50, "carried": []}
    assert len(history) < 10  # only the last execution's events


async def test_continue_as_new_carries_unprocessed_events(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        # A later start makes all three events arrive in the first execution's first batch.
        iid = await engine.client.schedule_new_orchestration(
            counter, input={"n": 0, "stop": 3, "wait": True, "save": True},
            start_at=engine.clock.now_dt() + timedelta(seconds=1))
        for i in range(3):
            await engine.client.raise_orchestration_event(iid, "tick", i)
        state = await engine.client.wait_for_orchestration_completion(iid, timeout=60)
    assert state.output == {"n": 3, "carried": [0, 1, 2]}


async def test_continue_as_new_reads_carried_events_before_ones_raised_meanwhile(autojump_clock):
    """Steps taken by hand, as the dispatcher takes them, so that events can be raised while
    a continue-as-new step is out: the next execution replays its start, then the events it
    carried over, then those, in the order they were raised."""
    async with dtrio.open_engine(
        registry, db=None, local_workers=False, max_poll_interval=None
    ) as engine:
        iid = await engine.client.schedule_new_orchestration(
            counter, input={"n": 0, "stop": 5, "wait": True, "save": True})
        raise_during = {1: [0, 1], 2: [2, 3, 4]}
        for number in range(1, 20):
            [item] = await engine.backend.lease_orchestrations("by-hand", 1, 60_000_000)
            run = OrchestrationRun(registry.orchestrators, iid)
            past = [stored.event for stored in await engine.backend.load_history(iid)]
            now = engine.clock.now_dt()
            new = [h.step_opener(now)] + [stored for _, stored in item.events]
            actions = run.feed(past, [stored.event for stored in new])
            for tick in raise_during.get(number, []):
                await engine.client.raise_orchestration_event(iid, "tick", tick)
            step = apply_step(iid, item.execution_id, run.started, new, actions, now,
                              custom_status=run.custom_status)
            await engine.backend.complete_orchestration(item, step)
            if step.completed:
                break
        state = await engine.client.get_orchestration_state(iid)
    assert state.output == {"n": 5, "carried": [0, 1, 2, 3, 4]}


async def test_continue_as_new_without_save_events_drops_them(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        iid = await engine.client.schedule_new_orchestration(
            counter, input={"n": 0, "stop": 2, "wait": True},
            start_at=engine.clock.now_dt() + timedelta(seconds=1))
        for i in range(3):
            await engine.client.raise_orchestration_event(iid, "tick", i)
        with pytest.raises(TimeoutError):
            await engine.client.wait_for_orchestration_completion(iid, timeout=60)
        await engine.client.raise_orchestration_event(iid, "tick", 9)
        state = await engine.client.wait_for_orchestration_completion(iid, timeout=60)
    assert state.output == {"n": 2, "carried": [0, 9]}


async def test_ten_thousand_continues_as_new_keep_storage_flat(autojump_clock):
    async with open_test_engine(registry) as engine:
        state = await run(engine, counter, {"n": 0, "stop": 10_000}, instance_id="monitor")
        conn = engine.backend._store.conn
        rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("history", "inbox", "activities", "instances")}
        cached = len(engine.local["orchestration"].cache)
    assert state.output["n"] == 10_000
    assert rows["history"] < 10 and rows["inbox"] == 0 and rows["activities"] == 0
    assert rows["instances"] == 1
    assert cached == 0


# -- custom status, send_event, versions -----------------------------------------------------


async def test_custom_status_visible_while_running_and_after(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        iid = await engine.client.schedule_new_orchestration(status_reporter)
        await engine.client.wait_for_orchestration_start(iid)
        with trio.fail_after(60):
            while (await engine.client.get_orchestration_state(iid)).custom_status is None:
                await trio.sleep(0.1)
        running = await engine.client.get_orchestration_state(iid, fetch_payloads=False)
        await engine.client.raise_orchestration_event(iid, "go")
        done = await engine.client.wait_for_orchestration_completion(iid)
    assert running.runtime_status == S.RUNNING and running.custom_status == {"stage": "waiting"}
    assert done.custom_status == {"stage": "done"}


async def test_send_event_to_another_instance(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        target = await engine.client.schedule_new_orchestration(
            timer_then_value, instance_id="target"
        )
        sent = await run(engine, sender, target)
        state = await engine.client.wait_for_orchestration_completion(target)
    assert sent.output == "sent"
    assert state.output == {"from": sent.instance_id}


async def test_version_recorded_and_visible_and_inherited(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        state = await run(engine, versioned, version="2.1")
    assert state.version == "2.1"
    assert state.output == ["2.1", "2.1"]


# -- retries -----------------------------------------------------------------------------


async def test_activity_retry_succeeds_on_third_attempt_after_durable_backoff(
    autojump_clock, store
):
    calls.pop("r1", None)
    async with open_test_engine(registry, db=store) as engine:
        begin = trio.current_time()
        state = await run(engine, retrying, "r1")
        elapsed = trio.current_time() - begin
    assert state.output == "r1 ok after 3"
    assert 30 <= elapsed < 31  # waits of 10 s and 20 s


async def test_retry_exhaustion_surfaces_the_last_failure(autojump_clock, store):
    calls.pop("always", None)
    async with open_test_engine(registry, db=store) as engine:
        begin = trio.current_time()
        state = await run(engine, exhausting)
        elapsed = trio.current_time() - begin
    assert state.runtime_status == S.FAILED
    assert "nope #4" in state.failure_details.message
    assert 60 + 180 + 300 <= elapsed < 60 + 180 + 300 + 1  # 1, 3, then capped at 5 minutes


async def test_retry_predicate_can_refuse(autojump_clock, store):
    calls.pop("always", None)
    async with open_test_engine(registry, db=store) as engine:
        state = await run(engine, selective_retry)
    assert state.runtime_status == S.FAILED
    assert calls["always"] == 1


async def test_sub_orchestration_retry_with_explicit_id(autojump_clock, store):
    calls.pop("r2", None)
    async with open_test_engine(registry, db=store) as engine:
        state = await run(engine, retrying_parent, "r2", instance_id="rp")
    assert state.output == "r2 ok after 3"


async def test_retries_survive_an_engine_restart(autojump_clock, tmp_path):
    db = tmp_path / "retry.sqlite3"
    async with dtrio.open_engine(registry, db=db, max_poll_interval=None) as engine:
        await engine.client.schedule_new_orchestration(retrying, input="r3", instance_id="rr")
        await trio.sleep(5)  # first attempt failed; the 10-second retry timer is pending
    assert calls["r3"] == 1
    async with dtrio.open_engine(registry, db=db, max_poll_interval=None) as engine:
        state = await engine.client.wait_for_orchestration_completion("rr", timeout=100)
    assert state.output == "r3 ok after 3"


def test_retry_policy_validation():
    with pytest.raises(dtrio.InvalidInput):
        dtrio.RetryPolicy(max_attempts=0, first_retry_interval=timedelta(seconds=1))
    with pytest.raises(dtrio.InvalidInput):
        dtrio.RetryPolicy(max_attempts=2, first_retry_interval=timedelta(0))


# -- suspend / resume ----------------------------------------------------------------------


async def test_suspend_during_a_pending_timer_holds_everything_until_resumed(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        iid = await engine.client.schedule_new_orchestration(timer_then_value)
        await engine.client.wait_for_orchestration_start(iid)
        await engine.client.suspend_orchestration(iid, "maintenance")
        await wait_status(engine, iid, S.SUSPENDED)
        await engine.client.raise_orchestration_event(iid, "value", 7)
        await trio.sleep(7200)  # the timer fires while suspended
        assert (await engine.client.get_orchestration_state(iid)).runtime_status == S.SUSPENDED
        await engine.client.resume_orchestration(iid, "done")
        state = await engine.client.wait_for_orchestration_completion(iid)
    assert state.output == 7


async def test_suspend_and_resume_of_finished_or_unknown_instances(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        done = await run(engine, quick, 1)
        await engine.client.suspend_orchestration(done.instance_id)  # no-op
        await engine.client.resume_orchestration(done.instance_id)  # no-op
        state = await engine.client.get_orchestration_state(done.instance_id)
        assert state.runtime_status == S.COMPLETED
        with pytest.raises(dtrio.InstanceNotFound):
            await engine.client.suspend_orchestration("nobody")
        with pytest.raises(dtrio.InstanceNotFound):
            await engine.client.resume_orchestration("nobody")


# -- terminate ---------------------------------------------------------------------------


async def test_terminate_with_output(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        iid = await engine.client.schedule_new_orchestration(timer_then_value)
        await engine.client.terminate_orchestration(iid, output={"why": "cancelled"})
        state = await engine.client.wait_for_orchestration_completion(iid)
        await engine.client.terminate_orchestration(iid, output="again")  # finished: no-op
        assert (await engine.client.get_orchestration_state(iid)).output == {"why": "cancelled"}
        with pytest.raises(dtrio.InstanceNotFound):
            await engine.client.terminate_orchestration("nobody")
    assert state.runtime_status == S.TERMINATED
    assert state.output == {"why": "cancelled"}


async def test_terminate_a_scheduled_instance_before_it_starts(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        start_at = engine.clock.now_dt() + timedelta(days=1)
        iid = await engine.client.schedule_new_orchestration(quick, input=1, start_at=start_at)
        await engine.client.terminate_orchestration(iid, output="never ran")
        state = await engine.client.wait_for_orchestration_completion(iid, timeout=60)
    assert state.runtime_status == S.TERMINATED and state.output == "never ran"


async def test_recursive_terminate_of_a_three_level_tree(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        root = await engine.client.schedule_new_orchestration(tree, input=2, instance_id="root")
        await wait_status(engine, "root:0000:0000", S.RUNNING)
        await engine.client.terminate_orchestration(root, output="stop")
        states = [await engine.client.wait_for_orchestration_completion(i, timeout=60)
                  for i in ("root", "root:0000", "root:0000:0000")]
    assert [s.runtime_status for s in states] == [S.TERMINATED] * 3


async def test_non_recursive_terminate_leaves_children_running(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        await engine.client.schedule_new_orchestration(tree, input=1, instance_id="r")
        await wait_status(engine, "r:0000", S.RUNNING)
        await engine.client.terminate_orchestration("r", recursive=False)
        await engine.client.wait_for_orchestration_completion("r", timeout=60)
        await trio.sleep(60)
        assert (await engine.client.get_orchestration_state("r:0000")).runtime_status == S.RUNNING


async def test_a_terminated_childs_output_stays_out_of_its_parents_failure_and_the_log(
    autojump_clock, caplog
):
    caplog.set_level("INFO", logger="dtrio")
    async with open_test_engine(registry) as engine:
        await engine.client.schedule_new_orchestration(tree, input=1, instance_id="p")
        await wait_status(engine, "p:0000", S.RUNNING)
        await engine.client.terminate_orchestration("p:0000", output="reason-payload-3d7")
        parent = await engine.client.wait_for_orchestration_completion("p", timeout=60)
        child = await engine.client.get_orchestration_state("p:0000")
    assert parent.runtime_status == S.FAILED
    assert parent.failure_details.message.endswith(
        "OrchestrationTerminated: sub-orchestration 'p:0000' was terminated")
    assert child.output == "reason-payload-3d7"
    assert "reason-payload-3d7" not in caplog.text


async def test_recursive_terminate_reaches_a_child_started_after_the_request(
    autojump_clock, tmp_path
):
    from dtrio.backend import open_sqlite_backend
    from dtrio.client import Client
    from dtrio.clock import Clock
    from dtrio.state import apply_step

    db = tmp_path / "late.sqlite3"
    # A worker holds the parent's step while the terminate request is queued; that step then
    # creates a child. The terminate, processed next, must reach the child too.
    clock = Clock()
    backend = open_sqlite_backend(db, clock)
    client = Client(backend, clock, poll_interval=None)
    await client.schedule_new_orchestration(tree, input=1, instance_id="late")
    (item,) = await backend.lease_orchestrations("worker", 10, 60_000_000)
    await client.terminate_orchestration("late", output="stop")
    create = pb.OrchestratorAction(id=0, create_sub_orchestration=pb.CreateSubOrchestrationAction(
        instance_id="late-child", name="tree", input="0"))
    events = [stored for _, stored in item.events]
    started = events[0].event.execution_started
    await backend.complete_orchestration(
        item, apply_step("late", item.execution_id, started, events, [create], clock.now_dt()))
    await backend.aclose()

    async with dtrio.open_engine(registry, db=db, max_poll_interval=None) as engine:
        parent = await engine.client.wait_for_orchestration_completion("late", timeout=60)
        child = await engine.client.wait_for_orchestration_completion("late-child", timeout=60)
    assert parent.runtime_status == S.TERMINATED and parent.output == "stop"
    assert child.runtime_status == S.TERMINATED and child.output == "stop"


# -- purge -------------------------------------------------------------------------------


async def test_purge_by_id_only_finished_and_recursive(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        done = await run(engine, versioned, instance_id="v")
        running = await engine.client.schedule_new_orchestration(timer_then_value)
        await engine.client.wait_for_orchestration_start(running)
        assert await engine.client.purge_orchestration(running) == 0
        assert await engine.client.purge_orchestration("nobody") == 0
        assert await engine.client.purge_orchestration(done.instance_id) == 2  # with its child
        assert await engine.client.get_orchestration_state("v") is None
        assert await engine.client.get_orchestration_state("v:0000") is None
        assert await engine.backend.load_history("v") == []
        assert (await engine.client.get_orchestration_state(running)).runtime_status == S.RUNNING


async def test_purge_by_time_range_and_status(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        early = [(await run(engine, quick, i)).instance_id for i in range(3)]
        await trio.sleep(3600)
        middle = engine.clock.now_dt()
        failed = await run(engine, "unregistered")
        later = [(await run(engine, quick, i)).instance_id for i in range(2)]
        live = await engine.client.schedule_new_orchestration(timer_then_value)
        assert await engine.client.purge_orchestrations(created_to=middle) == 3
        assert await engine.client.purge_orchestrations(
            created_from=middle, statuses=[S.FAILED]
        ) == 1
        assert await engine.client.purge_orchestrations(statuses=[S.RUNNING]) == 0
        left = {s.instance_id for s in (await engine.client.query_orchestrations()).states}
    assert left == {*later, live}
    assert failed.instance_id not in left and not set(early) & left


async def test_purging_ten_thousand_does_not_block_the_engine(autojump_clock):
    async with open_test_engine(registry) as engine:
        for i in range(10_000):
            await engine.client.schedule_new_orchestration(quick, input=i, instance_id=f"p{i:05d}")
        await engine.client.wait_for_orchestration_completion("p09999", timeout=3600)
        with trio.fail_after(3600):
            while (await engine.client.query_orchestrations(
                statuses=[S.PENDING, S.RUNNING], page_size=1
            )).states:
                await trio.sleep(1)
        progress = []

        async def heartbeat():
            while True:
                progress.append(trio.current_time())
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat)
            purged = await engine.client.purge_orchestrations()
            nursery.cancel_scope.cancel()
    assert purged == 10_000
    assert len(progress) > 10  # the heartbeat ran between chunks


# -- query -------------------------------------------------------------------------------


async def test_query_paging_across_2500_instances_has_no_duplicates_or_gaps(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        ids = []
        for i in range(2500):
            ids.append(await engine.client.schedule_new_orchestration(
                quick, input=i, instance_id=f"q{i:04d}",
                start_at=engine.clock.now_dt() + timedelta(days=1)))
            if i % 500 == 0:
                await trio.sleep(1)  # spread creation times
        seen, token, pages = [], None, 0
        while True:
            page = await engine.client.query_orchestrations(page_size=100, continuation_token=token)
            seen += [s.instance_id for s in page.states]
            pages += 1
            # Instances created while paging must not disturb the pages already handed out.
            await engine.client.schedule_new_orchestration(quick, instance_id=f"new{pages}")
            token = page.continuation_token
            if token is None:
                break
    assert [i for i in seen if i.startswith("q")] == ids  # every one, once, in creation order
    assert len(seen) == len(set(seen))


async def test_query_filters(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        await run(engine, quick, 1, instance_id="a-1")
        await run(engine, "unregistered", instance_id="a-2")
        await run(engine, quick, 3, instance_id="b-1")
        by_prefix = await engine.client.query_orchestrations(instance_id_prefix="a-")
        failed = await engine.client.query_orchestrations(statuses=[S.FAILED])
        with_io = await engine.client.query_orchestrations(
            instance_id_prefix="b-", fetch_inputs_and_outputs=True
        )
        without = await engine.client.query_orchestrations(instance_id_prefix="b-")
        with pytest.raises(dtrio.InvalidInput):
            await engine.client.query_orchestrations(continuation_token="garbage")
    assert [s.instance_id for s in by_prefix.states] == ["a-1", "a-2"]
    assert [s.instance_id for s in failed.states] == ["a-2"]
    assert with_io.states[0].output == 3 and with_io.states[0].input == 3
    assert without.states[0].serialized_output is None


# -- restart, rewind, reuse ----------------------------------------------------------------


async def test_restart_with_same_and_new_instance_id(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        first = await run(engine, quick, {"x": 1}, instance_id="rs")
        same = await engine.client.restart_orchestration("rs")
        again = await engine.client.wait_for_orchestration_completion(same)
        other = await engine.client.restart_orchestration("rs", restart_with_new_instance_id=True)
        copy = await engine.client.wait_for_orchestration_completion(other)
        live = await engine.client.schedule_new_orchestration(timer_then_value)
        with pytest.raises(dtrio.InvalidOperation, match="only finished instances restart"):
            await engine.client.restart_orchestration(live)
        with pytest.raises(dtrio.InstanceNotFound):
            await engine.client.restart_orchestration("nobody")
    assert same == "rs" and again.output == {"x": 1} and again.created_at >= first.created_at
    assert other != "rs" and copy.output == {"x": 1}


async def test_restart_of_a_running_instance_with_a_new_id_runs_a_copy(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        live = await engine.client.schedule_new_orchestration(
            timer_then_value, input={"x": 2}, instance_id="live")
        await engine.client.wait_for_orchestration_start(live)
        with pytest.raises(dtrio.InvalidOperation, match="under the same ID"):
            await engine.client.restart_orchestration(live)
        copy = await engine.client.restart_orchestration(live, restart_with_new_instance_id=True)
        assert copy != live
        for iid in (live, copy):
            await engine.client.raise_orchestration_event(iid, "value", iid)
        done = [await engine.client.wait_for_orchestration_completion(i, timeout=7200)
                for i in (live, copy)]
        copied = await engine.client.get_orchestration_state(copy)
    assert [d.output for d in done] == [live, copy]
    assert copied.name == "timer_then_value" and copied.input == {"x": 2}


async def test_rewind_reruns_only_what_failed(autojump_clock, store):
    calls.clear()
    async with open_test_engine(registry, db=store) as engine:
        failed = await run(engine, fails_in_the_middle, "w1", instance_id="rw")
        assert failed.runtime_status == S.FAILED
        await engine.client.rewind_orchestration("rw", "fixed the network")
        second = await engine.client.wait_for_orchestration_completion("rw", timeout=60)
        assert second.runtime_status == S.FAILED  # flaky fails twice
        await engine.client.rewind_orchestration("rw")
        state = await engine.client.wait_for_orchestration_completion("rw", timeout=60)
    assert state.runtime_status == S.COMPLETED
    assert state.output == ["w1-first", "w1 ok after 3"]
    assert calls["record:w1-first"] == 1  # what succeeded did not run again


async def test_rewind_reaches_failed_sub_orchestrations(autojump_clock, store):
    calls.clear()
    async with open_test_engine(registry, db=store) as engine:
        calls["w2"] = 1  # one more failure to go
        failed = await run(engine, fails_in_child, "w2", instance_id="pw")
        assert failed.runtime_status == S.FAILED
        await engine.client.rewind_orchestration("pw")
        state = await engine.client.wait_for_orchestration_completion("pw", timeout=60)
    assert state.output == ["w2-parent", ["w2-first", "w2 ok after 3"]]
    assert calls["record:w2-parent"] == 1 and calls["record:w2-first"] == 1


async def test_rewind_of_a_non_failed_instance_is_refused(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        done = await run(engine, quick, 1)
        with pytest.raises(dtrio.InvalidOperation, match="only FAILED instances"):
            await engine.client.rewind_orchestration(done.instance_id)
        with pytest.raises(dtrio.InstanceNotFound):
            await engine.client.rewind_orchestration("nobody")
        assert (await engine.client.get_orchestration_state(done.instance_id)).output == 1


async def test_instance_id_reuse_policy(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        await run(engine, quick, 1, instance_id="dup")
        with pytest.raises(dtrio.InstanceAlreadyExists):
            await engine.client.schedule_new_orchestration(quick, input=2, instance_id="dup")
        replace = dtrio.ReusePolicy(replace=frozenset({S.COMPLETED, S.FAILED}))
        await engine.client.schedule_new_orchestration(
            quick, input=2, instance_id="dup", reuse_policy=replace
        )
        assert (await engine.client.wait_for_orchestration_completion("dup")).output == 2
        live = await engine.client.schedule_new_orchestration(timer_then_value, instance_id="live")
        ignore = dtrio.ReusePolicy(ignore=frozenset({S.RUNNING, S.PENDING}))
        assert await engine.client.schedule_new_orchestration(
            quick, instance_id=live, reuse_policy=ignore
        ) == live
        assert (await engine.client.get_orchestration_state(live)).name == "timer_then_value"
        replace_running = dtrio.ReusePolicy(replace=frozenset({S.RUNNING, S.PENDING}))
        await engine.client.schedule_new_orchestration(
            quick, input=3, instance_id=live, reuse_policy=replace_running
        )
        assert (await engine.client.wait_for_orchestration_completion(live)).output == 3
        with pytest.raises(dtrio.InvalidInput):
            dtrio.ReusePolicy(replace=frozenset({S.FAILED}), ignore=frozenset({S.FAILED}))


async def test_scheduled_start_survives_a_restart(autojump_clock, tmp_path):
    db = tmp_path / "later.sqlite3"
    async with dtrio.open_engine(registry, db=db, max_poll_interval=None) as engine:
        start_at = engine.clock.now_dt() + timedelta(hours=5)
        await engine.client.schedule_new_orchestration(
            quick, input="late", instance_id="s", start_at=start_at
        )
        await trio.sleep(3600)
    async with dtrio.open_engine(registry, db=db, max_poll_interval=None) as engine:
        assert (await engine.client.get_orchestration_state("s")).runtime_status == S.PENDING
        state = await engine.client.wait_for_orchestration_completion("s", timeout=6 * 3600)
    assert state.output == "late"
    assert state.scheduled_start is not None
    assert abs((state.scheduled_start - start_at).total_seconds()) < 1e-3
