"""Runtime state transitions: one orchestration step's actions become history and messages.

Pure: the caller supplies `now` and IDs come from uuid4. The backend commits the resulting
`OrchestrationStep` atomically, whether the actions came from our replay core or from a remote
SDK worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import _pb as pb
from . import history as h
from .entities.ids import EntityId
from .errors import FailureDetails, InvalidInput
from .events import StoredEvent
from .inbox import Message, NewInstance
from .instance_ids import is_entity_id, new_execution_id, validate_instance_id
from .times import from_us as from_us
from .times import to_us
from .trace_context import new_span_id, orchestration_context, start_traced
from .wire import encode, history_marker, one_of

_S = pb.OrchestrationStatus
TERMINAL = frozenset({int(_S.COMPLETED), int(_S.FAILED), int(_S.TERMINATED), int(_S.CANCELED)})
_STATUSES = frozenset(int(s) for s in _S)
_ORCHESTRATOR_COMPLETED = h.EVENT_FIELDS["orchestrator_completed"]


@dataclass(slots=True)
class ActivityTask:
    instance_id: str
    execution_id: str
    task_id: int
    name: str
    version: str | None
    input: str | None
    visible_at: int
    # The orchestration span this activity's span belongs under (None: not traced).
    trace_context: pb.TraceContext | None = None
    # A call with a retry policy: the call's ID (its first task's), and the attempts the
    # orchestrator made before this task. The store adds the redeliveries of those attempts.
    call_id: int | None = None
    retries: int = 0


@dataclass(slots=True)
class ChildRewind:
    """A sub-orchestration to rewind with its parent (or to start again if it was purged)."""

    instance_id: str
    reason: str | None
    parent_execution_id: str
    recreate: NewInstance


@dataclass(slots=True)
class OrchestrationStep:
    """Everything one orchestration work item changes, committed in one transaction."""

    history: list[StoredEvent]
    execution_id: str
    status: int
    custom_status: str | None
    reset_history: bool = False
    # This execution ended and a new one begins (reset_history also covers rewinds).
    continued_as_new: bool = False
    output: str | None = None
    failure: bytes | None = None
    new_input: str | None = None  # the next execution's input, with reset_history
    activities: list[ActivityTask] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    new_instances: list[NewInstance] = field(default_factory=list)
    # Terminated recursively: live sub-orchestrations are terminated too, with the same output.
    terminate_children: bool = False
    rewind_children: list[ChildRewind] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return self.status in TERMINAL


class _StepBuilder:
    def __init__(
        self,
        instance_id: str,
        execution_id: str,
        started: pb.ExecutionStartedEvent | None,
        now: datetime,
    ) -> None:
        self.instance_id = instance_id
        self.execution_id = execution_id
        self.started = started
        self.now = now
        self.now_us = to_us(now)
        self.events: list[StoredEvent] = []
        self.step = OrchestrationStep([], execution_id, int(_S.RUNNING), None)
        self.terminate_recursive = False
        # What this execution's scheduled work is traced under; None when it is not traced.
        self.trace = orchestration_context(started)

    def add(self, kind: str, event_id: int, body: Any) -> None:
        """Record an event of `kind` (its oneof member's name) made by an action: kept as its
        bytes, since nothing in this process reads it back."""
        self.events.append(h.recorded(self.now, kind, body, event_id))

    def message(self, instance_id: str, event: pb.HistoryEvent, visible_at: int | None = None,
                execution_id: str | None = None) -> None:
        self.step.messages.append(
            Message(instance_id, StoredEvent.made(event),
                    self.now_us if visible_at is None else visible_at, execution_id)
        )


def apply_step(
    instance_id: str,
    execution_id: str,
    started: pb.ExecutionStartedEvent | None,
    new_events: Sequence[StoredEvent],
    actions: Sequence[pb.OrchestratorAction],
    now: datetime,
    *,
    custom_status: str | None = None,
    suspended: bool = False,
) -> OrchestrationStep:
    """Turn one step (the events it consumed and the actions it produced) into a commit plan."""
    b = _StepBuilder(instance_id, execution_id, started, now)
    history = list(new_events)
    for stored in new_events:
        terminated = stored.event.execution_terminated
        if terminated is not None and terminated.recurse:
            b.terminate_recursive = True
    b.step.custom_status = custom_status
    b.step.status = int(_S.SUSPENDED if suspended else _S.RUNNING)
    for action in actions:
        kind, body = one_of(action, "orchestratorActionType")
        handler = _ACTIONS.get(kind)
        if handler is None:
            _fail(b, action.id, FailureDetails(
                "UnsupportedAction",
                f"orchestrator action #{action.id} of kind {kind or 'unknown'!r} is not supported "
                "by this engine",
                is_non_retriable=True,
            ))
            break
        if handler(b, action, body) is _STOP:
            break
    history += b.events
    if not b.step.reset_history:
        history.append(StoredEvent.read(history_marker(_ORCHESTRATOR_COMPLETED, now)))
        b.step.history = history
    return b.step


_STOP = object()


def _schedule_task(
    b: _StepBuilder, action: pb.OrchestratorAction, body: pb.ScheduleTaskAction
) -> None:
    # A remote SDK worker may send its own (client span's) context; ours is the orchestration's.
    trace = body.parent_trace_context or b.trace
    b.add("task_scheduled", action.id, pb.TaskScheduledEvent(
        name=body.name, version=body.version, input=body.input, tags=body.tags,
        parent_trace_context=trace,
    ))
    b.step.activities.append(ActivityTask(
        b.instance_id, b.execution_id, action.id, body.name, body.version, body.input, b.now_us,
        trace, *_call_of(body.tags),
    ))


def _call_of(tags: dict[str, str]) -> tuple[int | None, int]:
    """The call a task belongs to, and the attempts before it, from its tags (none, or tags
    that are not dtrio's numbers: the task is a call of its own)."""
    call, retries = tags.get(h.CALL_TAG), tags.get(h.RETRY_TAG, "0")
    if call is None or not all(v.isascii() and v.isdigit() and len(v) < 10
                               for v in (call, retries)):
        return None, 0
    return int(call), int(retries)


def _create_timer(
    b: _StepBuilder, action: pb.OrchestratorAction, body: pb.CreateTimerAction
) -> None:
    fire_at = body.fire_at or b.now
    b.add("timer_created", action.id, pb.TimerCreatedEvent(fire_at=fire_at))
    b.message(b.instance_id, h.timer_fired(fire_at, action.id, fire_at),
              max(to_us(fire_at), b.now_us), b.execution_id)


def _create_sub_orchestration(
    b: _StepBuilder, action: pb.OrchestratorAction, body: pb.CreateSubOrchestrationAction
) -> object:
    try:
        # An ID no client could name (or one of an entity's, whose inbox would take everything
        # sent to the child) fails the parent instead.
        validate_instance_id(body.instance_id)
    except InvalidInput as exc:
        _fail(b, action.id, FailureDetails("InvalidInstanceId", (
            f"orchestrator action #{action.id} creates a sub-orchestration: {exc}"),
            is_non_retriable=True))
        return _STOP
    trace = body.parent_trace_context or b.trace
    b.add("sub_orchestration_instance_created", action.id,
          pb.SubOrchestrationInstanceCreatedEvent(
              instance_id=body.instance_id, name=body.name, version=body.version,
              input=body.input, parent_trace_context=trace, tags=body.tags,
          ))
    child_execution = new_execution_id()
    parent = pb.ParentInstanceInfo(
        task_scheduled_id=action.id,
        name=b.started.name if b.started else None,
        version=b.started.version if b.started else None,
        orchestration_instance=pb.OrchestrationInstance(
            instance_id=b.instance_id, execution_id=b.execution_id
        ),
    )
    # An unset version inherits the parent's, as the Durable Task Framework does.
    version = (
        body.version if body.version is not None
        else (b.started.version if b.started else None)
    )
    started = start_traced(h.execution_started(
        b.now, body.name, body.instance_id, child_execution, body.input,
        version=version, parent=parent, tags=dict(body.tags) or None,
    ), trace)
    conflict = h.sub_orchestration_failed(b.now, action.id, FailureDetails(
        "InstanceAlreadyExists",
        f"cannot start sub-orchestration {body.name!r}: an instance with ID "
        f"{body.instance_id!r} already exists",
        is_non_retriable=True,
    ))
    b.step.new_instances.append(NewInstance(
        body.instance_id, child_execution, body.name, version, body.input,
        StoredEvent.made(started),
        b.now_us, parent_instance_id=b.instance_id, tags=dict(body.tags) or None,
        conflict=Message(b.instance_id, StoredEvent.made(conflict), b.now_us, b.execution_id),
        replace_finished=True,
    ))


def _send_event(b: _StepBuilder, action: pb.OrchestratorAction, body: pb.SendEventAction) -> object:
    target = body.instance.instance_id if body.instance else ""
    if is_entity_id(target):
        # An entity's inbox would take it as a message it does not know, and drop it.
        _fail(b, action.id, FailureDetails("InvalidInstanceId", (
            f"orchestrator action #{action.id} sends event {body.name!r} to {target!r}, which "
            "is an entity: entities take operations (signal or call them), not events"),
            is_non_retriable=True))
        return _STOP
    b.add("event_sent", action.id, pb.EventSentEvent(
        instance_id=target, name=body.name, input=body.data,
    ))
    if target:
        b.message(target, h.event_raised(b.now, body.name, body.data))
    return None


def _terminate(
    b: _StepBuilder, action: pb.OrchestratorAction, body: pb.TerminateOrchestrationAction
) -> None:
    if body.instance_id:
        b.message(body.instance_id, h.execution_terminated(b.now, body.reason, body.recurse))


def _complete(
    b: _StepBuilder, action: pb.OrchestratorAction, body: pb.CompleteOrchestrationAction
) -> object:
    status = int(body.orchestration_status)
    if status not in _STATUSES:  # a newer protocol's, or garbage: its meaning is unknown here
        _fail(b, action.id, FailureDetails(
            "UnsupportedStatus",
            f"orchestrator action #{action.id} completes the orchestration with status {status}, "
            "which this engine does not know",
            is_non_retriable=True,
        ))
        return _STOP
    if status == int(_S.CONTINUED_AS_NEW):
        _continue_as_new(b, body)
        return _STOP
    if status not in TERMINAL:
        status = int(_S.COMPLETED)
    failure = body.failure_details if status == int(_S.FAILED) else None
    if status == int(_S.FAILED) and failure is None:
        failure = pb.TaskFailureDetails(
            error_type="OrchestrationFailed",
            error_message="the orchestration failed without details",
        )
    b.add("execution_completed", action.id, pb.ExecutionCompletedEvent(
        orchestration_status=pb.OrchestrationStatus(status), result=body.result,
        failure_details=failure,
    ))
    b.step.status = status
    b.step.output = body.result
    b.step.failure = encode(failure) if failure is not None else None
    if status == int(_S.TERMINATED) and b.terminate_recursive:
        b.step.terminate_children = True
    # (`is not None`: a message's truth walks all its fields.)
    parent = b.started.parent_instance if b.started is not None else None
    if parent is not None and parent.orchestration_instance is not None:
        if status == int(_S.COMPLETED):
            event = h.sub_orchestration_completed(b.now, parent.task_scheduled_id, body.result)
        else:
            details = h.failure_from_pb(failure) if failure is not None else FailureDetails(
                "OrchestrationTerminated",
                # Not the termination's output: the parent's failure is logged at INFO, and
                # outputs never are. It stays the child's output, for whoever asks.
                f"sub-orchestration {b.instance_id!r} was terminated",
            )
            event = h.sub_orchestration_failed(b.now, parent.task_scheduled_id, details)
        b.message(parent.orchestration_instance.instance_id, event,
                  execution_id=parent.orchestration_instance.execution_id)
    return _STOP


def _continue_as_new(b: _StepBuilder, body: pb.CompleteOrchestrationAction) -> None:
    started = b.started or pb.ExecutionStartedEvent()
    execution_id = new_execution_id()
    b.step.reset_history = True
    b.step.continued_as_new = True
    b.step.new_input = body.result
    b.step.execution_id = execution_id
    b.step.status = int(_S.RUNNING)
    b.step.activities.clear()
    b.step.new_instances.clear()
    # Only messages to other instances survive; this execution's own timers die with it.
    b.step.messages = [m for m in b.step.messages if m.instance_id != b.instance_id]
    # The next execution gets its own span, a sibling under the same parent as this one.
    new_start = start_traced(h.execution_started(
        b.now, started.name, b.instance_id, execution_id, body.result,
        version=body.new_version if body.new_version is not None else started.version,
        parent=started.parent_instance, tags=dict(started.tags) or None,
    ), started.parent_trace_context)
    b.message(b.instance_id, new_start, execution_id=execution_id)
    for carried in body.carryover_events:
        b.message(b.instance_id, carried, execution_id=execution_id)
    b.step.history = []


def _rewind(
    b: _StepBuilder, _action: pb.OrchestratorAction, body: pb.RewindOrchestrationAction
) -> object:
    history = list(body.new_history)
    started = next((e.execution_started for e in history if e.execution_started is not None), None)
    execution_id = b.execution_id
    if (
        started is not None
        and started.orchestration_instance
        and started.orchestration_instance.execution_id
    ):
        execution_id = started.orchestration_instance.execution_id
    reason = next(
        (e.execution_rewound.reason for e in reversed(history) if e.execution_rewound is not None),
        None,
    )
    if started is not None and started.orchestration_span_id:
        # The failed run's span was emitted when it failed; the resumed run reports a new one.
        started.orchestration_span_id = new_span_id()
    trace = orchestration_context(started)
    b.step = OrchestrationStep(
        [StoredEvent.made(e) for e in history], execution_id, int(_S.RUNNING), b.step.custom_status,
        reset_history=True, new_input=started.input if started is not None else None,
    )
    finished = {
        e.sub_orchestration_instance_completed.task_scheduled_id
        for e in history if e.sub_orchestration_instance_completed is not None
    }
    for event in history:
        created = event.sub_orchestration_instance_created
        if created is None or event.event_id in finished:
            continue
        parent = pb.ParentInstanceInfo(
            task_scheduled_id=event.event_id,
            name=started.name if started else None,
            version=started.version if started else None,
            orchestration_instance=pb.OrchestrationInstance(
                instance_id=b.instance_id, execution_id=execution_id
            ),
        )
        child_execution = new_execution_id()
        child_start = start_traced(h.execution_started(
            b.now, created.name, created.instance_id, child_execution, created.input,
            version=created.version, parent=parent,
        ), trace)
        b.step.rewind_children.append(ChildRewind(
            created.instance_id, reason, execution_id,
            NewInstance(created.instance_id, child_execution, created.name, created.version,
                        created.input, StoredEvent.made(child_start), b.now_us,
                        parent_instance_id=b.instance_id),
        ))
    # A lone orchestratorStarted makes the instance run again, replaying the clean history.
    b.message(b.instance_id, h.orchestrator_started(b.now), execution_id=execution_id)
    b.events.clear()
    return _STOP


def _fail(b: _StepBuilder, action_id: int, details: FailureDetails) -> None:
    _complete(b, pb.OrchestratorAction(id=action_id), pb.CompleteOrchestrationAction(
        orchestration_status=_S.FAILED, failure_details=h.failure_to_pb(details)))


def _entity_message(
    b: _StepBuilder, action: pb.OrchestratorAction, body: pb.SendEntityMessageAction
) -> object:
    """Record the message in history (the SDKs match it against their action on replay) and
    send it to its entity: signals and calls to their target, a lock request to the first
    entity of its lock set, an unlock to the entity it releases."""
    kind, msg = one_of(body, "EntityMessageType")
    parent = b.instance_id
    if kind == "entity_operation_called":
        # Replies go to this execution only; the SDKs leave these unset.
        msg.parent_instance_id = msg.parent_instance_id or parent
        msg.parent_execution_id = msg.parent_execution_id or b.execution_id
        target = msg.target_instance_id
    elif kind == "entity_operation_signaled":
        target = msg.target_instance_id
    elif kind == "entity_lock_requested":
        msg.parent_instance_id = msg.parent_instance_id or parent
        target = msg.lock_set[msg.position] if 0 <= msg.position < len(msg.lock_set) else None
    elif kind == "entity_unlock_sent":
        msg.parent_instance_id = msg.parent_instance_id or parent
        target = msg.target_instance_id
    else:
        target = None
    problem = _entity_target_problem(kind, target)
    if problem is None and kind == "entity_lock_requested":
        problem = _lock_set_problem(msg.lock_set)
    if problem is not None:
        _fail(b, action.id, FailureDetails("InvalidEntityMessage", (
            f"orchestrator action #{action.id} sends an entity message "
            f"({kind or 'of no known kind'}) that cannot be delivered: {problem}"),
            is_non_retriable=True))
        return _STOP
    assert target is not None
    b.add(kind, action.id, msg)
    event = pb.HistoryEvent(event_id=-1, timestamp=b.now, **{kind: msg})
    visible = b.now_us
    if kind == "entity_operation_signaled" and msg.scheduled_time is not None:
        visible = max(to_us(msg.scheduled_time), b.now_us)
    # Entity names are case-insensitive: deliver to the one stored (lowercase) name.
    b.message(str(EntityId.parse(target)), event, visible)
    return None


def _lock_set_problem(lock_set: Sequence[str]) -> str | None:
    """Why a lock set cannot be forwarded from entity to entity: each entry must be an entity,
    and none twice (the second request would wait for the lock its own section holds)."""
    seen: set[str] = set()
    for entry in lock_set:
        try:
            entity = str(EntityId.parse(entry))
        except InvalidInput as exc:
            return f"its lock set holds {entry!r}: {exc}"
        if entity in seen:
            return f"its lock set names {entity} twice"
        seen.add(entity)
    return None


def _entity_target_problem(kind: str, target: str | None) -> str | None:
    if not kind:
        return "it has no message"
    if not target:
        return "it names no target entity"
    try:
        EntityId.parse(target)
    except InvalidInput as exc:
        return str(exc)
    return None


_ACTIONS: dict[str, Callable[[_StepBuilder, pb.OrchestratorAction, Any], object]] = {
    "schedule_task": _schedule_task,
    "create_timer": _create_timer,
    "create_sub_orchestration": _create_sub_orchestration,
    "send_event": _send_event,
    "terminate_orchestration": _terminate,
    "complete_orchestration": _complete,
    "send_entity_message": _entity_message,
    "rewind_orchestration": _rewind,
}
