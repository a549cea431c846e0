"""A completion of something the execution never scheduled is a history that does not belong to
it: replay fails the run with NonDeterminismError naming the event. Completions of what was
scheduled but is settled already or no longer awaited (a wait's timeout timer after the event
came, the losers of when_any, a retry's timer) are not orphans: they replay as before.

Every step runs twice: on a run kept in memory and fed only the step's events (as the engine
does with cached runs), and on a fresh run replaying the whole history; both must agree.
"""

from datetime import UTC, datetime, timedelta

import betterproto2
import pytest

import dtrio
from dtrio import _pb as pb
from dtrio import history as h
from dtrio.replay import OrchestrationRun

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
reg = dtrio.Registry()


@reg.orchestrator
async def one_activity(ctx, _):
    return await ctx.call_activity("hello", input="A")


@reg.orchestrator
async def two_activities(ctx, _):
    return [await ctx.call_activity("hello", input=x) for x in ("A", "B")]


@reg.orchestrator
async def event_with_timeout(ctx, _):
    data = await ctx.wait_for_external_event("go", timeout=HOUR)
    return await ctx.call_activity("hello", input=data)


@reg.orchestrator
async def first_of_three(ctx, _):
    activity = ctx.call_activity("hello", input="A")
    child = ctx.call_sub_orchestrator("child", instance_id="c1")
    failing = ctx.call_activity("boom")
    winner = await dtrio.when_any([activity, child, failing])
    await ctx.create_timer(HOUR)
    return winner.result()


@reg.orchestrator
async def retry_with_deadline(ctx, _):
    policy = dtrio.RetryPolicy(max_attempts=3, first_retry_interval=timedelta(minutes=5))
    work = ctx.call_activity("flaky", retry_policy=policy)
    deadline = ctx.create_timer(timedelta(minutes=1))
    done = await dtrio.when_any([work, deadline])
    outcome = "timed out" if done is deadline else done.result()
    await ctx.call_activity("hello", input=outcome)
    return outcome


@reg.orchestrator
async def entity_call_with_deadline(ctx, _):
    call = ctx.call_entity("@counter@a", "get")
    deadline = ctx.create_timer(timedelta(minutes=1))
    done = await dtrio.when_any([call, deadline])
    await ctx.create_timer(HOUR)
    return "timed out" if done is deadline else done.result()


def kinds(actions):
    return [betterproto2.which_one_of(a, "orchestratorActionType")[0] for a in actions]


def recorded(action: pb.OrchestratorAction) -> pb.HistoryEvent | None:
    """The history event the store records for an action, as `dtrio.state` does."""
    kind, body = betterproto2.which_one_of(action, "orchestratorActionType")
    if kind == "schedule_task":
        return h.task_scheduled(T0, action.id, body.name, body.input)
    if kind == "create_timer":
        return h.timer_created(T0, action.id, body.fire_at)
    if kind == "create_sub_orchestration":
        return h.sub_orchestration_created(T0, action.id, body.name, body.instance_id, body.input)
    if kind == "send_entity_message":
        inner, message = betterproto2.which_one_of(body, "EntityMessageType")
        return h.event(T0, action.id, **{inner: message})
    return None


class Execution:
    """One execution driven step by step, with the history the store would hold."""

    def __init__(self, name: str) -> None:
        self.cached = OrchestrationRun(reg.orchestrators, "i1")
        self.history: list[pb.HistoryEvent] = []
        self.actions = self.step(h.execution_started(T0, name, "i1", "e1", None))

    def step(self, *events: pb.HistoryEvent) -> list[pb.OrchestratorAction]:
        events = [h.orchestrator_started(T0), *events]
        replayed = OrchestrationRun(reg.orchestrators, "i1").feed(self.history, events)
        actions = self.cached.feed([], events)
        assert actions == replayed, "a cached run and a replay from scratch disagree"
        self.history += [*events, *filter(None, map(recorded, actions))]
        self.history.append(h.orchestrator_completed(T0))
        return actions

    def request_id(self, action_id: int) -> str:
        (action,) = [a for a in self.actions if a.id == action_id]
        return action.send_entity_message.entity_operation_called.request_id


