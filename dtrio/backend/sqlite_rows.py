"""Row-level steps shared by every SQLite operation, run inside a transaction of the store:
inboxes (of instances and of entities), instance rows, readiness and entity locks.

An instance is ready when its inbox holds a visible event (`ready_at`). An entity is ready when
its inbox holds a message it may process now: any message while it is unlocked, only the lock
holder's calls and unlock while it is locked (the rest wait).
"""

from __future__ import annotations

import json

from .. import _pb as pb
from .. import history as h
from ..entities.batch import source_of
from ..events import StoredEvent
from ..inbox import Message, NewInstance
from ..instance_ids import is_entity_id
from ..state import TERMINAL, ActivityTask, ChildRewind
from ..times import from_us
from ..wire import encode
from .sqlite_store import SqliteStore

_PENDING = int(pb.OrchestrationStatus.PENDING)
_RUNNING = int(pb.OrchestrationStatus.RUNNING)
_FAILED = int(pb.OrchestrationStatus.FAILED)
TERMINAL_SQL = ",".join(str(s) for s in sorted(TERMINAL))
# Messages an entity may process now, given its lock (`e` is its row, `i` the inbox).
ELIGIBLE = "(e.locked_by IS NULL OR i.source = e.locked_by)"


# -- instances and their inboxes -----------------------------------------------------------


def enqueue(store: SqliteStore, instance_id: str, execution_id: str | None, event: StoredEvent,
            visible_at: int, now: int) -> None:
    """Put an event in an instance's inbox (the caller knows the instance is live)."""
    # A pending instance becomes ready when its start comes due, not when an early event
    # arrives: the event waits in the inbox for the orchestration to begin.
    store.conn.execute(
        "UPDATE instances SET ready_at = min(coalesce(ready_at, ?1), ?1) "
        "WHERE instance_id = ?2 AND (status != ?3 OR ready_at IS NULL)",
        (visible_at, instance_id, _PENDING),
    )
    _inbox_row(store, instance_id, execution_id, event, visible_at, now)


def _inbox_row(store: SqliteStore, instance_id: str, execution_id: str | None,
               event: StoredEvent, visible_at: int, now: int) -> None:
    cur = store.conn.execute(
        "INSERT INTO inbox (instance_id, execution_id, event, visible_at) VALUES (?, ?, ?, ?)",
        (instance_id, execution_id, event.data, visible_at),
    )
    store.keep(cur.lastrowid or 0, event)
    store.due("orchestration", visible_at, now)


def deliver(store: SqliteStore, message: Message, now: int) -> None:
    """Put a message in a live instance's inbox (of `message.execution_id`, if set); messages to
    finished or other executions are dropped. Messages to entities go to the entity's inbox."""
    if is_entity_id(message.instance_id):
        deliver_entity(store, message, now)
        return
    # One statement finds the instance live and moves its ready time (see `enqueue`).
    live = store.conn.execute(
        "UPDATE instances SET ready_at = CASE WHEN status != ?3 OR ready_at IS NULL "
        "THEN min(coalesce(ready_at, ?1), ?1) ELSE ready_at END "
        f"WHERE instance_id = ?2 AND status NOT IN ({TERMINAL_SQL}) "
        "AND (?4 IS NULL OR execution_id = ?4) RETURNING 1",
        (message.visible_at, message.instance_id, _PENDING, message.execution_id),
    ).fetchone()
    if live is not None:
        _inbox_row(store, message.instance_id, message.execution_id, message.event,
                   message.visible_at, now)


def insert_instance(store: SqliteStore, new: NewInstance, now: int) -> bool:
    cur = store.conn.execute(
        "INSERT OR IGNORE INTO instances (instance_id, execution_id, name, version, status, "
        "input, tags, created_at, updated_at, scheduled_start, parent_instance_id, ready_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (new.instance_id, new.execution_id, new.name, new.version, _PENDING, new.input,
         json.dumps(new.tags) if new.tags else None, now, now,
         new.visible_at if new.visible_at > now else None, new.parent_instance_id,
         new.visible_at),
    )
    if cur.rowcount != 1:
        return False
    _inbox_row(store, new.instance_id, new.execution_id, new.started, new.visible_at, now)
    store.changed(new.instance_id)
    return True


