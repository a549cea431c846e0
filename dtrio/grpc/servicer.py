"""TaskHubSidecarService in Trio: the client RPCs over the engine's commands, the worker RPCs
over the remote runner of the work-item lifecycle. `bridge` serves it; an RPC not defined here
answers UNIMPLEMENTED. Requests are validated and translated here; nothing here writes to the
store or plans a step itself."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from .. import _pb as pb
from .._pb.google import protobuf as google_protobuf
from ..backend import EntityQuery, EntityRecord, InstanceQuery
from ..commands import FINISHED
from ..entities.ids import EntityId, id_prefix
from ..errors import FailureDetails, InstanceNotFound, InvalidInput, MessageTooLarge, StreamStalled
from ..instance_ids import validate_instance_id
from ..services import Engine
from ..services.kinds import ActivityResult, StepResult
from ..services.remote import RemoteWork, WorkerStream
from ..times import from_us, to_us
from ..wire import one_of, varint
from .filters import work_item_filters
from .states import orchestration_state

DEFAULT_PAGE_SIZE = 100
# HistoryChunk.events is field 1, length-delimited.
HISTORY_CHUNK_EVENT = b"\x0a"
HISTORY_CHUNK_BYTES = 1 << 20


def _required(value: str, what: str) -> str:
    if not value:
        raise InvalidInput(f"{what} must not be empty")
    return value


_STATUSES = frozenset(int(s) for s in pb.OrchestrationStatus)


def _statuses(values: list[pb.OrchestrationStatus], what: str) -> frozenset[int] | None:
    """A status filter; None for an empty one (any status). Numbers from a newer protocol
    are refused rather than silently matching nothing."""
    statuses = frozenset(int(s) for s in values)
    unknown = sorted(statuses - _STATUSES)
    if unknown:
        raise InvalidInput(f"{what}: {', '.join(map(str, unknown))} is not an orchestration "
                           f"status (known: {', '.join(s.name for s in pb.OrchestrationStatus)})")
    return statuses or None


def _too_large(size: int, limit: int) -> str:
    return (f"the worker's result of {size} bytes exceeds this sidecar's limit of {limit} bytes "
            "per message (--max-message-size)")


def _too_large_failure(size: int, limit: int) -> FailureDetails:
    return FailureDetails("MessageTooLarge", _too_large(size, limit), is_non_retriable=True)


Send = Callable[[bytes], Awaitable[None]]


async def forward(
    send: Send, ping: bytes, ping_interval: float, stall: float, stream: WorkerStream
) -> None:
    """Write a worker's work items as they come, and a health ping after each silence. A write
    that does not drain within `stall` seconds means the worker stopped reading."""
    while True:
        try:
            # Work already queued needs no timeout (and no cancel scope per message).
            message = stream.queued.receive_nowait()
        except trio.WouldBlock:
            message = ping
            with trio.move_on_after(ping_interval):
                message = await stream.queued.receive()
        if message is None:
            return
        with trio.move_on_after(stall) as scope:
            await send(message)
        if scope.cancelled_caught:
            raise StreamStalled(f"the worker read nothing for {stall:g} s")


class Servicer:
    def __init__(
        self, engine: Engine, remote: RemoteWork, *, ping: bytes, ping_interval: float,
        stall_timeout: float,
    ) -> None:
        self._commands = engine.client.commands
        self._client = engine.client
        self._remote = remote
        self._ping, self._ping_interval, self._stall = ping, ping_interval, stall_timeout

    async def hello(self, request: google_protobuf.Empty) -> google_protobuf.Empty:
        return google_protobuf.Empty()

    # -- client RPCs -----------------------------------------------------------------------

    async def start_instance(self, request: pb.CreateInstanceRequest) -> pb.CreateInstanceResponse:
        name = _required(request.name, "orchestration name")
        iid = validate_instance_id(request.instance_id) if request.instance_id else uuid.uuid4().hex
        start_at = request.scheduled_start_timestamp
        if start_at is not None and to_us(start_at) <= 0:
            start_at = None  # JavaScript clients send epoch 0 when nothing is scheduled
        policy = request.orchestration_id_reuse_policy
        if policy is None:
            # The Durable Task Framework's default: an instance that is not running may be
            # overwritten (the Java SDK's restart under the same ID relies on it).
            replace = FINISHED
        else:
            # An explicit policy, even an empty one, is taken at its word.
            replace = _statuses(policy.replaceable_status, "replaceableStatus") or frozenset()
        # The input arrives serialized already: it is stored as sent, not encoded again.
        await self._commands.start(
            name, iid, request.input, version=request.version, start_at=start_at,
            tags=dict(request.tags) or None, trace=request.parent_trace_context,
            replace=replace,
        )
        return pb.CreateInstanceResponse(instance_id=iid)

    async def get_instance(self, request: pb.GetInstanceRequest) -> pb.GetInstanceResponse:
        iid = validate_instance_id(request.instance_id)
        payloads = request.get_inputs_and_outputs
        record = await self._commands.record(iid, payloads=payloads)
        if record is None:
            return pb.GetInstanceResponse(exists=False)
        state = orchestration_state(record, payloads=payloads)
        return pb.GetInstanceResponse(exists=True, orchestration_state=state)

    async def wait_for_instance_start(
        self, request: pb.GetInstanceRequest
    ) -> pb.GetInstanceResponse:
        return await self._wait(request, self._client.wait_for_orchestration_start)

    async def wait_for_instance_completion(
        self, request: pb.GetInstanceRequest
    ) -> pb.GetInstanceResponse:
        return await self._wait(request, self._client.wait_for_orchestration_completion)

    async def _wait(
        self, request: pb.GetInstanceRequest, wait: Callable[..., Awaitable[Any]]
    ) -> pb.GetInstanceResponse:
        iid = validate_instance_id(request.instance_id)
        try:
            # No timeout here: the wait ends when the caller's deadline passes or the caller
            # goes away, because grpclib then cancels this task; it holds no thread meanwhile.
            await wait(iid, fetch_payloads=False)
        except InstanceNotFound:
            return pb.GetInstanceResponse(exists=False)
        return await self.get_instance(request)

    async def raise_event(self, request: pb.RaiseEventRequest) -> pb.RaiseEventResponse:
        iid = validate_instance_id(request.instance_id)
        name = _required(request.name, "event name")
        await self._commands.raise_event(iid, name, request.input)
        return pb.RaiseEventResponse()

    async def terminate_instance(self, request: pb.TerminateRequest) -> pb.TerminateResponse:
        iid = validate_instance_id(request.instance_id)
        try:
            await self._commands.terminate(iid, request.output, request.recursive)
        except InstanceNotFound:
            pass  # the protocol treats terminating an unknown instance as done
        return pb.TerminateResponse()

    async def suspend_instance(self, request: pb.SuspendRequest) -> pb.SuspendResponse:
        iid = validate_instance_id(request.instance_id)
        await self._client.suspend_orchestration(iid, request.reason)
        return pb.SuspendResponse()

    async def resume_instance(self, request: pb.ResumeRequest) -> pb.ResumeResponse:
        iid = validate_instance_id(request.instance_id)
        await self._client.resume_orchestration(iid, request.reason)
        return pb.ResumeResponse()

    async def restart_instance(
        self, request: pb.RestartInstanceRequest
    ) -> pb.RestartInstanceResponse:
        iid = validate_instance_id(request.instance_id)
        new_id = await self._client.restart_orchestration(
            iid, restart_with_new_instance_id=request.restart_with_new_instance_id
        )
        return pb.RestartInstanceResponse(instance_id=new_id)

    async def rewind_instance(self, request: pb.RewindInstanceRequest) -> pb.RewindInstanceResponse:
        iid = validate_instance_id(request.instance_id)
        await self._client.rewind_orchestration(iid, request.reason)
        return pb.RewindInstanceResponse()

    async def purge_instances(self, request: pb.PurgeInstancesRequest) -> pb.PurgeInstancesResponse:
        which = one_of(request, "request")[0]
        if which == "instance_id":
            count = await self._client.purge_orchestration(
                validate_instance_id(request.instance_id), recursive=request.recursive
            )
        elif which == "purge_instance_filter":
            f = request.purge_instance_filter
            statuses = _statuses(f.runtime_status, "purge filter runtimeStatus")
            count = await self._client.purge_orchestrations(
                created_from=f.created_time_from, created_to=f.created_time_to,
                statuses=[pb.OrchestrationStatus(s) for s in statuses] if statuses else None,
            )
        elif which == "instance_batch":
            count = 0
            for iid in request.instance_batch.instance_ids:
                count += await self._client.purge_orchestration(
                    validate_instance_id(iid), recursive=request.recursive
                )
        else:
            raise InvalidInput("PurgeInstances needs an instance ID, a filter or a batch of IDs")
        return pb.PurgeInstancesResponse(deleted_instance_count=count, is_complete=True)

    async def query_instances(self, request: pb.QueryInstancesRequest) -> pb.QueryInstancesResponse:
        q = request.query or pb.InstanceQuery()
        fetch = q.fetch_inputs_and_outputs
        page = await self._commands.query(InstanceQuery(
            to_us(q.created_time_from) if q.created_time_from else None,
            to_us(q.created_time_to) if q.created_time_to else None,
            _statuses(q.runtime_status, "query runtimeStatus"),
            q.instance_id_prefix or None,
            q.max_instance_count if q.max_instance_count > 0 else DEFAULT_PAGE_SIZE,
            q.continuation_token or None,
            fetch,
        ))
        return pb.QueryInstancesResponse(
            orchestration_state=[orchestration_state(r, payloads=fetch) for r in page.instances],
            continuation_token=page.continuation_token,
        )

    async def list_instance_ids(
        self, request: pb.ListInstanceIdsRequest
    ) -> pb.ListInstanceIdsResponse:
        ids, last_key = await self._commands.list_ids(
            _statuses(request.runtime_status, "runtimeStatus"),
            to_us(request.completed_time_from) if request.completed_time_from else None,
            to_us(request.completed_time_to) if request.completed_time_to else None,
            request.page_size if request.page_size > 0 else DEFAULT_PAGE_SIZE,
            request.last_instance_key or None,
        )
        return pb.ListInstanceIdsResponse(instance_ids=ids, last_instance_key=last_key)

    async def stream_instance_history(
        self, request: pb.StreamInstanceHistoryRequest, send: Send
    ) -> None:
        iid = validate_instance_id(request.instance_id)
        events = await self._commands.history(iid, request.execution_id)
        # Stored event bytes go out as they are, in chunks of bounded size.
        chunk = bytearray()
        for stored in events:
            data = stored.data
            field = HISTORY_CHUNK_EVENT + varint(len(data)) + data
            if chunk and len(chunk) + len(field) > HISTORY_CHUNK_BYTES:
                await send(bytes(chunk))
                chunk.clear()
            chunk += field
        if chunk or not events:
            await send(bytes(chunk))

    # -- entity RPCs -----------------------------------------------------------------------

    async def signal_entity(self, request: pb.SignalEntityRequest) -> pb.SignalEntityResponse:
        target = str(EntityId.parse(request.instance_id))
        name = _required(request.name, "entity operation name")
        await self._commands.signal(target, name, request.input,
                                    request_id=request.request_id, at=request.scheduled_time)
        return pb.SignalEntityResponse()

    async def get_entity(self, request: pb.GetEntityRequest) -> pb.GetEntityResponse:
        target = str(EntityId.parse(request.instance_id))
        record = await self._commands.entity(target, include_state=request.include_state)
        if record is None:
            return pb.GetEntityResponse(exists=False)
        return pb.GetEntityResponse(exists=True, entity=_entity_metadata(record))

    async def query_entities(self, request: pb.QueryEntitiesRequest) -> pb.QueryEntitiesResponse:
        q = request.query or pb.EntityQuery()
        page = await self._commands.query_entities(EntityQuery(
            id_prefix(q.instance_id_starts_with) if q.instance_id_starts_with else None,
            to_us(q.last_modified_from) if q.last_modified_from else None,
            to_us(q.last_modified_to) if q.last_modified_to else None,
            q.include_state, q.include_transient,
            q.page_size if q.page_size and q.page_size > 0 else DEFAULT_PAGE_SIZE,
            q.continuation_token or None,
        ))
        return pb.QueryEntitiesResponse(
            entities=[_entity_metadata(r) for r in page.entities],
            continuation_token=page.continuation_token,
        )

    async def clean_entity_storage(
        self, request: pb.CleanEntityStorageRequest
    ) -> pb.CleanEntityStorageResponse:
        # One pass does everything, so no continuation token is ever returned.
        removed, released = await self._commands.clean_entities(
            request.remove_empty_entities, request.release_orphaned_locks)
        return pb.CleanEntityStorageResponse(
            empty_entities_removed=removed, orphaned_locks_released=released)

    # -- worker RPCs -----------------------------------------------------------------------

    async def get_work_items(self, request: pb.GetWorkItemsRequest, send: Send) -> None:
        hints = {
            "orchestration": request.max_concurrent_orchestration_work_items,
            "activity": request.max_concurrent_activity_work_items,
            "entity": request.max_concurrent_entity_work_items,
        }
        await self._remote.serve_stream(hints, work_item_filters(request), partial(
            forward, send, self._ping, self._ping_interval, self._stall))

    async def complete_orchestrator_task(
        self, request: pb.OrchestratorResponse
    ) -> pb.CompleteTaskResponse:
        await self._remote.complete(
            "orchestration", request.completion_token,
            StepResult(request.actions, request.custom_status), **_orchestration(request))
        return pb.CompleteTaskResponse()

    async def complete_orchestrator_task_too_large(
        self, request: pb.OrchestratorResponse, size: int, limit: int
    ) -> pb.CompleteTaskResponse:
        """A step whose result is too large fails its orchestration: its worker could only give
        it back, to run into the same limit again."""
        await self._remote.complete("orchestration", request.completion_token, None,
                                    failed=_too_large_failure(size, limit),
                                    **_orchestration(request))
        raise MessageTooLarge(f"CompleteOrchestratorTask: {_too_large(size, limit)}; "
                              f"orchestration {request.instance_id!r} failed")

    async def complete_activity_task(self, request: pb.ActivityResponse) -> pb.CompleteTaskResponse:
        # Failure details pass through as the worker sent them: the SDK reads its own back.
        result = ActivityResult(request.result, request.failure_details)
        await self._remote.complete(
            "activity", request.completion_token, result, **_activity(request))
        return pb.CompleteTaskResponse()

    async def complete_activity_task_too_large(
        self, request: pb.ActivityResponse, size: int, limit: int
    ) -> pb.CompleteTaskResponse:
        """An activity whose result is too large fails, as if it had raised: its orchestration
        decides what follows."""
        await self._remote.complete("activity", request.completion_token, None,
                                    failed=_too_large_failure(size, limit), **_activity(request))
        raise MessageTooLarge(
            f"CompleteActivityTask: {_too_large(size, limit)}; activity #{request.task_id} of "
            f"orchestration {request.instance_id!r} failed"
        )

    async def complete_entity_task(
        self, request: pb.EntityBatchResult
    ) -> pb.CompleteTaskResponse:
        token = request.completion_token
        if not token:
            raise InvalidInput(
                "an entity batch result needs the completion token of its work item")
        if request.failure_details is not None and not request.results:
            # The worker could not run the batch at all: it runs again, later.
            details = request.failure_details
            self._remote.give_back("entity", token, f"its worker could not run it: "
                                   f"{details.error_type}: {details.error_message}")
            return pb.CompleteTaskResponse()
        await self._remote.complete("entity", token, request, what="an entity batch")
        return pb.CompleteTaskResponse()

    async def complete_entity_task_too_large(
        self, request: pb.EntityBatchResult, size: int, limit: int
    ) -> pb.CompleteTaskResponse:
        """A batch whose result is too large fails each of its operations (its state stays as
        it was): run again, it would only run into the same limit."""
        await self._remote.complete("entity", request.completion_token, None,
                                    failed=_too_large_failure(size, limit),
                                    what="an entity batch")
        raise MessageTooLarge(
            f"CompleteEntityTask: {_too_large(size, limit)}; the batch's operations failed")

    # A completion that is not a well-formed message is refused; the work item it names goes
    # back (with backoff) rather than staying with a worker that will not send it again.

    async def complete_orchestrator_task_malformed(self, request: pb.OrchestratorResponse) -> None:
        self._remote.give_back("orchestration", request.completion_token, _MALFORMED)

    async def complete_activity_task_malformed(self, request: pb.ActivityResponse) -> None:
        self._remote.give_back("activity", request.completion_token, _MALFORMED)

    async def complete_entity_task_malformed(self, request: pb.EntityBatchResult) -> None:
        self._remote.give_back("entity", request.completion_token, _MALFORMED)

    async def abandon_task_entity_work_item(
        self, request: pb.AbandonEntityTaskRequest
    ) -> pb.AbandonEntityTaskResponse:
        self._remote.give_back("entity", request.completion_token, _ABANDONED)
        return pb.AbandonEntityTaskResponse()

    async def abandon_task_orchestrator_work_item(
        self, request: pb.AbandonOrchestrationTaskRequest
    ) -> pb.AbandonOrchestrationTaskResponse:
        self._remote.give_back("orchestration", request.completion_token, _ABANDONED)
        return pb.AbandonOrchestrationTaskResponse()

    async def abandon_task_activity_work_item(
        self, request: pb.AbandonActivityTaskRequest
    ) -> pb.AbandonActivityTaskResponse:
        self._remote.give_back("activity", request.completion_token, _ABANDONED)
        return pb.AbandonActivityTaskResponse()


_MALFORMED = "its worker sent a malformed completion"
_ABANDONED = "its worker abandoned it"


def _orchestration(request: pb.OrchestratorResponse) -> dict[str, Any]:
    """How a completion is matched to the step it names."""
    iid = request.instance_id
    return {"matches": lambda item: item.instance_id == iid, "what": f"orchestration {iid!r}"}


def _activity(request: pb.ActivityResponse) -> dict[str, Any]:
    key = (request.instance_id, request.task_id)
    return {
        "matches": lambda item: (item.instance_id, item.task_id) == key,
        "what": f"activity #{request.task_id} of orchestration {request.instance_id!r}",
    }


def _entity_metadata(record: EntityRecord) -> pb.EntityMetadata:
    return pb.EntityMetadata(
        instance_id=record.instance_id,
        last_modified_time=from_us(record.last_modified),
        backlog_queue_size=record.backlog,
        locked_by=record.locked_by,
        serialized_state=record.state,
    )
