"""What an orchestrator sees: `ctx`. Every method is deterministic under replay."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from .. import _pb as pb
from .. import payloads
from ..durations import Duration, fire_time, to_timedelta
from ..entities.ids import EntityId
from ..errors import InvalidInput, InvalidOperation
from ..history import CALL_TAG, RETRY_TAG
from ..registry import name_of
from .logger import ReplaySafeLogger
from .retry import RetryableTask, RetryPolicy
from .tasks import Task

if TYPE_CHECKING:
    from .executor import OrchestrationRun

R = TypeVar("R")

_UUID_NAMESPACE = uuid.UUID("9e952958-5e33-4daf-827f-2fa12937b875")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class DurableTask(Task[Any]):
    """A task completed by a history event that names it by sequence number."""

    __slots__ = ("description",)

    def __init__(self, description: str) -> None:
        super().__init__()
        self.description = description


class ExternalEventTask(Task[Any]):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class _EventTimeout(DurableTask):
    """The timer behind `wait_for_external_event(timeout=...)`.

    It fails its wait only if the wait is still pending: a timer that fires after the event
    arrived changes nothing, and a later wait for the same name gets its own timer.
    """

    __slots__ = ("_timeout", "wait", "waiters")

    def __init__(
        self, wait: ExternalEventTask, waiters: list[ExternalEventTask], timeout: timedelta
    ):
        super().__init__(f"timeout of wait for event {wait.name!r}")
        self.wait, self.waiters = wait, waiters
        self._timeout = timeout

    def _complete(self, value: Any) -> None:
        super()._complete(value)
        if not self.wait.is_complete:
            self.waiters.remove(self.wait)
            self.wait._fail(
                TimeoutError(f"event {self.wait.name!r} was not raised within {self._timeout}")
            )


class CriticalSection:
    """The locks of `ctx.lock_entities(...)`: `async with` it (or `await` it and call
    `release()`) to run code while holding them."""

    __slots__ = ("_ctx", "_task", "entities", "id")

    def __init__(self, ctx: OrchestrationContext, section_id: str, entities: list[EntityId],
                 task: Task[Any]) -> None:
        self._ctx = ctx
        self.id = section_id
        self.entities = entities
        self._task = task

    def __await__(self) -> Generator[Task[Any], None, CriticalSection]:
        yield from self._task.__await__()
        return self

    async def __aenter__(self) -> CriticalSection:
        return await self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    @property
    def held(self) -> bool:
        """Whether the locks have been granted."""
        return self._task.is_complete

    def release(self) -> None:
        """Unlock the entities (also done at the end of the `async with` block)."""
        if not self.held:
            # An unlock would overtake the lock request still travelling between the entities,
            # and the lock taken after it would never be released.
            raise InvalidOperation(
                "release() of a critical section whose locks are not granted yet: "
                "await the section first"
            )
        self._ctx._release(self)


class OrchestrationContext:
    """The orchestrator's window on its instance, passed as its first argument.

    Every call is recorded in the instance's history and answered from it when the
    orchestrator is replayed, so the orchestrator must reach its calls in the same order every
    time: no real clocks (use `now`), random numbers (`new_uuid()`) or I/O (activities). Calls
    that schedule work return a `Task` at once; await it, or pass several to
    `dtrio.when_all` / `dtrio.when_any`. Bad arguments raise at the call, before anything is
    recorded.
    """

    # One per instance waiting in memory between steps.
    __slots__ = ("_logger", "_run", "_section", "_uuid_counter", "instance_id", "is_replaying",
                 "name", "now", "version")

    def __init__(self, run: OrchestrationRun, instance_id: str) -> None:
        self._run = run
        self.instance_id = instance_id
        self.now: datetime = _EPOCH
        self.is_replaying = False
        self.name = ""
        self.version: str | None = None
        self._uuid_counter = 0
        self._logger: ReplaySafeLogger | None = None
        self._section: CriticalSection | None = None

    @property
    def logger(self) -> ReplaySafeLogger:
        """A logger (`dtrio.orchestrator.<name>`) that stays silent while replaying history."""
        if self._logger is None:
            logger = logging.getLogger(f"dtrio.orchestrator.{self.name}")
            self._logger = ReplaySafeLogger(logger, self)
        return self._logger

    @property
    def current_utc_datetime(self) -> datetime:
        """Alias of `now`, the name the Durable Task SDKs use."""
        return self.now

    @overload
    def call_activity(
        self, activity: Callable[..., Awaitable[R]], *, input: Any = None,
        retry_policy: RetryPolicy | None = None, tags: dict[str, str] | None = None,
    ) -> Task[R]: ...

    @overload
    def call_activity(
        self, activity: Callable[..., R], *, input: Any = None,
        retry_policy: RetryPolicy | None = None, tags: dict[str, str] | None = None,
    ) -> Task[R]: ...

    @overload
    def call_activity(
        self, activity: str, *, input: Any = None,
        retry_policy: RetryPolicy | None = None, tags: dict[str, str] | None = None,
    ) -> Task[Any]: ...

    def call_activity(
        self,
        activity: Callable[..., Any] | str,
        *,
        input: Any = None,
        retry_policy: RetryPolicy | None = None,
        tags: dict[str, str] | None = None,
    ) -> Task[Any]:
        """Schedule an activity; it runs at least once, wherever a worker takes it.

        `activity` is a registered activity function or its name; `input` a JSON value (a
        `SerializationError` here if it is not one); `retry_policy` retries failed attempts
        after durable waits; `tags` are strings recorded with the scheduled task.
        The task gives the activity's result, or raises `TaskFailedError` (`.details` says
        how it failed) once it has failed and no retry is left.
        """
        name = name_of(activity, "activity")
        data = payloads.encode(input, f"input of activity {name!r}")
        # A retried call is one call: its attempts are tasks of their own, each tagged with the
        # first one's ID (the call's) and its number, so the store counts the call's attempts
        # across them and the activity sees one idempotency key.
        call = self._run.next_id

        def attempt(number: int = 1) -> Task[Any]:
            task = DurableTask(f"activity {name!r}")
            task_tags = tags or {}
            if retry_policy is not None:
                task_tags = {**task_tags, CALL_TAG: str(call), RETRY_TAG: str(number - 1)}
            action = pb.ScheduleTaskAction(name=name, input=data, tags=task_tags)
            self._run.emit(pb.OrchestratorAction(schedule_task=action), task)
            return task

        return attempt() if retry_policy is None else RetryableTask(self, retry_policy, attempt)

    @overload
    def call_sub_orchestrator(
        self, orchestrator: Callable[..., Awaitable[R]], *, input: Any = None,
        instance_id: str | None = None, version: str | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> Task[R]: ...

    @overload
    def call_sub_orchestrator(
        self, orchestrator: str, *, input: Any = None, instance_id: str | None = None,
        version: str | None = None, retry_policy: RetryPolicy | None = None,
    ) -> Task[Any]: ...

    def call_sub_orchestrator(
        self,
        orchestrator: Callable[..., Any] | str,
        *,
        input: Any = None,
        instance_id: str | None = None,
        version: str | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> Task[Any]:
        """Start a child orchestration and wait for it.

        `orchestrator` is a registered orchestrator or its name; `input` a JSON value;
        `instance_id` the child's ID (default `"<this ID>:<sequence number, 4 hex digits>"`;
        not empty, not starting with `@`); `version` is recorded for the child;
        `retry_policy` starts it again after a failure. The task gives the child's output, or
        raises `TaskFailedError` if it failed (after the last retry).
        """
        name = name_of(orchestrator, "orchestrator")
        data = payloads.encode(input, f"input of sub-orchestration {name!r}")
        if instance_id is not None and not instance_id:
            raise InvalidInput("sub-orchestration instance ID must not be empty")
        if instance_id is not None and instance_id.startswith("@"):
            raise InvalidInput(f"sub-orchestration instance ID {instance_id!r} starts with '@', "
                               "which the protocol reserves for entities")

        def attempt(number: int = 1) -> Task[Any]:
            seq = self._run.next_id
            child_id = instance_id if instance_id is not None else f"{self.instance_id}:{seq:04x}"
            task = DurableTask(f"sub-orchestration {name!r} ({child_id})")
            action = pb.CreateSubOrchestrationAction(
                instance_id=child_id, name=name, input=data, version=version
            )
            self._run.emit(pb.OrchestratorAction(create_sub_orchestration=action), task)
            return task

        return attempt() if retry_policy is None else RetryableTask(self, retry_policy, attempt)

    def create_timer(self, fire_at: datetime | Duration) -> Task[None]:
        """A durable timer: use it instead of `trio.sleep`; it survives restarts.

        `fire_at` is a timezone-aware datetime (one in the past fires at once) or a duration
        from `now` (a `timedelta`, or seconds as an int or float). The task gives None once
        the time has come. Anything else raises `InvalidInput` here.
        """
        when = fire_time(fire_at, "create_timer(fire_at=...)", self.now)
        task = DurableTask(f"timer until {when.isoformat()}")
        self._run.emit(pb.OrchestratorAction(create_timer=pb.CreateTimerAction(fire_at=when)), task)
        return task

    def wait_for_external_event(
        self, name: str, *, timeout: Duration | None = None
    ) -> Task[Any]:
        """Wait for the next external event called `name` (case-insensitive).

        Events raised before the wait are kept, and the oldest is taken first. `timeout` is a
        duration (a `timedelta`, or seconds as an int or float). The task gives the event's
        data (decoded JSON), or raises `TimeoutError` if none arrived within `timeout`.
        A bad name or timeout raises `InvalidInput` here.
        """
        if not name:
            raise InvalidInput("event name must not be empty")
        # Checked before anything is recorded: a refused wait leaves no waiter behind.
        delay = None
        if timeout is not None:
            what = "wait_for_external_event(timeout=...)"
            delay = to_timedelta(timeout, what)
            deadline = fire_time(delay, what, self.now)
        key = name.lower()
        wait = ExternalEventTask(name)
        buffered = self._run.buffered_events.get(key)
        if buffered:
            wait._complete(payloads.decode(buffered.pop(0), f"data of event {name!r}"))
            if not buffered:
                del self._run.buffered_events[key]
            return wait
        waiters = self._run.event_waiters.setdefault(key, [])
        waiters.append(wait)
        if delay is not None:
            timer = _EventTimeout(wait, waiters, delay)
            action = pb.CreateTimerAction(fire_at=deadline)
            self._run.emit(pb.OrchestratorAction(create_timer=action), timer)
        return wait

    def send_event(self, instance_id: str, name: str, data: Any = None) -> None:
        """Raise the event `name` with `data` (a JSON value) on another orchestration instance,
        fire and forget: nothing tells whether it exists or takes the event."""
        if not instance_id or not name:
            raise InvalidInput("send_event needs a target instance ID and an event name")
        if instance_id.startswith("@"):
            raise InvalidInput(f"send_event to {instance_id!r}, which is an entity: entities "
                               "take operations (ctx.signal_entity, ctx.call_entity), not events")
        encoded = payloads.encode(data, f"data of event {name!r}")
        action = pb.SendEventAction(
            instance=pb.OrchestrationInstance(instance_id=instance_id), name=name, data=encoded
        )
        self._run.emit(pb.OrchestratorAction(send_event=action), None)

    # -- entities ----------------------------------------------------------------------------

    def call_entity(self, entity: EntityId | str, operation: str, input: Any = None) -> Task[Any]:
        """Run `operation` on an entity with `input` (a JSON value), after the operations
        already sent to it.

        `entity` is an `EntityId` or `"@name@key"`. The task gives the operation's result, or
        raises `TaskFailedError` if the operation failed (the entity keeps going). Inside a
        critical section only its locked entities can be called, once its locks are granted
        (else `InvalidOperation` here).
        """
        target = EntityId.of(entity)
        if not operation:
            raise InvalidInput("call_entity needs an operation name")
        section = self._section
        if section is not None and not section.held:
            raise InvalidOperation(
                f"cannot call entity {target} before the locks of the critical section are "
                "granted: await ctx.lock_entities(...) (or enter its async with block) first"
            )
        if section is not None and target not in section.entities:
            locked = ", ".join(map(str, section.entities))
            raise InvalidOperation(
                f"cannot call entity {target} from the critical section on {locked}: "
                "only locked entities can be called there"
            )
        data = payloads.encode(input, f"input of operation {operation!r} of entity {target}")
        request_id = self.new_uuid()
        task = DurableTask(f"operation {operation!r} of entity {target}")
        self._run.emit(pb.OrchestratorAction(send_entity_message=pb.SendEntityMessageAction(
            entity_operation_called=pb.EntityOperationCalledEvent(
                request_id=request_id, operation=operation, input=data,
                parent_instance_id=self.instance_id, target_instance_id=str(target),
            ))), task)
        return task

    def signal_entity(
        self, entity: EntityId | str, operation: str, input: Any = None, *,
        signal_time: datetime | Duration | None = None,
    ) -> None:
        """Send `operation` with `input` to an entity, one way: nothing comes back.

        `signal_time`, a timezone-aware datetime or a duration from `now`, delays it
        durably. Signalling an entity locked by this orchestration's critical section raises
        `InvalidOperation` (the signal would wait for the lock); bad arguments raise
        `InvalidInput` here.
        """
        target = EntityId.of(entity)
        if not operation:
            raise InvalidInput("signal_entity needs an operation name")
        when = (
            fire_time(signal_time, "signal_entity(signal_time=...)", self.now)
            if signal_time is not None else None
        )
        section = self._section
        if section is not None and target in section.entities:
            raise InvalidOperation(
                f"cannot signal entity {target} from a critical section that holds its lock: "
                "the signal would wait for the lock's release; call it instead"
            )
        data = payloads.encode(input, f"input of operation {operation!r} of entity {target}")
        self._run.emit(pb.OrchestratorAction(send_entity_message=pb.SendEntityMessageAction(
            entity_operation_signaled=pb.EntityOperationSignaledEvent(
                request_id=self.new_uuid(), operation=operation, input=data, scheduled_time=when,
                target_instance_id=str(target),
            ))), None)

    def lock_entities(self, entities: Iterable[EntityId | str]) -> CriticalSection:
        """A critical section: `async with ctx.lock_entities([a, b]):` holds the entities'
        locks for the block, so only this orchestration's calls reach them meanwhile.

        Locks are taken in one global order, so sections cannot deadlock; they are released
        when the block ends or the orchestration finishes. The section, awaited, gives itself
        once every lock is granted. Nesting sections raises `InvalidOperation`.
        """
        if self._section is not None:
            raise InvalidOperation("cannot enter a critical section from within another one")
        ids = sorted({EntityId.of(e) for e in entities})
        if not ids:
            raise InvalidInput("lock_entities needs at least one entity")
        section_id = self.new_uuid()
        task = DurableTask(f"locks on {', '.join(map(str, ids))}")
        self._run.emit(pb.OrchestratorAction(send_entity_message=pb.SendEntityMessageAction(
            entity_lock_requested=pb.EntityLockRequestedEvent(
                critical_section_id=section_id, lock_set=[str(e) for e in ids], position=0,
                parent_instance_id=self.instance_id,
            ))), task)
        self._section = CriticalSection(self, section_id, ids, task)
        return self._section

    def _release(self, section: CriticalSection) -> None:
        if self._section is not section:
            return
        self._section = None
        for entity in section.entities:
            self._run.emit(pb.OrchestratorAction(send_entity_message=pb.SendEntityMessageAction(
                entity_unlock_sent=pb.EntityUnlockSentEvent(
                    critical_section_id=section.id, parent_instance_id=self.instance_id,
                    target_instance_id=str(entity),
                ))), None)

    def set_custom_status(self, value: Any) -> None:
        """Show `value` (a JSON value) to clients as the instance's custom status."""
        self._run.custom_status = payloads.encode(value, "custom status")

    def continue_as_new(self, new_input: Any = None, *, save_events: bool = False) -> None:
        """Restart this instance with `new_input` and a fresh history once the orchestrator
        returns (or awaits); with `save_events`, events not yet taken go to the next run."""
        self._run.request_continue_as_new(
            payloads.encode(new_input, "input of continue_as_new"), save_events
        )

    def new_uuid(self) -> str:
        """A new UUID string, the same one on every replay of this point (use it instead of
        `uuid.uuid4()`, which would differ)."""
        self._uuid_counter += 1
        seed = f"{self.instance_id}_{self.now.isoformat()}_{self._uuid_counter}"
        return str(uuid.uuid5(_UUID_NAMESPACE, seed))
