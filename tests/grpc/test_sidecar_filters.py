"""Work-item filters: a worker gets only the orchestrations and activities it asked for, and
work no connected worker takes waits, unleased, for one that does."""

from __future__ import annotations

import json

import trio
from durabletask import task
from durabletask.client import OrchestrationStatus
from durabletask.internal import orchestrator_service_pb2 as pb
from google.protobuf import wrappers_pb2
from raw_worker import RawWorker
from sidecar_harness import Sidecar, running_sidecar, sdk_worker_running


def act_a(ctx: task.ActivityContext, n: int) -> str:
    return f"a{n}"


def act_b(ctx: task.ActivityContext, n: int) -> str:
    return f"b{n}"


def on_a(ctx: task.OrchestrationContext, n: int):
    return (yield ctx.call_activity(act_a, input=n))


def on_b(ctx: task.OrchestrationContext, n: int):
    return (yield ctx.call_activity(act_b, input=n))


def a_then_b(ctx: task.OrchestrationContext, n: int):
    """Runs on the worker that has only `act_a`; its second activity runs on the other."""
    first = yield ctx.call_activity(act_a, input=n)
    second = yield ctx.call_activity("act_b", input=n)
    return [first, second]


async def test_two_workers_get_only_what_they_registered(sidecar: Sidecar) -> None:
    client = sidecar.client
    async with (
        sdk_worker_running(sidecar.address, [on_a, a_then_b], [act_a], filters=True),
        sdk_worker_running(sidecar.address, [on_b], [act_b], filters=True),
    ):
        started = []
        for n in range(4):
            for orchestrator in (on_a, on_b, a_then_b):
                iid = await sidecar.call(client.schedule_new_orchestration, orchestrator, input=n)
                started.append((orchestrator, n, iid))
        for orchestrator, n, iid in started:
            state = await sidecar.call(client.wait_for_orchestration_completion, iid, timeout=15)
            # An orchestrator or activity handed to a worker without it would fail.
            assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
            expected = {on_a: f"a{n}", on_b: f"b{n}", a_then_b: [f"a{n}", f"b{n}"]}
            assert json.loads(state.serialized_output) == expected[orchestrator]


def filters(orchestrations: dict[str, list[str]], activities: dict[str, list[str]]):
    return pb.WorkItemFilters(
        orchestrations=[pb.OrchestrationFilter(name=n, versions=v)
                        for n, v in orchestrations.items()],
        activities=[pb.ActivityFilter(name=n, versions=v) for n, v in activities.items()],
    )


async def test_work_no_worker_takes_stays_unleased_until_one_does(sidecar: Sidecar) -> None:
    client = sidecar.client
    iid = await sidecar.call(client.schedule_new_orchestration, "o")
    picky = RawWorker(sidecar.address, workItemFilters=filters({"o": []}, {"x": []}))
    try:
        item = await picky.next("orchestratorRequest")
        await picky.call("CompleteOrchestratorTask", pb.OrchestratorResponse(
            instanceId=iid, completionToken=item.completionToken,
            actions=[pb.OrchestratorAction(id=1, scheduleTask=pb.ScheduleTaskAction(
                name="y", input=wrappers_pb2.StringValue(value="1")))]))
        assert await picky.nothing_for(0.5, "activityRequest")
        # Never leased meanwhile: the first lease of it is this one.
        [activity] = await sidecar.engine.backend.lease_activities("probe", 10, 1_000_000)
        assert (activity.name, activity.attempt) == ("y", 1)
        await sidecar.engine.backend.abandon_activity(activity, 0)

        taker = RawWorker(sidecar.address, workItemFilters=filters({}, {"y": []}))
        try:
            handed = await taker.next("activityRequest")
            assert handed.activityRequest.name == "y"
        finally:
            taker.close()
    finally:
        picky.close()


async def test_versions_listed_in_a_filter_are_the_only_ones_taken(sidecar: Sidecar) -> None:
    start = sidecar.client.schedule_new_orchestration
    old = await sidecar.call(start, "v", version="1")
    new = await sidecar.call(start, "v", version="2")
    unversioned = await sidecar.call(start, "v")
    v2 = RawWorker(sidecar.address, workItemFilters=filters({"v": ["2"]}, {}))
    try:
        item = await v2.next("orchestratorRequest")
        assert item.orchestratorRequest.instanceId == new
        assert await v2.nothing_for(0.3, "orchestratorRequest")
        blank = RawWorker(sidecar.address, workItemFilters=filters({"v": [""]}, {}))
        try:
            item = await blank.next("orchestratorRequest")
            assert item.orchestratorRequest.instanceId == unversioned
        finally:
            blank.close()
    finally:
        v2.close()
    anyone = RawWorker(sidecar.address)
    try:
        # The version-1 step, which neither filtered worker took, goes to one that takes all
        # (with the steps those two gave back when they left).
        handed = set()
        while old not in handed:
            handed.add((await anyone.next("orchestratorRequest")).orchestratorRequest.instanceId)
        assert handed <= {old, new, unversioned}
    finally:
        anyone.close()


