"""Bad input fails the one request (or the one instance) it belongs to, never the server:
unknown enum numbers, clients that go away."""

from __future__ import annotations

import json
from functools import partial

import grpc
import pytest
import sdk_app as app
import trio
from conftest import Sidecar
from durabletask.client import OrchestrationStatus
from durabletask.history import TaskCompletedEvent, TaskScheduledEvent
from durabletask.internal import orchestrator_service_pb2 as pb
from raw_worker import RawWorker

def raw_call(address: str, rpc: str, data: bytes, *, stream: bool = False) -> list[bytes]:
    """Send `data` as the request bytes of `rpc`, as no SDK would; the reply messages' bytes."""
    with grpc.insecure_channel(address) as channel:
        kind = channel.unary_stream if stream else channel.unary_unary
        call = kind(f"/TaskHubSidecarService/{rpc}",
                    request_serializer=lambda b: b, response_deserializer=lambda b: b)
        reply = call(data, timeout=5)
        return list(reply) if stream else [reply]


async def refused(address: str, rpc: str, data: bytes, *, stream: bool = False) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        await trio.to_thread.run_sync(partial(raw_call, address, rpc, data, stream=stream))
    return caught.value


async def still_serves(sidecar: Sidecar) -> None:
    state = await sidecar.run(app.sequence)
    assert state.runtime_status == OrchestrationStatus.COMPLETED


async def test_unknown_status_numbers_are_refused_and_change_nothing(
    sidecar: Sidecar, worker
) -> None:
    done = await sidecar.run(app.sequence, instance_id="done")
    assert done.runtime_status == OrchestrationStatus.COMPLETED
    unknown = [pb.ORCHESTRATION_STATUS_COMPLETED, 99]
    for rpc, request in [
        ("QueryInstances", pb.QueryInstancesRequest(
            query=pb.InstanceQuery(runtimeStatus=unknown))),
        ("PurgeInstances", pb.PurgeInstancesRequest(
            purgeInstanceFilter=pb.PurgeInstanceFilter(runtimeStatus=unknown))),
        ("ListInstanceIds", pb.ListInstanceIdsRequest(runtimeStatus=unknown)),
    ]:
        error = await refused(sidecar.address, rpc, request.SerializeToString())
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, rpc
        assert "99 is not an orchestration status" in error.details()
    state = await sidecar.call(sidecar.client.get_orchestration_state, "done")
    assert state is not None and state.runtime_status == OrchestrationStatus.COMPLETED


async def test_an_unknown_completion_status_fails_that_instance(sidecar: Sidecar) -> None:
    iid = await sidecar.call(sidecar.client.schedule_new_orchestration, "by-hand")
    raw = RawWorker(sidecar.address)
    try:
        item = await raw.next("orchestratorRequest")
        await raw.call("CompleteOrchestratorTask", pb.OrchestratorResponse(
            instanceId=iid, completionToken=item.completionToken,
            actions=[pb.OrchestratorAction(id=1, completeOrchestration=(
                pb.CompleteOrchestrationAction(orchestrationStatus=99)))]))
    finally:
        raw.close()
    state = await sidecar.call(sidecar.client.get_orchestration_state, iid)
    assert state.runtime_status == OrchestrationStatus.FAILED
    assert state.failure_details.error_type == "UnsupportedStatus"
    assert "status 99" in state.failure_details.message


async def test_a_client_gone_mid_wait_leaves_the_instance_and_others_alone(
    sidecar: Sidecar, worker
) -> None:
    client = sidecar.client
    iid = await sidecar.call(client.schedule_new_orchestration, app.approval)
    await sidecar.call(client.wait_for_orchestration_start, iid, timeout=10)
    request = pb.GetInstanceRequest(instanceId=iid).SerializeToString()
    waits = []
    for _ in range(2):
        channel = grpc.insecure_channel(sidecar.address)
        wait = channel.unary_unary("/TaskHubSidecarService/WaitForInstanceCompletion",
                                   request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        waits.append((channel, wait.future(request)))  # no deadline, as the JS SDKs send
    await trio.sleep(0.3)
    waits[0][1].cancel()  # the caller gives up
    waits[1][0].close()  # the caller's connection goes away
    assert all(future.cancelled() or future.exception() for _, future in waits)
    await still_serves(sidecar)
    await sidecar.call(client.raise_orchestration_event, iid, "approval", data=True)
    state = await sidecar.call(client.wait_for_orchestration_completion, iid, timeout=10)
    assert json.loads(state.serialized_output) == {"approved": True}
    waits[0][0].close()


async def test_a_worker_gone_mid_stream_loses_nothing(sidecar: Sidecar, worker) -> None:
    client = sidecar.client
    raw = RawWorker(sidecar.address)
    try:
        ids = [await sidecar.call(client.schedule_new_orchestration, app.fan_out_fan_in, input=4)
               for _ in range(6)]
        await raw.next()
        await raw.next()
    finally:
        raw.close()  # gone mid-stream, holding what it was handed
    for iid in ids:
        state = await sidecar.call(client.wait_for_orchestration_completion, iid, timeout=15)
        assert state.runtime_status == OrchestrationStatus.COMPLETED
        assert json.loads(state.serialized_output) == 0 + 1 + 4 + 9
        history = await sidecar.call(client.get_orchestration_history, iid)
        scheduled = [e.event_id for e in history if isinstance(e, TaskScheduledEvent)]
        completed = [e.task_scheduled_id for e in history if isinstance(e, TaskCompletedEvent)]
        assert sorted(scheduled) == sorted(completed) and len(set(scheduled)) == 4
