"""Our betterproto2 classes and the durabletask SDK's protobuf classes read each other's bytes.

Direction one: a message built with dtrio._pb -> bytes -> the SDK's class; the SDK sees the same
fields (checked through protobuf's JSON mapping, which betterproto2's to_dict follows, and
through explicit field reads), and the SDK's re-serialization parses back into an equal message.

Direction two: messages built by the SDK (by its own helpers, and generically from its
descriptor with every field set) -> bytes -> ours -> bytes -> the SDK: nothing lost or altered.
"""

import copy
import re
import warnings
from datetime import UTC, datetime, timedelta

import betterproto2
import pytest
from durabletask.internal import helpers as sdk_helpers
from durabletask.internal import orchestrator_service_pb2 as sdk_pb2
from google.protobuf import descriptor as gdescriptor
from google.protobuf import json_format, struct_pb2, timestamp_pb2, unknown_fields, wrappers_pb2

import dtrio._pb as pb
from dtrio import history as h
from dtrio._pb.google import protobuf as gp
from dtrio.state import apply_step
from dtrio.wire import decode, encode

# Deprecated fields (TraceContext.spanID, OrchestratorResponse.isPartial/chunkIndex) are set on
# purpose: they are still on the wire.
pytestmark = pytest.mark.filterwarnings(r"ignore:.* is deprecated:DeprecationWarning")

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
T1 = datetime(2026, 1, 2, 3, 9, 0, 1, tzinfo=UTC)
T_OLD = datetime(1969, 7, 20, 20, 17, 40, tzinfo=UTC)  # negative seconds on the wire


# ---------------------------------------------------------------- building blocks (ours)


def trace(n=1):
    with warnings.catch_warnings():  # also called at import time, outside pytestmark's reach
        warnings.simplefilter("ignore", DeprecationWarning)
        return pb.TraceContext(
            trace_parent=f"00-{n:032x}-{n:016x}-01", span_id=f"span{n}", trace_state=f"k=v{n}"
        )


def instance(n=1):
    return pb.OrchestrationInstance(instance_id=f"inst-{n}", execution_id=f"exec-{n}")


def parent():
    return pb.ParentInstanceInfo(
        task_scheduled_id=4, name="parentOrch", version="v2", orchestration_instance=instance(9)
    )


def failure():
    """Two levels of inner failure, a stack trace, and properties of every Value kind."""
    return pb.TaskFailureDetails(
        error_type="ValueError",
        error_message="outer ✗",
        stack_trace='  File "x.py", line 1\n',
        is_non_retriable=True,
        properties={
            "str": gp.Value(string_value="s"),
            "num": gp.Value(number_value=1.5),
            "bool": gp.Value(bool_value=True),
            "null": gp.Value(null_value=gp.NullValue.NULL_VALUE),
            "struct": gp.Value(struct_value=gp.Struct(fields={"a": gp.Value(number_value=2.0)})),
            "list": gp.Value(list_value=gp.ListValue(values=[gp.Value(string_value="q")])),
        },
        inner_failure=pb.TaskFailureDetails(
            error_type="KeyError",
            error_message="middle",
            inner_failure=pb.TaskFailureDetails(
                error_type="OSError", error_message="inner", stack_trace=""
            ),
        ),
    )


def state():
    return pb.OrchestrationState(
        instance_id="inst-1",
        name="orch",
        version="1.0",
        orchestration_status=pb.OrchestrationStatus.FAILED,
        scheduled_start_timestamp=T0,
        created_timestamp=T0,
        last_updated_timestamp=T1,
        input='{"in": 1}',
        output='"out"',
        custom_status='"busy"',
        failure_details=failure(),
        execution_id="exec-1",
        completed_timestamp=T1,
        parent_instance_id="parent-1",
        tags={"team": "a", "env": "prod"},
    )


TAGS = {"k1": "v1", "ünï": "cödé", "empty": ""}