def outcome(actions):
    (action,) = [a for a in actions if a.complete_orchestration is not None]
    return action.complete_orchestration


def failure_message(actions) -> str:
    done = outcome(actions)
    assert done.orchestration_status == pb.OrchestrationStatus.FAILED
    assert done.failure_details.error_type == "NonDeterminismError"
    return done.failure_details.error_message


CAUSE = "delivered to the wrong instance or execution, or the history was changed"
DETAILS = dtrio.FailureDetails("ValueError", "bad")


# -- orphans ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("event", "named", "found"), [
    (h.task_completed(T0, 7, '"x"'), "task_completed(task_scheduled_id=7) answers schedule_task",
     "no schedule_task with ID 7"),
    (h.task_failed(T0, 7, DETAILS), "task_failed(task_scheduled_id=7) answers schedule_task",
     "no schedule_task with ID 7"),
    (h.timer_fired(T0, 7, T0), "timer_fired(timer_id=7) answers create_timer",
     "no create_timer with ID 7"),
    (h.timer_fired(T0, 0, T0), "timer_fired(timer_id=0) answers create_timer",
     "action 0 of this execution is schedule_task, not create_timer"),
    (h.sub_orchestration_completed(T0, 7, '"x"'),
     "sub_orchestration_instance_completed(task_scheduled_id=7) answers create_sub_orchestration",
     "no create_sub_orchestration with ID 7"),
    (h.sub_orchestration_failed(T0, 0, DETAILS),
     "sub_orchestration_instance_failed(task_scheduled_id=0) answers create_sub_orchestration",
     "action 0 of this execution is schedule_task, not create_sub_orchestration"),
    (h.event(T0, entity_operation_completed=pb.EntityOperationCompletedEvent(
        request_id="r-1", output="1")),
     "entity_operation_completed(request_id='r-1') answers an entity call",
     "made no call with that request ID"),
    (h.event(T0, entity_operation_failed=pb.EntityOperationFailedEvent(
        request_id="r-1", failure_details=h.failure_to_pb(DETAILS))),
     "entity_operation_failed(request_id='r-1') answers an entity call",
     "made no call with that request ID"),
], ids=["task_completed", "task_failed", "timer_fired", "timer_fired_for_a_task",
        "sub_orchestration_completed", "sub_orchestration_failed_for_a_task",
        "entity_operation_completed", "entity_operation_failed"])
def test_completion_of_nothing_scheduled_raises_non_determinism(event, named, found):
    run = Execution("one_activity")
    assert kinds(run.actions) == ["schedule_task"]
    message = failure_message(run.step(event))
    assert "'one_activity' got a completion for nothing it scheduled" in message
    assert named in message
    assert found in message
    assert CAUSE in message


def test_completion_whose_scheduling_event_history_lacks_is_an_orphan():
    # The code schedules activity 0 again on replay, but this history never recorded it.
    past = [
        h.orchestrator_started(T0), h.execution_started(T0, "one_activity", "i1", "e1", None),
        h.orchestrator_completed(T0),
    ]
    new = [h.orchestrator_started(T0), h.task_completed(T0, 0, '"Hello, A!"')]
    message = failure_message(OrchestrationRun(reg.orchestrators, "i1").feed(past, new))
    assert "task_completed(task_scheduled_id=0)" in message
    assert "no schedule_task with ID 0" in message


# -- scheduled, then settled or no longer awaited: not orphans -------------------------------


def test_a_timeout_timer_firing_after_its_event_came_changes_nothing():
    run = Execution("event_with_timeout")
    assert kinds(run.actions) == ["create_timer"]
    assert kinds(run.step(h.event_raised(T0, "go", '"A"'))) == ["schedule_task"]
    assert run.step(h.timer_fired(T0, 0, T0 + HOUR)) == []
    done = outcome(run.step(h.task_completed(T0, 1, '"Hello, A!"')))
    assert done.orchestration_status == pb.OrchestrationStatus.COMPLETED
    assert done.result == '"Hello, A!"'


