"""Work items as sent on the GetWorkItems stream, already encoded.

An orchestrator work item carries the instance's whole history. Its events are stored as
protobuf bytes, so the item is spliced together from those bytes instead of parsing every
event and encoding it again.
"""

from __future__ import annotations

from typing import Any

from .. import _pb as pb
from ..backend import ActivityWorkItem
from ..entities.batch import EntityBatch
from ..errors import InvalidInput, WorkItemTooLarge
from ..services.kinds import EntityWork, StepWork
from ..wire import encode, varint

# Keys (field number << 3 | length-delimited) of the fields spliced in by hand.
_WORK_ITEM_ORCHESTRATOR_REQUEST = varint(1 << 3 | 2)  # WorkItem.orchestratorRequest
_PAST_EVENT = varint(3 << 3 | 2)  # OrchestratorRequest.pastEvents
_NEW_EVENT = varint(4 << 3 | 2)  # OrchestratorRequest.newEvents

HEALTH_PING = encode(pb.WorkItem(health_ping=pb.HealthPing()))

# gRPC clients refuse larger messages unless configured otherwise: the official SDK workers do.
DEFAULT_MAX_WORK_ITEM_SIZE = 4 << 20


class WorkItemEncoder:
    """What the remote runner sends a worker for each kind of work item, no larger than
    `max_size` bytes (`WorkItemTooLarge` otherwise)."""

    def __init__(self, max_size: int, entity_request_version: int) -> None:
        if entity_request_version not in (1, 2):
            raise InvalidInput(
                f"entity_request_version must be 1 or 2, not {entity_request_version}")
        self._max_size = max_size
        self._entity_version = entity_request_version

    async def __call__(self, kind: str, item: Any, work: Any) -> bytes:
        if kind == "orchestration":
            assert isinstance(work, StepWork)
            message = orchestrator_work_item(
                item.lock_token, item.instance_id, item.execution_id,
                [stored.data for stored in await work.past()], [stored.data for stored in work.new],
                orchestration_trace_context(await work.started_event()),
            )
            what = f"orchestration {item.instance_id!r} with its history"
        elif kind == "activity":
            message = activity_work_item(item.lock_token, item)
            what = f"activity {item.name!r} (#{item.task_id}) with its input"
        else:
            assert isinstance(work, EntityWork)
            message = entity_work_item(item.lock_token, work.batch, version=self._entity_version)
            what = f"entity {item.instance_id} with its state"
        if len(message) > self._max_size:
            raise WorkItemTooLarge(
                f"the work item for {what} is {len(message)} bytes, over the {self._max_size} "
                "bytes a worker is sent at most (--max-work-item-size; gRPC clients accept 4 MiB "
                "unless configured for more)")
        return message


def orchestrator_work_item(
    token: str, instance_id: str, execution_id: str, past: list[bytes], new: list[bytes],
    trace: pb.OrchestrationTraceContext | None = None,
) -> bytes:
    """A WorkItem{orchestratorRequest, completionToken}, from serialized history events."""
    request = pb.OrchestratorRequest(
        instance_id=instance_id, execution_id=execution_id, orchestration_trace_context=trace
    )
    body = bytearray(encode(request))
    for key, events in ((_PAST_EVENT, past), (_NEW_EVENT, new)):
        for data in events:
            body += key
            body += varint(len(data))
            body += data
    return b"".join((
        _WORK_ITEM_ORCHESTRATOR_REQUEST, varint(len(body)), body,
        encode(pb.WorkItem(completion_token=token)),
    ))


def orchestration_trace_context(
    started: pb.HistoryEvent | None,
) -> pb.OrchestrationTraceContext | None:
    """The span an SDK worker reports for a traced execution: the ID chosen when the instance
    was created, from its start. Every step names the same one, so the worker's orchestration
    span is the parent its activities and sub-orchestrations were given."""
    if started is None or started.execution_started is None:
        return None
    span_id = started.execution_started.orchestration_span_id
    if not span_id:
        return None
    return pb.OrchestrationTraceContext(span_id=span_id, span_start_time=started.timestamp)


def activity_work_item(token: str, item: ActivityWorkItem) -> bytes:
    return encode(pb.WorkItem(
        completion_token=token,
        activity_request=pb.ActivityRequest(
            name=item.name,
            version=item.version,
            input=item.input,
            orchestration_instance=pb.OrchestrationInstance(
                instance_id=item.instance_id, execution_id=item.execution_id
            ),
            task_id=item.task_id,
            parent_trace_context=item.trace_context,
        ),
    ))


def entity_work_item(token: str, batch: EntityBatch, *, version: int) -> bytes:
    """A WorkItem with the batch's operations: `entityRequestV2` (EntityRequest, operations as
    the history events they arrived as) or, for `version` 1, `entityRequest`
    (EntityBatchRequest)."""
    if version == 1:
        return encode(pb.WorkItem(completion_token=token, entity_request=pb.EntityBatchRequest(
            instance_id=batch.entity_id, entity_state=batch.state,
            operations=[pb.OperationRequest(
                operation=op.name, request_id=op.request_id, input=op.input,
            ) for op in batch.operations],
        )))
    requests = []
    for op in batch.operations:
        if op.caller is None:
            signaled = pb.EntityOperationSignaledEvent(
                request_id=op.request_id, operation=op.name, input=op.input,
                target_instance_id=batch.entity_id,
            )
            requests.append(pb.HistoryEvent(event_id=-1, entity_operation_signaled=signaled))
        else:
            called = pb.EntityOperationCalledEvent(
                request_id=op.request_id, operation=op.name, input=op.input,
                parent_instance_id=op.caller.instance_id,
                parent_execution_id=op.caller.execution_id, target_instance_id=batch.entity_id,
            )
            requests.append(pb.HistoryEvent(event_id=-1, entity_operation_called=called))
    return encode(pb.WorkItem(completion_token=token, entity_request_v_2=pb.EntityRequest(
        instance_id=batch.entity_id, entity_state=batch.state, operation_requests=requests,
    )))