# One representative, non-default payload per HistoryEvent.eventType member.
HISTORY_EVENT_PAYLOADS = {
    "execution_started": pb.ExecutionStartedEvent(
        name="orch",
        version="1.0",
        input='{"x": [1, 2]}',
        orchestration_instance=instance(),
        parent_instance=parent(),
        scheduled_start_timestamp=T1,
        parent_trace_context=trace(),
        orchestration_span_id="oss",
        tags=TAGS,
    ),
    "execution_completed": pb.ExecutionCompletedEvent(
        orchestration_status=pb.OrchestrationStatus.FAILED, result='"r"', failure_details=failure()
    ),
    "execution_terminated": pb.ExecutionTerminatedEvent(input='"bye"', recurse=True),
    "task_scheduled": pb.TaskScheduledEvent(
        name="act", version="2", input='"a"', parent_trace_context=trace(2), tags=TAGS
    ),
    "task_completed": pb.TaskCompletedEvent(task_scheduled_id=7, result='{"ok": true}'),
    "task_failed": pb.TaskFailedEvent(task_scheduled_id=8, failure_details=failure()),
    "sub_orchestration_instance_created": pb.SubOrchestrationInstanceCreatedEvent(
        instance_id="child",
        name="sub",
        version="3",
        input="[]",
        parent_trace_context=trace(3),
        tags=TAGS,
    ),
    "sub_orchestration_instance_completed": pb.SubOrchestrationInstanceCompletedEvent(
        task_scheduled_id=9, result="null"
    ),
    "sub_orchestration_instance_failed": pb.SubOrchestrationInstanceFailedEvent(
        task_scheduled_id=10, failure_details=failure()
    ),
    "timer_created": pb.TimerCreatedEvent(fire_at=T1),
    "timer_fired": pb.TimerFiredEvent(fire_at=T_OLD, timer_id=11),
    "orchestrator_started": pb.OrchestratorStartedEvent(),
    "orchestrator_completed": pb.OrchestratorCompletedEvent(),
    "event_sent": pb.EventSentEvent(instance_id="other", name="ping", input='"p"'),
    "event_raised": pb.EventRaisedEvent(name="approval", input=""),  # present but empty
    "generic_event": pb.GenericEvent(data="generic"),
    "history_state": pb.HistoryStateEvent(orchestration_state=state()),
    "continue_as_new": pb.ContinueAsNewEvent(input='{"n": 2}'),
    "execution_suspended": pb.ExecutionSuspendedEvent(input="why"),
    "execution_resumed": pb.ExecutionResumedEvent(input="because"),
    "entity_operation_signaled": pb.EntityOperationSignaledEvent(
        request_id="r1",
        operation="add",
        scheduled_time=T1,
        input="1",
        target_instance_id="@counter@a",
    ),
    "entity_operation_called": pb.EntityOperationCalledEvent(
        request_id="r2",
        operation="get",
        scheduled_time=T0,
        input="null",
        parent_instance_id="inst-1",
        parent_execution_id="exec-1",
        target_instance_id="@counter@b",
    ),
    "entity_operation_completed": pb.EntityOperationCompletedEvent(request_id="r3", output="5"),
    "entity_operation_failed": pb.EntityOperationFailedEvent(
        request_id="r4", failure_details=failure()
    ),
    "entity_lock_requested": pb.EntityLockRequestedEvent(
        critical_section_id="cs1",
        lock_set=["@a@1", "@b@2", ""],
        position=1,
        parent_instance_id="inst-1",
    ),
    "entity_lock_granted": pb.EntityLockGrantedEvent(critical_section_id="cs1"),
    "entity_unlock_sent": pb.EntityUnlockSentEvent(
        critical_section_id="cs1", parent_instance_id="inst-1", target_instance_id="@a@1"
    ),
    "execution_rewound": pb.ExecutionRewoundEvent(
        reason="retry",
        parent_execution_id="pe",
        instance_id="inst-1",
        parent_trace_context=trace(4),
        name="orch",
        version="1",
        input='"i"',
        parent_instance=parent(),
        tags=TAGS,
    ),
}


def _copy(msg):
    with warnings.catch_warnings():  # betterproto2's deepcopy re-runs __init__ (spanID warning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return copy.deepcopy(msg)


def history_event(kind, event_id=3):
    payload = HISTORY_EVENT_PAYLOADS[kind]
    return pb.HistoryEvent(event_id=event_id, timestamp=T0, **{kind: _copy(payload)})


SMALL_HISTORY = [
    history_event("orchestrator_started", -1),
    history_event("execution_started", -1),
    history_event("task_scheduled", 0),
    history_event("task_failed", -1),
]

ENTITY_MESSAGES = {
    "entity_operation_signaled": HISTORY_EVENT_PAYLOADS["entity_operation_signaled"],
    "entity_operation_called": HISTORY_EVENT_PAYLOADS["entity_operation_called"],
    "entity_lock_requested": HISTORY_EVENT_PAYLOADS["entity_lock_requested"],
    "entity_unlock_sent": HISTORY_EVENT_PAYLOADS["entity_unlock_sent"],
}

# One representative payload per OrchestratorAction.orchestratorActionType member.
ACTION_PAYLOADS = {
    "schedule_task": pb.ScheduleTaskAction(
        name="act", version="1", input='"x"', tags=TAGS, parent_trace_context=trace()
    ),
    "create_sub_orchestration": pb.CreateSubOrchestrationAction(
        instance_id="child",
        name="sub",
        version="2",
        input="{}",
        parent_trace_context=trace(2),
        tags=TAGS,
    ),
    "create_timer": pb.CreateTimerAction(fire_at=T1),
    "send_event": pb.SendEventAction(instance=instance(), name="ev", data='"d"'),
    "complete_orchestration": pb.CompleteOrchestrationAction(
        orchestration_status=pb.OrchestrationStatus.CONTINUED_AS_NEW,
        result='"r"',
        details="details",
        new_version="2.0",
        carryover_events=[history_event("event_raised", -1), history_event("timer_fired", -1)],
        failure_details=failure(),
        tags=TAGS,
    ),
    "terminate_orchestration": pb.TerminateOrchestrationAction(
        instance_id="victim", reason="stop", recurse=True
    ),
    "send_entity_message": pb.SendEntityMessageAction(
        entity_operation_called=HISTORY_EVENT_PAYLOADS["entity_operation_called"]
    ),
    "rewind_orchestration": pb.RewindOrchestrationAction(new_history=SMALL_HISTORY),
}


def action(kind, action_id=5):
    return pb.OrchestratorAction(id=action_id, **{kind: _copy(ACTION_PAYLOADS[kind])})


def properties():
    return {
        "p": gp.Value(string_value="v"),
        "n": gp.Value(number_value=-3.25),
        "nested": gp.Value(struct_value=gp.Struct(fields={"deep": gp.Value(bool_value=False)})),
    }


def orchestrator_request():
    return pb.OrchestratorRequest(
        instance_id="inst-1",
        execution_id="exec-1",
        past_events=[history_event(k, i) for i, k in enumerate(HISTORY_EVENT_PAYLOADS)],
        new_events=SMALL_HISTORY,
        entity_parameters=pb.OrchestratorEntityParameters(
            entity_message_reorder_window=timedelta(seconds=30, microseconds=5)
        ),
        requires_history_streaming=True,
        properties=properties(),
        orchestration_trace_context=pb.OrchestrationTraceContext(span_id="sp", span_start_time=T0),
    )


