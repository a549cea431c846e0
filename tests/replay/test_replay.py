"""The pure replay core: history in, actions out. No Trio, no storage."""

from datetime import UTC, datetime, timedelta

import betterproto2

import dtrio
from dtrio import _pb as pb
from dtrio import history as h
from dtrio.replay import OrchestrationRun

T0 = datetime(2026, 1, 1, tzinfo=UTC)
registry = dtrio.Registry()


@registry.activity
async def hello(ctx, name):
    return f"Hello, {name}!"


@registry.orchestrator
async def sequence(ctx, _):
    return [await ctx.call_activity(hello, input=c) for c in ("Tokyo", "London")]


def kinds(actions):
    return [betterproto2.which_one_of(a, "orchestratorActionType")[0] for a in actions]


def start(name, input=None, iid="i1"):
    return [h.orchestrator_started(T0), h.execution_started(T0, name, iid, "e1", input)]


def completion(actions):
    (action,) = [a for a in actions if a.complete_orchestration is not None]
    return action.complete_orchestration


def test_first_step_schedules_first_activity():
    run = OrchestrationRun(registry.orchestrators, "i1")
    actions = run.feed([], start("sequence"))
    assert kinds(actions) == ["schedule_task"]
    assert actions[0].id == 0
    assert actions[0].schedule_task.name == "hello"
    assert actions[0].schedule_task.input == '"Tokyo"'


def test_full_replay_equals_incremental_steps():
    past = [
        *start("sequence"),
        h.task_scheduled(T0, 0, "hello", '"Tokyo"'),
        h.orchestrator_completed(T0),
    ]
    new = [h.orchestrator_started(T0), h.task_completed(T0, 0, '"Hello, Tokyo!"')]
    replayed = OrchestrationRun(registry.orchestrators, "i1").feed(past, new)

    cached = OrchestrationRun(registry.orchestrators, "i1")
    cached.feed([], start("sequence"))
    incremental = cached.feed([], new)
    assert replayed == incremental
    assert kinds(replayed) == ["schedule_task"]
    assert replayed[0].id == 1 and replayed[0].schedule_task.input == '"London"'


def test_completes_with_json_output():
    run = OrchestrationRun(registry.orchestrators, "i1")
    run.feed([], start("sequence"))
    run.feed([], [h.orchestrator_started(T0), h.task_completed(T0, 0, '"a"')])
    actions = run.feed([], [h.orchestrator_started(T0), h.task_completed(T0, 1, '"b"')])
    done = completion(actions)
    assert done.orchestration_status == pb.OrchestrationStatus.COMPLETED
    assert done.result == '["a","b"]'
    assert run.is_done


def test_is_replaying_and_now_come_from_history():
    seen = []
    reg = dtrio.Registry()

    @reg.orchestrator
    async def watcher(ctx, _):
        seen.append((ctx.is_replaying, ctx.now))
        await ctx.create_timer(timedelta(hours=1))
        seen.append((ctx.is_replaying, ctx.now))

    t1 = T0 + timedelta(hours=1, seconds=3)
    past = [
        *start("watcher"), h.timer_created(T0, 0, T0 + timedelta(hours=1)),
        h.orchestrator_completed(T0),
    ]
    OrchestrationRun(reg.orchestrators, "i1").feed(
        past, [h.orchestrator_started(t1), h.timer_fired(t1, 0, T0 + timedelta(hours=1))]
    )
    assert seen == [(True, T0), (False, t1)]


def test_new_uuid_is_deterministic():
    reg = dtrio.Registry()
    out = []

    @reg.orchestrator
    async def ids(ctx, _):
        out.append((ctx.new_uuid(), ctx.new_uuid()))

    OrchestrationRun(reg.orchestrators, "i1").feed([], start("ids"))
    OrchestrationRun(reg.orchestrators, "i1").feed([], start("ids"))
    assert out[0] == out[1] and out[0][0] != out[0][1]


