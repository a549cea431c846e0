"""Entities at scale and across restarts: 10,000 signals in order, in bounded batches, with no
history kept; states of several MiB; state, locks and scheduled signals surviving a restart; a
store from before entities upgraded with its data intact."""

import logging
import sqlite3
from datetime import timedelta

import trio
from old_stores import to_version_6

import dtrio
from dtrio import EntityId
from dtrio.backend.sqlite_schema import SCHEMA_VERSION
from dtrio.testing import open_test_engine

S = dtrio.OrchestrationStatus
registry = dtrio.Registry()


@registry.entity
async def sequence(ctx, n):
    """Counts the signals it gets and how many came out of order."""
    state = ctx.get_state({"last": 0, "count": 0, "out_of_order": 0})
    if ctx.operation == "next":
        state["out_of_order"] += n != state["last"] + 1
        state["last"] = n
        state["count"] += 1
        ctx.set_state(state)
    return state


@registry.entity
def blob(ctx, size):
    if ctx.operation == "fill":
        ctx.set_state("x" * size)
    return len(ctx.get_state(""))


@registry.orchestrator
async def call(ctx, request):
    return await ctx.call_entity(request["entity"], request["op"], request.get("input"))


@registry.orchestrator
async def hold_lock(ctx, key):
    async with ctx.lock_entities([EntityId("blob", key)]):
        await ctx.wait_for_external_event("release")
        return await ctx.call_entity(EntityId("blob", key), "get")


async def result(engine, request):
    iid = await engine.client.schedule_new_orchestration(call, input=request)
    state = await engine.client.wait_for_orchestration_completion(iid, timeout=timedelta(days=1))
    assert state.runtime_status == S.COMPLETED, state.failure_details
    return state.output


async def test_ten_thousand_signals_in_order_in_bounded_batches(autojump_clock):
    async with open_test_engine(registry, entity_batch_size=100) as engine:
        for n in range(1, 10_001):
            await engine.client.signal_entity("@sequence@s", "next", n)
        assert await result(engine, {"entity": "@sequence@s", "op": "get"}) == {
            "last": 10_000, "count": 10_000, "out_of_order": 0}
        conn = engine.backend._store.conn
        # Entities keep a state, not a history: nothing grew but the state itself.
        assert conn.execute("SELECT count(*) FROM entity_inbox").fetchone()[0] == 0
        entity_history = ("SELECT count(*) FROM history WHERE instance_key NOT IN "
                          "(SELECT id FROM instances WHERE instance_id NOT LIKE '@%')")
        assert conn.execute(entity_history).fetchone()[0] == 0
        meta = await engine.client.get_entity("@sequence@s")
        assert len(meta.serialized_state) < 100 and meta.backlog_queue_size == 0


async def test_batches_are_bounded(autojump_clock, caplog):
    caplog.set_level(logging.DEBUG, logger="dtrio.engine")
    async with open_test_engine(registry, entity_batch_size=7) as engine:
        # Due together, the signals wait in the inbox at once; batches take at most 7.
        due = engine.clock.now_dt() + timedelta(hours=1)
        for n in range(1, 31):
            await engine.client.signal_entity("@sequence@b", "next", n, signal_time=due)
        await trio.sleep(2 * 3600)
        assert (await result(engine, {"entity": "@sequence@b", "op": "get"}))["count"] == 30
    batches = [
        r.getMessage() for r in caplog.records
        if r.getMessage().startswith("entity @sequence@b ran")
    ]
    assert [int(line.split()[3]) for line in batches] == [7, 7, 7, 7, 2, 1]


async def test_state_of_several_mib_round_trips(autojump_clock):
    size = 6 << 20
    async with open_test_engine(registry) as engine:
        assert await result(engine, {"entity": "@blob@big", "op": "fill", "input": size}) == size
        meta = await engine.client.get_entity("@blob@big")
        assert meta.state == "x" * size
        assert await result(engine, {"entity": "@blob@big", "op": "get"}) == size