def orchestrator_response():
    return pb.OrchestratorResponse(
        instance_id="inst-1",
        actions=[action(k, i) for i, k in enumerate(ACTION_PAYLOADS)],
        custom_status='"status"',
        completion_token="tok",
        num_events_processed=0,  # present wrapper holding the default value
        orchestration_trace_context=pb.OrchestrationTraceContext(span_id="sp", span_start_time=T1),
        requires_history=True,
        is_partial=True,
        chunk_index=2,
    )


def activity_request():
    return pb.ActivityRequest(
        name="act",
        version="1",
        input='"in"',
        orchestration_instance=instance(),
        task_id=12,
        parent_trace_context=trace(),
        tags=TAGS,
    )


def entity_batch_request():
    return pb.EntityBatchRequest(
        instance_id="@counter@a",
        entity_state="5",
        operations=[
            pb.OperationRequest(operation="add", request_id="r1", input="1", trace_context=trace()),
            pb.OperationRequest(operation="get", request_id="r2"),
        ],
        properties=properties(),
    )


def entity_request_v2():
    return pb.EntityRequest(
        instance_id="@counter@a",
        execution_id="e",
        entity_state="{}",
        operation_requests=[
            history_event("entity_operation_signaled"),
            history_event("entity_operation_called"),
        ],
    )


WORK_ITEM_PAYLOADS = {
    "orchestrator_request": orchestrator_request,
    "activity_request": activity_request,
    "entity_request": entity_batch_request,
    "health_ping": pb.HealthPing,
    "entity_request_v_2": entity_request_v2,
}


def create_instance_request():
    return pb.CreateInstanceRequest(
        instance_id="inst-1",
        name="orch",
        version="1.0",
        input='{"a": 1}',
        scheduled_start_timestamp=T1,
        orchestration_id_reuse_policy=pb.OrchestrationIdReusePolicy(
            replaceable_status=[
                pb.OrchestrationStatus.COMPLETED,
                pb.OrchestrationStatus.FAILED,
                pb.OrchestrationStatus.RUNNING,
            ]
        ),
        execution_id="exec-1",
        tags=TAGS,
        parent_trace_context=trace(),
        request_time=T0,
    )


CASES = {
    **{
        f"HistoryEvent.{kind}": (lambda k=kind: history_event(k)) for kind in HISTORY_EVENT_PAYLOADS
    },
    **{f"OrchestratorAction.{kind}": (lambda k=kind: action(k)) for kind in ACTION_PAYLOADS},
    **{
        f"OrchestratorAction.send_entity_message.{kind}": (
            lambda k=kind: pb.OrchestratorAction(
                id=6,
                send_entity_message=pb.SendEntityMessageAction(**{k: _copy(ENTITY_MESSAGES[k])}),
            )
        )
        for kind in ENTITY_MESSAGES
    },
    "OrchestratorRequest": orchestrator_request,
    "OrchestratorResponse": orchestrator_response,
    **{
        f"WorkItem.{kind}": (
            lambda k=kind: pb.WorkItem(completion_token="ct", **{k: WORK_ITEM_PAYLOADS[k]()})
        )
        for kind in WORK_ITEM_PAYLOADS
    },
    "CreateInstanceRequest": create_instance_request,
    "ActivityResponse": lambda: pb.ActivityResponse(
        instance_id="inst-1",
        task_id=3,
        result='"r"',
        failure_details=failure(),
        completion_token="ct",
    ),
    "HistoryChunk": lambda: pb.HistoryChunk(events=SMALL_HISTORY),
    "GetInstanceResponse": lambda: pb.GetInstanceResponse(exists=True, orchestration_state=state()),
    "HistoryEvent.defaults": lambda: pb.HistoryEvent(),
}


# ---------------------------------------------------------------- comparison helpers


def sdk_class(msg: betterproto2.Message):
    return getattr(sdk_pb2, type(msg).__name__)


_DURATION = re.compile(r"-?\d+\.\d+s")


def normalize(value):
    """Fold the two harmless differences between protobuf's JSON and betterproto2's to_dict.

    - protobuf JSON names a few fields 'spanID'; betterproto2 camel-cases to 'spanId' (so keys
      are compared folded to lower case);
    - protobuf writes Duration fractions in groups of 3 digits ('90.000250s'), betterproto2
      strips trailing zeros ('90.00025s'); both are valid proto JSON.
    """
    if isinstance(value, dict):
        return {k.lower(): normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, str) and _DURATION.fullmatch(value):
        return value[:-1].rstrip("0").rstrip(".") + "s"
    return value


def assert_no_unknown_fields(sdk_msg, path="msg"):
    """The SDK understood every byte we sent, all the way down."""
    assert len(unknown_fields.UnknownFieldSet(sdk_msg)) == 0, (
        f"{path} has fields the SDK does not know"
    )
    for fd, value in sdk_msg.ListFields():
        if fd.type != gdescriptor.FieldDescriptor.TYPE_MESSAGE:
            continue
        if fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            if value_fd.type == gdescriptor.FieldDescriptor.TYPE_MESSAGE:
                for k, v in value.items():
                    assert_no_unknown_fields(v, f"{path}.{fd.name}[{k!r}]")
        elif fd.is_repeated:
            for i, v in enumerate(value):
                assert_no_unknown_fields(v, f"{path}.{fd.name}[{i}]")
        else:
            assert_no_unknown_fields(value, f"{path}.{fd.name}")