class ForeignAwaitable:
    def __await__(self):
        yield "a foreign event loop's future"


def test_awaiting_foreign_awaitable_fails_with_advice():
    reg = dtrio.Registry()

    @reg.orchestrator
    async def sleeper(ctx, _):
        await ForeignAwaitable()

    actions = OrchestrationRun(reg.orchestrators, "i1").feed([], start("sleeper"))
    failed = completion(actions)
    assert failed.orchestration_status == pb.OrchestrationStatus.FAILED
    assert failed.failure_details.error_type == "OrchestratorAwaitError"
    assert "ctx.create_timer" in failed.failure_details.error_message
    assert failed.failure_details.error_message.startswith(
        "orchestrator 'sleeper' awaited a ForeignAwaitable object, which is not a dtrio task."
    )


def test_trio_sleep_replayed_outside_trio_fails_naming_it():
    import trio

    reg = dtrio.Registry()

    @reg.orchestrator
    async def sleeper(ctx, _):
        await trio.sleep(3)

    failed = completion(OrchestrationRun(reg.orchestrators, "i1").feed([], start("sleeper")))
    assert failed.failure_details.error_type == "OrchestratorAwaitError"
    assert failed.failure_details.error_message.startswith(
        "orchestrator 'sleeper' awaited trio.sleep(3), which needs an event loop that does not "
        "run orchestrators (must be called from async context)."
    )


def test_unregistered_orchestrator_fails_clearly():
    actions = OrchestrationRun(registry.orchestrators, "i1").feed([], start("nope"))
    failed = completion(actions)
    assert failed.orchestration_status == pb.OrchestrationStatus.FAILED
    assert "'nope' is not registered" in failed.failure_details.error_message


def test_golden_history_that_no_longer_matches_raises_non_determinism():
    reg = dtrio.Registry()

    @reg.orchestrator
    async def changed(ctx, _):
        # The recorded history scheduled activity "hello" first; the code now starts a timer.
        await ctx.create_timer(timedelta(minutes=5))

    past = [
        *start("changed"), h.task_scheduled(T0, 0, "hello", '"x"'), h.orchestrator_completed(T0)
    ]
    actions = OrchestrationRun(reg.orchestrators, "i1").feed(
        past, [h.orchestrator_started(T0), h.task_completed(T0, 0, '"y"')]
    )
    assert kinds(actions) == ["complete_orchestration"]
    failed = completion(actions)
    assert failed.failure_details.error_type == "NonDeterminismError"
    message = failed.failure_details.error_message
    assert "task_scheduled(id=0, name='hello')" in message
    assert "create_timer(id=0)" in message


def test_renamed_activity_is_non_deterministic():
    reg = dtrio.Registry()

    @reg.orchestrator
    async def renamed(ctx, _):
        await ctx.call_activity("goodbye")

    past = [*start("renamed"), h.task_scheduled(T0, 0, "hello"), h.orchestrator_completed(T0)]
    failed = completion(
        OrchestrationRun(reg.orchestrators, "i1").feed(past, [h.orchestrator_started(T0)])
    )
    assert failed.failure_details.error_type == "NonDeterminismError"
    assert "name='goodbye'" in failed.failure_details.error_message


def test_activity_failure_surfaces_as_task_failed_error():
    reg = dtrio.Registry()

    @reg.orchestrator
    async def catcher(ctx, _):
        try:
            await ctx.call_activity("boom")
        except dtrio.TaskFailedError as exc:
            return [exc.details.error_type, exc.details.message, exc.details.stack_trace]

    run = OrchestrationRun(reg.orchestrators, "i1")
    run.feed([], start("catcher"))
    details = dtrio.FailureDetails("ValueError", "bad thing", "Traceback: ...")
    done = completion(run.feed([], [h.orchestrator_started(T0), h.task_failed(T0, 0, details)]))
    assert done.result == '["ValueError","bad thing","Traceback: ..."]'


