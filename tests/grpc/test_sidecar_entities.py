"""Durable entities through the sidecar with the official Python SDK: entities run in the SDK
worker, orchestrations call, signal and lock them, the SDK client signals, gets, queries and
cleans them, and the SDK's scheduled tasks (built on entities) run."""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import trio
from durabletask import client as sdk_client
from durabletask import entities, task
from durabletask import worker as sdk_worker
from durabletask.entities import EntityInstanceId as Id
from durabletask.internal import orchestrator_service_pb2 as pb
from google.protobuf import wrappers_pb2
from sidecar_harness import Sidecar, running_sidecar, sdk_worker_running

S = sdk_client.OrchestrationStatus
LONG = "@counter@" + "k" * 92  # 101 characters: one over the limit of an instance ID


def counter(ctx: entities.EntityContext, amount: Any) -> Any:
    value = ctx.get_state(int, 0)
    if ctx.operation == "add":
        ctx.set_state(value + amount)
    elif ctx.operation == "add_then_fail":
        ctx.set_state(value + amount)
        ctx.signal_entity(Id("counter", "audit"), "add", 1)
        raise ValueError(f"refused {amount}")
    elif ctx.operation == "set":
        ctx.set_state(amount)
    elif ctx.operation == "delete":
        ctx.set_state(None)
    return ctx.get_state(int)


def text(ctx: entities.EntityContext, value: Any) -> Any:
    if ctx.operation == "set":
        ctx.set_state(value)
    elif ctx.operation == "fill":
        ctx.set_state("z" * value)
    return len(ctx.get_state(str, ""))


class Account(entities.DurableEntity):
    def deposit(self, amount: int) -> int:
        self.set_state(self.get_state(int, 0) + amount)
        return self.get_state(int)

    def notify(self, target: str) -> str:
        self.signal_entity(Id.parse(target), "add", self.get_state(int, 0))
        return self.schedule_new_orchestration("echo", input=self.get_state(int, 0),
                                               instance_id=f"echo-{self.entity_context.entity_id.key}")


def echo(ctx: task.OrchestrationContext, value: Any) -> Any:
    return value


def call(ctx: task.OrchestrationContext, request: dict[str, Any]) -> Any:
    try:
        return (yield ctx.call_entity(
            Id.parse(request["entity"]), request["op"], request.get("input")
        ))
    except task.TaskFailedError as exc:
        return {"failed": exc.details.error_type, "message": exc.details.message}


def signal_then_call(ctx: task.OrchestrationContext, key: str) -> Any:
    target = Id("counter", key)
    ctx.signal_entity(target, "add", 5)
    ctx.signal_entity(
        target, "add", 100, signal_time=ctx.current_utc_datetime + timedelta(seconds=1)
    )
    first = yield ctx.call_entity(target, "get")
    yield ctx.create_timer(timedelta(seconds=2))
    return [first, (yield ctx.call_entity(target, "get"))]


def transfer(ctx: task.OrchestrationContext, request: dict[str, Any]) -> Any:
    source, target = Id("counter", request["from"]), Id("counter", request["to"])
    with (yield ctx.lock_entities([target, source])):
        a = yield ctx.call_entity(source, "get")
        b = yield ctx.call_entity(target, "get")
        yield ctx.create_timer(timedelta(milliseconds=200))
        yield ctx.call_entity(source, "set", a - request["amount"])
        yield ctx.call_entity(target, "set", b + request["amount"])
    return "moved"


def lock_and_fail(ctx: task.OrchestrationContext, key: str) -> Any:
    with (yield ctx.lock_entities([Id("counter", key)])):
        yield ctx.call_entity(Id("counter", key), "get")
        raise RuntimeError("failed while holding the lock")


def lock_and_wait(ctx: task.OrchestrationContext, key: str) -> Any:
    with (yield ctx.lock_entities([Id("counter", key)])):
        yield ctx.wait_for_external_event("never")


ORCHESTRATORS = [echo, call, signal_then_call, transfer, lock_and_fail, lock_and_wait]


def entity_worker(
    address: str,
    *,
    scheduled_tasks: bool = False,
    extra: Iterable[Any] = (),
    filters: bool = False,
) -> AbstractAsyncContextManager[sdk_worker.TaskHubGrpcWorker]:
    return sdk_worker_running(
        address, [*ORCHESTRATORS, *extra], (),
        entities=[(counter, None), (Account, "Acct"), (text, None)],
        scheduled_tasks=scheduled_tasks, filters=filters,
    )