def assert_no_unknown_fields_ours(msg: betterproto2.Message, path="msg"):
    """We understood every byte the SDK sent, all the way down."""
    assert not msg._unknown_fields, f"{path} has fields dtrio._pb does not know"
    for name in msg._betterproto.meta_by_field_name:
        value = getattr(msg, name)
        values = (
            value.values()
            if isinstance(value, dict)
            else value
            if isinstance(value, list)
            else [value]
        )
        for i, v in enumerate(values):
            if isinstance(v, betterproto2.Message):
                assert_no_unknown_fields_ours(v, f"{path}.{name}[{i}]")


def ours_to_sdk_and_back(ours: betterproto2.Message):
    data = bytes(ours)
    sdk_msg = sdk_class(ours).FromString(data)
    assert_no_unknown_fields(sdk_msg)
    assert normalize(json_format.MessageToDict(sdk_msg)) == normalize(ours.to_dict())
    back = type(ours).parse(sdk_msg.SerializeToString())
    assert back == ours
    assert_no_unknown_fields_ours(back)
    # And our re-encoding of what came back is, to the SDK, the same message.
    assert sdk_class(ours).FromString(bytes(back)) == sdk_msg
    return sdk_msg, back


def sdk_to_ours_and_back(sdk_msg):
    ours_cls = getattr(pb, sdk_msg.DESCRIPTOR.name)
    ours = ours_cls.parse(sdk_msg.SerializeToString())
    assert_no_unknown_fields_ours(ours)
    assert normalize(ours.to_dict()) == normalize(json_format.MessageToDict(sdk_msg))
    again = type(sdk_msg).FromString(bytes(ours))
    assert again == sdk_msg
    assert_no_unknown_fields(again)
    return ours


# ---------------------------------------------------------------- coverage of the case tables


def _oneof_members(sdk_cls, oneof):
    return {f.name for f in sdk_cls.DESCRIPTOR.oneofs_by_name[oneof].fields}


def _snake(camel):
    return betterproto2.Casing.SNAKE(camel)


def test_every_history_event_kind_is_covered():
    sdk_kinds = _oneof_members(sdk_pb2.HistoryEvent, "eventType")
    assert len(sdk_kinds) == 28
    ours = {
        n
        for n, m in pb.HistoryEvent._betterproto.meta_by_field_name.items()
        if m.group == "eventType"
    }
    assert set(HISTORY_EVENT_PAYLOADS) == ours == {_snake(k) for k in sdk_kinds}


def test_every_action_kind_is_covered():
    sdk_kinds = _oneof_members(sdk_pb2.OrchestratorAction, "orchestratorActionType")
    assert set(ACTION_PAYLOADS) == {_snake(k) for k in sdk_kinds}
    entity_kinds = _oneof_members(sdk_pb2.SendEntityMessageAction, "EntityMessageType")
    assert set(ENTITY_MESSAGES) == {_snake(k) for k in entity_kinds}


def test_every_work_item_kind_is_covered():
    ours = {
        n for n, m in pb.WorkItem._betterproto.meta_by_field_name.items() if m.group == "request"
    }
    assert set(WORK_ITEM_PAYLOADS) == ours
    assert len(_oneof_members(sdk_pb2.WorkItem, "request")) == len(ours)


# ---------------------------------------------------------------- ours -> SDK -> ours


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_round_trips_through_sdk(case):
    ours = CASES[case]()
    sdk_msg, _ = ours_to_sdk_and_back(ours)
    # The oneof the SDK sees is the one we set (json names equal the SDK field names here).
    for oneof in sdk_msg.DESCRIPTOR.oneofs_by_name:
        mine = betterproto2.which_one_of(ours, oneof)[0]
        theirs = sdk_msg.WhichOneof(oneof)
        assert theirs == (betterproto2.Casing.CAMEL(mine) if mine else None)


@pytest.mark.parametrize("kind", sorted(HISTORY_EVENT_PAYLOADS))
def test_history_event_kind_seen_by_sdk(kind):
    ours = history_event(kind, event_id=42)
    sdk_msg = sdk_pb2.HistoryEvent.FromString(bytes(ours))
    assert sdk_msg.eventId == 42
    assert sdk_msg.HasField("timestamp")
    assert sdk_msg.timestamp.ToDatetime(tzinfo=UTC) == T0
    assert sdk_msg.WhichOneof("eventType") == betterproto2.Casing.CAMEL(kind)
    # The payload alone also survives, compared as the SDK's own message.
    payload = getattr(sdk_msg, sdk_msg.WhichOneof("eventType"))
    assert payload == type(payload).FromString(bytes(HISTORY_EVENT_PAYLOADS[kind]))


def test_task_scheduled_fields_explicitly():
    ours = pb.HistoryEvent(
        event_id=3,
        timestamp=T0,
        task_scheduled=pb.TaskScheduledEvent(name="x", input='"a"', tags={"t": "1"}),
    )
    s = sdk_pb2.HistoryEvent.FromString(bytes(ours))
    assert s.eventId == 3
    assert (s.timestamp.seconds, s.timestamp.nanos) == (int(T0.timestamp()), 678901000)
    assert s.taskScheduled.name == "x"
    assert s.taskScheduled.HasField("input") and s.taskScheduled.input.value == '"a"'
    assert not s.taskScheduled.HasField("version")  # None -> absent wrapper
    assert not s.taskScheduled.HasField("parentTraceContext")
    assert dict(s.taskScheduled.tags) == {"t": "1"}


def test_execution_started_fields_explicitly():
    s = sdk_pb2.HistoryEvent.FromString(
        bytes(history_event("execution_started", -1))
    ).executionStarted
    assert s.name == "orch" and s.version.value == "1.0" and s.input.value == '{"x": [1, 2]}'
    assert s.orchestrationInstance.instanceId == "inst-1"
    assert s.orchestrationInstance.executionId.value == "exec-1"
    assert s.parentInstance.taskScheduledId == 4
    assert s.parentInstance.name.value == "parentOrch"
    assert s.parentInstance.orchestrationInstance.instanceId == "inst-9"
    assert s.scheduledStartTimestamp.ToDatetime(tzinfo=UTC) == T1
    assert s.parentTraceContext.traceParent == trace().trace_parent
    assert s.parentTraceContext.spanID == "span1"
    assert s.parentTraceContext.traceState.value == "k=v1"
    assert s.orchestrationSpanID.value == "oss"
    assert dict(s.tags) == TAGS


