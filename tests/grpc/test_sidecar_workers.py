"""Remote workers: what work items carry, completion tokens, concurrency hints, health pings,
and work held by a worker that goes away."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

import grpc
import pytest
import trio
from durabletask import task
from durabletask.client import OrchestrationStatus, TaskHubGrpcClient
from durabletask.internal import orchestrator_service_pb2 as pb
from google.protobuf import wrappers_pb2
from raw_worker import RawWorker
from sidecar_harness import Sidecar, running_sidecar, sdk_worker_running

import dtrio
from dtrio.grpc import serve_sidecar


def schedule(action_id: int, name: str, data: str) -> pb.OrchestratorAction:
    return pb.OrchestratorAction(id=action_id, scheduleTask=pb.ScheduleTaskAction(
        name=name, input=wrappers_pb2.StringValue(value=data)))


def complete(result: str) -> pb.OrchestratorAction:
    return pb.OrchestratorAction(id=99, completeOrchestration=pb.CompleteOrchestrationAction(
        orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED,
        result=wrappers_pb2.StringValue(value=result)))


async def test_work_items_carry_history_and_tokens(sidecar: Sidecar) -> None:
    iid = await sidecar.call(sidecar.client.schedule_new_orchestration, "by-hand", input=7)
    raw = RawWorker(sidecar.address)
    try:
        item = await raw.next("orchestratorRequest")
        request = item.orchestratorRequest
        assert item.completionToken and request.instanceId == iid and request.executionId.value
        assert list(request.pastEvents) == []
        opener, started = request.newEvents
        assert opener.HasField("orchestratorStarted")
        stamped = opener.timestamp.ToDatetime(tzinfo=UTC)
        assert abs(stamped - datetime.now(UTC)) < timedelta(seconds=5)
        assert started.executionStarted.name == "by-hand"
        assert started.executionStarted.input.value == "7"

        await raw.call("CompleteOrchestratorTask", pb.OrchestratorResponse(
            instanceId=iid, completionToken=item.completionToken,
            actions=[schedule(1, "double", "7")]))
        activity = await raw.next("activityRequest")
        assert activity.activityRequest.name == "double" and activity.activityRequest.taskId == 1
        assert activity.activityRequest.orchestrationInstance.instanceId == iid
        assert activity.activityRequest.input.value == "7"

        # An empty token (older SDKs) is matched by instance ID and task ID.
        await raw.call("CompleteActivityTask", pb.ActivityResponse(
            instanceId=iid, taskId=1, result=wrappers_pb2.StringValue(value="14")))
        # Completing it again is stale: refused, and nothing changes.
        with pytest.raises(grpc.RpcError) as stale:
            await raw.call("CompleteActivityTask", pb.ActivityResponse(
                instanceId=iid, taskId=1, result=wrappers_pb2.StringValue(value="15"),
                completionToken=activity.completionToken))
        assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "completion token" in stale.value.details()

        item = await raw.next("orchestratorRequest")
        past = item.orchestratorRequest.pastEvents
        scheduled = [e for e in past if e.HasField("taskScheduled")]
        assert [e.eventId for e in scheduled] == [1]
        new = item.orchestratorRequest.newEvents
        assert new[0].HasField("orchestratorStarted")
        results = [(e.taskCompleted.taskScheduledId, e.taskCompleted.result.value) for e in new[1:]]
        assert results == [(1, "14")]
        await raw.call("CompleteOrchestratorTask", pb.OrchestratorResponse(
            instanceId=iid, completionToken=item.completionToken, actions=[complete("14")]))
        # A second completion of the same step is stale too.
        with pytest.raises(grpc.RpcError) as stale:
            await raw.call("CompleteOrchestratorTask", pb.OrchestratorResponse(
                instanceId=iid, completionToken=item.completionToken, actions=[complete("0")]))
        assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        raw.close()
    state = await sidecar.call(sidecar.client.get_orchestration_state, iid)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.serialized_output == "14"


async def test_concurrency_hint_and_failure_details(sidecar: Sidecar) -> None:
    iid = await sidecar.call(sidecar.client.schedule_new_orchestration, "by-hand")
    raw = RawWorker(sidecar.address, maxConcurrentActivityWorkItems=1)
    try:
        item = await raw.next("orchestratorRequest")
        await raw.call("CompleteOrchestratorTask", pb.OrchestratorResponse(
            instanceId=iid, completionToken=item.completionToken,
            actions=[schedule(1, "a", "1"), schedule(2, "b", "2")]))
        first = await raw.next("activityRequest")
        assert await raw.nothing_for(0.3, "activityRequest")  # the worker asked for one at a time
        details = pb.TaskFailureDetails(
            errorType="my.Error", errorMessage="no", isNonRetriable=True,
            stackTrace=wrappers_pb2.StringValue(value="at x"))
        await raw.call("CompleteActivityTask", pb.ActivityResponse(
            instanceId=iid, taskId=first.activityRequest.taskId, failureDetails=details,
            completionToken=first.completionToken))
        second = await raw.next("activityRequest")
        assert second.activityRequest.taskId != first.activityRequest.taskId
        item = await raw.next("orchestratorRequest")
        new = item.orchestratorRequest.newEvents
        failed = [e.taskFailed for e in new if e.HasField("taskFailed")]
        assert [f.failureDetails for f in failed] == [details]  # passed through unchanged
        assert failed[0].taskScheduledId == first.activityRequest.taskId
    finally:
        raw.close()


async def test_abandoned_and_dropped_work_is_dispatched_again(sidecar: Sidecar) -> None:
    iid = await sidecar.call(sidecar.client.schedule_new_orchestration, "by-hand")
    first = RawWorker(sidecar.address)
    try:
        item = await first.next("orchestratorRequest")
        await first.call("AbandonTaskOrchestratorWorkItem", pb.AbandonOrchestrationTaskRequest(
            completionToken=item.completionToken))
        again = await first.next("orchestratorRequest")
        assert again.orchestratorRequest.instanceId == iid
        assert again.completionToken != item.completionToken
    finally:
        first.close()  # drops the stream while holding the step
    second = RawWorker(sidecar.address)
    try:
        taken_over = await second.next("orchestratorRequest")
        assert taken_over.orchestratorRequest.instanceId == iid
        # orchestratorStarted and executionStarted: the same step, not yet done
        assert len(taken_over.orchestratorRequest.newEvents) == 2
        with pytest.raises(grpc.RpcError) as stale:
            await second.call("CompleteOrchestratorTask", pb.OrchestratorResponse(
                instanceId=iid, completionToken=again.completionToken, actions=[complete("1")]))
        assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        second.close()


async def test_stopping_the_sidecar_releases_the_work_it_handed_out() -> None:
    async with dtrio.open_engine(
        dtrio.Registry(), db=None, local_workers=False, max_poll_interval=None
    ) as engine:
        async with trio.open_nursery() as first:
            port = await first.start(partial(serve_sidecar, engine, "127.0.0.1", 0))
            client = TaskHubGrpcClient(host_address=f"127.0.0.1:{port}")
            iid = await trio.to_thread.run_sync(client.schedule_new_orchestration, "by-hand")
            raw = RawWorker(f"127.0.0.1:{port}")
            held = await raw.next("orchestratorRequest")
            first.cancel_scope.cancel()
        raw.close()
        # Free again at once, not when its 15 s lease runs out: the next sidecar hands it out.
        async with trio.open_nursery() as second:
            port = await second.start(partial(serve_sidecar, engine, "127.0.0.1", 0))
            raw = RawWorker(f"127.0.0.1:{port}")
            try:
                again = await raw.next("orchestratorRequest", timeout=5)
            finally:
                raw.close()
            assert again.orchestratorRequest.instanceId == iid
            assert again.completionToken != held.completionToken
            second.cancel_scope.cancel()


@pytest.mark.parametrize("interval", [0.1, timedelta(milliseconds=100)])
async def test_idle_streams_get_health_pings(interval: float | timedelta) -> None:
    async with running_sidecar(health_ping_interval=interval) as sidecar:
        raw = RawWorker(sidecar.address)
        try:
            item = await raw.next(pings=True, timeout=5)
            assert item.HasField("healthPing")
        finally:
            raw.close()


def calls_slow(ctx: task.OrchestrationContext, _: object):
    return (yield ctx.call_activity("slow"))


async def test_a_worker_that_disconnects_midrun_loses_its_work_to_another(sidecar: Sidecar) -> None:
    running, release = threading.Event(), threading.Event()

    def slow_on_a(ctx: task.ActivityContext, _: object) -> str:
        running.set()
        release.wait(10)
        return "from A"

    def slow_on_b(ctx: task.ActivityContext, _: object) -> str:
        return "from B"

    slow_on_a.__name__ = slow_on_b.__name__ = "slow"
    client = sidecar.client
    async with trio.open_nursery() as nursery:
        async with sdk_worker_running(sidecar.address, [calls_slow], [slow_on_a]) as worker_a:
            iid = await sidecar.call(client.schedule_new_orchestration, calls_slow)
            assert await trio.to_thread.run_sync(running.wait, 10)
            # A stops listening while its activity runs: its stream drops, the activity is
            # released, and B (connecting now) gets it.
            nursery.start_soon(trio.to_thread.run_sync, worker_a.stop)
            async with sdk_worker_running(sidecar.address, [calls_slow], [slow_on_b]):
                wait = client.wait_for_orchestration_completion
                state = await sidecar.call(wait, iid, timeout=20)
                assert state.runtime_status == OrchestrationStatus.COMPLETED
                assert json.loads(state.serialized_output) == "from B"
            # A's late result is refused as stale, and changes nothing.
            release.set()
    state = await sidecar.call(client.get_orchestration_state, iid)
    assert json.loads(state.serialized_output) == "from B"


async def test_workers_share_work_within_their_concurrency_hints(sidecar: Sidecar) -> None:
    ran: dict[str, list[int]] = {"a": [], "b": []}
    seen = {"a": threading.Event(), "b": threading.Event()}

    def work_on(label: str) -> Callable[[task.ActivityContext, int], int]:
        def shared_work(ctx: task.ActivityContext, n: int) -> int:
            ran[label].append(n)
            seen[label].set()
            # Finishes only once both workers have had work: had the sidecar handed one worker
            # more than its hint of two, the rest would wait there and the run would stall.
            return n if seen["a"].wait(10) and seen["b"].wait(10) else -1

        return shared_work

    def fan_out(ctx: task.OrchestrationContext, count: int):
        work = [ctx.call_activity("shared_work", input=i) for i in range(count)]
        return sum((yield task.when_all(work)))

    address = sidecar.address
    async with (
        sdk_worker_running(address, [fan_out], [work_on("a")], max_activities=2),
        sdk_worker_running(address, [fan_out], [work_on("b")], max_activities=2),
    ):
        state = await sidecar.run(fan_out, input=10)
    assert json.loads(state.serialized_output) == sum(range(10))
    assert ran["a"] and ran["b"]
    assert sorted(ran["a"] + ran["b"]) == list(range(10))


async def test_workers_connecting_and_leaving_are_logged(caplog) -> None:
    caplog.set_level("INFO", logger="dtrio.grpc")
    async with running_sidecar() as sidecar:
        async with sdk_worker_running(sidecar.address):
            with trio.fail_after(10):
                while "worker stream connected" not in caplog.text:
                    await trio.sleep(0.05)
        with trio.fail_after(10):
            while "worker stream disconnected" not in caplog.text:
                await trio.sleep(0.05)
    assert "worker stream connected (1 connected)" in caplog.text
    assert "worker stream disconnected (0 connected)" in caplog.text


async def test_a_completion_refused_for_naming_another_instance_gives_the_step_back() -> None:
    # The SDKs never retry a refused completion: held on, the step would wait for ever.
    async with running_sidecar() as sidecar:
        iid = await sidecar.call(sidecar.client.schedule_new_orchestration, "by-hand")
        raw = RawWorker(sidecar.address)
        try:
            item = await raw.next("orchestratorRequest")
            with pytest.raises(grpc.RpcError) as refused:
                await raw.call("CompleteOrchestratorTask", pb.OrchestratorResponse(
                    instanceId="someone-else", completionToken=item.completionToken,
                    actions=[complete("1")]))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            again = await raw.next("orchestratorRequest")
            assert again.orchestratorRequest.instanceId == iid
            assert again.completionToken != item.completionToken
        finally:
            raw.close()
