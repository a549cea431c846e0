"""Every orchestration pattern, run by the official Python SDK worker through the sidecar."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import sdk_app as app
import trio
from durabletask import task
from durabletask.client import OrchestrationStatus
from sidecar_harness import Sidecar, sdk_worker_running


async def test_sequence_of_activities(sidecar: Sidecar, worker) -> None:
    state = await sidecar.run(app.sequence)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert json.loads(state.serialized_output) == [
        "Hello, Tokyo!", "Hello, London!", "Hello, Seattle!",
    ]
    assert state.failure_details is None


async def test_fan_out_fan_in(sidecar: Sidecar, worker) -> None:
    state = await sidecar.run(app.fan_out_fan_in, input=20)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert json.loads(state.serialized_output) == sum(i * i for i in range(20))


async def test_when_any_returns_the_first_task(sidecar: Sidecar, worker) -> None:
    client = sidecar.client
    iid = await sidecar.call(client.schedule_new_orchestration, app.first_of_event_or_timer)
    await sidecar.call(client.wait_for_orchestration_start, iid, timeout=10)
    await sidecar.call(client.raise_orchestration_event, iid, "go")
    state = await sidecar.call(client.wait_for_orchestration_completion, iid, timeout=10)
    assert json.loads(state.serialized_output) == "event"


async def test_durable_timer(sidecar: Sidecar, worker) -> None:
    started = datetime.now(UTC)
    state = await sidecar.run(app.sleeper, input=1)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    # The orchestration's clock (orchestratorStarted, naive UTC in the SDK) moved past the
    # timer's due time.
    woke = datetime.fromisoformat(json.loads(state.serialized_output)).replace(tzinfo=UTC)
    assert woke - started >= timedelta(seconds=0.9)


async def test_external_event_raised_while_waiting(sidecar: Sidecar, worker) -> None:
    client = sidecar.client
    iid = await sidecar.call(client.schedule_new_orchestration, app.approval)
    while True:  # custom status says it waits
        state = await sidecar.call(client.get_orchestration_state, iid)
        if state.serialized_custom_status == json.dumps("waiting"):
            break
        await trio.sleep(0.02)
    await sidecar.call(client.raise_orchestration_event, iid, "approval", data=True)
    state = await sidecar.call(client.wait_for_orchestration_completion, iid, timeout=10)
    assert json.loads(state.serialized_output) == {"approved": True}


async def test_external_event_raised_before_a_scheduled_start(sidecar: Sidecar, worker) -> None:
    client = sidecar.client
    start_at = datetime.now(UTC) + timedelta(seconds=1)
    iid = await sidecar.call(client.schedule_new_orchestration, app.approval, start_at=start_at)
    await sidecar.call(client.raise_orchestration_event, iid, "approval", data="early")
    state = await sidecar.call(client.get_orchestration_state, iid)
    assert state.runtime_status == OrchestrationStatus.PENDING
    state = await sidecar.call(client.wait_for_orchestration_completion, iid, timeout=10)
    assert json.loads(state.serialized_output) == {"approved": "early"}
    assert datetime.now(UTC) >= start_at


async def test_sub_orchestrations(sidecar: Sidecar, worker) -> None:
    client = sidecar.client
    start = client.schedule_new_orchestration
    iid = await sidecar.call(start, app.parent, input=3, instance_id="dad")
    state = await sidecar.call(client.wait_for_orchestration_completion, iid, timeout=20)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    first, second = json.loads(state.serialized_output)
    assert first["parent"] == second["parent"] == "dad"
    assert (first["value"], second["value"]) == (9, 16)
    assert second["child"] == "dad-kid"
    kid = await sidecar.call(client.get_orchestration_state, "dad-kid")
    assert kid.runtime_status == OrchestrationStatus.COMPLETED


async def test_continue_as_new(sidecar: Sidecar, worker) -> None:
    state = await sidecar.run(app.counter, input=0)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert (state.serialized_input, state.serialized_output) == ("3", "3")


async def test_continue_as_new_while_events_keep_arriving(sidecar: Sidecar, worker) -> None:
    """Events raised while a continue-as-new step is with the worker reach the next execution
    after its start, so none is lost and the instance does not hang."""
    client = sidecar.client
    iid = await sidecar.call(client.schedule_new_orchestration, app.tick_counter, input=[])
    await sidecar.call(client.wait_for_orchestration_start, iid, timeout=10)
    for n in range(5):
        await sidecar.call(client.raise_orchestration_event, iid, "tick", data=n)
    state = await sidecar.call(client.wait_for_orchestration_completion, iid, timeout=20)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert json.loads(state.serialized_output) == [0, 1, 2, 3, 4]


async def test_activity_failure_details_reach_the_orchestrator(sidecar: Sidecar, worker) -> None:
    state = await sidecar.run(app.catches_failure, input="kaboom")
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    # The SDK's own details (qualified type names) come back as it sent them.
    assert json.loads(state.serialized_output) == {
        "type": "builtins.ValueError", "message": "kaboom",
    }


async def test_failed_orchestration_reports_its_failure(sidecar: Sidecar, worker) -> None:
    state = await sidecar.run(app.fails, input="kaboom")
    assert state.runtime_status == OrchestrationStatus.FAILED
    details = state.failure_details
    assert details is not None
    assert details.error_type == "durabletask.task.TaskFailedError"
    assert "kaboom" in details.message
    assert details.stack_trace


class Refused(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"refused with code {code}")
        self.code = code


class FailureProperties:
    """The SDK's ExceptionPropertiesProvider: custom properties for the failures it reports."""

    def get_exception_properties(self, exc: Exception) -> dict | None:
        if isinstance(exc, Refused):
            return {"code": exc.code, "where": {"zone": "eu", "hosts": ["a", None]}}
        return None


def refuses(ctx: task.OrchestrationContext, code: int):
    raise Refused(code)


def catches_child_failure(ctx: task.OrchestrationContext, code: int):
    try:
        yield ctx.call_sub_orchestrator(refuses, input=code, instance_id=f"{ctx.instance_id}-c")
    except task.TaskFailedError as failure:
        return {"type": failure.details.error_type, "properties": failure.details.properties}
    return "no failure"


async def test_failure_properties_reach_the_parent_and_the_client(sidecar: Sidecar) -> None:
    async with sdk_worker_running(sidecar.address, [refuses, catches_child_failure], [],
                                  exception_properties_provider=FailureProperties()):
        state = await sidecar.run(catches_child_failure, input=42, instance_id="props")
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    properties = {"code": 42, "where": {"zone": "eu", "hosts": ["a", None]}}
    assert json.loads(state.serialized_output) == {
        "type": "test_sidecar_patterns.Refused", "properties": properties,
    }
    child = await sidecar.call(sidecar.client.get_orchestration_state, "props-c")
    assert child.failure_details.properties == properties
