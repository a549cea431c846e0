"""Leases of work held by remote workers: kept alive while the worker makes progress, and taken
back from a worker that stalls."""

from __future__ import annotations

import grpc
import sdk_app as app
import trio
from durabletask.client import OrchestrationStatus
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as stubs
from google.protobuf import wrappers_pb2
from raw_worker import RawWorker
from sidecar_harness import running_sidecar, sdk_worker_running


async def test_an_activity_held_longer_than_its_lease_stays_with_its_worker() -> None:
    async with running_sidecar(
        engine_options={"activity_lease": 0.3, "max_poll_interval": 0.1}
    ) as sidecar:
        iid = await sidecar.call(sidecar.client.schedule_new_orchestration, "slow-activity")
        holder = RawWorker(sidecar.address)
        other = None
        try:
            step = await holder.next("orchestratorRequest")
            await holder.call("CompleteOrchestratorTask", pb.OrchestratorResponse(
                instanceId=iid, completionToken=step.completionToken,
                actions=[pb.OrchestratorAction(id=0, scheduleTask=pb.ScheduleTaskAction(
                    name="slow"))]))
            activity = await holder.next("activityRequest")
            # Connected only now: two streams connecting at once may take it either way.
            other = RawWorker(sidecar.address)
            # Five leases long: without renewal the activity would be handed out again, most
            # likely to the idle worker. (An activity may run for hours: no progress is asked.)
            assert await other.nothing_for(1.5, "activityRequest")
            assert await holder.nothing_for(0.1, "activityRequest")
            await holder.call("CompleteActivityTask", pb.ActivityResponse(
                instanceId=iid, taskId=0, completionToken=activity.completionToken,
                result=wrappers_pb2.StringValue(value='"done"')))
            step = await holder.next("orchestratorRequest")
            await holder.call("CompleteOrchestratorTask", pb.OrchestratorResponse(
                instanceId=iid, completionToken=step.completionToken,
                actions=[pb.OrchestratorAction(
                    id=1, completeOrchestration=pb.CompleteOrchestrationAction(
                        orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED,
                        result=wrappers_pb2.StringValue(value='"ok"')))]))
        finally:
            holder.close()
            if other is not None:
                other.close()
        state = await sidecar.call(sidecar.client.get_orchestration_state, iid)
        assert state.runtime_status == OrchestrationStatus.COMPLETED


async def test_a_worker_that_finishes_no_step_within_the_stall_timeout_loses_its_work() -> None:
    async with running_sidecar(
        engine_options={"orchestration_lease": 0.5, "max_poll_interval": 0.1}, stall_timeout=0.5
    ) as sidecar:
        iid = await sidecar.call(sidecar.client.schedule_new_orchestration, "stuck")
        holder = RawWorker(sidecar.address)
        other = None
        try:
            await holder.next("orchestratorRequest")
            other = RawWorker(sidecar.address)
            # The holder reads its stream but finishes nothing: after the stall timeout its
            # stream ends and the step goes to the other worker.
            item = await other.next("orchestratorRequest", timeout=10)
            assert item.orchestratorRequest.instanceId == iid
        finally:
            holder.close()
            if other is not None:
                other.close()


class _StalledReader:
    """A worker that reads one work item from its stream and then never reads again."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)
        stub = stubs.TaskHubSidecarServiceStub(self._channel)
        # No concurrency hints: the sidecar gives such a worker a modest default.
        self._stream = stub.GetWorkItems(pb.GetWorkItemsRequest())

    def read_one(self) -> pb.WorkItem:
        for item in self._stream:
            if not item.HasField("healthPing"):
                return item
        raise AssertionError("the stream ended")

    def close(self) -> None:
        self._stream.cancel()
        self._channel.close()


async def test_a_worker_that_stops_reading_loses_its_work_to_one_that_reads() -> None:
    async with running_sidecar(
        engine_options={"orchestration_lease": 1.0, "max_poll_interval": 0.1}, stall_timeout=1.0
    ) as sidecar:
        start = sidecar.client.schedule_new_orchestration
        ids = [await sidecar.call(start, app.sequence) for _ in range(50)]
        stalled = _StalledReader(sidecar.address)
        try:
            await trio.to_thread.run_sync(stalled.read_one)
            # It was handed what it takes; a worker that reads comes only now.
            async with sdk_worker_running(sidecar.address):
                for iid in ids:
                    state = await sidecar.call(
                        sidecar.client.wait_for_orchestration_completion, iid, timeout=30)
                    assert state.runtime_status == OrchestrationStatus.COMPLETED
        finally:
            stalled.close()


async def test_an_unstated_concurrency_hint_gets_a_modest_default() -> None:
    async with running_sidecar() as sidecar:
        start = sidecar.client.schedule_new_orchestration
        for _ in range(150):
            await sidecar.call(start, app.sequence)
        raw = RawWorker(sidecar.address)
        try:
            handed = 0
            while not await raw.nothing_for(0.5, "orchestratorRequest"):
                await raw.next("orchestratorRequest")
                handed += 1
            # The official SDKs' own default on one core; not the sidecar-wide limit (200).
            assert handed == 100
        finally:
            raw.close()
