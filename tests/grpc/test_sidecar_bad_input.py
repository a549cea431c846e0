"""Bad input fails the one request (or the one instance) it belongs to, never the server:
malformed protobuf, unknown enum numbers, oversized messages, clients that go away."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import grpc
import pytest
import sdk_app as app
import trio
from durabletask import task
from durabletask.client import OrchestrationStatus, TaskHubGrpcClient
from durabletask.history import TaskCompletedEvent, TaskScheduledEvent
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.worker import TaskHubGrpcWorker
from raw_worker import RawWorker
from sidecar_harness import Sidecar, running_sidecar, sdk_worker_running

LIMIT = 64 << 10


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


async def test_malformed_requests_fail_alone(sidecar: Sidecar, worker) -> None:
    for rpc, data in [
        ("GetInstance", b"\x0a\x05ab"),  # a string shorter than its declared length
        ("GetInstance", b"\x0a\x02\xc3\x28"),  # not UTF-8
        ("StartInstance", b"\x08\x01"),  # a number where the instance ID belongs
        ("CompleteOrchestratorTask", b"\xff\xff\xff"),
        ("RaiseEvent", b"garbage!"),
    ]:
        error = await refused(sidecar.address, rpc, data)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, data)
        assert "malformed" in error.details()
    await still_serves(sidecar)


async def test_a_malformed_work_item_stream_request_fails_alone(sidecar: Sidecar, worker) -> None:
    # A string where maxConcurrentOrchestrationWorkItems belongs: decoded leniently, it became
    # a list of numbers that took down the dispatcher every worker shares.
    error = await refused(sidecar.address, "GetWorkItems", b"\x0a\x02ab", stream=True)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "maxConcurrentOrchestrationWorkItems" in error.details() or "field 1" in error.details()
    await still_serves(sidecar)


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


async def test_an_oversized_client_request_fails_alone() -> None:
    async with running_sidecar(max_message_size=LIMIT) as sidecar:
        start = sidecar.client.schedule_new_orchestration
        with pytest.raises(grpc.RpcError) as caught:
            await sidecar.call(start, app.sequence, input="x" * LIMIT, instance_id="big")
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"limit of {LIMIT} bytes" in caught.value.details()
        assert await sidecar.call(sidecar.client.get_orchestration_state, "big") is None
        async with sdk_worker_running(sidecar.address):
            await still_serves(sidecar)


def big_result(ctx: task.ActivityContext, _: object) -> str:
    return "x" * LIMIT


def calls_big_result(ctx: task.OrchestrationContext, _: object):
    return (yield ctx.call_activity(big_result))


def returns_big_result(ctx: task.OrchestrationContext, _: object):
    yield ctx.call_activity(app.hello, input="world")
    return "x" * LIMIT


async def test_an_oversized_result_fails_its_activity_or_orchestration(store: str | None) -> None:
    async with running_sidecar(db=store, max_message_size=LIMIT) as sidecar:
        orchestrators = [calls_big_result, returns_big_result, app.sequence]
        async with sdk_worker_running(sidecar.address, orchestrators, [big_result, app.hello]):
            activity = await sidecar.run(calls_big_result)
            assert activity.runtime_status == OrchestrationStatus.FAILED
            assert f"limit of {LIMIT} bytes" in activity.failure_details.message

            orchestration = await sidecar.run(returns_big_result)
            assert orchestration.runtime_status == OrchestrationStatus.FAILED
            assert orchestration.failure_details.error_type == "MessageTooLarge"
            assert f"limit of {LIMIT} bytes" in orchestration.failure_details.message
            await still_serves(sidecar)


# Over the 4 MiB an SDK worker accepts by default, under the sidecar's 16 MiB for requests.
CHUNK = 3 << 20
ran: list[int] = []  # inputs that reached `measure`


def chunk(ctx: task.ActivityContext, _: object) -> str:
    return "x" * CHUNK


def measure(ctx: task.ActivityContext, text: str) -> int:
    ran.append(len(text))
    return len(text)


def gathers_chunks(ctx: task.OrchestrationContext, _: object):
    first = yield ctx.call_activity(chunk)
    second = yield ctx.call_activity(chunk)
    return len(first) + len(second)


def sends_a_chunk(ctx: task.OrchestrationContext, _: object):
    return (yield ctx.call_activity(measure, input="y" * (5 << 20)))


async def test_work_items_too_large_for_the_worker_fail_their_instance(store: str | None) -> None:
    # Sent anyway, such an item breaks the worker's stream, and again on every reconnect.
    async with running_sidecar(db=store) as sidecar:
        orchestrators = [gathers_chunks, sends_a_chunk, app.sequence]
        async with sdk_worker_running(sidecar.address, orchestrators, [chunk, measure, app.hello]):
            history = await sidecar.run(gathers_chunks)
            assert history.runtime_status == OrchestrationStatus.FAILED
            assert history.failure_details.error_type == "WorkItemTooLarge"
            assert "with its history" in history.failure_details.message
            assert "over the 4194304 bytes" in history.failure_details.message

            activity = await sidecar.run(sends_a_chunk)
            assert activity.runtime_status == OrchestrationStatus.FAILED
            assert activity.failure_details.error_type == "WorkItemTooLarge"
            assert ran == []
            events = [stored.event for stored in
                      await sidecar.engine.backend.load_history(activity.instance_id)]
            failed = [e.task_failed for e in events if e.task_failed]
            assert (
                "activity 'measure' (#1) with its input"
                in failed[0].failure_details.error_message
            )
            await still_serves(sidecar)


async def test_the_work_item_limit_is_configurable(store: str | None) -> None:
    async with running_sidecar(db=store, max_work_item_size=LIMIT) as sidecar:
        async with sdk_worker_running(sidecar.address, [sends_a_chunk, app.sequence],
                                      [measure, app.hello]):
            state = await sidecar.run(sends_a_chunk)
            assert state.runtime_status == OrchestrationStatus.FAILED
            assert f"over the {LIMIT} bytes" in state.failure_details.message
            await still_serves(sidecar)


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


def serve(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen(
        [sys.executable, "-m", "dtrio", "serve", "--port", "0", "--db", ":memory:", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def test_serve_takes_the_limit_from_its_flag() -> None:
    process = serve("--max-message-size", "64KiB")
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert port, line
        client = TaskHubGrpcClient(host_address=f"127.0.0.1:{port.group(1)}")
        with pytest.raises(grpc.RpcError) as caught:
            client.schedule_new_orchestration("any", input="x" * LIMIT)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"limit of {LIMIT} bytes" in caught.value.details()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        process.wait()


def test_serve_takes_the_work_item_limit_from_its_flag() -> None:
    process = serve("--max-work-item-size", "64KiB")
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert port, line
        address = f"127.0.0.1:{port.group(1)}"
        worker = TaskHubGrpcWorker(host_address=address)
        worker.add_orchestrator(sends_a_chunk)
        worker.add_activity(measure)
        worker.start()
        try:
            client = TaskHubGrpcClient(host_address=address)
            iid = client.schedule_new_orchestration(sends_a_chunk)
            state = client.wait_for_orchestration_completion(iid, timeout=30)
        finally:
            worker.stop()
        assert state is not None and state.runtime_status == OrchestrationStatus.FAILED
        assert f"over the {LIMIT} bytes" in state.failure_details.message
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("flag", ["--max-message-size", "--max-work-item-size"])
def test_serve_refuses_a_limit_that_is_not_a_size(flag: str) -> None:
    process = serve(flag, "lots")
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert f"{flag}: not a size: 'lots'" in err


async def test_a_malformed_completion_gives_its_work_item_back(sidecar: Sidecar) -> None:
    # Refused, it would leave the step with a worker that never sends it again.
    iid = await sidecar.call(sidecar.client.schedule_new_orchestration, "by-hand")
    raw = RawWorker(sidecar.address)
    try:
        item = await raw.next("orchestratorRequest")
        named = pb.OrchestratorResponse(instanceId=iid, completionToken=item.completionToken)
        # One action whose first field is a varint cut short.
        error = await refused(sidecar.address, "CompleteOrchestratorTask",
                              named.SerializeToString() + b"\x12\x03\x08\x80\x80")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        again = await raw.next("orchestratorRequest")
        assert again.orchestratorRequest.instanceId == iid
        assert again.completionToken != item.completionToken
    finally:
        raw.close()
