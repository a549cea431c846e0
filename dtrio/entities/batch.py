"""One entity step, pure: inbox messages and lock state in, operations to run out; then the
operations' results in, a commit plan out.

The inbox holds four kinds of message (history events, as the protocol defines them): signals
and calls are operations; a lock request locks the entity for one orchestration's critical
section and is passed on to the next entity of its (sorted) lock set, the last one telling the
orchestration that it holds every lock; an unlock ends the section. While an entity is locked,
only calls from the orchestration holding it run; everything else waits in the inbox, in
arrival order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from .. import _pb as pb
from .. import history as h
from ..errors import FailureDetails, InvalidInput
from ..events import StoredEvent
from ..inbox import Message, NewInstance
from ..instance_ids import new_execution_id, validate_instance_id
from ..times import to_us
from ..trace_context import start_traced
from ..wire import one_of
from .ids import EntityId

log = logging.getLogger("dtrio.engine")


@dataclass(slots=True)
class Operation:
    """One signal or call to run. `caller` is the orchestration awaiting a call's result."""

    request_id: str
    name: str
    input: str | None
    caller: pb.OrchestrationInstance | None


@dataclass(slots=True)
class EntityBatch:
    """What a step runs, and what it changes whatever the operations do."""

    entity_id: str
    state: str | None
    operations: list[Operation] = field(default_factory=list)
    consumed: list[int] = field(default_factory=list)  # inbox ids
    locked_by: str | None = None  # the orchestration holding the lock, after this step
    lock_section: str | None = None
    lock_messages: list[Message] = field(default_factory=list)


@dataclass(slots=True)
class EntityStep:
    """Everything one entity work item changes, committed in one transaction."""

    state: str | None
    consumed: list[int]
    locked_by: str | None
    lock_section: str | None
    messages: list[Message]
    new_instances: list[NewInstance]
    operations: int
    # Actions of the worker that could not be carried out, and why (for the caller to log).
    rejected: list[str] = field(default_factory=list)


def source_of(event: pb.HistoryEvent) -> str | None:
    """The orchestration a message comes from, when it may run while that orchestration holds
    the entity's lock (its calls, its unlock); None for messages that wait while locked."""
    if event.entity_operation_called is not None:
        return _text(event.entity_operation_called.parent_instance_id)
    if event.entity_unlock_sent is not None:
        return _text(event.entity_unlock_sent.parent_instance_id)
    return None


def _text(value: str | None) -> str | None:
    return value or None


def plan_batch(
    entity_id: str,
    state: str | None,
    locked_by: str | None,
    lock_section: str | None,
    messages: list[tuple[int, pb.HistoryEvent]],
    now: datetime,
) -> EntityBatch:
    """Decide what a step does with `messages` (oldest first, as leased: all visible ones while
    unlocked, only the holder's while locked)."""
    batch = EntityBatch(entity_id, state, locked_by=locked_by, lock_section=lock_section)
    # Leased while locked, the batch holds only the holder's messages: others may be waiting
    # unseen, and after an unlock they come first.
    deferred = locked_by is not None
    now_us = to_us(now)
    for inbox_id, event in messages:
        kind, body = one_of(event, "eventType")
        if kind == "entity_operation_signaled":
            if batch.locked_by is not None:
                deferred = True
                continue
            batch.operations.append(Operation(body.request_id, body.operation, body.input, None))
        elif kind == "entity_operation_called":
            if batch.locked_by is not None and _text(body.parent_instance_id) != batch.locked_by:
                deferred = True
                continue
            caller = pb.OrchestrationInstance(
                instance_id=body.parent_instance_id or "",
                execution_id=body.parent_execution_id or None,
            )
            batch.operations.append(
                Operation(body.request_id, body.operation, body.input, caller))
        elif kind == "entity_lock_requested":
            if batch.locked_by is not None:
                deferred = True
                continue
            _lock(batch, body, now, now_us)
        elif kind == "entity_unlock_sent":
            if body.critical_section_id == batch.lock_section:
                batch.locked_by = batch.lock_section = None
                if deferred:
                    # Messages that waited for this unlock come before the ones after it.
                    batch.consumed.append(inbox_id)
                    break
        # Anything else has no meaning for an entity and is dropped with the consumed ones.
        batch.consumed.append(inbox_id)
    return batch