def test_failure_details_chain_explicitly():
    s = sdk_pb2.HistoryEvent.FromString(bytes(history_event("task_failed"))).taskFailed
    assert s.taskScheduledId == 8
    fd = s.failureDetails
    assert (fd.errorType, fd.errorMessage, fd.isNonRetriable) == ("ValueError", "outer ✗", True)
    assert fd.stackTrace.value == '  File "x.py", line 1\n'
    assert fd.innerFailure.errorType == "KeyError"
    assert not fd.innerFailure.HasField("stackTrace")
    assert not fd.innerFailure.isNonRetriable
    assert fd.innerFailure.innerFailure.errorMessage == "inner"
    assert fd.innerFailure.innerFailure.HasField("stackTrace")  # "" is present, not absent
    assert not fd.innerFailure.innerFailure.HasField("innerFailure")
    # The SDK's own reading of properties.
    props = {k: sdk_helpers.python_value_from_protobuf(v) for k, v in fd.properties.items()}
    assert props == {
        "str": "s",
        "num": 1.5,
        "bool": True,
        "null": None,
        "struct": {"a": 2.0},
        "list": ["q"],
    }
    details = sdk_helpers.failure_details_from_protobuf(fd)
    assert details.error_type == "ValueError" and details.message == "outer ✗"


def test_empty_string_wrapper_is_present_and_none_is_absent():
    present = sdk_pb2.EventRaisedEvent.FromString(bytes(pb.EventRaisedEvent(name="e", input="")))
    assert present.HasField("input") and present.input.value == ""
    absent = sdk_pb2.EventRaisedEvent.FromString(bytes(pb.EventRaisedEvent(name="e", input=None)))
    assert not absent.HasField("input")
    # ... and the other way.
    assert pb.EventRaisedEvent.parse(present.SerializeToString()).input == ""
    assert pb.EventRaisedEvent.parse(absent.SerializeToString()).input is None
    both = sdk_pb2.OrchestratorResponse.FromString(
        bytes(pb.OrchestratorResponse(num_events_processed=0))
    )
    assert both.HasField("numEventsProcessed") and both.numEventsProcessed.value == 0
    assert pb.OrchestratorResponse.parse(both.SerializeToString()).num_events_processed == 0
    assert pb.OrchestratorResponse.parse(b"").num_events_processed is None


def test_empty_oneof_payload_still_selects_the_kind():
    for kind in ("orchestrator_started", "orchestrator_completed"):
        s = sdk_pb2.HistoryEvent.FromString(
            bytes(
                pb.HistoryEvent(
                    **{kind: getattr(pb, type(HISTORY_EVENT_PAYLOADS[kind]).__name__)()}
                )
            )
        )
        assert s.WhichOneof("eventType") == betterproto2.Casing.CAMEL(kind)
    hp = sdk_pb2.WorkItem.FromString(bytes(pb.WorkItem(health_ping=pb.HealthPing())))
    assert hp.WhichOneof("request") == "healthPing"
    assert (
        betterproto2.which_one_of(pb.WorkItem.parse(hp.SerializeToString()), "request")[0]
        == "health_ping"
    )


def test_orchestrator_response_fields_explicitly():
    s = sdk_pb2.OrchestratorResponse.FromString(bytes(orchestrator_response()))
    assert s.instanceId == "inst-1" and s.completionToken == "tok"
    assert [a.WhichOneof("orchestratorActionType") for a in s.actions] == [
        betterproto2.Casing.CAMEL(k) for k in ACTION_PAYLOADS
    ]
    assert [a.id for a in s.actions] == list(range(len(ACTION_PAYLOADS)))
    complete = s.actions[
        list(ACTION_PAYLOADS).index("complete_orchestration")
    ].completeOrchestration
    assert complete.orchestrationStatus == sdk_pb2.ORCHESTRATION_STATUS_CONTINUED_AS_NEW
    assert [e.WhichOneof("eventType") for e in complete.carryoverEvents] == [
        "eventRaised",
        "timerFired",
    ]
    assert complete.carryoverEvents[1].timerFired.fireAt.ToDatetime(tzinfo=UTC) == T_OLD
    rewind = s.actions[list(ACTION_PAYLOADS).index("rewind_orchestration")].rewindOrchestration
    assert len(rewind.newHistory) == len(SMALL_HISTORY)
    assert s.customStatus.value == '"status"'
    assert s.orchestrationTraceContext.spanID.value == "sp"
    assert s.requiresHistory and s.isPartial and s.chunkIndex.value == 2


def test_orchestrator_request_fields_explicitly():
    s = sdk_pb2.OrchestratorRequest.FromString(bytes(orchestrator_request()))
    assert s.instanceId == "inst-1" and s.executionId.value == "exec-1"
    assert len(s.pastEvents) == 28 and len(s.newEvents) == len(SMALL_HISTORY)
    assert s.entityParameters.entityMessageReorderWindow.ToTimedelta() == timedelta(
        seconds=30, microseconds=5
    )
    assert s.requiresHistoryStreaming
    assert s.properties["nested"].struct_value.fields["deep"].bool_value is False
    assert s.properties["n"].number_value == -3.25
    assert s.orchestrationTraceContext.spanStartTime.ToDatetime(tzinfo=UTC) == T0


