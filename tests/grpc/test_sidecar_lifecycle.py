"""The lifecycle RPCs, driven by the official durabletask SDK client and worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
import sdk_lifecycle_app as app
import trio
from durabletask.client import OrchestrationQuery, OrchestrationStatus
from sidecar_harness import Sidecar, running_sidecar, sdk_worker_running

S = OrchestrationStatus


@pytest.fixture
async def sidecar(store: str | None) -> AsyncIterator[Sidecar]:
    """The sidecar on each store: these RPCs' behaviour rests on storage."""
    app.attempts.clear()  # the activities' attempts so far, counted across stores otherwise
    async with running_sidecar(db=store) as running:
        yield running


@pytest.fixture
async def worker(sidecar: Sidecar) -> AsyncIterator[None]:
    async with sdk_worker_running(sidecar.address, app.ORCHESTRATORS, app.ACTIVITIES):
        yield


async def status_of(sidecar: Sidecar, iid: str):
    state = await sidecar.call(sidecar.client.get_orchestration_state, iid)
    return state.runtime_status if state else None


async def wait_for(
    sidecar: Sidecar, iid: str, status: OrchestrationStatus, timeout: float = 20
) -> None:
    with trio.fail_after(timeout):
        while await status_of(sidecar, iid) != status:
            await trio.sleep(0.05)


async def test_suspend_resume_and_custom_status(sidecar: Sidecar, worker) -> None:
    client = sidecar.client
    iid = await sidecar.call(client.schedule_new_orchestration, app.waits)
    await wait_for(sidecar, iid, S.RUNNING)
    await sidecar.call(client.suspend_orchestration, iid, reason="maintenance")
    await wait_for(sidecar, iid, S.SUSPENDED)
    await sidecar.call(client.raise_orchestration_event, iid, "value", data=42)
    await trio.sleep(0.5)
    held = await sidecar.call(client.get_orchestration_state, iid)
    assert held.runtime_status == S.SUSPENDED
    assert held.serialized_custom_status == '{"stage": "waiting"}'
    await sidecar.call(client.resume_orchestration, iid, reason="done")
    state = await sidecar.call(client.wait_for_orchestration_completion, iid, timeout=20)
    assert state.runtime_status == S.COMPLETED and state.serialized_output == "42"


async def test_suspend_resume_unknown_instance_is_not_found(sidecar: Sidecar) -> None:
    for call in (sidecar.client.suspend_orchestration, sidecar.client.resume_orchestration):
        with pytest.raises(grpc.RpcError) as caught:
            await sidecar.call(call, "nobody")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_terminate_recursive_and_unknown(sidecar: Sidecar, worker) -> None:
    client = sidecar.client
    await sidecar.call(client.schedule_new_orchestration, app.tree, input=2, instance_id="t")
    await wait_for(sidecar, "t:0001:0001", S.RUNNING)
    await sidecar.call(client.terminate_orchestration, "t", output="stop", recursive=True)
    for iid in ("t", "t:0001", "t:0001:0001"):
        state = await sidecar.call(client.wait_for_orchestration_completion, iid, timeout=20)
        assert state.runtime_status == S.TERMINATED, iid
        assert state.serialized_output == '"stop"'
    # Unknown or finished instances: a no-op, as the protocol expects.
    await sidecar.call(client.terminate_orchestration, "nobody")
    await sidecar.call(client.terminate_orchestration, "t", output="again")
    assert (await sidecar.call(client.get_orchestration_state, "t")).serialized_output == '"stop"'


async def test_purge_by_id_recursive_and_by_filter(sidecar: Sidecar, worker) -> None:
    client = sidecar.client
    await sidecar.call(client.schedule_new_orchestration, app.tree, input=1, instance_id="p")
    await wait_for(sidecar, "p:0001", S.RUNNING)
    running = await sidecar.call(client.purge_orchestration, "p")
    assert running.deleted_instance_count == 0
    await sidecar.call(client.terminate_orchestration, "p", recursive=True)
    await sidecar.call(client.wait_for_orchestration_completion, "p:0001", timeout=20)
    purged = await sidecar.call(client.purge_orchestration, "p", recursive=True)
    assert purged.deleted_instance_count == 2 and purged.is_complete
    assert await sidecar.call(client.get_orchestration_state, "p:0001") is None
    assert (await sidecar.call(client.purge_orchestration, "nobody")).deleted_instance_count == 0

    for i in range(3):
        await sidecar.run(app.quick, input=i, instance_id=f"f{i}")
    live = await sidecar.call(client.schedule_new_orchestration, app.waits)
    by = await sidecar.call(client.purge_orchestrations_by,
                            created_time_from=datetime(2000, 1, 1, tzinfo=UTC),
                            runtime_status=[S.COMPLETED])
    assert by.deleted_instance_count == 3
    assert await status_of(sidecar, live) in (S.PENDING, S.RUNNING)