def _lock(
    batch: EntityBatch, request: pb.EntityLockRequestedEvent, now: datetime, now_us: int
) -> None:
    parent = request.parent_instance_id or ""
    batch.locked_by, batch.lock_section = parent or None, request.critical_section_id
    following = request.position + 1
    if following < len(request.lock_set):
        forward = pb.EntityLockRequestedEvent(
            critical_section_id=request.critical_section_id, lock_set=list(request.lock_set),
            position=following, parent_instance_id=request.parent_instance_id,
        )
        event = h.event(now, entity_lock_requested=forward)
        try:
            target = str(EntityId.parse(request.lock_set[following]))
        except InvalidInput as exc:
            # Refused when the orchestration sent it; a stored one must not stop this entity.
            # The lock stays with the orchestration until it ends, like any it holds.
            log.warning("entity lock request of %s names a non-entity %r: %s",
                        parent or "an orchestration", request.lock_set[following], exc)
            return
        batch.lock_messages.append(Message(target, StoredEvent.made(event), now_us))
    elif parent:
        granted = h.event(now, entity_lock_granted=pb.EntityLockGrantedEvent(
            critical_section_id=request.critical_section_id))
        batch.lock_messages.append(Message(parent, StoredEvent.made(granted), now_us))


def finish_batch(batch: EntityBatch, result: pb.EntityBatchResult, now: datetime) -> EntityStep:
    """The commit plan for `batch` given its operations' results (from our executor or a remote
    worker: the same protocol message)."""
    now_us = to_us(now)
    step = EntityStep(
        result.entity_state, list(batch.consumed), batch.locked_by, batch.lock_section,
        list(batch.lock_messages), [], len(batch.operations),
    )
    outcomes = list(result.results[: len(batch.operations)])
    # A worker that answers fewer operations than it was given fails the rest, rather than
    # leaving them (and the callers awaiting them) to be retried without end.
    outcomes += [_missing(batch.entity_id, op) for op in batch.operations[len(outcomes):]]
    for operation, outcome in zip(batch.operations, outcomes, strict=True):
        if operation.caller is None or not operation.caller.instance_id:
            continue
        step.messages.append(_reply(operation, outcome, now, now_us))
    for action in result.actions:
        try:
            _apply_action(step, batch.entity_id, action, now, now_us)
        except InvalidInput as exc:
            # The operations ran and their results stand; only this side effect is dropped.
            step.rejected.append(f"action #{action.id} of entity {batch.entity_id}: {exc}")
    return step


def _missing(entity_id: str, operation: Operation) -> pb.OperationResult:
    return pb.OperationResult(failure=pb.OperationResultFailure(failure_details=h.failure_to_pb(
        FailureDetails("EntityOperationLost", f"the worker returned no result for operation "
                       f"{operation.name!r} of entity {entity_id!r}", is_non_retriable=True))))


def _reply(
    operation: Operation, outcome: pb.OperationResult, now: datetime, now_us: int
) -> Message:
    assert operation.caller is not None
    kind, body = one_of(outcome, "resultType")
    if kind == "success":
        event = h.event(now, entity_operation_completed=pb.EntityOperationCompletedEvent(
            request_id=operation.request_id, output=body.result))
    else:
        details = body.failure_details if kind == "failure" and body.failure_details else (
            h.failure_to_pb(FailureDetails(
                "EntityOperationFailed", f"operation {operation.name!r} reported no outcome")))
        event = h.event(now, entity_operation_failed=pb.EntityOperationFailedEvent(
            request_id=operation.request_id, failure_details=details))
    return Message(operation.caller.instance_id, StoredEvent.made(event), now_us,
                   operation.caller.execution_id or None)


def _apply_action(step: EntityStep, entity_id: str, action: pb.OperationAction, now: datetime,
                  now_us: int) -> None:
    kind, body = one_of(action, "operationActionType")
    if kind == "send_signal":
        target = str(EntityId.parse(body.instance_id))
        signal = pb.EntityOperationSignaledEvent(
            request_id=new_execution_id(), operation=body.name, input=body.input,
            scheduled_time=body.scheduled_time, target_instance_id=target,
        )
        event = h.event(now, entity_operation_signaled=signal)
        visible = max(to_us(body.scheduled_time), now_us) if body.scheduled_time else now_us
        step.messages.append(Message(target, StoredEvent.made(event), visible))
    elif kind == "start_new_orchestration":
        if not body.name:
            raise InvalidInput("it starts an orchestration without a name")
        instance_id = (validate_instance_id(body.instance_id) if body.instance_id
                       else new_execution_id())
        execution_id = new_execution_id()
        started = start_traced(h.execution_started(
            now, body.name, instance_id, execution_id, body.input, version=body.version,
            scheduled_start=body.scheduled_time,
        ), body.parent_trace_context)
        visible = max(to_us(body.scheduled_time), now_us) if body.scheduled_time else now_us
        step.new_instances.append(NewInstance(
            instance_id, execution_id, body.name, body.version, body.input,
            StoredEvent.made(started), visible,
        ))
    else:
        raise InvalidInput(f"its kind {kind or 'unknown'!r} is not one this engine knows")
