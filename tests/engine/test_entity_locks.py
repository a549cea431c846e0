"""Critical sections under MockClock: locks taken in one global order, other work waiting while
an entity is locked, and locks released at the section's end, on failure and on terminate."""

from datetime import timedelta

import pytest
import trio

import dtrio
from dtrio import EntityId
from dtrio.testing import open_test_engine

S = dtrio.OrchestrationStatus
registry = dtrio.Registry()


@registry.entity
async def account(ctx, amount):
    if ctx.operation == "set":
        ctx.set_state(amount)
    return ctx.get_state(0)


@registry.orchestrator
async def transfer(ctx, request):
    """Moves money between two accounts with a read, a timer and a write: without the locks,
    two transfers would interleave and lose an update."""
    source, target = EntityId("account", request["from"]), EntityId("account", request["to"])
    async with ctx.lock_entities([target, source]) as section:
        assert [str(e) for e in section.entities] == sorted([str(source), str(target)])
        a = await ctx.call_entity(source, "get")
        b = await ctx.call_entity(target, "get")
        await ctx.create_timer(timedelta(minutes=request.get("pause", 1)))
        await ctx.call_entity(source, "set", a - request["amount"])
        await ctx.call_entity(target, "set", b + request["amount"])
    return "moved"


@registry.orchestrator
async def lock_and_fail(ctx, key):
    async with ctx.lock_entities([EntityId("account", key)]):
        await ctx.call_entity(EntityId("account", key), "get")
        raise RuntimeError("failed while holding the lock")


@registry.orchestrator
async def lock_and_wait(ctx, key):
    await ctx.lock_entities([EntityId("account", key)])
    await ctx.wait_for_external_event("never")


@registry.orchestrator
async def read(ctx, key):
    return await ctx.call_entity(EntityId("account", key), "get")


@registry.orchestrator
async def misuse(ctx, case):
    async with ctx.lock_entities(["@account@m1"]):
        if case == "call other":
            await ctx.call_entity("@account@m2", "get")
        elif case == "signal locked":
            ctx.signal_entity("@account@m1", "set", 1)
        elif case == "nested":
            ctx.lock_entities(["@account@m2"])
    return "unreachable"


@registry.orchestrator
async def call_before_grant(ctx, _):
    ctx.lock_entities(["@account@g"])
    await ctx.call_entity("@account@g", "get")


async def finish(engine, iid):
    return await engine.client.wait_for_orchestration_completion(iid, timeout=timedelta(days=1))