async def run(sidecar: Sidecar, orchestrator: Any, input: Any = None) -> Any:
    state = await sidecar.run(orchestrator, input=input, timeout=30)
    assert state.runtime_status == S.COMPLETED, state.failure_details
    return json.loads(state.serialized_output) if state.serialized_output else None


@pytest.mark.parametrize("version", [1, 2])
async def test_counter_by_signals_and_calls_in_both_work_item_forms(
    version: int, store: str | None
) -> None:
    async with running_sidecar(db=store, entity_request_version=version) as sidecar:
        async with entity_worker(sidecar.address):
            client = sidecar.client
            for n in range(1, 6):
                await sidecar.call(client.signal_entity, Id("counter", "a"), "add", n)
            assert await run(sidecar, call, {"entity": "@counter@a", "op": "get"}) == 15
            assert await run(sidecar, call, {"entity": "@counter@a", "op": "add", "input": 1}) == 16
            meta = await sidecar.call(client.get_entity, Id("counter", "a"))
            assert meta.get_state(int) == 16 and meta.backlog_queue_size == 0
            assert meta.id == Id("counter", "a") and not meta.get_locked_by()
            assert await sidecar.call(client.get_entity, Id("counter", "never")) is None


async def test_class_entity_failure_rollback_and_side_effects(store: str | None) -> None:
    async with running_sidecar(db=store) as sidecar, entity_worker(sidecar.address):
        client = sidecar.client
        assert await run(sidecar, call, {"entity": "@acct@x", "op": "deposit", "input": 30}) == 30
        failed = await run(sidecar, call, {"entity": "@acct@x", "op": "steal", "input": 1})
        assert "steal" in failed["message"]
        await sidecar.call(client.signal_entity, Id("counter", "f"), "add", 10)
        failed = await run(
            sidecar, call, {"entity": "@counter@f", "op": "add_then_fail", "input": 5}
        )
        # The SDK wraps the entity's error in its EntityOperationFailedException.
        assert failed["message"].endswith("failed with error: refused 5")
        assert await run(sidecar, call, {"entity": "@counter@f", "op": "add", "input": 1}) == 11
        assert await sidecar.call(client.get_entity, Id("counter", "audit")) is None
        # An entity signals another entity and starts an orchestration.
        assert await run(sidecar, call, {"entity": "@acct@x", "op": "notify",
                                         "input": "@counter@from-x"}) == "echo-x"
        done = await sidecar.call(client.wait_for_orchestration_completion, "echo-x", timeout=30)
        assert done.serialized_output == "30"
        assert await run(sidecar, call, {"entity": "@counter@from-x", "op": "get"}) == 30
        unknown = await run(sidecar, call, {"entity": "@nobody@1", "op": "poke"})
        assert "nobody" in unknown["message"]


async def test_scheduled_signals(store: str | None) -> None:
    async with running_sidecar(db=store) as sidecar, entity_worker(sidecar.address):
        later = datetime.now(UTC) + timedelta(seconds=1)
        await sidecar.call(
            sidecar.client.signal_entity, Id("counter", "s"), "add", 1, signal_time=later
        )
        assert await run(sidecar, signal_then_call, "s") == [5, 106]


