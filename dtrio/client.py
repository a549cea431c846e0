"""The in-process client: start orchestrations, read their state, wait for them, raise events."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import _pb as pb
from . import history as h
from . import payloads, tracing
from .backend import Backend, EntityQuery, EntityRecord, InstanceQuery, InstanceRecord
from .clock import Clock
from .commands import Commands
from .durations import Duration, fire_time, to_seconds
from .entities.ids import EntityId, id_prefix
from .errors import FailureDetails, InvalidInput
from .instance_ids import validate_instance_id
from .registry import name_of
from .state import TERMINAL
from .times import from_us, to_us

OrchestrationStatus = pb.OrchestrationStatus

@dataclass(frozen=True, slots=True)
class OrchestrationState:
    instance_id: str
    name: str
    version: str | None
    runtime_status: pb.OrchestrationStatus
    created_at: datetime
    last_updated_at: datetime
    completed_at: datetime | None
    scheduled_start: datetime | None
    parent_instance_id: str | None
    serialized_input: str | None
    serialized_output: str | None
    serialized_custom_status: str | None
    failure_details: FailureDetails | None
    tags: dict[str, str] | None

    @property
    def input(self) -> Any:
        return payloads.decode(self.serialized_input, "orchestration input")

    @property
    def output(self) -> Any:
        return payloads.decode(self.serialized_output, "orchestration output")

    @property
    def custom_status(self) -> Any:
        return payloads.decode(self.serialized_custom_status, "custom status")

    @property
    def is_finished(self) -> bool:
        return int(self.runtime_status) in TERMINAL

    @classmethod
    def from_pb(cls, s: pb.OrchestrationState) -> OrchestrationState:
        """The state a sidecar reported (the protocol's OrchestrationState)."""
        return cls(
            instance_id=s.instance_id, name=s.name, version=s.version or None,
            runtime_status=pb.OrchestrationStatus(s.orchestration_status),
            created_at=s.created_timestamp, last_updated_at=s.last_updated_timestamp,
            completed_at=s.completed_timestamp, scheduled_start=s.scheduled_start_timestamp,
            parent_instance_id=s.parent_instance_id or None, serialized_input=s.input,
            serialized_output=s.output, serialized_custom_status=s.custom_status,
            failure_details=(h.failure_from_pb(s.failure_details)
                             if s.failure_details is not None else None),
            tags=dict(s.tags) or None,
        )

    @classmethod
    def from_record(cls, r: InstanceRecord) -> OrchestrationState:
        return cls(
            instance_id=r.instance_id,
            name=r.name,
            version=r.version,
            runtime_status=pb.OrchestrationStatus(r.status),
            created_at=from_us(r.created_at),
            last_updated_at=from_us(r.updated_at),
            completed_at=from_us(r.completed_at) if r.completed_at is not None else None,
            scheduled_start=from_us(r.scheduled_start) if r.scheduled_start is not None else None,
            parent_instance_id=r.parent_instance_id,
            serialized_input=r.input,
            serialized_output=r.output,
            serialized_custom_status=r.custom_status,
            failure_details=(
                h.failure_from_pb(pb.TaskFailureDetails.parse(r.failure)) if r.failure else None
            ),
            tags=r.tags,
        )


@dataclass(frozen=True, slots=True)
class ReusePolicy:
    """What starting an instance does when its ID is taken: replace an existing instance whose
    status is in `replace`, keep it (and start nothing) when in `ignore`, else refuse with
    `InstanceAlreadyExists`. Replacing a running instance discards it without a trace."""

    replace: frozenset[pb.OrchestrationStatus] = frozenset()
    ignore: frozenset[pb.OrchestrationStatus] = frozenset()

    def __post_init__(self) -> None:
        both = set(self.replace) & set(self.ignore)
        if both:
            raise InvalidInput(
                f"statuses {sorted(s.name for s in both)} are both replaced and ignored"
            )


_NONE: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class QueryResult:
    states: list[OrchestrationState]
    continuation_token: str | None  # pass back for the next page; None on the last page


@dataclass(frozen=True, slots=True)
class EntityMetadata:
    """An entity as stored: `serialized_state` only when asked for (`includes_state`)."""

    id: EntityId
    last_modified: datetime
    backlog_queue_size: int
    locked_by: str | None
    includes_state: bool
    serialized_state: str | None

    @property
    def state(self) -> Any:
        return payloads.decode(self.serialized_state, f"state of entity {self.id}")

    @classmethod
    def from_pb(cls, m: pb.EntityMetadata, include_state: bool) -> EntityMetadata:
        """An entity a sidecar reported (the protocol's EntityMetadata)."""
        return cls(EntityId.stored(m.instance_id), m.last_modified_time, m.backlog_queue_size,
                   m.locked_by or None, include_state, m.serialized_state)

    @classmethod
    def from_record(cls, r: EntityRecord, include_state: bool) -> EntityMetadata:
        return cls(EntityId.stored(r.instance_id), from_us(r.last_modified), r.backlog,
                   r.locked_by, include_state, r.state)


@dataclass(frozen=True, slots=True)
class EntityQueryResult:
    entities: list[EntityMetadata]
    continuation_token: str | None  # pass back for the next page; None on the last page


@dataclass(frozen=True, slots=True)
class CleanEntityStorageResult:
    empty_entities_removed: int
    orphaned_locks_released: int


def _us(when: datetime | None, what: str) -> int | None:
    if when is None:
        return None
    if when.tzinfo is None:
        raise InvalidInput(f"{what} must be timezone-aware (use UTC)")
    return to_us(when)


class Client:
    """Starts, queries, waits for and controls orchestrations and entities in one engine's
    store: what `engine.client` is.

    Get it from a running engine, not by constructing it::

        async with dtrio.open_engine(registry, db="app.sqlite3") as engine:
            iid = await engine.client.schedule_new_orchestration(my_orchestrator, input=1)
            state = await engine.client.wait_for_orchestration_completion(iid, timeout=30)

    (`dtrio.serve_engine` under your own nursery, and `dtrio.testing.open_test_engine` in
    tests, give an engine too.) Every method is async and runs in the engine's Trio run; bad
    arguments raise `InvalidInput` or `SerializationError` before anything is stored. The
    official SDKs' clients do the same through `python -m dtrio serve`.
    """

    def __init__(self, backend: Backend, clock: Clock, *, poll_interval: float | None) -> None:
        self._clock = clock
        self.commands = Commands(backend, clock, poll_interval=poll_interval)

    async def schedule_new_orchestration(
        self,
        orchestrator: Callable[..., Any] | str,
        *,
        input: Any = None,
        instance_id: str | None = None,
        start_at: datetime | Duration | None = None,
        version: str | None = None,
        tags: dict[str, str] | None = None,
        reuse_policy: ReusePolicy | None = None,
    ) -> str:
        """Start an instance and return its ID. A taken ID raises `InstanceAlreadyExists`
        unless `reuse_policy` says to replace or keep the existing instance."""
        name = name_of(orchestrator, "orchestrator")
        iid = validate_instance_id(instance_id) if instance_id is not None else uuid.uuid4().hex
        data = payloads.encode(input, f"input of orchestrator {name!r}")
        if start_at is not None:
            start_at = fire_time(
                start_at, "schedule_new_orchestration(start_at=...)", self._clock.now_dt())
        replace = ignore = _NONE
        if reuse_policy is not None:
            replace = frozenset(int(s) for s in reuse_policy.replace)
            ignore = frozenset(int(s) for s in reuse_policy.ignore)
        with self._traced(name, iid, version) as trace:
            await self.commands.start(
                name, iid, data, version=version, start_at=start_at, tags=tags, trace=trace,
                replace=replace, ignore=ignore,
            )
        return iid

    def _traced(
        self, name: str, instance_id: str, version: str | None
    ) -> AbstractContextManager[pb.TraceContext | None]:
        return tracing.create_orchestration(
            name, instance_id, version, self._clock.now_dt(), self._clock)

    async def get_orchestration_state(
        self, instance_id: str, *, fetch_payloads: bool = True
    ) -> OrchestrationState | None:
        record = await self.commands.record(instance_id, payloads=fetch_payloads)
        return OrchestrationState.from_record(record) if record is not None else None

    async def wait_for_orchestration_start(
        self,
        instance_id: str,
        *,
        timeout: Duration | None = None,
        fetch_payloads: bool = False,
    ) -> OrchestrationState:
        """Wait until the instance has left PENDING."""
        return await self._wait(
            instance_id, lambda r: r.status != int(pb.OrchestrationStatus.PENDING),
            timeout, fetch_payloads, "start",
        )

    async def wait_for_orchestration_completion(
        self,
        instance_id: str,
        *,
        timeout: Duration | None = None,
        fetch_payloads: bool = True,
    ) -> OrchestrationState:
        """Wait until the instance has completed, failed or been terminated."""
        return await self._wait(
            instance_id, lambda r: r.status in TERMINAL, timeout, fetch_payloads, "complete"
        )

    async def raise_orchestration_event(
        self, instance_id: str, name: str, data: Any = None
    ) -> None:
        """Deliver an event; the orchestration receives it whether or not it waits yet."""
        if not name:
            raise InvalidInput("event name must not be empty")
        encoded = payloads.encode(data, f"data of event {name!r}")
        await self.commands.raise_event(instance_id, name, encoded)

    async def suspend_orchestration(self, instance_id: str, reason: str | None = None) -> None:
        """Stop processing events until resumed (they are kept). No-op for finished instances."""
        await self.commands.suspend(instance_id, reason)

    async def resume_orchestration(self, instance_id: str, reason: str | None = None) -> None:
        """Process the events held while suspended. No-op unless suspended."""
        await self.commands.resume(instance_id, reason)

    async def terminate_orchestration(
        self, instance_id: str, *, output: Any = None, recursive: bool = True
    ) -> None:
        """End an instance as TERMINATED with `output`; with `recursive`, its live
        sub-orchestrations too. No-op for finished instances."""
        data = payloads.encode(output, "output of terminate")
        await self.commands.terminate(instance_id, data, recursive)

    async def purge_orchestration(self, instance_id: str, *, recursive: bool = True) -> int:
        """Delete a finished instance's state and history (with `recursive`, its finished
        sub-orchestrations' too). Returns the number deleted: 0 if unknown or not finished."""
        return await self.commands.purge(instance_id, recursive=recursive)

    async def purge_orchestrations(
        self,
        *,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        statuses: Iterable[pb.OrchestrationStatus] | None = None,
    ) -> int:
        """Delete every finished instance created in [created_from, created_to) with one of
        `statuses` (any finished status when None). Returns the number deleted."""
        return await self.commands.purge_many(
            _us(created_from, "created_from"), _us(created_to, "created_to"),
            frozenset(int(s) for s in statuses) if statuses else None,
        )

    async def query_orchestrations(
        self,
        *,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        statuses: Iterable[pb.OrchestrationStatus] | None = None,
        instance_id_prefix: str | None = None,
        page_size: int = 100,
        continuation_token: str | None = None,
        fetch_inputs_and_outputs: bool = False,
        name: str | None = None,
        parent_instance_id: str | None = None,
        newest_first: bool = False,
    ) -> QueryResult:
        """One page of instances, oldest first (or `newest_first`); stable while instances are
        added. `name` keeps one orchestrator's instances, `parent_instance_id` one instance's
        sub-orchestrations."""
        page = await self.commands.query(self._query(
            created_from, created_to, statuses, instance_id_prefix, name, parent_instance_id,
            page_size=page_size, continuation_token=continuation_token,
            fetch_payloads=fetch_inputs_and_outputs, newest_first=newest_first,
        ))
        return QueryResult(
            [OrchestrationState.from_record(r) for r in page.instances], page.continuation_token
        )

    async def count_orchestrations(
        self,
        *,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        instance_id_prefix: str | None = None,
        name: str | None = None,
    ) -> dict[pb.OrchestrationStatus, int]:
        """How many instances match, per status (statuses with none are left out)."""
        counts = await self.commands.count(self._query(
            created_from, created_to, None, instance_id_prefix, name, None))
        return {pb.OrchestrationStatus(status): n for status, n in sorted(counts.items())}

    @staticmethod
    def _query(
        created_from: datetime | None, created_to: datetime | None,
        statuses: Iterable[pb.OrchestrationStatus] | None, prefix: str | None,
        name: str | None, parent_instance_id: str | None, **page: Any,
    ) -> InstanceQuery:
        return InstanceQuery(
            _us(created_from, "created_from"), _us(created_to, "created_to"),
            frozenset(int(s) for s in statuses) if statuses else None, prefix,
            name=name, parent_instance_id=parent_instance_id, **page,
        )

    async def get_orchestration_history(self, instance_id: str) -> list[pb.HistoryEvent]:
        """The instance's history, oldest event first; `InstanceNotFound` if there is none."""
        return [stored.event for stored in await self.commands.history(instance_id)]

    async def restart_orchestration(
        self, instance_id: str, *, restart_with_new_instance_id: bool = False
    ) -> str:
        """Run an instance again with its original input; returns the instance ID. Under the
        same ID only a finished instance restarts; with a new ID any instance does (a copy),
        as the Durable Task Scheduler allows."""
        return await self.commands.restart(
            instance_id, new_instance_id=restart_with_new_instance_id, traced=self._traced)

    async def rewind_orchestration(self, instance_id: str, reason: str | None = None) -> None:
        """Resume a FAILED instance from its failed activities and sub-orchestrations;
        what succeeded is not run again. Other statuses raise `InvalidOperation`."""
        await self.commands.rewind(instance_id, reason)

    # -- entities ----------------------------------------------------------------------------

    async def signal_entity(
        self, entity: EntityId | str, operation: str, input: Any = None, *,
        signal_time: datetime | Duration | None = None,
    ) -> None:
        """Send an operation to an entity, one way (created on its first message); with
        `signal_time` (a time, or a delay from now), it is processed no earlier than then,
        durably."""
        target = EntityId.of(entity)
        if not operation:
            raise InvalidInput("signal_entity needs an operation name")
        data = payloads.encode(input, f"input of operation {operation!r} of entity {target}")
        now = self._clock.now_dt()
        if signal_time is not None:
            signal_time = fire_time(signal_time, "signal_entity(signal_time=...)", now)
        await self.commands.signal(str(target), operation, data, at=signal_time)

    async def get_entity(
        self, entity: EntityId | str, *, include_state: bool = True
    ) -> EntityMetadata | None:
        """The entity, or None if it has no state and no lock (never had, or deleted)."""
        target = EntityId.of(entity)
        record = await self.commands.entity(str(target), include_state=include_state)
        return EntityMetadata.from_record(record, include_state) if record is not None else None

    async def query_entities(
        self,
        *,
        name: str | None = None,
        instance_id_prefix: str | None = None,
        last_modified_from: datetime | None = None,
        last_modified_to: datetime | None = None,
        include_state: bool = False,
        include_transient: bool = False,
        page_size: int = 100,
        continuation_token: str | None = None,
    ) -> EntityQueryResult:
        """One page of entities ordered by ID: those of entity `name` (any key), or whose
        `@name@key` ID starts with `instance_id_prefix`; modified in [from, to)."""
        if name is not None and instance_id_prefix is not None:
            raise InvalidInput("query_entities takes a name or an instance ID prefix, not both")
        prefix = id_prefix(instance_id_prefix) if instance_id_prefix is not None else None
        if name is not None:
            prefix = f"@{EntityId(name, '-').name}@"
        page = await self.commands.query_entities(EntityQuery(
            prefix, _us(last_modified_from, "last_modified_from"),
            _us(last_modified_to, "last_modified_to"), include_state, include_transient,
            page_size, continuation_token,
        ))
        return EntityQueryResult(
            [EntityMetadata.from_record(r, include_state) for r in page.entities],
            page.continuation_token,
        )

    async def clean_entity_storage(
        self, *, remove_empty_entities: bool = True, release_orphaned_locks: bool = True
    ) -> CleanEntityStorageResult:
        """Release locks held by orchestrations that no longer run, and delete entities that
        have no state, lock or pending messages."""
        removed, released = await self.commands.clean_entities(
            remove_empty_entities, release_orphaned_locks)
        return CleanEntityStorageResult(removed, released)

    async def _wait(
        self,
        instance_id: str,
        done: Callable[[InstanceRecord], bool],
        timeout: Duration | None,
        fetch_payloads: bool,
        what: str,
    ) -> OrchestrationState:
        method = "wait_for_orchestration_start" if what == "start" else (
            "wait_for_orchestration_completion")
        seconds = math.inf if timeout is None else to_seconds(
            timeout, f"{method}(timeout=...)", infinite=True
        )
        record = await self.commands.wait(
            instance_id, done, seconds, payloads=fetch_payloads, what=what)
        return OrchestrationState.from_record(record)