def status_of(store: SqliteStore, instance_id: str) -> int | None:
    row = store.conn.execute(
        "SELECT status FROM instances WHERE instance_id = ?", (instance_id,)
    ).fetchone()
    return None if row is None else int(row[0])


def delete_instances(store: SqliteStore, instance_ids: list[str], now: int) -> None:
    rows = [(i,) for i in instance_ids]
    for table in ("history", "inbox", "activities", "activity_calls", "instances"):
        store.conn.executemany(f"DELETE FROM {table} WHERE instance_id = ?", rows)
    for instance_id in instance_ids:
        store.changed(instance_id)
        # A running instance replaced by a new start held its locks to the end.
        release_entity_locks(store, instance_id, now)


def last_inbox_id(store: SqliteStore, instance_id: str) -> int | None:
    return store.conn.execute(
        "SELECT max(id) FROM inbox WHERE instance_id = ?", (instance_id,)
    ).fetchone()[0]


def queue_behind(store: SqliteStore, instance_id: str, last_id: int) -> None:
    """Move an instance's inbox rows up to `last_id` (events that arrived while its
    continue-as-new step was out) behind those queued since (the new execution's start and
    the events it carries over), keeping their order. Workers expect a new execution to
    open with executionStarted; the official SDK's worker would otherwise buffer the
    early events and never wake the orchestrator's first wait."""
    conn = store.conn
    rows = conn.execute(
        "SELECT id, execution_id, event, visible_at FROM inbox "
        "WHERE instance_id = ? AND id <= ? ORDER BY id",
        (instance_id, last_id),
    ).fetchall()
    conn.execute("DELETE FROM inbox WHERE instance_id = ? AND id <= ?", (instance_id, last_id))
    for old_id, execution_id, event, visible_at in rows:
        cur = conn.execute(
            "INSERT INTO inbox (instance_id, execution_id, event, visible_at) "
            "VALUES (?, ?, ?, ?)",
            (instance_id, execution_id, event, visible_at),
        )
        store.moved(old_id, cur.lastrowid or 0)


def refresh_ready(store: SqliteStore, instance_id: str, now: int) -> None:
    conn = store.conn
    ready = conn.execute(
        "SELECT min(visible_at) FROM inbox WHERE instance_id = ?", (instance_id,)
    ).fetchone()[0]
    conn.execute("UPDATE instances SET ready_at = ? WHERE instance_id = ?", (ready, instance_id))
    if ready is not None:
        store.due("orchestration", ready, now)


def terminate_children(store: SqliteStore, instance_id: str, output: str | None,
                       now: int) -> None:
    conn = store.conn
    children = conn.execute(
        f"SELECT instance_id, status FROM instances WHERE parent_instance_id = ? "
        f"AND status NOT IN ({TERMINAL_SQL})",
        (instance_id,),
    ).fetchall()
    for child_id, status in children:
        event = h.execution_terminated(from_us(now), output, recurse=True)
        enqueue(store, child_id, None, StoredEvent.made(event), now, now)
        if status == _PENDING:
            conn.execute(
                "UPDATE instances SET ready_at = min(ready_at, ?) WHERE instance_id = ?",
                (now, child_id),
            )


def prepare_rewind(store: SqliteStore, instance_id: str, reason: str | None,
                   parent_execution_id: str | None, now: int) -> None:
    """Mark a failed instance running again and ask its orchestrator for a clean history."""
    store.conn.execute(
        "UPDATE instances SET status = ?, output = NULL, failure = NULL, completed_at = NULL, "
        "updated_at = ? WHERE instance_id = ?",
        (_RUNNING, now, instance_id),
    )
    store.changed(instance_id)
    event = h.event(from_us(now), execution_rewound=pb.ExecutionRewoundEvent(
        reason=reason, parent_execution_id=parent_execution_id,
    ))
    enqueue(store, instance_id, None, StoredEvent.made(event), now, now)


def rewind_child(store: SqliteStore, child: ChildRewind, now: int) -> None:
    status = status_of(store, child.instance_id)
    if status is None:
        insert_instance(store, child.recreate, now)
    elif status == _FAILED:
        prepare_rewind(store, child.instance_id, child.reason, child.parent_execution_id, now)


# -- entities ----------------------------------------------------------------------------


