"""Leases of work held by remote workers: kept alive while the worker is connected."""

from __future__ import annotations

from conftest import running_sidecar
from durabletask.client import OrchestrationStatus
from durabletask.internal import orchestrator_service_pb2 as pb
from google.protobuf import wrappers_pb2
from raw_worker import RawWorker


async def test_a_step_held_longer_than_its_lease_stays_with_its_worker() -> None:
    async with running_sidecar(
        engine_options={"orchestration_lease": 0.3, "max_poll_interval": 0.1}
    ) as sidecar:
        client = sidecar.client
        iid = await sidecar.call(client.schedule_new_orchestration, "slow-step")
        holder = RawWorker(sidecar.address)
        other = None
        try:
            item = await holder.next("orchestratorRequest")
            # Connected only now: two streams connecting at once may take the step either way.
            other = RawWorker(sidecar.address)
            # Five leases long: without renewal the step would be handed out again, most
            # likely to the idle worker.
            assert await other.nothing_for(1.5, "orchestratorRequest")
            assert await holder.nothing_for(0.1, "orchestratorRequest")
            await holder.call("CompleteOrchestratorTask", pb.OrchestratorResponse(
                instanceId=iid, completionToken=item.completionToken,
                actions=[pb.OrchestratorAction(
                    id=1, completeOrchestration=pb.CompleteOrchestrationAction(
                        orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED,
                        result=wrappers_pb2.StringValue(value='"done"')))]))
        finally:
            holder.close()
            if other is not None:
                other.close()
        state = await sidecar.call(client.get_orchestration_state, iid)
        assert state.runtime_status == OrchestrationStatus.COMPLETED
        assert state.serialized_output == '"done"'
