"""Runtime state transitions (pure): actions become history, activity tasks and messages."""

from datetime import UTC, datetime, timedelta

import betterproto2
import pytest

from dtrio import _pb as pb
from dtrio import history as h
from dtrio.events import StoredEvent
from dtrio.state import apply_step
from dtrio.times import to_us

T0 = datetime(2026, 3, 1, tzinfo=UTC)
S = pb.OrchestrationStatus


def kinds(stored):
    return [betterproto2.which_one_of(e.event, "eventType")[0] for e in stored]


def started(parent=None):
    return pb.ExecutionStartedEvent(
        name="orch", version="v2",
        orchestration_instance=pb.OrchestrationInstance(instance_id="i1", execution_id="e1"),
        parent_instance=parent,
    )


def action(id, **kind):
    return pb.OrchestratorAction(id=id, **kind)


NEW = [StoredEvent.of(h.orchestrator_started(T0))]


def test_schedule_task_and_timer():
    fire = T0 + timedelta(days=1)
    step = apply_step("i1", "e1", started(), NEW, [
        action(0, schedule_task=pb.ScheduleTaskAction(name="a", input='"x"')),
        action(1, create_timer=pb.CreateTimerAction(fire_at=fire)),
    ], T0)
    assert kinds(step.history) == [
        "orchestrator_started", "task_scheduled", "timer_created", "orchestrator_completed"
    ]
    scheduled = step.history[1].event
    assert scheduled.event_id == 0 and scheduled.task_scheduled.name == "a"
    (task,) = step.activities
    assert (task.instance_id, task.execution_id, task.task_id, task.name, task.input) == (
        "i1", "e1", 0, "a", '"x"'
    )
    (timer,) = step.messages
    assert (
        timer.instance_id == "i1" and timer.visible_at == to_us(fire) and timer.execution_id == "e1"
    )
    assert timer.event.event.timer_fired.timer_id == 1
    assert step.status == int(S.RUNNING) and not step.completed


def test_sub_orchestration_creates_child_with_parent_info_and_version():
    step = apply_step("i1", "e1", started(), NEW, [
        action(0, create_sub_orchestration=pb.CreateSubOrchestrationAction(
            instance_id="c1", name="child", input="1")),
    ], T0)
    (child,) = step.new_instances
    first = child.started.event.execution_started
    assert child.instance_id == "c1" and child.parent_instance_id == "i1"
    assert first.parent_instance.task_scheduled_id == 0
    assert first.parent_instance.orchestration_instance.instance_id == "i1"
    assert first.version == "v2"  # inherited from the parent
    conflict = child.conflict.event.event.sub_orchestration_instance_failed
    assert (
        conflict.task_scheduled_id == 0
        and "already exists" in conflict.failure_details.error_message
    )


def test_completion_notifies_the_parent():
    parent = pb.ParentInstanceInfo(
        task_scheduled_id=7,
        orchestration_instance=pb.OrchestrationInstance(instance_id="p", execution_id="pe"),
    )
    step = apply_step("i1", "e1", started(parent), NEW, [
        action(0, complete_orchestration=pb.CompleteOrchestrationAction(
            orchestration_status=S.COMPLETED, result="42")),
    ], T0)
    assert step.completed and step.output == "42"
    assert kinds(step.history)[-2:] == ["execution_completed", "orchestrator_completed"]
    (note,) = step.messages
    assert note.instance_id == "p" and note.execution_id == "pe"
    done = note.event.event.sub_orchestration_instance_completed
    assert done.task_scheduled_id == 7 and done.result == "42"


def test_failure_keeps_details_and_fails_the_parent_task():
    parent = pb.ParentInstanceInfo(
        task_scheduled_id=3, orchestration_instance=pb.OrchestrationInstance(instance_id="p")
    )
    details = pb.TaskFailureDetails(error_type="KeyError", error_message="k", stack_trace="tb")
    step = apply_step("i1", "e1", started(parent), NEW, [
        action(0, complete_orchestration=pb.CompleteOrchestrationAction(
            orchestration_status=S.FAILED, failure_details=details)),
    ], T0)
    assert step.status == int(S.FAILED)
    assert pb.TaskFailureDetails.parse(step.failure) == details
    failed = step.messages[0].event.event.sub_orchestration_instance_failed
    assert failed.failure_details == details


