"""The in-process client: start orchestrations, read their state, wait for them, raise events."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import trio

from . import _pb as pb
from . import history as h
from . import payloads
from .backend import Backend, InstanceRecord
from .clock import Clock
from .errors import FailureDetails, InstanceNotFound, InvalidInput
from .registry import name_of
from .state import TERMINAL, NewInstance, from_us, new_execution_id, to_us
from .wire import encode

OrchestrationStatus = pb.OrchestrationStatus

MAX_INSTANCE_ID_LENGTH = 100


def validate_instance_id(instance_id: str) -> str:
    if not isinstance(instance_id, str) or not instance_id:
        raise InvalidInput("instance ID must be a non-empty string")
    if len(instance_id) > MAX_INSTANCE_ID_LENGTH:
        raise InvalidInput(
            f"instance ID is {len(instance_id)} characters long; the limit is {MAX_INSTANCE_ID_LENGTH}"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in instance_id):
        raise InvalidInput(f"instance ID {instance_id!r} contains control characters")
    return instance_id


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
            failure_details=h.failure_from_pb(pb.TaskFailureDetails.parse(r.failure)) if r.failure else None,
            tags=r.tags,
        )


def _seconds(timeout: float | timedelta | None) -> float:
    if timeout is None:
        return math.inf
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    if seconds < 0:
        raise InvalidInput("timeout must not be negative")
    return seconds


class Client:
    def __init__(self, backend: Backend, clock: Clock, *, poll_interval: float | None) -> None:
        self._backend = backend
        self._clock = clock
        # Waits are woken by this process's commits; this covers commits by other processes.
        self._poll = math.inf if poll_interval is None else poll_interval

    async def schedule_new_orchestration(
        self,
        orchestrator: Callable[..., Any] | str,
        *,
        input: Any = None,
        instance_id: str | None = None,
        start_at: datetime | None = None,
        version: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        """Start an instance and return its ID. A duplicate ID raises `InstanceAlreadyExists`."""
        name = name_of(orchestrator, "orchestrator")
        iid = validate_instance_id(instance_id) if instance_id is not None else uuid.uuid4().hex
        data = payloads.encode(input, f"input of orchestrator {name!r}")
        if start_at is not None and start_at.tzinfo is None:
            raise InvalidInput("start_at must be timezone-aware (use UTC)")
        now = self._clock.now_dt()
        execution_id = new_execution_id()
        started = h.execution_started(
            now, name, iid, execution_id, data, version=version, scheduled_start=start_at, tags=tags,
        )
        visible_at = max(to_us(start_at), to_us(now)) if start_at is not None else to_us(now)
        await self._backend.create_instance(NewInstance(
            iid, execution_id, name, version, data, encode(started), visible_at, tags=tags,
            started_event=started,
        ))
        return iid

    async def get_orchestration_state(
        self, instance_id: str, *, fetch_payloads: bool = True
    ) -> OrchestrationState | None:
        record = await self._backend.get_instance(instance_id, payloads=fetch_payloads)
        return OrchestrationState.from_record(record) if record is not None else None

    async def wait_for_orchestration_start(
        self, instance_id: str, *, timeout: float | timedelta | None = None, fetch_payloads: bool = False
    ) -> OrchestrationState:
        """Wait until the instance has left PENDING."""
        return await self._wait(
            instance_id, lambda r: r.status != int(pb.OrchestrationStatus.PENDING),
            timeout, fetch_payloads, "start",
        )

    async def wait_for_orchestration_completion(
        self, instance_id: str, *, timeout: float | timedelta | None = None, fetch_payloads: bool = True
    ) -> OrchestrationState:
        """Wait until the instance has completed, failed or been terminated."""
        return await self._wait(instance_id, lambda r: r.status in TERMINAL, timeout, fetch_payloads, "complete")

    async def raise_orchestration_event(self, instance_id: str, name: str, data: Any = None) -> None:
        """Deliver an event; the orchestration receives it whether or not it waits yet."""
        if not name:
            raise InvalidInput("event name must not be empty")
        encoded = payloads.encode(data, f"data of event {name!r}")
        event = h.event_raised(self._clock.now_dt(), name, encoded)
        await self._backend.add_event(instance_id, encode(event), decoded=event)

    async def _wait(
        self,
        instance_id: str,
        done: Callable[[InstanceRecord], bool],
        timeout: float | timedelta | None,
        fetch_payloads: bool,
        what: str,
    ) -> OrchestrationState:
        seconds = _seconds(timeout)
        with trio.move_on_after(seconds):
            while True:
                changed = self._backend.instance_changes.event_for(instance_id)
                record = await self._backend.get_instance(instance_id, payloads=fetch_payloads)
                if record is None:
                    raise InstanceNotFound(instance_id)
                if done(record):
                    return OrchestrationState.from_record(record)
                with trio.move_on_after(self._poll):
                    await changed.wait()
        raise TimeoutError(f"orchestration {instance_id!r} did not {what} within {seconds:g} seconds")