async def test_state_locks_and_scheduled_signals_survive_a_restart(tmp_path):
    db = tmp_path / "entities.sqlite3"
    options = {"max_poll_interval": 0.05, "shutdown_grace": 0}
    async with dtrio.open_engine(registry, db=db, **options) as engine:
        assert await result(engine, {"entity": "@blob@kept", "op": "fill", "input": 3}) == 3
        holder = await engine.client.schedule_new_orchestration(hold_lock, input="kept")
        while not (meta := await engine.client.get_entity("@blob@kept")).locked_by:
            await trio.sleep(0.01)
        soon = engine.clock.now_dt() + timedelta(seconds=1)
        await engine.client.signal_entity("@sequence@later", "next", 1, signal_time=soon)
    async with dtrio.open_engine(registry, db=db, **options) as engine:
        meta = await engine.client.get_entity("@blob@kept")
        assert (meta.state, meta.locked_by) == ("xxx", holder)
        await engine.client.raise_orchestration_event(holder, "release")
        done = await engine.client.wait_for_orchestration_completion(holder, timeout=30)
        assert done.output == 3
        assert (await engine.client.get_entity("@blob@kept")).locked_by is None
        with trio.fail_after(30):
            while (await engine.client.get_entity("@sequence@later")) is None:
                await trio.sleep(0.05)
        assert (await engine.client.get_entity("@sequence@later")).state["count"] == 1


async def test_a_store_from_before_entities_is_upgraded_with_its_data(tmp_path):
    db = tmp_path / "v3.sqlite3"
    async with dtrio.open_engine(registry, db=db, max_poll_interval=None) as engine:
        assert await result(engine, {"entity": "@blob@gone", "op": "fill", "input": 1}) == 1
        before = (await engine.client.query_orchestrations()).states
    conn = sqlite3.connect(db)
    to_version_6(conn)
    conn.execute("DROP TABLE entities")
    conn.execute("DROP TABLE entity_inbox")
    conn.execute("DROP TABLE activity_calls")  # added by schema version 6
    conn.execute("ALTER TABLE activities DROP COLUMN call_id")
    conn.execute("UPDATE dtrio_meta SET value = '3' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    async with dtrio.open_engine(registry, db=db, max_poll_interval=None) as engine:
        after = (await engine.client.query_orchestrations(fetch_inputs_and_outputs=True)).states
        assert [s.instance_id for s in after] == [s.instance_id for s in before]
        assert after[0].output == 1
        assert await result(engine, {"entity": "@blob@new", "op": "fill", "input": 2}) == 2
    version = sqlite3.connect(db).execute(
        "SELECT value FROM dtrio_meta WHERE key = 'schema_version'").fetchone()[0]
    assert version == str(SCHEMA_VERSION)


async def test_a_store_from_version_4_keeps_its_queued_entity_messages(tmp_path):
    db = tmp_path / "v4.sqlite3"
    async with dtrio.open_engine(registry, db=db, max_poll_interval=None) as engine:
        assert await result(engine, {"entity": "@blob@kept", "op": "fill", "input": 3}) == 3
    conn = sqlite3.connect(db)
    to_version_6(conn)
    conn.execute("DROP INDEX entity_inbox_lock_for")
    conn.execute("ALTER TABLE entity_inbox DROP COLUMN lock_for")
    # A signal queued while the store was at version 4, never processed.
    event = dtrio.wire.encode(dtrio.history.event(
        dtrio.times.from_us(0), entity_operation_signaled=dtrio._pb.EntityOperationSignaledEvent(
            request_id="r1", operation="fill", input="5", target_instance_id="@blob@kept")))
    conn.execute("INSERT INTO entity_inbox (instance_id, source, event, visible_at) "
                 "VALUES ('@blob@kept', NULL, ?, 0)", (event,))
    conn.execute("UPDATE entities SET ready_at = 0 WHERE instance_id = '@blob@kept'")
    conn.execute("DROP TABLE activity_calls")  # added by schema version 6
    conn.execute("ALTER TABLE activities DROP COLUMN call_id")
    conn.execute("UPDATE dtrio_meta SET value = '4' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    async with dtrio.open_engine(registry, db=db, max_poll_interval=0.05) as engine:
        with trio.fail_after(10):
            while (await engine.client.get_entity("@blob@kept")).state != "x" * 5:
                await trio.sleep(0.05)