async def test_locks_serialize_and_are_released_on_failure_and_terminate(store: str | None) -> None:
    async with running_sidecar(db=store) as sidecar, entity_worker(sidecar.address):
        client = sidecar.client
        for key in "ab":
            await sidecar.call(client.signal_entity, Id("counter", key), "set", 100)
        ids = [await sidecar.call(client.schedule_new_orchestration, transfer, input=t) for t in (
            {"from": "a", "to": "b", "amount": 10}, {"from": "b", "to": "a", "amount": 30},
            {"from": "a", "to": "b", "amount": 5})]
        for iid in ids:
            done = await sidecar.call(client.wait_for_orchestration_completion, iid, timeout=30)
            assert done.runtime_status == S.COMPLETED, done.failure_details
        a = await sidecar.call(client.get_entity, Id("counter", "a"))
        b = await sidecar.call(client.get_entity, Id("counter", "b"))
        assert (a.get_state(int), b.get_state(int)) == (115, 85)

        failed = await sidecar.run(lock_and_fail, input="f", timeout=30)
        assert failed.runtime_status == S.FAILED
        assert await run(sidecar, call, {"entity": "@counter@f", "op": "get"}) is None

        holder = await sidecar.call(client.schedule_new_orchestration, lock_and_wait, input="t")
        # lockedBy is the holding orchestration's ID (as in the Durable Task Framework); the
        # SDK's get_locked_by() parses it as an entity ID and raises, so the raw value is read.
        while not (
            (meta := await sidecar.call(client.get_entity, Id("counter", "t")))
            and meta._locked_by
        ):
            await trio.sleep(0.05)
        assert meta._locked_by == holder
        reader = await sidecar.call(client.schedule_new_orchestration, call,
                                    input={"entity": "@counter@t", "op": "add", "input": 2})
        await sidecar.call(client.terminate_orchestration, holder, output="stop")
        done = await sidecar.call(client.wait_for_orchestration_completion, reader, timeout=30)
        assert done.serialized_output == "2"


async def test_query_paging_filters_and_clean_storage(store: str | None) -> None:
    async with running_sidecar(db=store) as sidecar, entity_worker(sidecar.address):
        client = sidecar.client
        for key in "abcde":
            await run(sidecar, call, {"entity": f"@counter@{key}", "op": "add", "input": 1})
        await run(sidecar, call, {"entity": "@acct@z", "op": "deposit", "input": 2})
        query = sdk_client.EntityQuery(instance_id_starts_with="@counter@", page_size=2)
        found = await sidecar.call(client.get_all_entities, query)
        assert [str(m.id) for m in found] == [f"@counter@{k}" for k in "abcde"]
        assert all(m.get_state(int) == 1 for m in found)
        everything = await sidecar.call(client.get_all_entities,
                                        sdk_client.EntityQuery(include_state=False))
        assert len(everything) == 6 and everything[0].id == Id("acct", "z")
        cutoff = datetime.now(UTC) + timedelta(hours=1)
        assert await sidecar.call(client.get_all_entities,
                                  sdk_client.EntityQuery(last_modified_from=cutoff)) == []
        await run(sidecar, call, {"entity": "@counter@a", "op": "delete"})
        assert await sidecar.call(client.get_entity, Id("counter", "a")) is None
        result = await sidecar.call(client.clean_entity_storage)
        assert (result.empty_entities_removed, result.orphaned_locks_released) == (0, 0)


def scheduled_target(ctx: task.OrchestrationContext, input: Any) -> Any:
    return input


async def test_sdk_scheduled_tasks_run_against_the_sidecar() -> None:
    from durabletask.scheduled import ScheduleCreationOptions, ScheduledTaskClient

    async with running_sidecar() as sidecar:
        async with entity_worker(sidecar.address, scheduled_tasks=True, extra=[scheduled_target]):
            schedules = ScheduledTaskClient(sidecar.client)
            await sidecar.call(schedules.create_schedule, ScheduleCreationOptions(
                schedule_id="every-second", orchestration_name="scheduled_target",
                interval=timedelta(seconds=1), orchestration_input="tick",
            ))
            described = await sidecar.call(schedules.get_schedule, "every-second")
            assert described is not None and described.orchestration_name == "scheduled_target"
            listed = await sidecar.call(schedules.list_schedules)
            assert [d.schedule_id for d in listed] == ["every-second"]
            with trio.fail_after(30):
                while True:
                    runs = await sidecar.call(
                        sidecar.client.get_all_orchestration_states,
                        sdk_client.OrchestrationQuery(fetch_inputs_and_outputs=True),
                    )
                    ticks = [r for r in runs if r.name == "scheduled_target"
                             and r.runtime_status == S.COMPLETED]
                    if len(ticks) >= 2:
                        break
                    await trio.sleep(0.2)
            assert all(t.serialized_output == '"tick"' for t in ticks)
            await sidecar.call(schedules.get_schedule_client("every-second").delete)
            assert await sidecar.call(schedules.get_schedule, "every-second") is None