def test_losers_of_when_any_complete_or_fail_later():
    run = Execution("first_of_three")
    assert kinds(run.actions) == ["schedule_task", "create_sub_orchestration", "schedule_task"]
    assert kinds(run.step(h.task_completed(T0, 0, '"Hello, A!"'))) == ["create_timer"]
    assert run.step(h.sub_orchestration_completed(T0, 1, '"child done"')) == []
    assert run.step(h.task_failed(T0, 2, DETAILS)) == []
    done = outcome(run.step(h.timer_fired(T0, 3, T0 + HOUR)))
    assert done.orchestration_status == pb.OrchestrationStatus.COMPLETED
    assert done.result == '"Hello, A!"'


def test_a_retry_timer_firing_after_the_retry_lost_its_race():
    run = Execution("retry_with_deadline")
    assert kinds(run.actions) == ["schedule_task", "create_timer"]  # attempt 1, the deadline
    assert kinds(run.step(h.task_failed(T0, 0, DETAILS))) == ["create_timer"]  # retry timer 2
    assert kinds(run.step(h.timer_fired(T0, 1, T0))) == ["schedule_task"]  # deadline: hello 3
    # The retry timer still fires and starts attempt 2, which nobody awaits any more.
    assert kinds(run.step(h.timer_fired(T0, 2, T0))) == ["schedule_task"]
    assert run.step(h.task_completed(T0, 4, '"late"')) == []
    done = outcome(run.step(h.task_completed(T0, 3, '"Hello, timed out!"')))
    assert done.orchestration_status == pb.OrchestrationStatus.COMPLETED
    assert done.result == '"timed out"'


def test_an_entity_reply_after_the_call_lost_its_race():
    run = Execution("entity_call_with_deadline")
    assert kinds(run.actions) == ["send_entity_message", "create_timer"]
    assert kinds(run.step(h.timer_fired(T0, 1, T0))) == ["create_timer"]
    reply = h.event(T0, entity_operation_completed=pb.EntityOperationCompletedEvent(
        request_id=run.request_id(0), output="5"))
    assert run.step(reply) == []
    done = outcome(run.step(h.timer_fired(T0, 2, T0 + HOUR)))
    assert done.result == '"timed out"'


def test_an_entity_reply_in_time_is_the_result():
    run = Execution("entity_call_with_deadline")
    reply = h.event(T0, entity_operation_completed=pb.EntityOperationCompletedEvent(
        request_id=run.request_id(0), output="5"))
    assert kinds(run.step(reply)) == ["create_timer"]
    assert run.step(h.timer_fired(T0, 1, T0)) == []  # the deadline, no longer awaited
    assert outcome(run.step(h.timer_fired(T0, 2, T0 + HOUR))).result == "5"


def test_a_second_completion_of_a_settled_task_changes_nothing():
    run = Execution("two_activities")
    assert kinds(run.step(h.task_completed(T0, 0, '"Hello, A!"'))) == ["schedule_task"]
    assert run.step(h.task_completed(T0, 0, '"again"')) == []
    done = outcome(run.step(h.task_completed(T0, 1, '"Hello, B!"')))
    assert done.result == '["Hello, A!","Hello, B!"]'


def test_a_lock_grant_for_a_section_this_execution_never_requested_is_ignored():
    # Grants carry no execution ID: one requested before continue_as_new may arrive after it.
    run = Execution("one_activity")
    grant = h.event(T0, entity_lock_granted=pb.EntityLockGrantedEvent(critical_section_id="s-0"))
    assert run.step(grant) == []
    assert outcome(run.step(h.task_completed(T0, 0, '"Hello, A!"'))).result == '"Hello, A!"'
