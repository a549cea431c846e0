"""Client RPCs and their answers to unknown instances and malformed requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial

import grpc
import pytest
import sdk_app as app
import trio
from durabletask.client import OrchestrationStatus, TaskHubGrpcClient
from durabletask.internal import orchestrator_service_pb2 as pb
from sidecar_harness import Sidecar, running_sidecar

from dtrio.grpc.bridge import serve_grpc


@pytest.fixture
async def sidecar(store: str | None) -> AsyncIterator[Sidecar]:
    """The sidecar on each store: these RPCs' behaviour rests on storage."""
    async with running_sidecar(db=store) as running:
        yield running


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


def start_raw(address: str, request: pb.CreateInstanceRequest) -> str:
    """StartInstance as the request's bytes say, with no SDK deciding what to leave out."""
    with grpc.insecure_channel(address) as channel:
        start = channel.unary_unary(
            "/TaskHubSidecarService/StartInstance",
            request_serializer=pb.CreateInstanceRequest.SerializeToString,
            response_deserializer=pb.CreateInstanceResponse.FromString)
        return start(request, timeout=5).instanceId


async def test_a_start_without_a_reuse_policy_replaces_only_a_finished_instance(
    sidecar: Sidecar, worker
) -> None:
    client = sidecar.client
    await sidecar.run(app.fan_out_fan_in, input=2, instance_id="done")
    # As the Java SDK restarts an instance under the same ID: no policy at all.
    request = pb.CreateInstanceRequest(instanceId="done", name="fan_out_fan_in")
    request.input.value = "3"
    assert not request.HasField("orchestrationIdReusePolicy")
    assert await trio.to_thread.run_sync(start_raw, sidecar.address, request) == "done"
    second = await sidecar.call(client.wait_for_orchestration_completion, "done", timeout=10)
    assert (second.serialized_input, second.serialized_output) == ("3", "5")
    # The Python SDK's client sends none either.
    await sidecar.call(client.schedule_new_orchestration, app.fan_out_fan_in, input=4,
                       instance_id="done")
    third = await sidecar.call(client.wait_for_orchestration_completion, "done", timeout=10)
    assert third.serialized_output == "14"

    # An explicit policy, even an empty one, is honoured exactly.
    request.orchestrationIdReusePolicy.SetInParent()
    assert request.SerializeToString().endswith(b"\x32\x00")  # present, with no statuses
    with pytest.raises(grpc.RpcError) as caught:
        await trio.to_thread.run_sync(start_raw, sidecar.address, request)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    error = await rpc_error(sidecar, client.schedule_new_orchestration, app.fan_out_fan_in,
                            instance_id="done", reuse_id_policy=pb.OrchestrationIdReusePolicy())
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await sidecar.call(client.get_orchestration_state, "done")).serialized_input == "4"

    # Pending, running and suspended instances are never replaced without a policy.
    later = datetime.now(UTC) + timedelta(hours=1)
    await sidecar.call(client.schedule_new_orchestration, app.approval, instance_id="pending",
                       start_at=later)
    await sidecar.call(client.schedule_new_orchestration, app.approval, instance_id="running")
    await sidecar.call(client.schedule_new_orchestration, app.approval, instance_id="suspended")
    for iid in ("running", "suspended"):
        await sidecar.call(client.wait_for_orchestration_start, iid, timeout=10)
    await sidecar.call(client.suspend_orchestration, "suspended")
    with trio.fail_after(10):
        while (await sidecar.call(client.get_orchestration_state, "suspended")).runtime_status \
                != OrchestrationStatus.SUSPENDED:
            await trio.sleep(0.05)
    for iid, status in (("pending", OrchestrationStatus.PENDING),
                        ("running", OrchestrationStatus.RUNNING),
                        ("suspended", OrchestrationStatus.SUSPENDED)):
        with pytest.raises(grpc.RpcError) as caught:
            await trio.to_thread.run_sync(start_raw, sidecar.address, pb.CreateInstanceRequest(
                instanceId=iid, name="fan_out_fan_in"))
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS, iid
        state = await sidecar.call(client.get_orchestration_state, iid)
        assert (state.name, state.runtime_status) == ("approval", status)


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