async def refused(address: str, rpc: str, request: Any) -> grpc.RpcError:
    def send() -> None:
        with grpc.insecure_channel(address) as channel:
            channel.unary_unary(f"/TaskHubSidecarService/{rpc}",
                                request_serializer=lambda m: m.SerializeToString(),
                                response_deserializer=lambda b: b)(request, timeout=5)

    with pytest.raises(grpc.RpcError) as caught:
        await trio.to_thread.run_sync(send)
    return caught.value


async def test_bad_entity_requests_are_refused_with_a_reason() -> None:
    async with running_sidecar() as sidecar:
        for rpc, request, code, reason in [
            ("SignalEntity", pb.SignalEntityRequest(instanceId="counter", name="add"),
             grpc.StatusCode.INVALID_ARGUMENT, "'counter' is not an entity ID"),
            ("SignalEntity", pb.SignalEntityRequest(instanceId="@counter@a"),
             grpc.StatusCode.INVALID_ARGUMENT, "entity operation name must not be empty"),
            ("GetEntity", pb.GetEntityRequest(instanceId="@@k"),
             grpc.StatusCode.INVALID_ARGUMENT, "entity name must be a non-empty string"),
            ("QueryEntities", pb.QueryEntitiesRequest(query=pb.EntityQuery(
                continuationToken=wrappers_pb2.StringValue(value="nope"))),
             grpc.StatusCode.INVALID_ARGUMENT, "continuation token 'nope'"),
            ("CompleteEntityTask", pb.EntityBatchResult(completionToken="unknown"),
             grpc.StatusCode.FAILED_PRECONDITION, "no entity work item"),
            ("CompleteEntityTask", pb.EntityBatchResult(),
             grpc.StatusCode.INVALID_ARGUMENT, "needs the completion token"),
            ("StartInstance", pb.CreateInstanceRequest(name="echo", instanceId="@counter@a"),
             grpc.StatusCode.INVALID_ARGUMENT, "reserves for entities"),
            ("SignalEntity", pb.SignalEntityRequest(instanceId=LONG, name="add"),
             grpc.StatusCode.INVALID_ARGUMENT, "101 characters long; the limit is 100"),
            ("SignalEntity", pb.SignalEntityRequest(instanceId="@counter@a\x1b", name="add"),
             grpc.StatusCode.INVALID_ARGUMENT, "control characters"),
            ("GetEntity", pb.GetEntityRequest(instanceId=LONG),
             grpc.StatusCode.INVALID_ARGUMENT, "101 characters long; the limit is 100"),
            ("QueryEntities", pb.QueryEntitiesRequest(query=pb.EntityQuery(
                instanceIdStartsWith=wrappers_pb2.StringValue(value=LONG))),
             grpc.StatusCode.INVALID_ARGUMENT, "no entity ID is longer than 100"),
            ("QueryEntities", pb.QueryEntitiesRequest(query=pb.EntityQuery(
                instanceIdStartsWith=wrappers_pb2.StringValue(value="@counter@\x00"))),
             grpc.StatusCode.INVALID_ARGUMENT, "control characters"),
        ]:
            error = await refused(sidecar.address, rpc, request)
            assert (error.code(), reason in error.details()) == (code, True), (rpc, error.details())
        # Abandoning an unknown entity work item changes nothing, as for the other kinds.
        await trio.to_thread.run_sync(sidecar.client._stub.AbandonTaskEntityWorkItem,
                                      pb.AbandonEntityTaskRequest(completionToken="unknown"))


async def test_entity_ids_over_the_limit_in_actions_are_refused() -> None:
    async with running_sidecar() as sidecar, entity_worker(sidecar.address):
        client = sidecar.client
        state = await sidecar.run(call, input={"entity": LONG, "op": "get"}, timeout=30)
        assert state.runtime_status == S.FAILED
        assert state.failure_details.error_type == "InvalidEntityMessage"
        assert "101 characters long; the limit is 100" in state.failure_details.message
        # An entity's signal to such an ID is dropped; the operation and its other actions stand.
        assert await run(sidecar, call, {"entity": "@acct@y", "op": "notify",
                                         "input": LONG}) == "echo-y"
        await sidecar.call(client.wait_for_orchestration_completion, "echo-y", timeout=30)
        query = sdk_client.EntityQuery(instance_id_starts_with="@counter@k", include_transient=True)
        assert await sidecar.call(client.get_all_entities, query) == []