def test_send_event_and_unsupported_action():
    step = apply_step("i1", "e1", started(), NEW, [
        action(0, send_event=pb.SendEventAction(
            instance=pb.OrchestrationInstance(instance_id="other"), name="go", data="1")),
        action(1, send_entity_message=pb.SendEntityMessageAction()),
        action(2, schedule_task=pb.ScheduleTaskAction(name="never")),
    ], T0)
    assert [m.instance_id for m in step.messages] == ["other"]
    assert step.messages[0].event.event.event_raised.name == "go"
    assert step.status == int(S.FAILED)
    assert "entity" in pb.TaskFailureDetails.parse(step.failure).error_message
    assert not step.activities  # actions after the failing one are not applied


def test_an_unknown_completion_status_fails_the_orchestration():
    step = apply_step("i1", "e1", started(), NEW, [
        action(0, complete_orchestration=pb.CompleteOrchestrationAction(
            orchestration_status=S(99), result="42")),
    ], T0)
    assert step.status == int(S.FAILED) and step.output is None
    failure = pb.TaskFailureDetails.parse(step.failure)
    assert failure.error_type == "UnsupportedStatus" and "status 99" in failure.error_message


def test_continue_as_new_resets_history_and_carries_events():
    carried = h.event_raised(T0, "later", '"x"')
    step = apply_step("i1", "e1", started(), NEW, [
        action(0, create_timer=pb.CreateTimerAction(fire_at=T0 + timedelta(hours=1))),
        action(1, complete_orchestration=pb.CompleteOrchestrationAction(
            orchestration_status=S.CONTINUED_AS_NEW, result='{"n":2}', carryover_events=[carried])),
    ], T0)
    assert step.reset_history and step.history == [] and step.status == int(S.RUNNING)
    assert step.execution_id != "e1" and step.new_input == '{"n":2}'
    first, second = (m.event.event for m in step.messages)
    assert first.execution_started.input == '{"n":2}'
    assert first.execution_started.orchestration_instance.execution_id == step.execution_id
    assert second.event_raised.name == "later"
    assert all(m.execution_id == step.execution_id for m in step.messages)  # old timer dropped


def test_inbox_events_are_kept_not_re_encoded():
    consumed = StoredEvent.read(bytes(h.task_completed(T0, 0, '"r"')))
    step = apply_step("i1", "e1", started(), [*NEW, consumed], [], T0)
    assert step.history[1] is consumed


@pytest.mark.parametrize("child_id, problem", [
    ("@sub@1", "reserves for entities"),
    ("c" * 101, "101 characters long"),
    ("ctl\x01", "control characters"),
])
def test_a_sub_orchestration_no_client_could_reach_fails_its_parent(child_id, problem):
    step = apply_step("p", "x1", None, [], [
        action(0, create_sub_orchestration=pb.CreateSubOrchestrationAction(
            instance_id=child_id, name="child")),
    ], T0)
    assert step.status == int(S.FAILED) and not step.new_instances
    failure = pb.TaskFailureDetails.parse(step.failure)
    assert failure.error_type == "InvalidInstanceId" and problem in failure.error_message


def test_an_event_sent_to_an_entity_fails_the_sender():
    # The entity's inbox would take it as a message it does not know, and drop it.
    step = apply_step("p", "x1", None, [], [
        action(0, send_event=pb.SendEventAction(
            instance=pb.OrchestrationInstance(instance_id="@counter@x"), name="go")),
    ], T0)
    assert step.status == int(S.FAILED) and not step.messages
    assert "is an entity" in pb.TaskFailureDetails.parse(step.failure).error_message
