"""SQLite stores as older versions of dtrio left them, made from a current store: the tables
that a later schema version rebuilt are rebuilt back with the DDL they had (written out here, as
the older version created it), keeping their rows. Upgrade tests open the result."""

from __future__ import annotations

import sqlite3

# Schema version 6: instances keyed by instance ID over an implicit rowid, and history keyed by
# (instance ID, seq) in a rowid table with its primary key index.
_V6_INSTANCES = """CREATE TABLE "instances" (
   "instance_id" TEXT PRIMARY KEY,
   "execution_id" TEXT NOT NULL,
   "name" TEXT NOT NULL,
   "version" TEXT,
   "status" INTEGER NOT NULL,
   "input" TEXT,
   "output" TEXT,
   "custom_status" TEXT,
   "failure" BLOB,
   "tags" TEXT,
   "created_at" INTEGER NOT NULL,
   "updated_at" INTEGER NOT NULL,
   "completed_at" INTEGER,
   "scheduled_start" INTEGER,
   "parent_instance_id" TEXT,
   "step" INTEGER NOT NULL DEFAULT 0,
   "history_len" INTEGER NOT NULL DEFAULT 0,
   "ready_at" INTEGER,
   "lock_owner" TEXT,
   "lock_token" TEXT,
   "lock_expires" INTEGER
)"""
_V6_INDEXES = (
    'CREATE INDEX "instances_ready"\n    ON "instances" ("ready_at")',
    'CREATE INDEX "instances_lock"\n    ON "instances" ("lock_expires")',
    'CREATE INDEX "instances_created"\n    ON "instances" ("created_at")',
    'CREATE INDEX "instances_parent"\n    ON "instances" ("parent_instance_id")',
    'CREATE INDEX "instances_completed"\n    ON "instances" ("completed_at", "instance_id")',
)
_V6_HISTORY = """CREATE TABLE "history" (
   "instance_id" TEXT,
   "seq" INTEGER,
   "event" BLOB NOT NULL,
   PRIMARY KEY ("instance_id", "seq")
)"""
_COLUMNS = (
    "instance_id, execution_id, name, version, status, input, output, custom_status, failure, "
    "tags, created_at, updated_at, completed_at, scheduled_start, parent_instance_id, step, "
    "history_len, ready_at, lock_owner, lock_token, lock_expires"
)


def to_version_6(conn: sqlite3.Connection) -> None:
    """Turn a current store (closed by every engine) into the store version 6 wrote."""
    conn.execute("ALTER TABLE instances RENAME TO instances_now")
    for index in ("ready", "lock", "created", "parent", "completed"):
        conn.execute(f"DROP INDEX instances_{index}")
    conn.execute(_V6_INSTANCES)
    conn.execute(f"INSERT INTO instances (rowid, {_COLUMNS}) "
                 f"SELECT id, {_COLUMNS} FROM instances_now")
    for index in _V6_INDEXES:
        conn.execute(index)
    conn.execute("ALTER TABLE history RENAME TO history_now")
    conn.execute(_V6_HISTORY)
    conn.execute("INSERT INTO history (instance_id, seq, event) SELECT i.instance_id, h.seq, "
                 "h.event FROM history_now h JOIN instances_now i ON i.id = h.instance_key")
    conn.execute("DROP TABLE history_now")
    conn.execute("DROP TABLE instances_now")
    conn.execute("DELETE FROM sqlite_sequence WHERE name = 'instances'")
    conn.execute("UPDATE dtrio_meta SET value = '6' WHERE key = 'schema_version'")


# PostgreSQL schema version 1: history keyed by (instance ID, seq), instances without an `id`.
_PG_V1_HISTORY = """
CREATE TABLE history_v1 (
    instance_id text NOT NULL,
    seq integer NOT NULL,
    event bytea NOT NULL,
    PRIMARY KEY (instance_id, seq)
);
INSERT INTO history_v1 (instance_id, seq, event)
    SELECT i.instance_id, h.seq, h.event FROM history h JOIN instances i ON i.id = h.instance_key;
DROP TABLE history;
ALTER TABLE history_v1 RENAME TO history;
ALTER INDEX history_v1_pkey RENAME TO history_pkey;
ALTER TABLE instances DROP COLUMN id;
UPDATE dtrio_meta SET value = '1' WHERE key = 'schema_version';
"""


def to_postgres_version_1(url: str) -> None:
    """Turn a current PostgreSQL store (closed by every engine) into the one version 1 wrote."""
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute(_PG_V1_HISTORY)


def postgres_schema(url: str, tables: list[str]) -> list[tuple]:
    """The columns and indexes of `tables`, to compare one store's schema with another's."""
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, "
            "is_identity FROM information_schema.columns WHERE table_name = ANY(%s) "
            "ORDER BY table_name, column_name", (tables,)).fetchall() + conn.execute(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE tablename = ANY(%s) "
            "ORDER BY indexname", (tables,)).fetchall()
