"""Entity steps (pure): which messages a batch runs, defers and consumes under locks; results
become replies and actions; orchestrations' entity messages become history and deliveries."""

from datetime import UTC, datetime, timedelta

import pytest

from dtrio import _pb as pb
from dtrio import history as h
from dtrio.entities.batch import finish_batch, plan_batch
from dtrio.state import apply_step
from dtrio.times import to_us

T0 = datetime(2026, 3, 1, tzinfo=UTC)
E = "@counter@a"


def signal(op="add", input="1"):
    return h.event(T0, entity_operation_signaled=pb.EntityOperationSignaledEvent(
        request_id=f"s-{op}", operation=op, input=input, target_instance_id=E))


def call(parent, op="get", request="c"):
    return h.event(T0, entity_operation_called=pb.EntityOperationCalledEvent(
        request_id=request, operation=op, parent_instance_id=parent, parent_execution_id="x1",
        target_instance_id=E))


def lock(parent, section, lock_set=(E, "@counter@b"), position=0):
    return h.event(T0, entity_lock_requested=pb.EntityLockRequestedEvent(
        critical_section_id=section, lock_set=list(lock_set), position=position,
        parent_instance_id=parent))


def unlock(parent, section):
    return h.event(T0, entity_unlock_sent=pb.EntityUnlockSentEvent(
        critical_section_id=section, parent_instance_id=parent, target_instance_id=E))


def test_a_lock_defers_others_and_forwards_the_request():
    batch = plan_batch(E, None, None, None, list(enumerate([
        signal(), lock("o1", "cs1"), signal("late"), call("o2"), call("o1", request="mine"),
    ])), T0)
    assert [op.name for op in batch.operations] == ["add", "get"]
    assert batch.operations[1].caller.instance_id == "o1"
    assert batch.consumed == [0, 1, 4]
    assert (batch.locked_by, batch.lock_section) == ("o1", "cs1")
    [forward] = batch.lock_messages
    assert forward.instance_id == "@counter@b"
    assert forward.event.event.entity_lock_requested.position == 1


def test_the_last_entity_grants_and_an_unlock_ends_the_batch_when_others_waited():
    batch = plan_batch(E, None, None, None, list(enumerate([
        lock("o1", "cs1", lock_set=("@counter@0", E), position=1), signal(), unlock("o1", "cs1"),
        signal("after"),
    ])), T0)
    [granted] = batch.lock_messages
    assert granted.instance_id == "o1"
    assert granted.event.event.entity_lock_granted.critical_section_id == "cs1"
    # The deferred signal must run before the one after the unlock: the batch stops there.
    assert batch.consumed == [0, 2] and batch.operations == []
    assert batch.locked_by is None


def test_a_stale_unlock_is_dropped_and_leaves_the_lock():
    batch = plan_batch(E, None, "o1", "cs2", [(7, unlock("o1", "cs1")), (8, call("o1"))], T0)
    assert batch.consumed == [7, 8] and batch.locked_by == "o1"


def test_results_become_replies_and_actions_become_messages():
    batch = plan_batch(E, '"s"', None, None, [(1, signal()), (2, call("o2", request="r2"))], T0)
    later = T0 + timedelta(hours=1)
    step = finish_batch(batch, pb.EntityBatchResult(
        results=[
            pb.OperationResult(success=pb.OperationResultSuccess(result="1")),
            pb.OperationResult(failure=pb.OperationResultFailure(
                failure_details=pb.TaskFailureDetails(error_type="E", error_message="no"))),
        ],
        actions=[
            pb.OperationAction(send_signal=pb.SendSignalAction(
                instance_id="@Other@k", name="ping", scheduled_time=later)),
            pb.OperationAction(start_new_orchestration=pb.StartNewOrchestrationAction(
                instance_id="child", name="orch", input="3")),
        ],
        entity_state='"t"',
    ), T0)
    assert step.state == '"t"' and step.consumed == [1, 2]
    reply, ping = step.messages
    assert (reply.instance_id, reply.execution_id) == ("o2", "x1")
    assert reply.event.event.entity_operation_failed.request_id == "r2"
    assert ping.instance_id == "@other@k" and ping.visible_at == to_us(later)
    assert [n.instance_id for n in step.new_instances] == ["child"]


def test_missing_results_fail_their_operations():
    batch = plan_batch(E, None, None, None, [(1, call("o1", request="r1"))], T0)
    step = finish_batch(batch, pb.EntityBatchResult(), T0)
    failed = step.messages[0].event.event.entity_operation_failed
    assert failed.failure_details.error_type == "EntityOperationLost"


def entity_action(id, **message):
    return pb.OrchestratorAction(id=id, send_entity_message=pb.SendEntityMessageAction(**message))


def test_orchestration_entity_messages_are_recorded_and_delivered():
    started = pb.ExecutionStartedEvent(name="o", orchestration_instance=pb.OrchestrationInstance(
        instance_id="i1", execution_id="e1"))
    step = apply_step("i1", "e1", started, [], [
        entity_action(0, entity_operation_called=pb.EntityOperationCalledEvent(
            request_id="r", operation="get", target_instance_id=E)),
        entity_action(1, entity_lock_requested=pb.EntityLockRequestedEvent(
            critical_section_id="cs", lock_set=["@counter@0", E], position=0)),
    ], T0)
    called, locked = step.messages
    assert called.instance_id == E
    assert called.event.event.entity_operation_called.parent_instance_id == "i1"
    assert called.event.event.entity_operation_called.parent_execution_id == "e1"
    assert locked.instance_id == "@counter@0"
    assert locked.event.event.entity_lock_requested.parent_instance_id == "i1"


