"""TaskHubSidecarService in Trio: the client RPCs over the engine's store, the worker RPCs over
`RemoteWork`. `bridge` serves it; an RPC not defined here answers UNIMPLEMENTED."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from .. import _pb as pb
from .. import history as h
from .._pb.google import protobuf as google_protobuf
from ..backend import EntityQuery, EntityRecord, InstanceQuery
from ..entities.ids import EntityId, id_prefix
from ..errors import InstanceNotFound, InvalidInput, MessageTooLarge
from ..instance_ids import validate_instance_id
from ..services import Engine
from ..state import TERMINAL, Message, NewInstance, from_us, new_execution_id, to_us
from ..trace_context import start_traced
from ..wire import encode, one_of, varint
from .remote import RemoteWork, Send
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


class Servicer:
    def __init__(self, engine: Engine, remote: RemoteWork) -> None:
        self._backend = engine.backend
        self._clock = engine.clock
        self._client = engine.client
        self._remote = remote

    async def hello(self, request: google_protobuf.Empty) -> google_protobuf.Empty:
        return google_protobuf.Empty()

    # -- client RPCs -----------------------------------------------------------------------

    async def start_instance(self, request: pb.CreateInstanceRequest) -> pb.CreateInstanceResponse:
        name = _required(request.name, "orchestration name")
        iid = validate_instance_id(request.instance_id) if request.instance_id else uuid.uuid4().hex
        now = self._clock.now_dt()
        start_at = request.scheduled_start_timestamp
        if start_at is not None and to_us(start_at) <= 0:
            start_at = None  # JavaScript clients send epoch 0 when nothing is scheduled
        tags = dict(request.tags) or None
        execution_id = new_execution_id()
        # The input arrives serialized already: it is stored as sent, not encoded again.
        started = start_traced(h.execution_started(
            now, name, iid, execution_id, request.input,
            version=request.version, scheduled_start=start_at, tags=tags,
        ), request.parent_trace_context)
        visible_at = max(to_us(start_at), to_us(now)) if start_at is not None else to_us(now)
        policy = request.orchestration_id_reuse_policy
        if policy is None:
            # The Durable Task Framework's default: an instance that is not running may be
            # overwritten (the Java SDK's restart under the same ID relies on it).
            replace = TERMINAL
        else:
            # An explicit policy, even an empty one, is taken at its word.
            replace = _statuses(policy.replaceable_status, "replaceableStatus") or frozenset()
        await self._backend.create_instance(NewInstance(
            iid, execution_id, name, request.version, request.input, encode(started), visible_at,
            tags=tags, started_event=started,
        ), replace=replace)
        return pb.CreateInstanceResponse(instance_id=iid)

    async def get_instance(self, request: pb.GetInstanceRequest) -> pb.GetInstanceResponse:
        iid = validate_instance_id(request.instance_id)
        payloads = request.get_inputs_and_outputs
        record = await self._backend.get_instance(iid, payloads=payloads)
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
        event = h.event_raised(self._clock.now_dt(), name, request.input)
        await self._backend.add_event(iid, encode(event), decoded=event)
        return pb.RaiseEventResponse()

    async def terminate_instance(self, request: pb.TerminateRequest) -> pb.TerminateResponse:
        iid = validate_instance_id(request.instance_id)
        event = h.execution_terminated(self._clock.now_dt(), request.output, request.recursive)
        try:
            await self._backend.add_event(iid, encode(event), decoded=event, wake_pending=True)
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
        page = await self._backend.query_instances(InstanceQuery(
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
        ids, last_key = await self._backend.list_instance_ids(
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
        record = await self._backend.get_instance(iid, payloads=False)
        if record is None:
            raise InstanceNotFound(iid)
        if request.execution_id and request.execution_id != record.execution_id:
            raise InstanceNotFound(f"{iid} (execution {request.execution_id})")
        events = await self._backend.load_history(iid)
        # Stored event bytes go out as they are, in chunks of bounded size.
        chunk = bytearray()
        for data in events:
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
        now = self._clock.now_dt()
        visible = to_us(now)
        if request.scheduled_time is not None:
            visible = max(to_us(request.scheduled_time), visible)
        event = h.event(now, entity_operation_signaled=pb.EntityOperationSignaledEvent(
            request_id=request.request_id or uuid.uuid4().hex, operation=name,
            input=request.input, scheduled_time=request.scheduled_time,
            target_instance_id=target,
        ))
        message = Message(target, encode(event), visible, None, event)
        await self._backend.send_entity_message(message)
        return pb.SignalEntityResponse()

    async def get_entity(self, request: pb.GetEntityRequest) -> pb.GetEntityResponse:
        target = str(EntityId.parse(request.instance_id))
        record = await self._backend.get_entity(target, include_state=request.include_state)
        if record is None:
            return pb.GetEntityResponse(exists=False)
        return pb.GetEntityResponse(exists=True, entity=_entity_metadata(record))

    async def query_entities(self, request: pb.QueryEntitiesRequest) -> pb.QueryEntitiesResponse:
        q = request.query or pb.EntityQuery()
        page = await self._backend.query_entities(EntityQuery(
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
        removed, released = await self._backend.clean_entity_storage(
            request.remove_empty_entities, request.release_orphaned_locks)
        return pb.CleanEntityStorageResponse(
            empty_entities_removed=removed, orphaned_locks_released=released)

    # -- worker RPCs -----------------------------------------------------------------------

    async def get_work_items(self, request: pb.GetWorkItemsRequest, send: Send) -> None:
        await self._remote.serve_stream(request, send)

    async def complete_orchestrator_task(
        self, request: pb.OrchestratorResponse
    ) -> pb.CompleteTaskResponse:
        await self._remote.complete_orchestration(request)
        return pb.CompleteTaskResponse()

    async def complete_orchestrator_task_too_large(
        self, request: pb.OrchestratorResponse, size: int, limit: int
    ) -> pb.CompleteTaskResponse:
        """A step whose result is too large fails its orchestration: its worker could only give
        it back, to run into the same limit again."""
        why = _too_large(size, limit)
        await self._remote.complete_orchestration(pb.OrchestratorResponse(
            instance_id=request.instance_id, completion_token=request.completion_token,
            actions=[pb.OrchestratorAction(
                id=-1, complete_orchestration=pb.CompleteOrchestrationAction(
                    orchestration_status=pb.OrchestrationStatus.FAILED,
                    failure_details=pb.TaskFailureDetails(
                        error_type="MessageTooLarge", error_message=why, is_non_retriable=True,
                    ),
                ),
            )],
        ))
        raise MessageTooLarge(
            f"CompleteOrchestratorTask: {why}; orchestration {request.instance_id!r} failed"
        )

    async def complete_activity_task(self, request: pb.ActivityResponse) -> pb.CompleteTaskResponse:
        await self._remote.complete_activity(request)
        return pb.CompleteTaskResponse()

    async def complete_activity_task_too_large(
        self, request: pb.ActivityResponse, size: int, limit: int
    ) -> pb.CompleteTaskResponse:
        """An activity whose result is too large fails, as if it had raised: its orchestration
        decides what follows."""
        why = _too_large(size, limit)
        await self._remote.complete_activity(pb.ActivityResponse(
            instance_id=request.instance_id, task_id=request.task_id,
            completion_token=request.completion_token,
            failure_details=pb.TaskFailureDetails(
                error_type="MessageTooLarge", error_message=why, is_non_retriable=True,
            ),
        ))
        raise MessageTooLarge(
            f"CompleteActivityTask: {why}; activity #{request.task_id} of orchestration "
            f"{request.instance_id!r} failed"
        )

    async def complete_entity_task(
        self, request: pb.EntityBatchResult
    ) -> pb.CompleteTaskResponse:
        await self._remote.complete_entity(request)
        return pb.CompleteTaskResponse()

    async def complete_entity_task_too_large(
        self, request: pb.EntityBatchResult, size: int, limit: int
    ) -> pb.CompleteTaskResponse:
        """A batch whose result is too large fails each of its operations (its state stays as
        it was): run again, it would only run into the same limit."""
        why = _too_large(size, limit)
        failure = pb.OperationResult(failure=pb.OperationResultFailure(
            failure_details=pb.TaskFailureDetails(
                error_type="MessageTooLarge", error_message=why, is_non_retriable=True)))
        await self._remote.fail_entity(request.completion_token, failure)
        raise MessageTooLarge(f"CompleteEntityTask: {why}; the batch's operations failed")

    # A completion that is not a well-formed message is refused; the work item it names goes
    # back (with backoff) rather than staying with a worker that will not send it again.

    async def complete_orchestrator_task_malformed(self, request: pb.OrchestratorResponse) -> None:
        await self._remote.abandon_orchestration(request.completion_token)

    async def complete_activity_task_malformed(self, request: pb.ActivityResponse) -> None:
        await self._remote.abandon_activity(request.completion_token)

    async def complete_entity_task_malformed(self, request: pb.EntityBatchResult) -> None:
        await self._remote.abandon_entity(request.completion_token)

    async def abandon_task_entity_work_item(
        self, request: pb.AbandonEntityTaskRequest
    ) -> pb.AbandonEntityTaskResponse:
        await self._remote.abandon_entity(request.completion_token)
        return pb.AbandonEntityTaskResponse()

    async def abandon_task_orchestrator_work_item(
        self, request: pb.AbandonOrchestrationTaskRequest
    ) -> pb.AbandonOrchestrationTaskResponse:
        await self._remote.abandon_orchestration(request.completion_token)
        return pb.AbandonOrchestrationTaskResponse()

    async def abandon_task_activity_work_item(
        self, request: pb.AbandonActivityTaskRequest
    ) -> pb.AbandonActivityTaskResponse:
        await self._remote.abandon_activity(request.completion_token)
        return pb.AbandonActivityTaskResponse()


def _entity_metadata(record: EntityRecord) -> pb.EntityMetadata:
    return pb.EntityMetadata(
        instance_id=record.instance_id,
        last_modified_time=from_us(record.last_modified),
        backlog_queue_size=record.backlog,
        locked_by=record.locked_by,
        serialized_state=record.state,
    )