async def test_a_full_filtered_worker_gets_more_as_soon_as_it_has_room(sidecar: Sidecar) -> None:
    start = sidecar.client.schedule_new_orchestration
    first = await sidecar.call(start, "a")
    second = await sidecar.call(start, "a")
    only_a = RawWorker(sidecar.address, maxConcurrentOrchestrationWorkItems=1,
                       workItemFilters=filters({"a": []}, {}))
    # Has room, but takes none of this work: the dispatcher serves it, then waits.
    only_b = RawWorker(sidecar.address, workItemFilters=filters({"b": []}, {}))
    try:
        item = await only_a.next("orchestratorRequest")
        assert item.orchestratorRequest.instanceId == first
        assert await only_a.nothing_for(0.3, "orchestratorRequest")
        await only_a.call("AbandonTaskOrchestratorWorkItem", pb.AbandonOrchestrationTaskRequest(
            completionToken=item.completionToken))
        # Its room back: the waiting "a" work goes to it (the abandoned one waits its backoff).
        item = await only_a.next("orchestratorRequest", timeout=3)
        assert item.orchestratorRequest.instanceId == second
        assert await only_b.nothing_for(0.1, "orchestratorRequest")
    finally:
        only_a.close()
        only_b.close()


def test_filters_as_requested() -> None:
    from dtrio import _pb as ours
    from dtrio.grpc.filters import work_item_filters

    assert work_item_filters(ours.GetWorkItemsRequest()) == {
        "orchestration": None, "activity": None, "entity": None}
    request = ours.GetWorkItemsRequest(work_item_filters=ours.WorkItemFilters(
        orchestrations=[ours.OrchestrationFilter(name="o", versions=["1"]),
                        ours.OrchestrationFilter(name="o", versions=["2"]),
                        ours.OrchestrationFilter(name="p", versions=["1"]),
                        ours.OrchestrationFilter(name="p")],
        entities=[ours.EntityFilter(name="Counter")],
    ))
    assert work_item_filters(request) == {
        "orchestration": frozenset({("o", frozenset({"1", "2"})), ("p", frozenset())}),
        "activity": frozenset(),  # filters, but no activities: takes none
        "entity": frozenset({"counter"}),  # entity names are case-insensitive
    }


def orchestrations_named(name: str) -> pb.WorkItemFilters:
    return pb.WorkItemFilters(orchestrations=[pb.OrchestrationFilter(name=name)])


async def test_workers_with_filters_take_turns_when_the_sidecar_limit_is_short(caplog) -> None:
    # With two steps out at most, worker A's steady stream of work must not keep b0 waiting.
    caplog.set_level("INFO", logger="dtrio.grpc")
    async with running_sidecar(engine_options={"max_concurrent_orchestrations": 2}) as sidecar:
        start = sidecar.client.schedule_new_orchestration
        a = RawWorker(sidecar.address, workItemFilters=orchestrations_named("a"))
        b = None
        try:
            for i in range(2):
                await sidecar.call(start, "a", instance_id=f"a{i}")
            held = [await a.next("orchestratorRequest") for _ in range(2)]
            # Connected second, so B's names come second in the streams' order.
            b = RawWorker(sidecar.address, workItemFilters=orchestrations_named("b"))
            with trio.fail_after(10):
                while "(2 connected)" not in caplog.text:
                    await trio.sleep(0.02)
            await sidecar.call(start, "b", instance_id="b0")
            await sidecar.call(start, "a", instance_id="a2")
            first = held.pop(0)
            await a.call("CompleteOrchestratorTask", pb.OrchestratorResponse(
                instanceId=first.orchestratorRequest.instanceId,
                completionToken=first.completionToken,
                actions=[pb.OrchestratorAction(id=1, completeOrchestration=(
                    pb.CompleteOrchestrationAction(
                        orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED)))]))
            # The freed slot goes to the names served longest ago: B's, never served.
            item = await b.next("orchestratorRequest")
            assert item.orchestratorRequest.instanceId == "b0"
        finally:
            a.close()
            if b is not None:
                b.close()
