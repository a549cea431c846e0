"""The PostgreSQL schema, its version, and creating it safely when processes start together.

The tables mirror SQLite's (same columns, history events as the same protobuf bytes, `bytea`).
Times are microseconds since the epoch (`bigint`). Every lease query has an index, including the
name-filtered ones.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from ..errors import StorageError

log = logging.getLogger("dtrio.backend")

APPLICATION = "dtrio"
SCHEMA_VERSION = 2
# pg_advisory_lock key: processes creating or upgrading the schema take turns.
_LOCK_KEY = 0x64747269  # "dtri"



def _leased(table: str) -> str:
    """The end of a table whose rows are leased by instance ID (instances, entities): when a row
    is next ready (the earliest visible_at of the inbox messages it may process now; NULL when
    none) and its lease, with the indexes that leases use. Part of version 1, like `_V1`: a
    change is a new migration."""
    return f"""    ready_at bigint,
    lock_owner text,
    lock_token text,
    lock_expires bigint
);
CREATE INDEX {table}_ready ON {table} (ready_at) WHERE ready_at IS NOT NULL;
CREATE INDEX {table}_name_ready ON {table} (name, ready_at) WHERE ready_at IS NOT NULL;
CREATE INDEX {table}_lock ON {table} (lock_expires) WHERE lock_expires IS NOT NULL;"""


_V1 = f"""
CREATE TABLE dtrio_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE instances (
    instance_id text COLLATE "C" PRIMARY KEY,
    execution_id text NOT NULL,
    name text NOT NULL,
    version text,
    status integer NOT NULL,
    input text,
    output text,
    custom_status text,
    failure bytea,
    tags text,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    completed_at bigint,
    scheduled_start bigint,
    parent_instance_id text,
    step integer NOT NULL DEFAULT 0,
    history_len integer NOT NULL DEFAULT 0,
{_leased('instances')}
CREATE INDEX instances_created ON instances (created_at, instance_id);
CREATE INDEX instances_completed ON instances (completed_at, instance_id)
    WHERE completed_at IS NOT NULL;
CREATE INDEX instances_parent ON instances (parent_instance_id)
    WHERE parent_instance_id IS NOT NULL;
CREATE TABLE history (
    instance_id text NOT NULL,
    seq integer NOT NULL,
    event bytea NOT NULL,
    PRIMARY KEY (instance_id, seq)
);
-- Identity columns: an inbox ID is never reused.
CREATE TABLE inbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id text NOT NULL,
    execution_id text,
    event bytea NOT NULL,
    visible_at bigint NOT NULL
);
CREATE INDEX inbox_instance ON inbox (instance_id, visible_at);
CREATE TABLE activities (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id text NOT NULL,
    execution_id text NOT NULL,
    task_id integer NOT NULL,
    name text NOT NULL,
    version text,
    input text,
    -- when it may next be leased: its visible time, or its lease's expiry while leased
    available_at bigint NOT NULL,
    lock_owner text,
    lock_token text,
    attempt integer NOT NULL DEFAULT 0,
    trace_context bytea,
    -- the call a task is an attempt of (its first task's ID; NULL: a call of its own)
    call_id integer
);
-- Attempts made by the failed tasks of a call with a retry policy, for its next task.
CREATE TABLE activity_calls (
    instance_id text NOT NULL,
    execution_id text NOT NULL,
    call_id integer NOT NULL,
    attempts integer NOT NULL,
    PRIMARY KEY (instance_id, execution_id, call_id)
);
CREATE INDEX activities_available ON activities (available_at);
CREATE INDEX activities_name_available ON activities (name, available_at);
CREATE INDEX activities_instance ON activities (instance_id);
CREATE TABLE entities (
    instance_id text COLLATE "C" PRIMARY KEY,  -- @name@key
    name text NOT NULL,
    state text,
    locked_by text,
    lock_section text,
    created_at bigint NOT NULL,
    last_modified bigint NOT NULL,
{_leased('entities')}
CREATE INDEX entities_locked_by ON entities (locked_by) WHERE locked_by IS NOT NULL;
CREATE TABLE entity_inbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id text NOT NULL,
    source text,
    event bytea NOT NULL,
    visible_at bigint NOT NULL,
    lock_for text
);
CREATE INDEX entity_inbox_instance ON entity_inbox (instance_id, id);
CREATE INDEX entity_inbox_lock_for ON entity_inbox (lock_for) WHERE lock_for IS NOT NULL;
"""

# History keyed by the instance's integer key (as on SQLite, where it makes the table smaller):
# an identity never hands a deleted instance's key to another. No query looks an instance up by
# its key, so it has no index; uniqueness comes from the identity (GENERATED ALWAYS).
_V2 = """
ALTER TABLE instances ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY;
CREATE TABLE history_v2 (
    instance_key bigint NOT NULL,
    seq integer NOT NULL,
    event bytea NOT NULL,
    PRIMARY KEY (instance_key, seq)
);
INSERT INTO history_v2 (instance_key, seq, event)
    SELECT i.id, h.seq, h.event FROM history h JOIN instances i USING (instance_id);
DROP TABLE history;
ALTER TABLE history_v2 RENAME TO history;
ALTER INDEX history_v2_pkey RENAME TO history_pkey;
"""

# Index i upgrades a store from version i to i + 1.
MIGRATIONS: list[str] = [_V1, _V2]
assert len(MIGRATIONS) == SCHEMA_VERSION


def _version(cur: psycopg.Cursor[Any], where: str) -> int:
    if cur.execute("SELECT to_regclass('dtrio_meta')").fetchone()[0] is None:  # type: ignore[index]
        return 0
    meta = dict(cur.execute("SELECT key, value FROM dtrio_meta").fetchall())
    if meta.get("application") != APPLICATION:
        raise StorageError(
            f"{where} has a dtrio_meta table not written by dtrio; refusing to use it")
    version = int(meta.get("schema_version", "0"))
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"{where} has dtrio schema version {version}, newer than this dtrio supports "
            f"({SCHEMA_VERSION}); upgrade dtrio"
        )
    return version


def check_and_migrate(conn: psycopg.Connection[Any], where: str) -> None:
    """Refuse a newer schema; create or upgrade ours, one process at a time."""
    with conn.transaction(), conn.cursor() as cur:
        if _version(cur, where) == SCHEMA_VERSION:
            return
    # A session lock, taken before the transaction begins: a process that waited for it starts
    # a fresh transaction, which sees the tables the other one created (its catalog caches
    # are renewed; to_regclass in the waiting transaction could still miss them).
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        with conn.transaction(), conn.cursor() as cur:
            version = _version(cur, where)
            if version == SCHEMA_VERSION:
                return
            for migrate in MIGRATIONS[version:]:
                cur.execute(migrate)
            if version == 0:
                cur.execute("INSERT INTO dtrio_meta VALUES ('application', %s)", (APPLICATION,))
            cur.execute(
                "INSERT INTO dtrio_meta VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    if version == 0:
        log.info("created store %s (schema version %d)", where, SCHEMA_VERSION)
    else:
        log.info("upgraded store %s from schema version %d to %d", where, version, SCHEMA_VERSION)