async def test_query_paging_and_list_instance_ids(sidecar: Sidecar, worker) -> None:
    client = sidecar.client
    ids = [f"q{i:03d}" for i in range(25)]
    for iid in ids:
        await sidecar.call(client.schedule_new_orchestration, app.quick, input=iid, instance_id=iid)
    for iid in ids:
        await sidecar.call(client.wait_for_orchestration_completion, iid, timeout=20)
    everything = await sidecar.call(client.get_all_orchestration_states, OrchestrationQuery(
        max_instance_count=7, instance_id_prefix="q", fetch_inputs_and_outputs=True))
    assert sorted(s.instance_id for s in everything) == ids
    assert all(s.serialized_output == f'"{s.instance_id}"' for s in everything)
    seen, token = [], None
    while True:
        page = await sidecar.call(client.list_instance_ids, runtime_status=[S.COMPLETED],
                                  page_size=10, continuation_token=token)
        seen += page.items
        token = page.continuation_token
        if not token:
            break
    assert sorted(seen) == ids and len(seen) == len(set(seen))


async def test_restart_and_rewind(sidecar: Sidecar, worker) -> None:
    client = sidecar.client
    app.attempts.clear()
    first = await sidecar.run(app.quick, input={"x": 1}, instance_id="rs")
    same = await sidecar.call(client.restart_orchestration, "rs")
    again = await sidecar.call(client.wait_for_orchestration_completion, same, timeout=20)
    other = await sidecar.call(
        client.restart_orchestration, "rs", restart_with_new_instance_id=True
    )
    assert same == "rs" and other != "rs" and again.serialized_output == first.serialized_output

    failed = await sidecar.run(app.fails_once_in_the_middle, input="w", instance_id="rw")
    assert failed.runtime_status == S.FAILED
    await sidecar.call(client.rewind_orchestration, "rw", reason="retry it")
    second = await sidecar.call(client.wait_for_orchestration_completion, "rw", timeout=20)
    assert second.runtime_status == S.FAILED  # flaky fails twice
    await sidecar.call(client.rewind_orchestration, "rw")
    done = await sidecar.call(client.wait_for_orchestration_completion, "rw", timeout=20)
    assert done.runtime_status == S.COMPLETED
    assert done.serialized_output == '["w-first", "w ok after 3"]'
    assert app.attempts["echo:w-first"] == 1

    waiting = await sidecar.call(client.schedule_new_orchestration, app.waits, input="in")
    await wait_for(sidecar, waiting, S.RUNNING)
    copy = await sidecar.call(
        client.restart_orchestration, waiting, restart_with_new_instance_id=True
    )
    assert copy != waiting
    await sidecar.call(client.raise_orchestration_event, copy, "value", data="copied")
    done = await sidecar.call(client.wait_for_orchestration_completion, copy, timeout=20)
    assert (done.serialized_input, done.serialized_output) == ('"in"', '"copied"')
    assert await status_of(sidecar, waiting) == S.RUNNING
    for call, kwargs in ((client.restart_orchestration, {}), (client.rewind_orchestration, {})):
        with pytest.raises(grpc.RpcError) as caught:
            await sidecar.call(call, waiting, **kwargs)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as caught:
            await sidecar.call(call, "nobody", **kwargs)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_retries_and_versions(sidecar: Sidecar, worker) -> None:
    app.attempts.clear()
    assert (await sidecar.run(app.retries, input="a")).serialized_output == '"a ok after 3"'
    child = await sidecar.run(app.retries_child, input="b", instance_id="rc")
    assert child.serialized_output == '"b ok after 3"'
    state = await sidecar.run(app.versioned, version="1.2.3")
    assert state.serialized_output == '"1.2.3"'


async def test_stream_instance_history(sidecar: Sidecar, worker) -> None:
    client = sidecar.client
    await sidecar.run(app.retries, input="h", instance_id="hist")
    events = await sidecar.call(client.get_orchestration_history, "hist")
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "OrchestratorStartedEvent" and "ExecutionStartedEvent" in kinds
    assert kinds.count("TaskFailedEvent") == 2 and "ExecutionCompletedEvent" in kinds
    with pytest.raises(grpc.RpcError) as caught:
        await sidecar.call(client.get_orchestration_history, "nobody")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
