"""SQLite file stores: refuse what is not ours without touching it, keep what is ours."""

from __future__ import annotations

import os
import sqlite3

import pytest
from backend_contract import LEASE, Kit, S, kinds

from dtrio.backend import open_sqlite_backend
from dtrio.backend.sqlite_schema import SCHEMA_VERSION
from dtrio.clock import Clock
from dtrio.errors import StorageError


def snapshot(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


async def test_not_a_sqlite_file_is_refused_and_untouched(tmp_path):
    path = tmp_path / "data.db"
    path.write_bytes(b"not a database at all\n" + os.urandom(4096))
    before = snapshot(tmp_path)
    with pytest.raises(StorageError):
        open_sqlite_backend(path, Clock())
    assert snapshot(tmp_path) == before  # same bytes, and no -wal/-shm files left behind


async def test_other_applications_database_is_refused_and_untouched(tmp_path):
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.commit()
    conn.close()
    before = snapshot(tmp_path)
    with pytest.raises(StorageError, match="another application"):
        open_sqlite_backend(path, Clock())
    assert snapshot(tmp_path) == before


async def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "store.db"
    backend = open_sqlite_backend(path, Clock())
    await backend.aclose()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE dtrio_meta SET value = ? WHERE key = 'schema_version'",
                 (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    before = snapshot(tmp_path)
    with pytest.raises(StorageError, match="newer"):
        open_sqlite_backend(path, Clock())
    assert snapshot(tmp_path) == before


async def test_foreign_dtrio_meta_is_refused(tmp_path):
    path = tmp_path / "store.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE dtrio_meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO dtrio_meta VALUES ('application', 'someone-else')")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError):
        open_sqlite_backend(path, Clock())


async def test_missing_directory_is_refused(tmp_path):
    path = tmp_path / "no" / "such" / "dir" / "store.db"
    with pytest.raises(StorageError):
        open_sqlite_backend(path, Clock())
    assert not (tmp_path / "no").exists()


async def test_reopening_keeps_the_data(tmp_path):
    path = tmp_path / "store.db"
    clock = Clock()
    kit = Kit(open_sqlite_backend(path, clock), clock)
    new, item = await kit.started_and_leased("i1", input='"kept"')
    step = kit.step(item, custom_status='"mid"', activities=[kit.activity(item, 1)])
    await kit.backend.complete_orchestration(item, step)
    await kit.backend.create_instance(kit.new_instance("i2"))
    await kit.backend.aclose()

    kit = Kit(open_sqlite_backend(path, clock), clock)
    try:
        record = await kit.backend.get_instance("i1")
        assert (record.execution_id, record.input, record.custom_status, record.status) == (
            new.execution_id, '"kept"', '"mid"', int(S.RUNNING))
        assert await kit.backend.load_history("i1") == step.history
        assert kinds((await kit.lease_one("i2")).events) == ["execution_started"]
        [act] = await kit.backend.lease_activities("a", 10, LEASE)
        assert (act.instance_id, act.task_id) == ("i1", 1)
    finally:
        await kit.backend.aclose()


async def test_empty_file_becomes_a_store(tmp_path):
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    clock = Clock()
    backend = open_sqlite_backend(path, clock)
    try:
        await Kit(backend, clock).start("i1")
        assert (await backend.get_instance("i1")).status == int(S.PENDING)
    finally:
        await backend.aclose()


async def test_closed_store_refuses_calls(tmp_path):
    backend = open_sqlite_backend(tmp_path / "store.db", Clock())
    await backend.aclose()
    await backend.aclose()  # idempotent
    with pytest.raises(StorageError):
        await backend.get_instance("i1")
    with pytest.raises(StorageError):
        await backend.add_event("i1", b"")