def deliver_entity(store: SqliteStore, message: Message, now: int) -> None:
    """Put a message in an entity's inbox, creating the entity when it is new."""
    conn = store.conn
    event = message.event.event
    name = message.instance_id.split("@", 2)[1]
    conn.execute(
        "INSERT OR IGNORE INTO entities (instance_id, name, created_at, last_modified) "
        "VALUES (?, ?, ?, ?)",
        (message.instance_id, name, now, now),
    )
    source = source_of(event)
    request = event.entity_lock_requested
    lock_for = (request.parent_instance_id or None) if request is not None else None
    cur = conn.execute(
        "INSERT INTO entity_inbox (instance_id, source, event, visible_at, lock_for) "
        "VALUES (?, ?, ?, ?, ?)",
        (message.instance_id, source, message.event.data, message.visible_at, lock_for),
    )
    # Negative keys: the kept events share their keys with the orchestration inbox's ids.
    store.keep(-(cur.lastrowid or 0), message.event)
    updated = conn.execute(
        "UPDATE entities SET ready_at = min(coalesce(ready_at, ?1), ?1) "
        "WHERE instance_id = ?2 AND (locked_by IS NULL OR locked_by = ?3)",
        (message.visible_at, message.instance_id, source),
    )
    if updated.rowcount:
        store.due("entity", message.visible_at, now)


def refresh_entity(store: SqliteStore, instance_id: str, now: int) -> None:
    conn = store.conn
    ready = conn.execute(
        f"SELECT min(i.visible_at) FROM entity_inbox i JOIN entities e USING (instance_id) "
        f"WHERE i.instance_id = ? AND {ELIGIBLE}",
        (instance_id,),
    ).fetchone()[0]
    conn.execute("UPDATE entities SET ready_at = ? WHERE instance_id = ?", (ready, instance_id))
    if ready is not None:
        store.due("entity", ready, now)


def release_entity_locks(store: SqliteStore, orchestration_id: str, now: int) -> int:
    """Unlock every entity an orchestration holds (it finished, or is gone), and take back
    its lock requests still on their way: granted later, they would lock an entity for an
    execution that is over, or for a new instance under the same ID."""
    conn = store.conn
    held = [r[0] for r in conn.execute(
        "SELECT instance_id FROM entities WHERE locked_by = ?", (orchestration_id,))]
    for entity_id in held:
        conn.execute(
            "UPDATE entities SET locked_by = NULL, lock_section = NULL, last_modified = ? "
            "WHERE instance_id = ?", (now, entity_id))
    waiting = [r[0] for r in conn.execute(
        "SELECT DISTINCT instance_id FROM entity_inbox WHERE lock_for = ?",
        (orchestration_id,))]
    if waiting:
        conn.execute("DELETE FROM entity_inbox WHERE lock_for = ?", (orchestration_id,))
    for entity_id in dict.fromkeys(held + waiting):
        refresh_entity(store, entity_id, now)
        drop_if_empty(store, entity_id)
    return len(held)


def drop_if_empty(store: SqliteStore, entity_id: str) -> None:
    """An entity without state, lock or messages no longer exists."""
    store.conn.execute(
        "DELETE FROM entities WHERE instance_id = ?1 AND state IS NULL "
        "AND locked_by IS NULL AND lock_token IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM entity_inbox WHERE instance_id = ?1)",
        (entity_id,),
    )


def schedule_calls(store: SqliteStore, tasks: list[ActivityTask]) -> None:
    """Queue the tasks of calls with a retry policy: each counts on from the attempts its call's
    earlier tasks made (and from no fewer than the orchestrator counted), which it takes over."""
    conn = store.conn
    for a in tasks:
        key = (a.instance_id, a.execution_id, a.call_id)
        row = conn.execute(
            "DELETE FROM activity_calls WHERE instance_id = ? AND execution_id = ? "
            "AND call_id = ? RETURNING attempts", key,
        ).fetchone()
        conn.execute(
            "INSERT INTO activities (instance_id, execution_id, task_id, name, version, input, "
            "available_at, trace_context, call_id, attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (a.instance_id, a.execution_id, a.task_id, a.name, a.version, a.input, a.visible_at,
             encode(a.trace_context) if a.trace_context else None, a.call_id,
             max(a.retries, row[0] if row else 0)),
        )