def test_create_instance_request_fields_explicitly():
    s = sdk_pb2.CreateInstanceRequest.FromString(bytes(create_instance_request()))
    assert (s.instanceId, s.name, s.version.value, s.input.value) == (
        "inst-1",
        "orch",
        "1.0",
        '{"a": 1}',
    )
    assert s.scheduledStartTimestamp.ToDatetime(tzinfo=UTC) == T1
    assert list(s.orchestrationIdReusePolicy.replaceableStatus) == [
        sdk_pb2.ORCHESTRATION_STATUS_COMPLETED,
        sdk_pb2.ORCHESTRATION_STATUS_FAILED,
        sdk_pb2.ORCHESTRATION_STATUS_RUNNING,
    ]
    assert s.executionId.value == "exec-1" and dict(s.tags) == TAGS
    assert s.requestTime.ToDatetime(tzinfo=UTC) == T0


def test_enum_numbers_agree():
    for member in pb.OrchestrationStatus:
        assert sdk_pb2.OrchestrationStatus.Name(int(member)).endswith(member.name)
    for member in pb.WorkerCapability:
        assert sdk_pb2.WorkerCapability.Name(int(member)).endswith(member.name)
    assert len(pb.OrchestrationStatus) == len(sdk_pb2.OrchestrationStatus.keys())
    assert len(pb.WorkerCapability) == len(sdk_pb2.WorkerCapability.keys())


# ---------------------------------------------------------------- SDK-built -> ours -> SDK


def _raise_chain():
    try:
        try:
            raise KeyError("inner")
        except KeyError as e:
            raise ValueError("outer") from e
    except ValueError as e:
        return e


SDK_BUILT = {
    "orchestrator_started": lambda: sdk_helpers.new_orchestrator_started_event(T0),
    "orchestrator_completed": sdk_helpers.new_orchestrator_completed_event,
    "execution_started": lambda: sdk_helpers.new_execution_started_event(
        "orch",
        "inst-1",
        '"in"',
        tags={"a": "b"},
        version="2",
        parent_trace_context=sdk_pb2.TraceContext(
            traceParent="00-ab-cd-01", traceState=wrappers_pb2.StringValue(value="s")
        ),
    ),
    "timer_created": lambda: sdk_helpers.new_timer_created_event(1, T1),
    "timer_fired": lambda: sdk_helpers.new_timer_fired_event(1, T1),
    "task_scheduled": lambda: sdk_helpers.new_task_scheduled_event(2, "act", '"x"'),
    "task_completed": lambda: sdk_helpers.new_task_completed_event(2, '"y"'),
    "task_failed": lambda: sdk_helpers.new_task_failed_event(2, _raise_chain()),
    "sub_created": lambda: sdk_helpers.new_sub_orchestration_created_event(
        3, "sub", "child", "[]", "1"
    ),
    "sub_completed": lambda: sdk_helpers.new_sub_orchestration_completed_event(3, None),
    "sub_failed": lambda: sdk_helpers.new_sub_orchestration_failed_event(3, _raise_chain()),
    "event_sent": lambda: sdk_helpers.new_event_sent_event(4, "other", '"p"', name="ping"),
    "event_raised": lambda: sdk_helpers.new_event_raised_event("approval", ""),
    "suspended": lambda: sdk_helpers.new_suspend_event(encoded_input="why"),
    "resumed": lambda: sdk_helpers.new_resume_event(),
    "terminated": lambda: sdk_helpers.new_terminated_event(encoded_output='"bye"'),
    "completed": lambda: sdk_helpers.new_execution_completed_event(
        sdk_pb2.ORCHESTRATION_STATUS_FAILED, None, sdk_helpers.new_failure_details(_raise_chain())
    ),
}

SDK_BUILT_ACTIONS = {
    "complete": lambda: sdk_helpers.new_complete_orchestration_action(
        1,
        sdk_pb2.ORCHESTRATION_STATUS_COMPLETED,
        '"done"',
        carryover_events=[sdk_helpers.new_event_raised_event("e", "1")],
        new_version="3",
    ),
    "timer": lambda: sdk_helpers.new_create_timer_action(2, T1),
    "schedule_task": lambda: sdk_helpers.new_schedule_task_action(3, "act", '"i"', {"t": "v"}),
    "send_event": lambda: sdk_helpers.new_send_event_action(4, "other", "ev", None),
    "sub_orchestration": lambda: sdk_helpers.new_create_sub_orchestration_action(
        5, "sub", "child", "{}", "v1"
    ),
    "signal_entity": lambda: sdk_helpers.new_signal_entity_action(
        6, "@counter@a", "add", "1", "req-1", signal_time=T1
    ),
}


@pytest.mark.parametrize("case", sorted(SDK_BUILT))
def test_sdk_built_events_parse_with_ours(case):
    sdk_msg = SDK_BUILT[case]()
    ours = sdk_to_ours_and_back(sdk_msg)
    assert ours.event_id == sdk_msg.eventId
    # The SDK always sets a timestamp, often the zero one: present, and the epoch.
    assert ours.timestamp == sdk_msg.timestamp.ToDatetime(tzinfo=UTC)
    kind, payload = betterproto2.which_one_of(ours, "eventType")
    assert betterproto2.Casing.CAMEL(kind) == sdk_msg.WhichOneof("eventType")
    assert payload is not None


def test_sdk_built_failure_details_read_by_ours():
    ours = pb.HistoryEvent.parse(SDK_BUILT["task_failed"]().SerializeToString())
    fd = ours.task_failed.failure_details
    assert fd.error_type == "builtins.ValueError" and fd.error_message == "outer"
    assert fd.stack_trace  # traceback text
    assert fd.inner_failure.error_type == "builtins.KeyError"
    assert fd.inner_failure.error_message == "'inner'"
    assert fd.inner_failure.inner_failure is None


