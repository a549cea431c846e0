"""TaskHubSidecarService in Trio: the client RPCs over the engine's store, the worker RPCs over
`RemoteWork`. `bridge` serves it; an RPC not defined here answers UNIMPLEMENTED."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from .. import _pb as pb
from .. import history as h
from .._pb.google import protobuf as google_protobuf
from ..client import validate_instance_id
from ..errors import InstanceNotFound, InvalidInput
from ..services import Engine
from ..state import NewInstance, new_execution_id, to_us
from ..trace_context import start_traced
from ..wire import encode
from .remote import RemoteWork, Send
from .states import orchestration_state


def _required(value: str, what: str) -> str:
    if not value:
        raise InvalidInput(f"{what} must not be empty")
    return value


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
        await self._backend.create_instance(NewInstance(
            iid, execution_id, name, request.version, request.input, encode(started), visible_at,
            tags=tags, started_event=started,
        ), replace=frozenset(int(s) for s in policy.replaceable_status) if policy else frozenset())
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

    # -- worker RPCs -----------------------------------------------------------------------

    async def get_work_items(self, request: pb.GetWorkItemsRequest, send: Send) -> None:
        await self._remote.serve_stream(request, send)

    async def complete_orchestrator_task(
        self, request: pb.OrchestratorResponse
    ) -> pb.CompleteTaskResponse:
        await self._remote.complete_orchestration(request)
        return pb.CompleteTaskResponse()

    async def complete_activity_task(self, request: pb.ActivityResponse) -> pb.CompleteTaskResponse:
        await self._remote.complete_activity(request)
        return pb.CompleteTaskResponse()

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
