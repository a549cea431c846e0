"""Commands on instances and entities, with payloads already serialized: the layer that both the
Python client (`client.py`, which serializes its arguments) and the gRPC servicer (whose callers
send serialized payloads) stand on. Everything that reaches the store for a caller goes here."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime

import trio

from . import _pb as pb
from . import history as h
from .backend import (
    Backend,
    Committed,
    EntityPage,
    EntityQuery,
    EntityRecord,
    InstancePage,
    InstanceQuery,
    InstanceRecord,
)
from .clock import Clock
from .errors import InstanceNotFound, InvalidOperation
from .events import StoredEvent
from .inbox import Message, NewInstance
from .instance_ids import new_execution_id
from .signals import ChangeBoard
from .state import TERMINAL
from .times import to_us
from .trace_context import start_traced

# (name, instance ID, version) -> the span a start is made under, giving its trace context
Traced = Callable[[str, str, str | None], AbstractContextManager[pb.TraceContext | None]]


def _untraced(name: str, instance_id: str, version: str | None) -> nullcontext[None]:
    return nullcontext()


# The statuses of instances that have finished: what a start may replace by default.
FINISHED = TERMINAL


class Commands:
    def __init__(self, backend: Backend, clock: Clock, *, poll_interval: float | None) -> None:
        self._backend = backend
        self._clock = clock
        self._changes = ChangeBoard()
        backend.listen(self.heard)
        # Waits are woken by this process's commits and by those other processes announce; this
        # covers the announcements that were missed.
        self._poll = math.inf if poll_interval is None else poll_interval

    def heard(self, notes: Committed | None) -> None:
        """Wake the waits on the instances `notes` changed (None: on every instance)."""
        if notes is None:
            self._changes.notify_all()
            return
        for instance_id in notes.instances:
            self._changes.notify(instance_id)

    # -- instances -------------------------------------------------------------------------

    async def start(
        self, name: str, instance_id: str, input: str | None, *, version: str | None = None,
        start_at: datetime | None = None, tags: dict[str, str] | None = None,
        trace: pb.TraceContext | None = None, replace: frozenset[int] = frozenset(),
        ignore: frozenset[int] = frozenset(),
    ) -> bool:
        """Create an instance (see `Backend.create_instance` for `replace` and `ignore`)."""
        now = self._clock.now_dt()
        execution_id = new_execution_id()
        visible_at = max(to_us(start_at), to_us(now)) if start_at is not None else to_us(now)
        started = start_traced(h.execution_started(
            now, name, instance_id, execution_id, input, version=version,
            scheduled_start=start_at, tags=tags,
        ), trace)
        return await self._backend.create_instance(
            NewInstance(instance_id, execution_id, name, version, input, StoredEvent.made(started),
                        visible_at, tags=tags),
            replace=replace, ignore=ignore,
        )

    async def record(self, instance_id: str, *, payloads: bool) -> InstanceRecord | None:
        return await self._backend.get_instance(instance_id, payloads=payloads)

    async def wait(
        self, instance_id: str, done: Callable[[InstanceRecord], bool], seconds: float, *,
        payloads: bool, what: str,
    ) -> InstanceRecord:
        """The instance's record once `done` holds for it; TimeoutError after `seconds`."""
        with trio.move_on_after(seconds):
            while True:
                with self._changes.watching(instance_id) as changed:
                    record = await self._backend.get_instance(instance_id, payloads=payloads)
                    if record is None:
                        raise InstanceNotFound(instance_id)
                    if done(record):
                        return record
                    with trio.move_on_after(self._poll):
                        await changed.wait()
        raise TimeoutError(
            f"orchestration {instance_id!r} did not {what} within {seconds:g} seconds"
        )

    async def raise_event(self, instance_id: str, name: str, data: str | None) -> None:
        await self.send(instance_id, h.event_raised(self._clock.now_dt(), name, data))

    async def send(self, instance_id: str, event: pb.HistoryEvent) -> None:
        await self._backend.add_event(instance_id, StoredEvent.made(event))

    async def terminate(self, instance_id: str, output: str | None, recursive: bool) -> None:
        event = h.execution_terminated(self._clock.now_dt(), output, recursive)
        await self._backend.add_event(instance_id, StoredEvent.made(event), wake_pending=True)

    async def suspend(self, instance_id: str, reason: str | None) -> None:
        await self.send(instance_id, h.execution_suspended(self._clock.now_dt(), reason))

    async def resume(self, instance_id: str, reason: str | None) -> None:
        await self.send(instance_id, h.execution_resumed(self._clock.now_dt(), reason))

    async def restart(
        self, instance_id: str, *, new_instance_id: bool, traced: Traced | None = None,
    ) -> str:
        """Run an instance again with its original input; returns the instance ID. Under the
        same ID only a finished instance restarts; with a new ID any instance does (a copy).
        `traced(name, instance_id, version)` gives the span its start is made under."""
        record = await self._backend.get_instance(instance_id, payloads=True)
        if record is None:
            raise InstanceNotFound(instance_id)
        if record.status not in TERMINAL and not new_instance_id:
            raise InvalidOperation(
                f"cannot restart orchestration {instance_id!r} under the same ID: it is "
                f"{pb.OrchestrationStatus(record.status).name}; only finished instances restart "
                "(restart it with a new instance ID to run a copy)"
            )
        new_id = uuid.uuid4().hex if new_instance_id else instance_id
        with (traced or _untraced)(record.name, new_id, record.version) as trace:
            await self.start(record.name, new_id, record.input, version=record.version,
                             tags=record.tags, trace=trace, replace=TERMINAL)
        return new_id

    async def rewind(self, instance_id: str, reason: str | None) -> None:
        await self._backend.rewind_instance(instance_id, reason)

    async def purge(self, instance_id: str, *, recursive: bool) -> int:
        return await self._backend.purge_instance(instance_id, recursive=recursive)

    async def purge_many(
        self, created_from: int | None, created_to: int | None, statuses: frozenset[int] | None
    ) -> int:
        return await self._backend.purge_instances(created_from, created_to, statuses)

    async def query(self, query: InstanceQuery) -> InstancePage:
        return await self._backend.query_instances(query)

    async def count(self, query: InstanceQuery) -> dict[int, int]:
        return await self._backend.count_instances(query)

    async def list_ids(
        self, statuses: frozenset[int] | None, completed_from: int | None,
        completed_to: int | None, page_size: int, last_key: str | None,
    ) -> tuple[list[str], str | None]:
        return await self._backend.list_instance_ids(
            statuses, completed_from, completed_to, page_size, last_key)

    async def history(
        self, instance_id: str, execution_id: str | None = None
    ) -> list[StoredEvent]:
        """The instance's history as stored (of `execution_id`, if given: it must be current)."""
        record = await self._backend.get_instance(instance_id, payloads=False)
        if record is None:
            raise InstanceNotFound(instance_id)
        if execution_id and execution_id != record.execution_id:
            raise InstanceNotFound(f"{instance_id} (execution {execution_id})")
        return await self._backend.load_history(instance_id)

    # -- entities --------------------------------------------------------------------------

    async def signal(
        self, entity_id: str, operation: str, input: str | None, *,
        request_id: str | None = None, at: datetime | None = None,
    ) -> None:
        now = self._clock.now_dt()
        visible = to_us(now) if at is None else max(to_us(at), to_us(now))
        event = h.event(now, entity_operation_signaled=pb.EntityOperationSignaledEvent(
            request_id=request_id or uuid.uuid4().hex, operation=operation, input=input,
            scheduled_time=at, target_instance_id=entity_id,
        ))
        await self._backend.send_entity_message(
            Message(entity_id, StoredEvent.made(event), visible))

    async def entity(self, entity_id: str, *, include_state: bool) -> EntityRecord | None:
        return await self._backend.get_entity(entity_id, include_state=include_state)

    async def query_entities(self, query: EntityQuery) -> EntityPage:
        return await self._backend.query_entities(query)

    async def clean_entities(
        self, remove_empty: bool, release_orphaned_locks: bool
    ) -> tuple[int, int]:
        return await self._backend.clean_entity_storage(remove_empty, release_orphaned_locks)
