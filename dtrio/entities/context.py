"""What an entity operation sees, and the in-process executor of an entity batch.

Operations run one at a time in arrival order against the state left by the one before. An
operation that raises fails alone: its state changes and the signals and orchestrations it
asked for are discarded, and a caller receives the failure.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from .. import _pb as pb
from .. import history as h
from .. import payloads
from ..durations import Duration, fire_time
from ..errors import FailureDetails, InvalidInput
from ..instance_ids import validate_instance_id
from ..registry import name_of
from .batch import EntityBatch
from .ids import EntityId

_MISSING = object()


class EntityContext:
    """One operation's window on its entity: the state, the entity's ID, the operation's name
    and input, and the signals and orchestrations it starts (sent only if it succeeds)."""

    def __init__(self, entity_id: EntityId, state: str | None, now: datetime) -> None:
        self.entity_id = entity_id
        self.operation = ""
        self.input: Any = None
        self.now = now
        self._state = state
        self._decoded: Any = _MISSING
        self._actions: list[pb.OperationAction] = []

    # -- state -----------------------------------------------------------------------------

    @property
    def has_state(self) -> bool:
        return self._state is not None

    def get_state(self, default: Any = None) -> Any:
        """The state (a fresh copy per operation: change it with `set_state`), or `default`."""
        if self._state is None:
            return default
        if self._decoded is _MISSING:
            self._decoded = payloads.decode(self._state, f"state of entity {self.entity_id}")
        return self._decoded

    def set_state(self, value: Any) -> None:
        """Replace the state; None deletes it (the entity then disappears from queries)."""
        self._state = payloads.encode(value, f"state of entity {self.entity_id}")
        self._decoded = _MISSING

    def delete_state(self) -> None:
        self.set_state(None)

    # -- side effects ----------------------------------------------------------------------

    def signal_entity(
        self, entity_id: EntityId | str, operation: str, input: Any = None, *,
        signal_time: datetime | Duration | None = None,
    ) -> None:
        """Send an operation to an entity (this one too), one way; optionally later."""
        target = EntityId.of(entity_id)
        if not operation:
            raise InvalidInput("signal_entity needs an operation name")
        when = _when(signal_time, "signal_entity(signal_time=...)", self.now)
        data = payloads.encode(input, f"input of operation {operation!r} of entity {target}")
        self._actions.append(pb.OperationAction(
            id=len(self._actions),
            send_signal=pb.SendSignalAction(
                instance_id=str(target), name=operation, input=data, scheduled_time=when,
                request_time=self.now,
            ),
        ))

    def schedule_new_orchestration(
        self, orchestrator: Callable[..., Any] | str, *, input: Any = None,
        instance_id: str | None = None, start_at: datetime | Duration | None = None,
    ) -> str:
        """Start an orchestration once this operation succeeds; returns its instance ID."""
        name = name_of(orchestrator, "orchestrator")
        iid = validate_instance_id(instance_id) if instance_id is not None else uuid.uuid4().hex
        self._actions.append(pb.OperationAction(
            id=len(self._actions),
            start_new_orchestration=pb.StartNewOrchestrationAction(
                instance_id=iid, name=name,
                input=payloads.encode(input, f"input of orchestrator {name!r}"),
                scheduled_time=_when(start_at, "schedule_new_orchestration(start_at=...)",
                                     self.now),
                request_time=self.now,
            ),
        ))
        return iid


def _when(at: datetime | Duration | None, name: str, now: datetime) -> datetime | None:
    return fire_time(at, name, now) if at is not None else None


class DurableEntity:
    """Base class for class entities: each public method is an operation, called as
    `method()` or `method(input)` on a fresh instance, with `self.ctx` set. A `delete`
    operation that deletes the state is inherited."""

    ctx: EntityContext

    def get_state(self, default: Any = None) -> Any:
        return self.ctx.get_state(default)

    def set_state(self, value: Any) -> None:
        self.ctx.set_state(value)

    def delete(self) -> None:
        self.ctx.delete_state()


def operations_of(cls: type) -> frozenset[str]:
    """The operations a class entity offers: its public methods (and `delete`)."""
    return frozenset(
        name for name, member in inspect.getmembers(cls, callable)
        if not name.startswith("_") and name not in ("get_state", "set_state")
    )


async def run_batch(
    entities: Mapping[str, Any], batch: EntityBatch, now: datetime
) -> pb.EntityBatchResult:
    """Run `batch`'s operations with the registered entity of its name."""
    entity_id = EntityId.stored(batch.entity_id)
    entity = entities.get(entity_id.name)
    committed = batch.state
    results: list[pb.OperationResult] = []
    actions: list[pb.OperationAction] = []
    for operation in batch.operations:
        ctx = EntityContext(entity_id, committed, now)
        ctx.operation = operation.name
        try:
            if entity is None:
                raise _NotRegistered(entity_id.name)
            ctx.input = payloads.decode(
                operation.input, f"input of operation {operation.name!r} of entity {entity_id}")
            value = await _invoke(entity, ctx)
            output = payloads.encode(
                value, f"result of operation {operation.name!r} of entity {entity_id}")
        except Exception as exc:
            details = (
                exc.details if isinstance(exc, _NotRegistered) else h.failure_from_exception(exc)
            )
            results.append(pb.OperationResult(failure=pb.OperationResultFailure(
                failure_details=h.failure_to_pb(details), start_time_utc=now, end_time_utc=now)))
            continue
        committed = ctx._state
        for action in ctx._actions:
            action.id = len(actions)
            actions.append(action)
        results.append(pb.OperationResult(success=pb.OperationResultSuccess(
            result=output, start_time_utc=now, end_time_utc=now)))
    return pb.EntityBatchResult(results=results, actions=actions, entity_state=committed)


class _NotRegistered(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.details = FailureDetails(
            "EntityNotRegistered", f"entity {name!r} is not registered with this worker",
            is_non_retriable=True,
        )


async def _invoke(entity: Any, ctx: EntityContext) -> Any:
    if isinstance(entity, type):
        instance = entity()
        instance.ctx = ctx
        if ctx.operation not in operations_of(entity):
            raise AttributeError(
                f"entity {ctx.entity_id.name!r} has no operation {ctx.operation!r} "
                f"(its operations: {', '.join(sorted(operations_of(entity)))})"
            )
        method = getattr(instance, ctx.operation)
        if _takes_argument(method):
            value = method(ctx.input)
        elif ctx.input is not None:
            raise TypeError(f"operation {ctx.operation!r} of entity {ctx.entity_id.name!r} "
                            "takes no input, but was given one")
        else:
            value = method()
    else:
        value = entity(ctx, ctx.input)
    if inspect.isawaitable(value):
        value = await value
    return value


def _takes_argument(method: Callable[..., Any]) -> bool:
    params = [
        p for p in inspect.signature(method).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return bool(params)