async def test_state_of_several_mib_round_trips_through_the_sdk(store: str | None) -> None:
    size = 3 << 20  # the SDK worker receives at most 4 MiB per message by default
    async with running_sidecar(db=store) as sidecar, entity_worker(sidecar.address):
        blob = "y" * size
        await sidecar.call(sidecar.client.signal_entity, Id("text", "big"), "set", blob)
        assert await run(sidecar, call, {"entity": "@text@big", "op": "length"}) == size
        meta = await sidecar.call(sidecar.client.get_entity, Id("text", "big"))
        assert json.loads(meta.get_state()) == blob


async def test_workers_with_filters_get_only_their_entities() -> None:
    async with running_sidecar() as sidecar:
        other = sdk_worker.TaskHubGrpcWorker(host_address=sidecar.address)
        other.add_orchestrator(echo)
        other.use_work_item_filters()
        await trio.to_thread.run_sync(other.start)
        try:
            async with entity_worker(sidecar.address, filters=True):
                for n in range(20):
                    await sidecar.call(sidecar.client.signal_entity, Id("counter", "flt"), "add", n)
                total = await run(sidecar, call, {"entity": "@counter@flt", "op": "get"})
                assert total == sum(range(20))
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(other.stop)


async def test_a_batch_result_over_the_size_limit_fails_its_operations(store: str | None) -> None:
    async with (
        running_sidecar(db=store, max_message_size=64 << 10) as sidecar,
        entity_worker(sidecar.address),
    ):
        await sidecar.call(sidecar.client.signal_entity, Id("text", "t"), "set", "small")
        failed = await run(sidecar, call, {"entity": "@text@t", "op": "fill", "input": 100 << 10})
        assert "exceeds this sidecar's limit of 65536 bytes" in failed["message"]
        # The state is the one before the batch, and the entity keeps serving.
        assert await run(sidecar, call, {"entity": "@text@t", "op": "get"}) == len("small")


def sidecar_on(db: Any) -> AbstractAsyncContextManager[Sidecar]:
    return running_sidecar(
        db=db, engine_options={"max_poll_interval": 0.05, "shutdown_grace": 0})


async def test_entities_survive_a_sidecar_restart(tmp_path: Any) -> None:
    db = tmp_path / "sidecar.sqlite3"
    async with sidecar_on(db) as sidecar, entity_worker(sidecar.address):
        assert await run(sidecar, call, {"entity": "@counter@kept", "op": "add", "input": 4}) == 4
        holder = await sidecar.call(sidecar.client.schedule_new_orchestration, lock_and_wait,
                                    input="locked")
        while not ((meta := await sidecar.call(sidecar.client.get_entity, Id("counter", "locked")))
                   and meta._locked_by):
            await trio.sleep(0.05)
    async with sidecar_on(db) as sidecar, entity_worker(sidecar.address):
        meta = await sidecar.call(sidecar.client.get_entity, Id("counter", "kept"))
        assert meta.get_state(int) == 4
        locked = await sidecar.call(sidecar.client.get_entity, Id("counter", "locked"))
        assert locked._locked_by == holder
        assert await run(sidecar, call, {"entity": "@counter@kept", "op": "add", "input": 1}) == 5
        await sidecar.call(sidecar.client.terminate_orchestration, holder)
        await sidecar.call(sidecar.client.wait_for_orchestration_completion, holder, timeout=30)
        assert await run(sidecar, call, {"entity": "@counter@locked", "op": "add", "input": 1}) == 1


async def test_an_entity_work_item_over_the_size_limit_fails_its_operations(
    store: str | None,
) -> None:
    async with running_sidecar(db=store, max_work_item_size=64 << 10) as sidecar:
        async with entity_worker(sidecar.address):
            assert await run(sidecar, call, {"entity": "@text@w", "op": "fill",
                                             "input": 100 << 10}) == 100 << 10
            # Its state no longer fits in a work item: its operations fail, nothing is sent.
            failed = await run(sidecar, call, {"entity": "@text@w", "op": "get"})
            assert "the work item for entity @text@w with its state is" in failed["message"]
            meta = await sidecar.call(sidecar.client.get_entity, Id("text", "w"))
            assert len(json.loads(meta.get_state())) == 100 << 10
