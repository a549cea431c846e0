"""Builders for history events and failure details (pure; used by the engine and by tests)."""

from __future__ import annotations

import traceback
from datetime import datetime

import betterproto2

from . import _pb as pb
from .errors import FailureDetails
from .events import StoredEvent
from .wire import event_bytes, history_marker, new, one_of

# Tags on the tasks of an activity call made with a retry policy (each attempt is a task of its
# own, recorded in its taskScheduled event): the call's ID (its first task's) and how many
# attempts the orchestrator made before this task.
CALL_TAG = "dtrio.call"
RETRY_TAG = "dtrio.retry"


def kind(event: pb.HistoryEvent) -> str:
    """The event's oneof name, e.g. "task_completed"."""
    return one_of(event, "eventType")[0]


def failure_to_pb(details: FailureDetails) -> pb.TaskFailureDetails:
    return pb.TaskFailureDetails(
        error_type=details.error_type,
        error_message=details.message,
        stack_trace=details.stack_trace,
        inner_failure=failure_to_pb(details.inner) if details.inner else None,
        is_non_retriable=details.is_non_retriable,
        properties=dict(details.properties or {}),
    )


def failure_from_pb(details: pb.TaskFailureDetails | None) -> FailureDetails:
    if details is None:
        return FailureDetails("UnknownError", "the failure carried no details")
    return FailureDetails(
        error_type=details.error_type,
        message=details.error_message,
        stack_trace=details.stack_trace,
        inner=failure_from_pb(details.inner_failure) if details.inner_failure else None,
        is_non_retriable=details.is_non_retriable,
        properties=dict(details.properties) or None,
    )


def failure_from_exception(exc: BaseException) -> FailureDetails:
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    inner = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return FailureDetails(
        error_type=type(exc).__name__,
        message=str(exc),
        stack_trace=stack,
        inner=failure_from_exception(inner) if inner is not None else None,
    )


def event(
    timestamp: datetime, event_id: int = -1, **kind_field: betterproto2.Message
) -> pb.HistoryEvent:
    return new(pb.HistoryEvent, event_id=event_id, timestamp=timestamp, **kind_field)


def execution_started(
    now: datetime,
    name: str,
    instance_id: str,
    execution_id: str,
    input: str | None = None,
    *,
    version: str | None = None,
    parent: pb.ParentInstanceInfo | None = None,
    scheduled_start: datetime | None = None,
    tags: dict[str, str] | None = None,
) -> pb.HistoryEvent:
    return event(
        now,
        execution_started=pb.ExecutionStartedEvent(
            name=name,
            version=version,
            input=input,
            orchestration_instance=pb.OrchestrationInstance(
                instance_id=instance_id, execution_id=execution_id
            ),
            parent_instance=parent,
            scheduled_start_timestamp=scheduled_start,
            tags=tags or {},
        ),
    )


def orchestrator_started(now: datetime) -> pb.HistoryEvent:
    return event(now, orchestrator_started=pb.OrchestratorStartedEvent())


# Each kind of history event (its oneof member's name) by its field number.
EVENT_FIELDS = {
    name: meta.number for name, meta in pb.HistoryEvent._betterproto.meta_by_field_name.items()
}
_ORCHESTRATOR_STARTED = EVENT_FIELDS["orchestrator_started"]


def recorded(now: datetime, kind: str, body: betterproto2.Message,
             event_id: int = -1) -> StoredEvent:
    """A history event of `kind` (its oneof member's name) kept as its bytes only, made from
    its parts (for what nothing in this process reads back)."""
    return StoredEvent.read(event_bytes(EVENT_FIELDS[kind], event_id, now, body))


def made(now: datetime, kind: str, body: betterproto2.Message) -> StoredEvent:
    """A history event of `kind` with no event ID, and its bytes made from its parts."""
    return StoredEvent(event(now, **{kind: body}), event_bytes(EVENT_FIELDS[kind], -1, now, body))


def step_opener(now: datetime) -> StoredEvent:
    """The orchestratorStarted that opens every step, with its bytes made without encoding."""
    return StoredEvent(orchestrator_started(now), history_marker(_ORCHESTRATOR_STARTED, now))


def orchestrator_completed(now: datetime) -> pb.HistoryEvent:
    return event(now, orchestrator_completed=pb.OrchestratorCompletedEvent())


def task_scheduled(
    now: datetime, task_id: int, name: str, input: str | None = None
) -> pb.HistoryEvent:
    return event(now, task_id, task_scheduled=pb.TaskScheduledEvent(name=name, input=input))


def task_completed(now: datetime, task_id: int, result: str | None = None) -> pb.HistoryEvent:
    return event(
        now, task_completed=pb.TaskCompletedEvent(task_scheduled_id=task_id, result=result)
    )


def task_failed(now: datetime, task_id: int, details: FailureDetails) -> pb.HistoryEvent:
    return event(
        now,
        task_failed=pb.TaskFailedEvent(
            task_scheduled_id=task_id, failure_details=failure_to_pb(details)
        ),
    )


def timer_created(now: datetime, timer_id: int, fire_at: datetime) -> pb.HistoryEvent:
    return event(now, timer_id, timer_created=pb.TimerCreatedEvent(fire_at=fire_at))


def timer_fired(now: datetime, timer_id: int, fire_at: datetime) -> pb.HistoryEvent:
    return event(now, timer_fired=pb.TimerFiredEvent(fire_at=fire_at, timer_id=timer_id))


def event_raised(now: datetime, name: str, input: str | None = None) -> pb.HistoryEvent:
    return event(now, event_raised=pb.EventRaisedEvent(name=name, input=input))


def sub_orchestration_created(
    now: datetime, task_id: int, name: str, instance_id: str, input: str | None = None
) -> pb.HistoryEvent:
    return event(
        now,
        task_id,
        sub_orchestration_instance_created=pb.SubOrchestrationInstanceCreatedEvent(
            instance_id=instance_id, name=name, input=input
        ),
    )


def sub_orchestration_completed(now: datetime, task_id: int, result: str | None) -> pb.HistoryEvent:
    return event(
        now,
        sub_orchestration_instance_completed=pb.SubOrchestrationInstanceCompletedEvent(
            task_scheduled_id=task_id, result=result
        ),
    )


def sub_orchestration_failed(
    now: datetime, task_id: int, details: FailureDetails
) -> pb.HistoryEvent:
    return event(
        now,
        sub_orchestration_instance_failed=pb.SubOrchestrationInstanceFailedEvent(
            task_scheduled_id=task_id, failure_details=failure_to_pb(details)
        ),
    )


def execution_terminated(
    now: datetime, output: str | None = None, recurse: bool = False
) -> pb.HistoryEvent:
    return event(
        now, execution_terminated=pb.ExecutionTerminatedEvent(input=output, recurse=recurse)
    )


def execution_suspended(now: datetime, reason: str | None = None) -> pb.HistoryEvent:
    return event(now, execution_suspended=pb.ExecutionSuspendedEvent(input=reason))


def execution_resumed(now: datetime, reason: str | None = None) -> pb.HistoryEvent:
    return event(now, execution_resumed=pb.ExecutionResumedEvent(input=reason))
