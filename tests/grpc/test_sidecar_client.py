"""Client RPCs and their answers to unknown instances and malformed requests."""

from __future__ import annotations

from functools import partial

import grpc
import pytest
import sdk_app as app
import trio
from conftest import Sidecar
from durabletask.client import OrchestrationStatus, TaskHubGrpcClient
from durabletask.internal import orchestrator_service_pb2 as pb

from dtrio.grpc.bridge import serve_grpc


async def rpc_error(sidecar: Sidecar, fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        await sidecar.call(fn, *args, **kwargs)
    return caught.value


async def test_unknown_instance(sidecar: Sidecar) -> None:
    client = sidecar.client
    assert await sidecar.call(client.get_orchestration_state, "nobody") is None
    assert await sidecar.call(client.wait_for_orchestration_completion, "nobody", timeout=5) is None
    error = await rpc_error(sidecar, client.raise_orchestration_event, "nobody", "ping")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "nobody" in error.details()


async def test_duplicate_start_is_refused(sidecar: Sidecar) -> None:
    client = sidecar.client
    await sidecar.call(client.schedule_new_orchestration, app.sequence, instance_id="once")
    start = client.schedule_new_orchestration
    error = await rpc_error(sidecar, start, app.sequence, instance_id="once")
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "once" in error.details()


async def test_duplicate_start_replaces_an_instance_in_a_replaceable_status(
    sidecar: Sidecar, worker
) -> None:
    client = sidecar.client
    first = await sidecar.run(app.fan_out_fan_in, input=2, instance_id="again")
    policy = pb.OrchestrationIdReusePolicy(replaceableStatus=[pb.ORCHESTRATION_STATUS_COMPLETED])
    start = partial(client.schedule_new_orchestration, reuse_id_policy=policy)
    await sidecar.call(start, app.fan_out_fan_in, input=3, instance_id="again")
    second = await sidecar.call(client.wait_for_orchestration_completion, "again", timeout=10)
    assert (first.serialized_output, second.serialized_output) == ("1", "5")
    # A running instance's status is not in the list: refused.
    await sidecar.call(start, app.approval, instance_id="busy")
    await sidecar.call(client.wait_for_orchestration_start, "busy", timeout=10)
    error = await rpc_error(sidecar, start, app.approval, instance_id="busy")
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("instance_id", ["x" * 101, "bad\nid"])
async def test_malformed_instance_ids_are_invalid_arguments(
    sidecar: Sidecar, instance_id: str
) -> None:
    start = sidecar.client.schedule_new_orchestration
    error = await rpc_error(sidecar, start, app.sequence, instance_id=instance_id)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "instance ID" in error.details()


async def test_empty_names_are_invalid_arguments(sidecar: Sidecar) -> None:
    client = sidecar.client
    error = await rpc_error(sidecar, client.schedule_new_orchestration, "")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    iid = await sidecar.call(client.schedule_new_orchestration, app.approval)
    error = await rpc_error(sidecar, client.raise_orchestration_event, iid, "")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_get_instance_leaves_payloads_out_when_asked(sidecar: Sidecar, worker) -> None:
    client = sidecar.client
    state = await sidecar.run(app.fan_out_fan_in, input=3)
    full = await sidecar.call(client.get_orchestration_state, state.instance_id)
    bare = await sidecar.call(
        client.get_orchestration_state, state.instance_id, fetch_payloads=False
    )
    assert (full.serialized_input, full.serialized_output) == ("3", "5")
    assert (bare.serialized_input, bare.serialized_output) == (None, None)
    assert bare.runtime_status == OrchestrationStatus.COMPLETED
    assert bare.failure_details is None


async def test_wait_honours_the_callers_deadline(sidecar: Sidecar) -> None:
    # No worker: the instance stays pending, so the wait can only end by the deadline.
    client = sidecar.client
    iid = await sidecar.call(client.schedule_new_orchestration, app.sequence)
    with pytest.raises(TimeoutError):
        await sidecar.call(client.wait_for_orchestration_start, iid, timeout=0.5)
    state = await sidecar.call(client.get_orchestration_state, iid)
    assert state.runtime_status == OrchestrationStatus.PENDING


async def test_missing_rpcs_answer_unimplemented_naming_themselves() -> None:
    class HelloOnly:
        async def hello(self, request):  # type: ignore[no-untyped-def]
            from dtrio._pb.google.protobuf import Empty

            return Empty()

    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_grpc, HelloOnly(), "127.0.0.1", 0))
        client = TaskHubGrpcClient(host_address=f"127.0.0.1:{port}")
        with pytest.raises(grpc.RpcError) as caught:
            await trio.to_thread.run_sync(client.get_orchestration_state, "x")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "GetInstance" in caught.value.details()
        nursery.cancel_scope.cancel()