def test_an_undeliverable_entity_message_fails_the_orchestration():
    step = apply_step("i1", "e1", None, [], [
        entity_action(0, entity_operation_signaled=pb.EntityOperationSignaledEvent(
            request_id="r", operation="add", target_instance_id="counter")),
    ], T0)
    assert step.status == int(pb.OrchestrationStatus.FAILED)
    failure = pb.TaskFailureDetails.parse(step.failure)
    assert failure.error_type == "InvalidEntityMessage"
    assert "'counter' is not an entity ID" in failure.error_message


LONG = "@counter@" + "k" * 92  # 101 characters: one over the limit of an instance ID


@pytest.mark.parametrize("kind, message", [
    ("entity_operation_signaled", pb.EntityOperationSignaledEvent(
        request_id="r", operation="add", target_instance_id=LONG)),
    ("entity_operation_called", pb.EntityOperationCalledEvent(
        request_id="r", operation="get", target_instance_id=LONG)),
    ("entity_unlock_sent", pb.EntityUnlockSentEvent(
        critical_section_id="cs", target_instance_id=LONG)),
    ("entity_lock_requested", pb.EntityLockRequestedEvent(
        critical_section_id="cs", lock_set=["@counter@a", LONG], position=0)),
    ("entity_operation_signaled", pb.EntityOperationSignaledEvent(
        request_id="r", operation="add", target_instance_id="@counter@a\x7f")),
])
def test_entity_ids_no_client_could_name_fail_the_orchestration(kind, message):
    step = apply_step("o", "x1", None, [], [entity_action(0, **{kind: message})], T0)
    assert step.status == int(pb.OrchestrationStatus.FAILED) and not step.messages
    failure = pb.TaskFailureDetails.parse(step.failure)
    assert failure.error_type == "InvalidEntityMessage"
    assert ("101 characters long; the limit is 100" in failure.error_message
            or "control characters" in failure.error_message), failure.error_message


@pytest.mark.parametrize("lock_set, problem", [
    (["@counter@a", "not-an-entity"], "'not-an-entity' is not an entity ID"),
    (["@counter@d", "@Counter@d"], "names @counter@d twice"),
])
def test_a_lock_set_that_cannot_be_forwarded_fails_the_orchestration(lock_set, problem):
    # Accepted, it would stop the first entity for good, or make it wait for its own lock.
    step = apply_step("o", "x1", None, [], [
        entity_action(0, entity_lock_requested=pb.EntityLockRequestedEvent(
            critical_section_id="cs", lock_set=lock_set, position=0, parent_instance_id="o")),
    ], T0)
    assert step.status == int(pb.OrchestrationStatus.FAILED) and not step.messages
    failure = pb.TaskFailureDetails.parse(step.failure)
    assert failure.error_type == "InvalidEntityMessage" and problem in failure.error_message


def test_a_batch_leased_while_locked_stops_at_the_unlock():
    # Others' messages were not leased with it: they arrived first and run next.
    batch = plan_batch(E, None, "o1", "cs1", [
        (3, call("o1")), (5, unlock("o1", "cs1")), (6, call("o1", request="after"))], T0)
    assert batch.consumed == [3, 5] and [op.request_id for op in batch.operations] == ["c"]
    assert batch.locked_by is None


def test_actions_that_cannot_be_carried_out_are_dropped_with_a_reason():
    batch = plan_batch(E, None, None, None, [(1, signal())], T0)
    step = finish_batch(batch, pb.EntityBatchResult(
        results=[pb.OperationResult(success=pb.OperationResultSuccess())],
        actions=[
            pb.OperationAction(id=0, send_signal=pb.SendSignalAction(instance_id="nope", name="x")),
            pb.OperationAction(id=1, start_new_orchestration=pb.StartNewOrchestrationAction(
                instance_id="@a@b", name="orch")),
            pb.OperationAction(id=2, start_new_orchestration=pb.StartNewOrchestrationAction()),
            pb.OperationAction(id=3),
            pb.OperationAction(id=4, start_new_orchestration=pb.StartNewOrchestrationAction(
                instance_id="x" * 101, name="orch")),
            pb.OperationAction(id=5, start_new_orchestration=pb.StartNewOrchestrationAction(
                instance_id="ctl\x01", name="orch")),
            pb.OperationAction(id=6, send_signal=pb.SendSignalAction(instance_id=LONG, name="x")),
        ],
    ), T0)
    assert step.messages == [] and step.new_instances == [] and step.consumed == [1]
    assert [why.split(":")[0] for why in step.rejected] == [
        f"action #{i} of entity {E}" for i in range(7)]
    assert "'nope' is not an entity ID" in step.rejected[0]
    assert "reserves for entities" in step.rejected[1]
    assert "without a name" in step.rejected[2]
    assert "not one this engine knows" in step.rejected[3]
    # IDs no client could name: such instances could never be queried, terminated or purged.
    assert "101 characters long" in step.rejected[4]
    assert "control characters" in step.rejected[5]
    assert "101 characters long" in step.rejected[6]
