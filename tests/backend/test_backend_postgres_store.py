"""The PostgreSQL store itself: selection by URL, its schema and version, opening it from
several processes at once, and passwords kept out of what is printed."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest
import trio

import dtrio
from dtrio.backend import is_postgres_url, open_backend
from dtrio.backend.dialect import POSTGRES, SQLITE
from dtrio.backend.postgres import masked
from dtrio.backend.postgres_schema import SCHEMA_VERSION
from dtrio.clock import Clock
from dtrio.errors import StorageError


def test_a_url_selects_postgres():
    assert is_postgres_url("postgresql://u@h/db") and is_postgres_url("postgres://h/db")
    assert not is_postgres_url("dtrio.sqlite3") and not is_postgres_url(None)
    assert not is_postgres_url(":memory:")


def test_the_password_is_masked():
    assert masked("postgresql://app:s3cret@db.example:5432/dtrio") == (
        "postgresql://app:***@db.example:5432/dtrio")
    assert masked("postgresql://app@db/dtrio") == "postgresql://app@db/dtrio"


async def test_open_backend_picks_by_url(postgres_db, tmp_path):
    clock = Clock()
    pg = open_backend(postgres_db, clock)
    try:
        assert pg.dialect is POSTGRES
    finally:
        await pg.aclose()
    lite = open_backend(tmp_path / "x.db", clock)
    assert lite.dialect is SQLITE
    await lite.aclose()


async def test_schema_is_versioned_and_a_newer_one_refused(postgres_db):
    backend = open_backend(postgres_db, Clock())
    await backend.aclose()
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        row = conn.execute("SELECT value FROM dtrio_meta WHERE key = 'schema_version'").fetchone()
        assert row == (str(SCHEMA_VERSION),)
        conn.execute("UPDATE dtrio_meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(StorageError, match="schema version 999, newer") as info:
        open_backend(postgres_db, Clock())
    assert "\n" not in str(info.value)


async def test_an_unreachable_server_is_a_storage_error_without_the_password():
    url = "postgresql://app:s3cret@127.0.0.1:1/none"
    with pytest.raises(StorageError) as info:
        open_backend(url, Clock())
    assert "s3cret" not in str(info.value) and "***" in str(info.value)


def test_processes_opening_an_empty_database_at_once_do_not_race(postgres_db):
    script = (
        "import sys, trio\n"
        "from dtrio.backend import open_backend\n"
        "from dtrio.clock import Clock\n"
        "async def main():\n"
        "    b = open_backend(sys.argv[1], Clock())\n"
        "    await b.aclose()\n"
        "trio.run(main)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, postgres_db],
                              stderr=subprocess.PIPE) for _ in range(4)]
    errors = [p.communicate(timeout=60)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors


async def test_an_engine_runs_an_orchestration_on_postgres(postgres_db):
    registry = dtrio.Registry()

    @registry.activity
    async def hello(ctx, city: str) -> str:
        return f"Hello, {city}!"

    @registry.orchestrator
    async def seq(ctx, _input):
        return [await ctx.call_activity(hello, input=c) for c in ("Tokyo", "Paris")]

    async with dtrio.open_engine(registry, db=postgres_db) as engine:
        iid = await engine.client.schedule_new_orchestration(seq)
        with trio.fail_after(30):
            state = await engine.client.wait_for_orchestration_completion(iid, timeout=30)
    assert state.output == ["Hello, Tokyo!", "Hello, Paris!"]