async def test_contending_transfers_are_serialized(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        client = engine.client
        await client.signal_entity("@account@a", "set", 100)
        await client.signal_entity("@account@b", "set", 100)
        ids = [
            await client.schedule_new_orchestration(
                transfer, input={"from": "a", "to": "b", "amount": 10}
            ),
            await client.schedule_new_orchestration(
                transfer, input={"from": "b", "to": "a", "amount": 30}
            ),
            await client.schedule_new_orchestration(
                transfer, input={"from": "a", "to": "b", "amount": 5}
            ),
        ]
        for iid in ids:
            assert (await finish(engine, iid)).runtime_status == S.COMPLETED
        a, b = await client.get_entity("@account@a"), await client.get_entity("@account@b")
        assert (a.state, b.state) == (100 - 10 + 30 - 5, 100 + 10 - 30 + 5)
        assert a.locked_by is None and b.locked_by is None


async def test_lock_is_released_when_the_orchestration_fails(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        failed = await finish(
            engine, await engine.client.schedule_new_orchestration(lock_and_fail, input="f")
        )
        assert failed.runtime_status == S.FAILED
        assert "failed while holding the lock" in failed.failure_details.message
        state = await finish(
            engine, await engine.client.schedule_new_orchestration(read, input="f")
        )
        assert state.output == 0
        assert (await engine.client.get_entity("@account@f")) is None


async def test_lock_is_released_when_the_orchestration_is_terminated(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        client = engine.client
        await client.signal_entity("@account@t", "set", 5)
        holder = await client.schedule_new_orchestration(lock_and_wait, input="t")
        await client.wait_for_orchestration_start(holder)
        reader = await client.schedule_new_orchestration(read, input="t")
        with pytest.raises(TimeoutError):
            await client.wait_for_orchestration_completion(reader, timeout=timedelta(hours=1))
        await client.signal_entity("@account@t", "set", 7)
        meta = await client.get_entity("@account@t")
        # The reader's call and the signal wait for the lock, in arrival order.
        assert meta.locked_by == holder and meta.backlog_queue_size == 2
        await client.terminate_orchestration(holder, output="stop")
        assert (await finish(engine, reader)).output == 5
        final = await finish(engine, await client.schedule_new_orchestration(read, input="t"))
        assert final.output == 7
        assert (await client.get_entity("@account@t")).locked_by is None


async def test_orphaned_locks_are_released_by_clean_storage(autojump_clock, store):
    async with open_test_engine(registry, db=store) as engine:
        client = engine.client
        holder = await client.schedule_new_orchestration(lock_and_wait, input="o")
        while (await client.get_entity("@account@o")) is None:
            await trio.sleep(1)
        # The holder vanishes without finishing (its row deleted, as by a foreign tool).
        if store is None:
            engine.backend._store.conn.execute(
                "DELETE FROM instances WHERE instance_id = ?", (holder,))
        else:
            import psycopg

            with psycopg.connect(store, autocommit=True) as conn:
                conn.execute("DELETE FROM instances WHERE instance_id = %s", (holder,))
        cleaned = await client.clean_entity_storage()
        assert (cleaned.orphaned_locks_released, cleaned.empty_entities_removed) == (1, 0)
        assert await client.get_entity("@account@o") is None


@pytest.mark.parametrize("case, message", [
    ("call other", "only locked entities can be called"),
    ("signal locked", "cannot signal entity @account@m1 from a critical section"),
    ("nested", "cannot enter a critical section from within another one"),
    ("before grant", "before the locks of the critical section are granted"),
])
async def test_critical_section_rules(autojump_clock, case, message, store):
    orchestrator = call_before_grant if case == "before grant" else misuse
    async with open_test_engine(registry, db=store) as engine:
        iid = await engine.client.schedule_new_orchestration(orchestrator, input=case)
        state = await finish(engine, iid)
        assert state.runtime_status == S.FAILED
        assert state.failure_details.error_type == "InvalidOperation"
        assert message in state.failure_details.message
        # Whatever it locked was released when it failed.
        for key in ("m1", "m2", "g"):
            assert (await engine.client.get_entity(f"@account@{key}")) is None


# -- what a section may not do ----------------------------------------------------------------


@registry.orchestrator
async def releases_before_the_grant(ctx, _):
    section = ctx.lock_entities([EntityId("account", "early1"), EntityId("account", "early2")])
    section.release()


async def test_releasing_a_section_before_its_grant_is_refused(autojump_clock, store):
    # Sent at once, the unlock would overtake the lock request and the entity stay locked.
    async with open_test_engine(registry, db=store) as engine:
        iid = await engine.client.schedule_new_orchestration(releases_before_the_grant)
        state = await engine.client.wait_for_orchestration_completion(iid, timeout=60)
        assert state.runtime_status == S.FAILED
        assert "not granted yet" in state.failure_details.message
        await engine.client.signal_entity("@account@early2", "set", 1)
        await trio.sleep(60)
        entity = await engine.client.get_entity("@account@early2")
        assert entity.locked_by is None and entity.state == 1


attempts: list[int] = []


@registry.activity
async def flaky(ctx, _):
    attempts.append(1)
    if len(attempts) == 1:
        raise RuntimeError("first attempt fails")
    return "ok"


@registry.orchestrator
async def fails_inside_a_section(ctx, _):
    async with ctx.lock_entities([EntityId("account", "rw")]):
        return await ctx.call_activity(flaky)


@registry.orchestrator
async def fails_after_a_section(ctx, _):
    async with ctx.lock_entities([EntityId("account", "rw2")]):
        await ctx.call_entity("@account@rw2", "get")
    return await ctx.call_activity(flaky)


async def test_rewind_is_refused_for_a_failure_inside_a_section(autojump_clock, store):
    # Its locks went when it failed; a replay would find them granted and run on without them.
    async with open_test_engine(registry, db=store) as engine:
        client = engine.client
        for orchestrator, refused in ((fails_inside_a_section, True),
                                      (fails_after_a_section, False)):
            attempts.clear()
            iid = await client.schedule_new_orchestration(orchestrator)
            state = await client.wait_for_orchestration_completion(iid, timeout=60)
            assert state.runtime_status == S.FAILED
            if refused:
                with pytest.raises(dtrio.InvalidOperation, match="inside an entity critical"):
                    await client.rewind_orchestration(iid, "again")
                continue
            await client.rewind_orchestration(iid, "again")
            state = await client.wait_for_orchestration_completion(iid, timeout=60)
            assert (state.runtime_status, state.output) == (S.COMPLETED, "ok")


@registry.orchestrator
async def holds(ctx, keys):
    async with ctx.lock_entities([EntityId("account", k) for k in keys]):
        await ctx.wait_for_external_event("never")


@registry.orchestrator
async def other_work(ctx, _):
    await ctx.create_timer(timedelta(days=30))


async def test_lock_requests_on_their_way_go_with_their_orchestration(autojump_clock, store):
    # A waits for b, which another orchestration holds; A is replaced by an instance under the
    # same ID that never touches entities. Its request must not lock b once b is free.
    async with open_test_engine(registry, db=store) as engine:
        client = engine.client
        holder = await client.schedule_new_orchestration(holds, input=["way-b"])
        await trio.sleep(10)
        await client.schedule_new_orchestration(holds, input=["way-a", "way-b"], instance_id="A")
        await trio.sleep(10)
        assert (await client.get_entity("@account@way-a")).locked_by == "A"
        await client.schedule_new_orchestration(
            other_work, instance_id="A",
            reuse_policy=dtrio.ReusePolicy(replace=frozenset({S.RUNNING})))
        await client.terminate_orchestration(holder)
        await trio.sleep(60)
        assert await client.get_entity("@account@way-a") is None
        assert await client.get_entity("@account@way-b") is None  # no state, no lock
        await client.signal_entity("@account@way-b", "set", 7)
        await trio.sleep(60)
        assert (await client.get_entity("@account@way-b")).state == 7