def test_unhandled_exception_fails_instance_with_details():
    reg = dtrio.Registry()

    @reg.orchestrator
    async def broken(ctx, _):
        raise KeyError("missing")

    failed = completion(OrchestrationRun(reg.orchestrators, "i1").feed([], start("broken")))
    assert failed.orchestration_status == pb.OrchestrationStatus.FAILED
    assert failed.failure_details.error_type == "KeyError"
    assert "missing" in failed.failure_details.error_message
    assert "raise KeyError" in failed.failure_details.stack_trace


def test_when_all_and_when_any():
    reg = dtrio.Registry()

    @reg.orchestrator
    async def fan(ctx, _):
        results = await dtrio.when_all([ctx.call_activity("a", input=i) for i in range(3)])
        winner = await dtrio.when_any([ctx.call_activity("slow"), ctx.call_activity("fast")])
        return [results, winner.result()]

    run = OrchestrationRun(reg.orchestrators, "i1")
    assert kinds(run.feed([], start("fan"))) == ["schedule_task"] * 3
    # out-of-order completions still produce results in call order
    actions = run.feed([], [
        h.orchestrator_started(T0), h.task_completed(T0, 2, "2"), h.task_completed(T0, 0, "0")
    ])
    assert actions == []
    actions = run.feed([], [h.orchestrator_started(T0), h.task_completed(T0, 1, "1")])
    assert [a.id for a in actions] == [3, 4]
    done = completion(run.feed([], [h.orchestrator_started(T0), h.task_completed(T0, 4, '"fast"')]))
    assert done.result == '[[0,1,2],"fast"]'


def test_when_all_counts_repeated_and_already_completed_children():
    reg = dtrio.Registry()

    @reg.orchestrator
    async def repeat(ctx, _):
        a, b = ctx.call_activity("a"), ctx.call_activity("b")
        first = await dtrio.when_all([a, a])  # one task twice
        return [first, await dtrio.when_all([a, b, a])]  # a already done

    run = OrchestrationRun(reg.orchestrators, "i1")
    assert kinds(run.feed([], start("repeat"))) == ["schedule_task"] * 2
    assert run.feed([], [h.orchestrator_started(T0), h.task_completed(T0, 0, "1")]) == []
    done = completion(run.feed([], [h.orchestrator_started(T0), h.task_completed(T0, 1, "2")]))
    assert done.result == "[[1,1],[1,2,1]]"


def test_external_event_buffered_before_wait_and_case_insensitive():
    reg = dtrio.Registry()

    @reg.orchestrator
    async def approval(ctx, _):
        await ctx.create_timer(timedelta(seconds=1))
        return await ctx.wait_for_external_event("Approval")

    run = OrchestrationRun(reg.orchestrators, "i1")
    run.feed([], start("approval"))
    # The event arrives while the orchestrator still waits on its timer.
    assert run.feed([], [h.orchestrator_started(T0), h.event_raised(T0, "APPROVAL", '"yes"')]) == []
    done = completion(run.feed([], [h.orchestrator_started(T0), h.timer_fired(T0, 0, T0)]))
    assert done.result == '"yes"'


