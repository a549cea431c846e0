"""Stores written before history was keyed by the instance's integer key (SQLite schema version
6, PostgreSQL version 1) upgraded in place: histories, statuses and waiting work kept, work going
on, and no instance key ever handed to another instance."""

import sqlite3
from datetime import timedelta

import psycopg
import sqlite_utils
from old_stores import postgres_schema, to_postgres_version_1, to_version_6
from pg_cluster import fresh_database

import dtrio
from dtrio.backend import postgres_schema as pg
from dtrio.backend import sqlite_schema

S = dtrio.OrchestrationStatus
registry = dtrio.Registry()
WAIT = timedelta(seconds=60)


@registry.activity
async def double(ctx, n):
    return 2 * n


@registry.orchestrator
async def three_steps(ctx, n):
    for _ in range(3):
        n = await ctx.call_activity(double, input=n)
    return n


@registry.orchestrator
async def waits_then_doubles(ctx, _):
    n = await ctx.wait_for_external_event("go")
    return await ctx.call_activity(double, input=n)


DONE = ["d1", "d2", "d3"]
IDS = [*DONE, "waiting"]


async def write_old_data(db) -> dict:
    """Three finished orchestrations and one waiting for an event; their histories."""
    async with dtrio.open_engine(registry, db=db, max_poll_interval=None) as engine:
        client = engine.client
        for n, iid in enumerate(DONE, 1):
            await client.schedule_new_orchestration(three_steps, input=n, instance_id=iid)
        for iid in DONE:
            await client.wait_for_orchestration_completion(iid, timeout=WAIT)
        await client.schedule_new_orchestration(waits_then_doubles, instance_id="waiting")
        await client.wait_for_orchestration_start("waiting", timeout=WAIT)
        return {iid: await client.get_orchestration_history(iid) for iid in IDS}


async def check_upgraded(db, histories: dict, keys) -> None:
    """Open the old store with this version: everything as it was, and work goes on. `keys()`
    reads the instances' integer keys."""
    async with dtrio.open_engine(registry, db=db, max_poll_interval=None) as engine:
        client = engine.client
        assert {iid: await client.get_orchestration_history(iid) for iid in IDS} == histories
        states = {iid: await client.get_orchestration_state(iid) for iid in IDS}
        assert [states[i].runtime_status for i in IDS] == [S.COMPLETED] * 3 + [S.RUNNING]
        assert [states[i].output for i in DONE] == [8, 16, 24]
        await client.raise_orchestration_event("waiting", "go", data=5)
        state = await client.wait_for_orchestration_completion("waiting", timeout=WAIT)
        assert state.runtime_status == S.COMPLETED and state.output == 10
        iid = await client.schedule_new_orchestration(three_steps, input=10)
        assert (await client.wait_for_orchestration_completion(iid, timeout=WAIT)).output == 80
        # The newest instance purged and started again: a new key, no history but its own.
        before = keys()
        assert before[iid] == max(before.values())
        assert await client.purge_orchestration(iid) == 1
        await client.schedule_new_orchestration(three_steps, input=1, instance_id=iid)
        assert (await client.wait_for_orchestration_completion(iid, timeout=WAIT)).output == 8
        assert keys()[iid] > before[iid]
        assert await client.get_orchestration_history(iid) != histories["d1"]
        assert len(await client.get_orchestration_history(iid)) == len(histories["d1"])


def _sqlite_schema(conn, tables):
    return sorted(conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE tbl_name IN "
        f"({','.join('?' * len(tables))})", tables))


async def test_a_sqlite_store_of_version_6_is_upgraded_in_place(tmp_path):
    db = tmp_path / "v6.sqlite3"
    histories = await write_old_data(db)
    with sqlite3.connect(db) as conn:
        to_version_6(conn)
    conn.close()
    # The store is the one version 6 made: its tables as version 6's migrations create them.
    fresh = sqlite3.connect(":memory:")
    for migrate in sqlite_schema.MIGRATIONS[:6]:
        migrate(sqlite_utils.Database(fresh))
    with sqlite3.connect(db) as conn:
        tables = ["instances", "history"]
        assert _sqlite_schema(conn, tables) == _sqlite_schema(fresh, tables)
        rowids = dict(conn.execute("SELECT instance_id, rowid FROM instances"))
        assert conn.execute("SELECT count(*) FROM history").fetchone()[0] == sum(
            len(events) for events in histories.values())
    conn.close()

    def keys():
        with sqlite3.connect(db) as conn:
            found = dict(conn.execute("SELECT instance_id, id FROM instances"))
        conn.close()
        return found

    await check_upgraded(db, histories, keys)
    assert {iid: key for iid, key in keys().items() if iid in IDS} == rowids
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM dtrio_meta WHERE key = 'schema_version'"
                            ).fetchone()[0] == str(sqlite_schema.SCHEMA_VERSION)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


async def test_a_postgres_store_of_version_1_is_upgraded_in_place(postgres_url, postgres_db):
    histories = await write_old_data(postgres_db)
    to_postgres_version_1(postgres_db)
    tables = ["instances", "history"]
    with fresh_database(postgres_url) as fresh:
        with psycopg.connect(fresh) as conn:
            conn.execute(pg.MIGRATIONS[0])
        assert postgres_schema(postgres_db, tables) == postgres_schema(fresh, tables)

    def keys():
        with psycopg.connect(postgres_db) as conn:
            return dict(conn.execute("SELECT instance_id, id FROM instances").fetchall())

    await check_upgraded(postgres_db, histories, keys)
    with psycopg.connect(postgres_db) as conn:
        assert conn.execute("SELECT value FROM dtrio_meta WHERE key = 'schema_version'"
                            ).fetchone() == (str(pg.SCHEMA_VERSION),)
