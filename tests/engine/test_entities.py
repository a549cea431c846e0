"""Durable entities in process under MockClock on SQLite: function and class entities, signals
and calls, failures rolled back, entities signalling entities and starting orchestrations,
scheduled signals, get, query, clean storage."""

from datetime import timedelta

import pytest
import trio

import dtrio
from dtrio import EntityId
from dtrio import _pb as pb
from dtrio import history as h
from dtrio.events import StoredEvent
from dtrio.state import Message, to_us
from dtrio.testing import open_test_engine

S = dtrio.OrchestrationStatus
registry = dtrio.Registry()


@registry.entity
async def counter(ctx: dtrio.EntityContext, amount):
    value = ctx.get_state(0)
    if ctx.operation == "add":
        ctx.set_state(value + amount)
    elif ctx.operation == "add_then_fail":
        ctx.set_state(value + amount)
        ctx.signal_entity(EntityId("counter", "audit"), "add", 1)
        raise ValueError(f"refused {amount}")
    elif ctx.operation == "reset":
        ctx.delete_state()
    return ctx.get_state()


@registry.entity(name="Account")
class BankAccount(dtrio.DurableEntity):
    def deposit(self, amount):
        self.set_state(self.get_state(0) + amount)
        return self.get_state()

    async def balance(self):
        return self.get_state(0)

    def notify(self, target):
        """Signals another entity and starts an orchestration with its balance."""
        self.ctx.signal_entity(target, "add", self.get_state(0))
        return self.ctx.schedule_new_orchestration(
            "record_balance", input=self.get_state(0),
            instance_id=f"record-{self.ctx.entity_id.key}",
        )


@registry.orchestrator
async def record_balance(ctx, balance):
    return f"balance was {balance}"


@registry.orchestrator
async def call(ctx, request):
    """Calls one entity operation and returns its result (or the failure's details)."""
    try:
        return await ctx.call_entity(request["entity"], request["op"], request.get("input"))
    except dtrio.TaskFailedError as exc:
        return {"failed": exc.details.error_type, "message": exc.details.message}


@registry.orchestrator
async def call_later(ctx, request):
    await ctx.create_timer(timedelta(hours=request["hours"]))
    return await ctx.call_entity(request["entity"], request["op"], request.get("input"))


@registry.orchestrator
async def signal_then_call(ctx, key):
    ctx.signal_entity(EntityId("counter", key), "add", 5)
    ctx.signal_entity(EntityId("counter", key), "add", 100, signal_time=timedelta(hours=1))
    first = await ctx.call_entity(EntityId("counter", key), "get")
    await ctx.create_timer(timedelta(hours=2))
    return [first, await ctx.call_entity(EntityId("counter", key), "get")]


async def run(engine, orchestrator, input=None):
    iid = await engine.client.schedule_new_orchestration(orchestrator, input=input)
    state = await engine.client.wait_for_orchestration_completion(iid, timeout=timedelta(days=1))
    assert state.runtime_status == S.COMPLETED, state.failure_details
    return state.output