def test_sdk_built_execution_started_read_by_ours():
    ours = pb.HistoryEvent.parse(SDK_BUILT["execution_started"]().SerializeToString())
    es = ours.execution_started
    assert (es.name, es.version, es.input) == ("orch", "2", '"in"')
    assert es.orchestration_instance == pb.OrchestrationInstance(instance_id="inst-1")
    assert es.orchestration_instance.execution_id is None
    assert es.tags == {"a": "b"}
    assert es.parent_trace_context.trace_parent == "00-ab-cd-01"
    assert es.parent_trace_context.trace_state == "s"
    assert es.parent_instance is None and es.scheduled_start_timestamp is None


@pytest.mark.parametrize("case", sorted(SDK_BUILT_ACTIONS))
def test_sdk_built_actions_parse_with_ours(case):
    sdk_msg = SDK_BUILT_ACTIONS[case]()
    ours = sdk_to_ours_and_back(sdk_msg)
    assert ours.id == sdk_msg.id
    kind, _ = betterproto2.which_one_of(ours, "orchestratorActionType")
    assert betterproto2.Casing.CAMEL(kind) == sdk_msg.WhichOneof("orchestratorActionType")


# ------------------------------------------------------- every SDK message, fully populated

FD = gdescriptor.FieldDescriptor


def _sdk_scalar(fd, variant):
    t = fd.type
    if t == FD.TYPE_STRING:
        return ["x", "héllo ✓", "longer string " * 10][variant % 3]
    if t == FD.TYPE_BYTES:
        return [b"\x00\xff", b"ab"][variant % 2]
    if t == FD.TYPE_BOOL:
        return True
    if t in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return [7, -1, 2**31 - 1][variant % 3]
    if t in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return [2**40, -5][variant % 2]
    if t in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return 9
    if t in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return 2**63
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return 2.5
    if t == FD.TYPE_ENUM:
        values = fd.enum_type.values
        return values[(variant + 1) % len(values)].number or values[-1].number
    raise AssertionError(fd.full_name)


def sdk_fill(msg, variant=0, depth=0):
    """Set every field of an SDK message (one member per oneof, picked by variant)."""
    desc = msg.DESCRIPTOR
    name = desc.full_name
    if name == "google.protobuf.Timestamp":
        msg.FromDatetime(T0 + timedelta(days=variant, microseconds=variant))
        return msg
    if name == "google.protobuf.Duration":
        msg.FromTimedelta(timedelta(seconds=90 + variant, microseconds=250))
        return msg
    if name == "google.protobuf.Value":
        choices = [
            lambda: setattr(msg, "string_value", "v"),
            lambda: setattr(msg, "number_value", 4.5),
            lambda: setattr(msg, "bool_value", True),
            lambda: setattr(msg, "null_value", struct_pb2.NULL_VALUE),
            lambda: msg.struct_value.update({"k": "v", "n": 1.0}),
            lambda: msg.list_value.extend(["a", 2.0, True]),
        ]
        choices[(variant + depth) % len(choices)]()
        return msg
    if name.startswith("google.protobuf.") and name.endswith("Value"):  # wrappers
        msg.value = _sdk_scalar(desc.fields_by_name["value"], variant)
        return msg
    for oneof in desc.oneofs:  # no proto3 `optional` here, so every oneof is a real one
        chosen = oneof.fields[(variant + depth) % len(oneof.fields)]
        _sdk_set(msg, chosen, variant, depth)
    for fd in desc.fields:
        if fd.containing_oneof is None:
            _sdk_set(msg, fd, variant, depth)
    return msg


def _sdk_set(msg, fd, variant, depth):
    repeated = fd.is_repeated
    if fd.type == FD.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry:
        key_fd, value_fd = (
            fd.message_type.fields_by_name["key"],
            fd.message_type.fields_by_name["value"],
        )
        target = getattr(msg, fd.name)
        for i in range(2):
            key = _sdk_scalar(key_fd, variant + i) if key_fd.type != FD.TYPE_BOOL else bool(i)
            if value_fd.type == FD.TYPE_MESSAGE:
                sdk_fill(target[key], variant + i, depth + 1)
            else:
                target[key] = _sdk_scalar(value_fd, variant + i)
        return
    if fd.type == FD.TYPE_MESSAGE:
        if depth >= 4 and fd.message_type.full_name not in _LEAF_OK:
            return  # HistoryEvent -> ... -> HistoryEvent, TaskFailureDetails -> itself
        if repeated:
            for i in range(2):
                sdk_fill(getattr(msg, fd.name).add(), variant + i, depth + 1)
        else:
            sdk_fill(getattr(msg, fd.name), variant, depth + 1)
            getattr(msg, fd.name).SetInParent()
        return
    if repeated:
        getattr(msg, fd.name).extend([_sdk_scalar(fd, variant), _sdk_scalar(fd, variant + 1)])
    else:
        setattr(msg, fd.name, _sdk_scalar(fd, variant))


_LEAF_OK = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.StringValue",
    "google.protobuf.Int32Value",
    "google.protobuf.BoolValue",
}


def _sdk_cases():
    cases = []
    for name, desc in sorted(sdk_pb2.DESCRIPTOR.message_types_by_name.items()):
        widest = max((len(o.fields) for o in desc.oneofs), default=1)
        for variant in range(max(widest, 2)):
            cases.append(pytest.param(name, variant, id=f"{name}-{variant}"))
    return cases