def test_event_timeout_and_no_stale_timer():
    reg = dtrio.Registry()

    @reg.orchestrator
    async def waits(ctx, _):
        first = await ctx.wait_for_external_event("go", timeout=timedelta(minutes=1))
        try:
            second = await ctx.wait_for_external_event("go", timeout=timedelta(minutes=10))
        except TimeoutError:
            second = "timed out"
        return [first, second]

    run = OrchestrationRun(reg.orchestrators, "i1")
    assert kinds(run.feed([], start("waits"))) == ["create_timer"]
    # The event beats the 1-minute timer: the second wait starts its own 10-minute timer.
    actions = run.feed([], [h.orchestrator_started(T0), h.event_raised(T0, "go", "1")])
    assert kinds(actions) == ["create_timer"] and actions[0].id == 1
    # The first (stale) timer fires now: it must not time out the second wait.
    assert run.feed([], [h.orchestrator_started(T0), h.timer_fired(T0, 0, T0)]) == []
    done = completion(run.feed([], [h.orchestrator_started(T0), h.event_raised(T0, "go", "2")]))
    assert done.result == "[1,2]"

    run = OrchestrationRun(reg.orchestrators, "i2")
    run.feed([], start("waits", iid="i2"))
    run.feed([], [h.orchestrator_started(T0), h.event_raised(T0, "go", "1")])
    done = completion(run.feed([], [h.orchestrator_started(T0), h.timer_fired(T0, 1, T0)]))
    assert done.result == '[1,"timed out"]'


def test_sub_orchestration_ids_derived_or_explicit():
    reg = dtrio.Registry()

    @reg.orchestrator
    async def parent(ctx, _):
        a = ctx.call_sub_orchestrator("child", input=1)
        b = ctx.call_sub_orchestrator("child", input=2, instance_id="explicit")
        return await dtrio.when_all([a, b])

    run = OrchestrationRun(reg.orchestrators, "p")
    actions = run.feed([], start("parent", iid="p"))
    assert [a.create_sub_orchestration.instance_id for a in actions] == ["p:0000", "explicit"]
    run.feed([], [h.orchestrator_started(T0), h.sub_orchestration_completed(T0, 0, '"one"')])
    details = dtrio.FailureDetails("RuntimeError", "child broke")
    failed = completion(run.feed([], [
        h.orchestrator_started(T0), h.sub_orchestration_failed(T0, 1, details)
    ]))
    assert failed.orchestration_status == pb.OrchestrationStatus.FAILED
    assert failed.failure_details.error_type == "TaskFailedError"
    assert "child broke" in failed.failure_details.error_message


def test_non_serializable_input_is_an_error_at_the_call_site():
    reg = dtrio.Registry()

    @reg.orchestrator
    async def bad(ctx, _):
        try:
            ctx.call_activity("x", input=object())
        except dtrio.SerializationError as exc:
            return str(exc)

    done = completion(OrchestrationRun(reg.orchestrators, "i1").feed([], start("bad")))
    assert "input of activity 'x' cannot be serialized to JSON" in done.result


def test_retry_policy_delays_cap_and_timeout():
    from dtrio.replay import RetryPolicy

    failure = dtrio.TaskFailedError("x", dtrio.FailureDetails("IOError", "down"))
    policy = RetryPolicy(max_attempts=6, first_retry_interval=timedelta(seconds=2),
                         backoff_coefficient=3, max_retry_interval=timedelta(seconds=30),
                         retry_timeout=timedelta(seconds=60))
    delays = [policy.next_delay(n, timedelta(0), failure) for n in range(1, 7)]
    assert delays[:4] == [timedelta(seconds=s) for s in (2, 6, 18, 30)]
    assert delays[5] is None  # the sixth attempt was the last
    # would end past the timeout
    assert policy.next_delay(2, timedelta(seconds=55), failure) is None
    final = dtrio.TaskFailedError("x", dtrio.FailureDetails("E", "m", is_non_retriable=True))
    assert policy.next_delay(1, timedelta(0), final) is None


@registry.orchestrator
async def waits_for_go(ctx, _):
    return await ctx.wait_for_external_event("go")


def test_a_run_suspended_twice_is_running_again_after_one_resume():
    # Suspending a suspended instance is a no-op: its event must not suspend it again on resume.
    run = OrchestrationRun(registry.orchestrators, "i1")
    actions = run.feed([], [
        *start("waits_for_go"),
        h.execution_suspended(T0), h.execution_suspended(T0), h.execution_resumed(T0),
        h.event_raised(T0, "go", '"finish"'),
    ])
    assert not run.is_suspended
    assert completion(actions).result == '"finish"'