async def test_counter_by_signals_and_calls(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        for n in range(1, 6):
            await engine.client.signal_entity(EntityId("counter", "a"), "add", n)
        # A call arrives after the signals, so it sees all of them.
        assert await run(engine, call, {"entity": "@counter@a", "op": "get"}) == 15
        assert await run(engine, call, {"entity": "@Counter@a", "op": "add", "input": 1}) == 16
        meta = await engine.client.get_entity(EntityId("counter", "a"))
        assert meta is not None and meta.state == 16 and meta.backlog_queue_size == 0
        assert meta.id == EntityId("counter", "a") and meta.locked_by is None
        without = await engine.client.get_entity("@counter@a", include_state=False)
        assert without.serialized_state is None and not without.includes_state


async def test_class_entity_with_custom_name_and_delete(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        assert await run(engine, call, {"entity": "@account@x", "op": "deposit", "input": 30}) == 30
        assert await run(engine, call, {"entity": "@ACCOUNT@x", "op": "balance"}) == 30
        missing = await run(engine, call, {"entity": "@account@x", "op": "steal", "input": 1})
        assert missing["failed"] == "AttributeError"
        assert "no operation 'steal'" in missing["message"]
        assert await run(engine, call, {"entity": "@account@x", "op": "delete"}) is None
        assert await engine.client.get_entity("@account@x") is None


async def test_failed_operation_is_rolled_back_and_entity_keeps_serving(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        await engine.client.signal_entity("@counter@f", "add", 10)
        failed = await run(
            engine, call, {"entity": "@counter@f", "op": "add_then_fail", "input": 5}
        )
        assert failed == {"failed": "ValueError", "message": "refused 5"}
        # The state change and the signal of the failed operation were discarded.
        assert await run(engine, call, {"entity": "@counter@f", "op": "add", "input": 1}) == 11
        assert await engine.client.get_entity("@counter@audit") is None


async def test_entity_signals_entity_and_starts_orchestration(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        await engine.client.signal_entity("@account@n", "deposit", 7)
        assert await run(engine, call, {"entity": "@account@n", "op": "notify",
                                        "input": "@counter@from-n"}) == "record-n"
        done = await engine.client.wait_for_orchestration_completion("record-n", timeout=60)
        assert done.output == "balance was 7"
        assert await run(engine, call, {"entity": "@counter@from-n", "op": "get"}) == 7


async def test_scheduled_signals_from_client_and_orchestration(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        start = engine.clock.now_dt()
        await engine.client.signal_entity(
            "@counter@s", "add", 1, signal_time=start + timedelta(hours=3)
        )
        assert await run(engine, signal_then_call, "s") == [5, 105]
        later = {"hours": 4, "entity": "@counter@s", "op": "get"}
        assert await run(engine, call_later, later) == 106


async def test_unknown_entity_fails_its_operations_and_is_not_stuck(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        await engine.client.signal_entity("@nobody@1", "poke")
        failed = await run(engine, call, {"entity": "@nobody@1", "op": "poke"})
        assert failed["failed"] == "EntityNotRegistered"
        assert "entity 'nobody' is not registered" in failed["message"]
        assert await engine.client.get_entity("@nobody@1") is None
        page = await engine.client.query_entities(include_transient=True)
        assert page.entities == []


async def test_get_missing_and_bad_ids(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        assert await engine.client.get_entity(EntityId("counter", "never")) is None
        with pytest.raises(dtrio.InvalidInput, match="not an entity ID"):
            await engine.client.signal_entity("counter", "add", 1)
        with pytest.raises(dtrio.InvalidInput, match="must not contain '@'"):
            EntityId("a@b", "k")
        with pytest.raises(dtrio.InvalidInput, match="reserves for entities"):
            await engine.client.schedule_new_orchestration(call, instance_id="@counter@x")


async def test_query_paging_filters_and_clean_storage(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        for key in "abcde":
            await run(engine, call, {"entity": f"@counter@{key}", "op": "add", "input": 1})
        await run(engine, call, {"entity": "@account@z", "op": "deposit", "input": 2})
        await trio.sleep(60)  # the mock clock moves only while everything waits
        middle = engine.clock.now_dt()
        for key in "fg":
            await run(engine, call, {"entity": f"@counter@{key}", "op": "add", "input": 1})
        client = engine.client
        seen, token = [], None
        while True:
            page = await client.query_entities(
                name="counter", page_size=3, continuation_token=token
            )
            assert len(page.entities) <= 3
            seen += [str(m.id) for m in page.entities]
            token = page.continuation_token
            if token is None:
                break
        assert seen == [f"@counter@{k}" for k in "abcdefg"]
        everything = await client.query_entities(include_state=True)
        assert [(str(m.id), m.state) for m in everything.entities][0] == ("@account@z", 2)
        recent = await client.query_entities(last_modified_from=middle)
        assert [str(m.id) for m in recent.entities] == ["@counter@f", "@counter@g"]
        older = await client.query_entities(last_modified_to=middle, instance_id_prefix="@counter@")
        assert [m.id.key for m in older.entities] == list("abcde")
        assert all(m.serialized_state is None for m in older.entities)
        with pytest.raises(dtrio.InvalidInput, match="continuation token"):
            await client.query_entities(continuation_token="garbage")
        await run(engine, call, {"entity": "@counter@a", "op": "reset"})
        assert await client.get_entity("@counter@a") is None
        cleaned = await client.clean_entity_storage()
        assert (cleaned.empty_entities_removed, cleaned.orphaned_locks_released) == (0, 0)
        assert len((await client.query_entities()).entities) == 7


slow_registry = dtrio.Registry()


@slow_registry.entity
async def slow(ctx, seconds):
    await trio.sleep(seconds)  # an operation awaiting I/O for longer than a lease
    ctx.set_state(ctx.get_state(0) + 1)
    return ctx.get_state()


@slow_registry.orchestrator
async def call_slow(ctx, seconds):
    return await ctx.call_entity("@slow@1", "wait", seconds)


async def test_a_slow_operation_keeps_its_lease(autojump_clock, caplog, store):
    # Polling, so that an expired lease would be seen and the batch run a second time.
    async with open_test_engine(
        slow_registry, orchestration_lease=10, max_poll_interval=1
    ) as engine:
        iid = await engine.client.schedule_new_orchestration(call_slow, input=45)
        state = await engine.client.wait_for_orchestration_completion(iid, timeout=600)
        assert state.output == 1
        assert (await engine.client.get_entity("@slow@1")).state == 1
    assert not [r for r in caplog.records if "lost" in r.getMessage()]


async def test_entity_ids_are_held_to_the_limits_of_instance_ids(autojump_clock, store):
    long_key = "k" * 92  # "@counter@" and the key: 101 characters, one over the limit
    async with open_test_engine(registry, db=store) as engine:
        client = engine.client
        with pytest.raises(dtrio.InvalidInput, match="101 characters long; the limit is 100"):
            EntityId("counter", long_key)
        for attempt in (client.signal_entity(f"@counter@{long_key}", "add", 1),
                        client.get_entity(f"@counter@{long_key}"),
                        client.query_entities(name="c" * 99)):
            with pytest.raises(dtrio.InvalidInput, match="characters long; the limit is 100"):
                await attempt
        with pytest.raises(dtrio.InvalidInput, match="no entity ID is longer than 100"):
            await client.query_entities(instance_id_prefix="@counter@" + long_key)
        with pytest.raises(dtrio.InvalidInput, match="control characters"):
            await client.query_entities(instance_id_prefix="@counter@\n")
        iid = await client.schedule_new_orchestration(
            call, input={"entity": f"@counter@{long_key}", "op": "get"})
        state = await client.wait_for_orchestration_completion(iid, timeout=60)
        assert state.runtime_status == S.FAILED
        assert "101 characters long" in state.failure_details.message
        # An entity's signal to such an ID fails its operation; what it did not send stands.
        await client.signal_entity("@account@ann", "deposit", 5)
        failed = await run(engine, call, {"entity": "@account@ann", "op": "notify",
                                          "input": f"@counter@{long_key}"})
        assert failed["failed"] == "InvalidInput" and "101 characters long" in failed["message"]
        assert (await client.query_entities(instance_id_prefix="@counter@k")).entities == []


async def test_an_entity_stored_before_the_length_limit_stays_usable(autojump_clock, store):
    # Stores written before the limit may hold longer IDs: their entities still run and list.
    old_id = "@counter@" + "k" * 92
    async with open_test_engine(registry, db=store) as engine:
        now = engine.clock.now_dt()
        signal = h.event(now, entity_operation_signaled=pb.EntityOperationSignaledEvent(
            request_id="r1", operation="add", input="3", target_instance_id=old_id))
        await engine.backend.send_entity_message(
            Message(old_id, StoredEvent.of(signal), to_us(now)))
        with trio.fail_after(3600):
            while not (page := await engine.client.query_entities(include_state=True)).entities:
                await trio.sleep(1)
    assert [(str(e.id), e.state) for e in page.entities] == [(old_id, 3)]


@registry.orchestrator
async def child_with_an_entity_id(ctx, _):
    return await ctx.call_sub_orchestrator(record_balance, input=1, instance_id="@sub@1")


async def test_a_sub_orchestration_may_not_take_an_entity_id(autojump_clock, store):
    # Everything sent to it would land in an entity's inbox: the parent would wait for ever.
    async with open_test_engine(registry, db=store) as engine:
        iid = await engine.client.schedule_new_orchestration(child_with_an_entity_id)
        state = await engine.client.wait_for_orchestration_completion(iid, timeout=60)
        assert state.runtime_status == S.FAILED
        assert "reserves for entities" in state.failure_details.message
        assert await engine.client.get_entity("@sub@1") is None


async def test_client_signals_take_a_delay_and_queries_any_name_case(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        client = engine.client
        await client.signal_entity("@Counter@later", "add", 2, signal_time=timedelta(minutes=5))
        await trio.sleep(60)
        assert await client.get_entity("@counter@later") is None
        await trio.sleep(300)
        assert (await client.get_entity("@counter@later")).state == 2
        for prefix in ("@Counter@", "@COUNTER@lat", "@counter"):
            page = await client.query_entities(instance_id_prefix=prefix)
            assert [str(e.id) for e in page.entities] == ["@counter@later"], prefix
        with pytest.raises(dtrio.InvalidInput, match=r"signal_time=...\) takes a timezone-aware "
                           "datetime, a timedelta or seconds .int or float., not str '300'"):
            await client.signal_entity("@counter@later", "add", 1, signal_time="300")


@registry.orchestrator
async def sends_an_event_to_an_entity(ctx, _):
    ctx.send_event("@counter@x", "go")


async def test_an_event_sent_to_an_entity_is_refused_at_the_call(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        iid = await engine.client.schedule_new_orchestration(sends_an_event_to_an_entity)
        state = await engine.client.wait_for_orchestration_completion(iid, timeout=60)
        assert state.runtime_status == S.FAILED
        assert "ctx.signal_entity" in state.failure_details.message