def test_sdk_message_set_matches_ours():
    sdk_names = set(sdk_pb2.DESCRIPTOR.message_types_by_name)
    ours = {
        n
        for n in pb.__all__
        if isinstance(getattr(pb, n), type) and issubclass(getattr(pb, n), betterproto2.Message)
    }
    assert sdk_names == ours


@pytest.mark.parametrize(("name", "variant"), _sdk_cases())
def test_fully_populated_sdk_message_round_trips_through_ours(name, variant):
    sdk_msg = sdk_fill(getattr(sdk_pb2, name)(), variant)
    if sdk_msg.DESCRIPTOR.fields:
        assert sdk_msg.ByteSize() > 0
    ours = sdk_to_ours_and_back(sdk_msg)
    # And the reverse trip from the message we decoded.
    ours_to_sdk_and_back(ours)
    for oneof in sdk_msg.DESCRIPTOR.oneofs:
        expected = sdk_msg.WhichOneof(oneof.name)
        got = betterproto2.which_one_of(ours, oneof.name)[0]
        assert (got and betterproto2.Casing.CAMEL(got)) == expected


def test_fully_populated_cases_cover_every_history_event_kind():
    kinds = {
        sdk_fill(sdk_pb2.HistoryEvent(), v).WhichOneof("eventType")
        for name, v in ((p.values[0], p.values[1]) for p in _sdk_cases())
        if name == "HistoryEvent"
    }
    assert kinds == _oneof_members(sdk_pb2.HistoryEvent, "eventType")


# ---------------------------------------------------------------- the checks can fail


def test_roundtrip_check_notices_a_field_the_sdk_does_not_know():
    # Field 99 is unknown to the SDK: it lands in unknown fields and the checks must say so.
    ours = history_event("task_completed")
    bogus = bytes(ours) + b"\x98\x06\x01"  # field 99, varint 1
    sdk_msg = sdk_pb2.HistoryEvent.FromString(bogus)
    with pytest.raises(AssertionError):
        assert_no_unknown_fields(sdk_msg)
    with pytest.raises(AssertionError):
        assert_no_unknown_fields_ours(pb.HistoryEvent.parse(bogus))


def test_roundtrip_check_notices_a_changed_value():
    ours = history_event("task_scheduled")
    sdk_msg = sdk_pb2.HistoryEvent.FromString(bytes(ours))
    sdk_msg.taskScheduled.input.value = "changed"
    assert normalize(json_format.MessageToDict(sdk_msg)) != normalize(ours.to_dict())
    assert pb.HistoryEvent.parse(sdk_msg.SerializeToString()) != ours


def test_json_names_differ_only_for_spanID_fields():
    """Protobuf JSON keeps 'spanID'; betterproto2's to_dict writes 'spanId'. Nothing else."""
    differ = set()
    for name, desc in sdk_pb2.DESCRIPTOR.message_types_by_name.items():
        ours = getattr(pb, name)
        by_number = {m.number: n for n, m in ours._betterproto.meta_by_field_name.items()}
        for fd in desc.fields:
            if fd.json_name != betterproto2.Casing.CAMEL(by_number[fd.number]).rstrip("_"):
                differ.add(f"{name}.{fd.name}")
    assert differ == {
        "TraceContext.spanID",
        "ExecutionStartedEvent.orchestrationSpanID",
        "OrchestrationTraceContext.spanID",
    }


def test_timestamp_precision_is_microseconds():
    # The SDK keeps nanoseconds; datetime cannot. Sub-microsecond digits are dropped, not garbled.
    ts = timestamp_pb2.Timestamp(seconds=int(T0.timestamp()), nanos=678901999)
    s = sdk_pb2.TimerCreatedEvent(fireAt=ts)
    ours = pb.TimerCreatedEvent.parse(s.SerializeToString())
    assert ours.fire_at == T0


# ---------------------------------------------------------------- failures through the engine


class _Properties:
    """The SDK worker's hook for custom failure properties (ExceptionPropertiesProvider)."""

    def get_exception_properties(self, exc):
        return {"code": 42, "retry": False, "why": str(exc),
                "where": {"zone": "eu", "hosts": ["a", None, 1.5]}}


def _sdk_failure_with_properties():
    """Built by the SDK's own helper: properties at both levels of the chain."""
    failure = sdk_helpers.new_failure_details(_raise_chain(), _Properties())
    assert failure.properties and failure.innerFailure.properties
    return failure


def test_failure_properties_survive_the_engines_failure_details():
    sent = _sdk_failure_with_properties()
    data = sent.SerializeToString()
    details = h.failure_from_pb(decode(pb.TaskFailureDetails, data))
    assert set(details.properties) == {"code", "retry", "why", "where"}
    again = encode(h.failure_to_pb(details))
    assert again == data
    assert sdk_pb2.TaskFailureDetails.FromString(again) == sent


def test_a_failed_sub_orchestrations_properties_reach_its_parent_unchanged():
    sent = _sdk_failure_with_properties()
    action = sdk_helpers.new_complete_orchestration_action(
        0, sdk_pb2.ORCHESTRATION_STATUS_FAILED, failure_details=sent)
    started = pb.ExecutionStartedEvent(
        name="child", orchestration_instance=instance(2), parent_instance=parent())
    step = apply_step("inst-2", "exec-2", started, [], [
        decode(pb.OrchestratorAction, action.SerializeToString())], T0)
    assert step.failure == sent.SerializeToString()
    [to_parent] = step.messages
    assert to_parent.instance_id == "inst-9"
    # The event carries the failure's bytes as the child's worker sent them.
    assert sent.SerializeToString() in to_parent.event.data
    failed = sdk_pb2.HistoryEvent.FromString(
        to_parent.event.data).subOrchestrationInstanceFailed
    assert failed.failureDetails == sent
