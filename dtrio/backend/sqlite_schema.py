"""The SQLite schema, its version, and the checks that refuse files that are not ours."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import StorageError

if TYPE_CHECKING:
    import sqlite_utils

log = logging.getLogger("dtrio.backend")

APPLICATION = "dtrio"
SCHEMA_VERSION = 7


def _v1(db: sqlite_utils.Database) -> None:
    db["instances"].create(
        {
            "instance_id": str,
            "execution_id": str,
            "name": str,
            "version": str,
            "status": int,
            "input": str,
            "output": str,
            "custom_status": str,
            "failure": bytes,
            "tags": str,
            "created_at": int,
            "updated_at": int,
            "completed_at": int,
            "scheduled_start": int,
            "parent_instance_id": str,
            "step": int,
            "history_len": int,
            # earliest visible_at of its inbox; NULL when the inbox is empty
            "ready_at": int,
            "lock_owner": str,
            "lock_token": str,
            "lock_expires": int,
        },
        pk="instance_id",
        not_null={
            "execution_id", "name", "status", "created_at", "updated_at", "step", "history_len"
        },
        defaults={"step": 0, "history_len": 0},
    )
    db["instances"].create_index(["ready_at"], index_name="instances_ready")
    db["instances"].create_index(["lock_expires"], index_name="instances_lock")
    db["instances"].create_index(["created_at"], index_name="instances_created")
    db["instances"].create_index(["parent_instance_id"], index_name="instances_parent")
    db["history"].create(
        {"instance_id": str, "seq": int, "event": bytes},
        pk=("instance_id", "seq"),
        not_null={"event"},
    )
    # AUTOINCREMENT: an inbox ID is never reused, so a process may cache what it inserted.
    db.execute(
        "CREATE TABLE inbox (id INTEGER PRIMARY KEY AUTOINCREMENT, instance_id TEXT NOT NULL, "
        "execution_id TEXT, event BLOB NOT NULL, visible_at INTEGER NOT NULL)"
    )
    db["inbox"].create_index(["instance_id", "visible_at"], index_name="inbox_instance")
    db["activities"].create(
        {
            "id": int,
            "instance_id": str,
            "execution_id": str,
            "task_id": int,
            "name": str,
            "version": str,
            "input": str,
            # when it may next be leased: its visible time, or its lease's expiry while leased
            "available_at": int,
            "lock_owner": str,
            "lock_token": str,
            "attempt": int,
        },
        pk="id",
        not_null={"instance_id", "execution_id", "task_id", "name", "available_at", "attempt"},
        defaults={"attempt": 0},
    )
    db["activities"].create_index(["available_at"], index_name="activities_available")


def _v2(db: sqlite_utils.Database) -> None:
    # The serialized TraceContext of the orchestration span an activity runs under; NULL when
    # the instance is not traced. Stored with the task so an activity needs no history lookup.
    db.execute("ALTER TABLE activities ADD COLUMN trace_context BLOB")


# Index i upgrades a store from version i to i + 1.
def _v3(db: sqlite_utils.Database) -> None:
    # ListInstanceIds pages finished instances by completion time.
    db["instances"].create_index(
        ["completed_at", "instance_id"], index_name="instances_completed", if_not_exists=True
    )


def _v4(db: sqlite_utils.Database) -> None:
    # Durable entities: one row per entity with its state and lock, and an inbox of operation
    # and lock messages. Kept apart from instances: entities have no history, and queries
    # and leases of either kind never see the other.
    db["entities"].create(
        {
            "instance_id": str,  # @name@key
            "name": str,
            "state": str,
            # The orchestration holding the lock, and the critical section it holds it for.
            "locked_by": str,
            "lock_section": str,
            "created_at": int,
            "last_modified": int,
            # earliest visible_at of the inbox messages it may process now; NULL when none
            "ready_at": int,
            "lock_owner": str,
            "lock_token": str,
            "lock_expires": int,
        },
        pk="instance_id",
        not_null={"name", "created_at", "last_modified"},
    )
    db["entities"].create_index(["ready_at"], index_name="entities_ready")
    db["entities"].create_index(["lock_expires"], index_name="entities_lock")
    db["entities"].create_index(["locked_by"], index_name="entities_locked_by")
    # `source`: the orchestration whose calls and unlocks may run while it holds the lock.
    db.execute(
        "CREATE TABLE entity_inbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "instance_id TEXT NOT NULL, source TEXT, event BLOB NOT NULL, "
        "visible_at INTEGER NOT NULL)"
    )
    db["entity_inbox"].create_index(["instance_id", "id"], index_name="entity_inbox_instance")


def _v5(db: sqlite_utils.Database) -> None:
    # `lock_for`: the orchestration a lock request travelling between entities is for, so that
    # the requests of one that ended, or was replaced or purged, can be taken back.
    db.execute("ALTER TABLE entity_inbox ADD COLUMN lock_for TEXT")
    db.execute(
        "CREATE INDEX entity_inbox_lock_for ON entity_inbox (lock_for) WHERE lock_for IS NOT NULL"
    )


def _v6(db: sqlite_utils.Database) -> None:
    # A call made with a retry policy is one call over several tasks (an attempt each):
    # `call_id` names it (its first task's ID; NULL: the task is a call of its own), and
    # `activity_calls` keeps the attempts of its failed tasks, for its next task to count on.
    db.execute("ALTER TABLE activities ADD COLUMN call_id INTEGER")
    db.execute(
        "CREATE TABLE activity_calls (instance_id TEXT NOT NULL, execution_id TEXT NOT NULL, "
        "call_id INTEGER NOT NULL, attempts INTEGER NOT NULL, "
        "PRIMARY KEY (instance_id, execution_id, call_id)) WITHOUT ROWID"
    )


# The instances table of version 7, keyed by an integer `id` as well as by its instance ID.
_INSTANCES_V7 = """CREATE TABLE instances (
    -- AUTOINCREMENT: a key is never reused, so no history can outlive its instance's key
    -- (a plain INTEGER PRIMARY KEY would hand the last deleted key to the next instance).
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT NOT NULL UNIQUE,
    execution_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT,
    status INTEGER NOT NULL,
    input TEXT,
    output TEXT,
    custom_status TEXT,
    failure BLOB,
    tags TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    completed_at INTEGER,
    scheduled_start INTEGER,
    parent_instance_id TEXT,
    step INTEGER NOT NULL DEFAULT 0,
    history_len INTEGER NOT NULL DEFAULT 0,
    ready_at INTEGER,
    lock_owner TEXT,
    lock_token TEXT,
    lock_expires INTEGER
)"""
_INSTANCE_COLUMNS = (
    "instance_id, execution_id, name, version, status, input, output, custom_status, failure, "
    "tags, created_at, updated_at, completed_at, scheduled_start, parent_instance_id, step, "
    "history_len, ready_at, lock_owner, lock_token, lock_expires"
)


def _v7(db: sqlite_utils.Database) -> None:
    # History keyed by the instance's integer key rather than its instance ID: a WITHOUT ROWID
    # table is one B-tree (no rowid table plus an index over both columns), and a row holds a
    # few bytes of key instead of the instance ID. The key is an explicit INTEGER PRIMARY KEY,
    # which VACUUM keeps (it may renumber implicit rowids); adding one rebuilds the table.
    conn = db.conn
    conn.execute("ALTER TABLE instances RENAME TO instances_v6")
    for index in ("ready", "lock", "created", "parent", "completed"):
        conn.execute(f"DROP INDEX instances_{index}")
    conn.execute(_INSTANCES_V7)
    conn.execute(
        f"INSERT INTO instances (id, {_INSTANCE_COLUMNS}) "
        f"SELECT rowid, {_INSTANCE_COLUMNS} FROM instances_v6 ORDER BY rowid"
    )
    conn.execute("DROP TABLE instances_v6")
    # Due rows only: the lease and next-due queries compare these columns, so a NULL (most rows:
    # finished or idle instances) never matches and needs no index entry.
    conn.execute("CREATE INDEX instances_ready ON instances (ready_at) WHERE ready_at IS NOT NULL")
    conn.execute(
        "CREATE INDEX instances_lock ON instances (lock_expires) WHERE lock_expires IS NOT NULL"
    )
    conn.execute("CREATE INDEX instances_created ON instances (created_at)")
    conn.execute(
        "CREATE INDEX instances_parent ON instances (parent_instance_id) "
        "WHERE parent_instance_id IS NOT NULL"
    )
    conn.execute("CREATE INDEX instances_completed ON instances (completed_at, instance_id)")
    conn.execute("ALTER TABLE history RENAME TO history_v6")
    conn.execute(
        "CREATE TABLE history (instance_key INTEGER NOT NULL, seq INTEGER NOT NULL, "
        "event BLOB NOT NULL, PRIMARY KEY (instance_key, seq)) WITHOUT ROWID"
    )
    conn.execute(
        "INSERT INTO history (instance_key, seq, event) SELECT i.id, h.seq, h.event "
        "FROM history_v6 h JOIN instances i ON i.instance_id = h.instance_id"
    )
    conn.execute("DROP TABLE history_v6")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2, _v3, _v4, _v5, _v6, _v7]
assert len(MIGRATIONS) == SCHEMA_VERSION


def check_and_migrate(conn: sqlite3.Connection, where: str) -> None:
    """Refuse foreign, corrupt or newer stores; create or upgrade ours."""
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise StorageError(
            f"{where} is not a usable SQLite database ({exc}); nothing was changed"
        ) from None
    version = 0
    if tables:
        if "dtrio_meta" not in tables:
            raise StorageError(
                f"{where} is a SQLite database of another application (tables: "
                f"{', '.join(sorted(tables)[:5])}); dtrio will not touch it"
            )
        meta = dict(conn.execute("SELECT key, value FROM dtrio_meta"))
        if meta.get("application") != APPLICATION:
            raise StorageError(
                f"{where} has a dtrio_meta table not written by dtrio; refusing to use it"
            )
        version = int(meta.get("schema_version", "0"))
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{where} has dtrio schema version {version}, newer than this dtrio supports "
                f"({SCHEMA_VERSION}); upgrade dtrio"
            )
    if version == SCHEMA_VERSION:
        return
    import sqlite_utils  # only needed to create or upgrade a store; slow to import

    db = sqlite_utils.Database(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        if version == 0:
            db["dtrio_meta"].create({"key": str, "value": str}, pk="key")
            conn.execute("INSERT INTO dtrio_meta VALUES ('application', ?)", (APPLICATION,))
        for migrate in MIGRATIONS[version:]:
            migrate(db)
        conn.execute(
            "INSERT OR REPLACE INTO dtrio_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        if not conn.in_transaction:
            raise StorageError(f"schema migration of {where} lost its transaction")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if version == 0:
        log.info("created store %s (schema version %d)", where, SCHEMA_VERSION)
    else:
        log.info("upgraded store %s from schema version %d to %d", where, version, SCHEMA_VERSION)
