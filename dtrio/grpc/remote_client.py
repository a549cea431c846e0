"""The operators' commands over the Durable Task gRPC client protocol (`--sidecar host:port`):
the `Client` calls they make, sent to any sidecar (ours or another engine's) instead of a store.

A command runs on Trio either way: grpclib's calls run on the stepped asyncio loop the sidecar
itself serves on (`steploop`). What the protocol cannot ask for is done here:
filters by orchestrator name and by parent are applied to each page the sidecar returns (pages
may then come back short), and lists come oldest first (the protocol has no other order).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from .. import _pb as pb
from .. import payloads
from ..client import (
    CleanEntityStorageResult,
    EntityMetadata,
    EntityQueryResult,
    OrchestrationState,
    QueryResult,
)
from ..entities.ids import EntityId, id_prefix
from ..errors import InstanceNotFound, InvalidInput, InvalidOperation, StorageError
from ._stubs import TaskHubSidecarServiceStub
from .steploop import SteppedLoop, open_stepped_loop

T = TypeVar("T")
TIMEOUT = 60.0  # seconds any one call may take


class RemoteClient:
    def __init__(self, loop: SteppedLoop, channel: Channel, where: str) -> None:
        self._loop = loop
        self._stub = TaskHubSidecarServiceStub(channel)
        self._where = where

    async def _call(self, call: Coroutine[Any, Any, T], instance_id: str | None = None) -> T:
        """`call` (a grpclib call) on the asyncio loop, its errors as dtrio's."""
        try:
            return await self._loop.run(call)
        except GRPCError as exc:
            raise self._translated(exc, instance_id) from None
        except OSError as exc:
            raise OSError(exc.errno, f"cannot reach the sidecar at {self._where}: "
                          f"{exc.strerror or exc}") from None

    def _translated(self, exc: GRPCError, instance_id: str | None) -> Exception:
        if exc.status == Status.NOT_FOUND and instance_id is not None:
            return InstanceNotFound(instance_id)
        if exc.status == Status.INVALID_ARGUMENT:
            return InvalidInput(exc.message or "invalid argument")
        if exc.status == Status.FAILED_PRECONDITION:
            return InvalidOperation(exc.message or "not allowed in the instance's state")
        return StorageError(f"the sidecar at {self._where} answered {exc.status.name}: "
                            f"{exc.message}")

    # -- instances ---------------------------------------------------------------------------

    async def get_orchestration_state(
        self, instance_id: str, *, fetch_payloads: bool = True
    ) -> OrchestrationState | None:
        reply = await self._call(self._stub.get_instance(pb.GetInstanceRequest(
            instance_id=instance_id, get_inputs_and_outputs=fetch_payloads), timeout=TIMEOUT))
        if not reply.exists or reply.orchestration_state is None:
            return None
        return OrchestrationState.from_pb(reply.orchestration_state)

    async def get_orchestration_history(self, instance_id: str) -> list[pb.HistoryEvent]:
        async def read() -> list[pb.HistoryEvent]:
            events: list[pb.HistoryEvent] = []
            request = pb.StreamInstanceHistoryRequest(instance_id=instance_id)
            async for chunk in self._stub.stream_instance_history(request, timeout=TIMEOUT):
                events += chunk.events
            return events
        return await self._call(read(), instance_id)

    async def query_orchestrations(
        self, *, created_from: datetime | None = None, created_to: datetime | None = None,
        statuses: Iterable[pb.OrchestrationStatus] | None = None,
        instance_id_prefix: str | None = None, page_size: int = 100,
        continuation_token: str | None = None, fetch_inputs_and_outputs: bool = False,
        name: str | None = None, parent_instance_id: str | None = None,
        newest_first: bool = False,
    ) -> QueryResult:
        if newest_first:
            raise InvalidInput("a sidecar lists instances oldest first only (the protocol "
                               "has no other order)")
        reply = await self._call(self._stub.query_instances(pb.QueryInstancesRequest(
            query=pb.InstanceQuery(
                runtime_status=list(statuses or []), created_time_from=created_from,
                created_time_to=created_to, max_instance_count=page_size,
                continuation_token=continuation_token, instance_id_prefix=instance_id_prefix,
                fetch_inputs_and_outputs=fetch_inputs_and_outputs)), timeout=TIMEOUT))
        states = [OrchestrationState.from_pb(s) for s in reply.orchestration_state]
        states = [s for s in states if (name is None or s.name == name) and (
            parent_instance_id is None or s.parent_instance_id == parent_instance_id)]
        return QueryResult(states, reply.continuation_token or None)

    async def raise_orchestration_event(
        self, instance_id: str, name: str, data: Any = None
    ) -> None:
        await self._call(self._stub.raise_event(pb.RaiseEventRequest(
            instance_id=instance_id, name=name,
            input=payloads.encode(data, f"data of event {name!r}")), timeout=TIMEOUT),
            instance_id)

    async def terminate_orchestration(
        self, instance_id: str, *, output: Any = None, recursive: bool = True
    ) -> None:
        await self._call(self._stub.terminate_instance(pb.TerminateRequest(
            instance_id=instance_id, output=payloads.encode(output, "output of terminate"),
            recursive=recursive), timeout=TIMEOUT), instance_id)

    async def suspend_orchestration(self, instance_id: str, reason: str | None = None) -> None:
        await self._call(self._stub.suspend_instance(pb.SuspendRequest(
            instance_id=instance_id, reason=reason), timeout=TIMEOUT), instance_id)

    async def resume_orchestration(self, instance_id: str, reason: str | None = None) -> None:
        await self._call(self._stub.resume_instance(pb.ResumeRequest(
            instance_id=instance_id, reason=reason), timeout=TIMEOUT), instance_id)

    async def purge_orchestration(self, instance_id: str, *, recursive: bool = True) -> int:
        reply = await self._call(self._stub.purge_instances(pb.PurgeInstancesRequest(
            instance_id=instance_id, recursive=recursive), timeout=TIMEOUT), instance_id)
        return reply.deleted_instance_count

    async def restart_orchestration(
        self, instance_id: str, *, restart_with_new_instance_id: bool = False
    ) -> str:
        reply = await self._call(self._stub.restart_instance(pb.RestartInstanceRequest(
            instance_id=instance_id, restart_with_new_instance_id=restart_with_new_instance_id),
            timeout=TIMEOUT), instance_id)
        return reply.instance_id

    async def rewind_orchestration(self, instance_id: str, reason: str | None = None) -> None:
        await self._call(self._stub.rewind_instance(pb.RewindInstanceRequest(
            instance_id=instance_id, reason=reason), timeout=TIMEOUT), instance_id)

    # -- entities ----------------------------------------------------------------------------

    async def signal_entity(self, entity: EntityId | str, operation: str,
                            input: Any = None) -> None:
        target = EntityId.of(entity)
        await self._call(self._stub.signal_entity(pb.SignalEntityRequest(
            instance_id=str(target), name=operation, request_id=uuid.uuid4().hex,
            input=payloads.encode(input, f"input of operation {operation!r} of {target}")),
            timeout=TIMEOUT))

    async def get_entity(
        self, entity: EntityId | str, *, include_state: bool = True
    ) -> EntityMetadata | None:
        reply = await self._call(self._stub.get_entity(pb.GetEntityRequest(
            instance_id=str(EntityId.of(entity)), include_state=include_state),
            timeout=TIMEOUT))
        if not reply.exists or reply.entity is None:
            return None
        return EntityMetadata.from_pb(reply.entity, include_state)

    async def query_entities(
        self, *, name: str | None = None, instance_id_prefix: str | None = None,
        last_modified_from: datetime | None = None, last_modified_to: datetime | None = None,
        include_state: bool = False, include_transient: bool = False, page_size: int = 100,
        continuation_token: str | None = None,
    ) -> EntityQueryResult:
        prefix = id_prefix(instance_id_prefix) if instance_id_prefix is not None else None
        if name is not None:
            prefix = f"@{EntityId(name, '-').name}@"
        reply = await self._call(self._stub.query_entities(pb.QueryEntitiesRequest(
            query=pb.EntityQuery(
                instance_id_starts_with=prefix, last_modified_from=last_modified_from,
                last_modified_to=last_modified_to, include_state=include_state,
                include_transient=include_transient, page_size=page_size,
                continuation_token=continuation_token)), timeout=TIMEOUT))
        return EntityQueryResult([EntityMetadata.from_pb(e, include_state)
                                  for e in reply.entities], reply.continuation_token or None)

    async def clean_entity_storage(
        self, *, remove_empty_entities: bool = True, release_orphaned_locks: bool = True
    ) -> CleanEntityStorageResult:
        removed = released = 0
        token = None
        while True:
            reply = await self._call(self._stub.clean_entity_storage(
                pb.CleanEntityStorageRequest(
                    continuation_token=token, remove_empty_entities=remove_empty_entities,
                    release_orphaned_locks=release_orphaned_locks), timeout=TIMEOUT))
            removed += reply.empty_entities_removed
            released += reply.orphaned_locks_released
            token = reply.continuation_token
            if not token:
                return CleanEntityStorageResult(removed, released)


def parse_sidecar(text: str) -> tuple[str, int]:
    """`host:port` (`[::1]:4001` for an IPv6 address)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(f"--sidecar {text!r} is not HOST:PORT (e.g. 127.0.0.1:4001)")
    return host.strip("[]"), int(port)


@asynccontextmanager
async def open_remote_client(where: str) -> AsyncIterator[RemoteClient]:
    """A client of the sidecar at `where` ("host:port") for the block."""
    host, port = parse_sidecar(where)
    async with open_stepped_loop() as loop:
        channel = await loop.run(_channel(host, port))
        try:
            yield RemoteClient(loop, channel, f"{host}:{port}")
        finally:
            channel.close()


async def _channel(host: str, port: int) -> Channel:
    return Channel(host, port)  # made on the loop it will run on
