"""Row-level steps shared by every operation, run inside a transaction (`Tx`): inboxes (of
instances and of entities), instance rows, readiness and entity locks.

An instance is ready when its inbox holds a visible event (`ready_at`). An entity is ready when
its inbox holds a message it may process now: any message while it is unlocked, only the lock
holder's calls and unlock while it is locked (the rest wait).

Rows that several steps touch are visited in a fixed order (sorted IDs): where writers run side
by side (PostgreSQL), two transactions then never wait on each other's locks in a circle.
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
from .dialect import Tx

_PENDING = int(pb.OrchestrationStatus.PENDING)
_RUNNING = int(pb.OrchestrationStatus.RUNNING)
_FAILED = int(pb.OrchestrationStatus.FAILED)
TERMINAL_SQL = ",".join(str(s) for s in sorted(TERMINAL))
# Messages an entity may process now, given its lock (`e` is its row, `i` the inbox).
ELIGIBLE = "(e.locked_by IS NULL OR i.source = e.locked_by)"
# The earlier of `ready_at` and the time given twice as parameters, a NULL `ready_at` counting as
# never (SQLite's min() and PostgreSQL's least() disagree on NULL, so neither is used).
EARLIER = "CASE WHEN ready_at <= ? THEN ready_at ELSE ? END"
# Makes a pending instance ready by a time (given twice) rather than at its scheduled start.
WAKE_PENDING = f"UPDATE instances SET ready_at = {EARLIER} WHERE instance_id = ?"
# An instance's history, oldest event first; its rows are keyed by the instance's integer `id`.
HISTORY_OF = (
    "SELECT event FROM history WHERE instance_key = "
    "(SELECT id FROM instances WHERE instance_id = ?) ORDER BY seq"
)


# -- instances and their inboxes -----------------------------------------------------------


# A pending instance becomes ready when its start comes due, not when an early event arrives:
# the event waits in the inbox for the orchestration to begin.
_ENQUEUE = (
    f"UPDATE instances SET ready_at = {EARLIER} "
    "WHERE instance_id = ? AND (status != ? OR ready_at IS NULL)"
)


def enqueue(tx: Tx, instance_id: str, execution_id: str | None, event: StoredEvent,
            visible_at: int, now: int) -> None:
    """Put an event in an instance's inbox (the caller knows the instance is live)."""
    tx.execute(_ENQUEUE, (visible_at, visible_at, instance_id, _PENDING))
    _inbox_row(tx, instance_id, execution_id, event, visible_at, now)


def _inbox_row(tx: Tx, instance_id: str, execution_id: str | None, event: StoredEvent,
               visible_at: int, now: int) -> None:
    inbox_id = tx.insert(
        "INSERT INTO inbox (instance_id, execution_id, event, visible_at) VALUES (?, ?, ?, ?)",
        (instance_id, execution_id, event.data, visible_at),
    )
    tx.keep(inbox_id, event)
    tx.due("orchestration", visible_at, now)


# One statement finds the instance live (of the given execution, if any) and moves its ready time
# (see `enqueue`).
_DELIVER = (
    f"UPDATE instances SET ready_at = CASE WHEN status != ? OR ready_at IS NULL THEN {EARLIER} "
    f"ELSE ready_at END WHERE instance_id = ? AND status NOT IN ({TERMINAL_SQL}) "
)
_DELIVER_ANY = _DELIVER + "RETURNING 1"
_DELIVER_EXECUTION = _DELIVER + "AND execution_id = ? RETURNING 1"


def deliver(tx: Tx, message: Message, now: int) -> None:
    """Put a message in a live instance's inbox (of `message.execution_id`, if set); messages to
    finished or other executions are dropped. Messages to entities go to the entity's inbox."""
    if is_entity_id(message.instance_id):
        deliver_entity(tx, message, now)
        return
    at = message.visible_at
    if message.execution_id is None:
        live = tx.execute(_DELIVER_ANY, (_PENDING, at, at, message.instance_id)).fetchone()
    else:
        live = tx.execute(_DELIVER_EXECUTION,
                          (_PENDING, at, at, message.instance_id, message.execution_id)).fetchone()
    if live is not None:
        _inbox_row(tx, message.instance_id, message.execution_id, message.event, at, now)


def insert_instance(tx: Tx, new: NewInstance, now: int) -> bool:
    cur = tx.execute(
        "INSERT INTO instances (instance_id, execution_id, name, version, status, "
        "input, tags, created_at, updated_at, scheduled_start, parent_instance_id, ready_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (new.instance_id, new.execution_id, new.name, new.version, _PENDING, new.input,
         json.dumps(new.tags) if new.tags else None, now, now,
         new.visible_at if new.visible_at > now else None, new.parent_instance_id,
         new.visible_at),
    )
    if cur.rowcount != 1:
        return False
    _inbox_row(tx, new.instance_id, new.execution_id, new.started, new.visible_at, now)
    tx.changed(new.instance_id)
    return True


def status_of(tx: Tx, instance_id: str, *, lock: bool = False) -> int | None:
    """An instance's status (None: no such instance); with `lock`, the row stays as read until
    the transaction ends."""
    row = tx.execute(
        "SELECT status FROM instances WHERE instance_id = ?"
        + (tx.dialect.for_update if lock else ""), (instance_id,)
    ).fetchone()
    return None if row is None else int(row[0])


def delete_instances(tx: Tx, instance_ids: list[str], now: int) -> None:
    if not instance_ids:
        return
    which, params = tx.dialect.in_list("instance_id", instance_ids)
    # Their rows locked first (where writers run side by side): a step of one being committed
    # meanwhile finishes before its history is deleted, or the rows it adds would outlive it
    # under the next instance.
    if tx.dialect.for_update:
        tx.execute(f"SELECT 1 FROM instances WHERE {which} ORDER BY instance_id"
                   + tx.dialect.for_update, params)
    tx.execute(
        f"DELETE FROM history WHERE instance_key IN (SELECT id FROM instances WHERE {which})",
        params)
    for table in ("inbox", "activities", "activity_calls", "instances"):
        tx.execute(f"DELETE FROM {table} WHERE {which}", params)
    for instance_id in instance_ids:
        tx.changed(instance_id)
        # A running instance replaced by a new start held its locks to the end.
        release_entity_locks(tx, instance_id, now)


def last_inbox_id(tx: Tx, instance_id: str) -> int | None:
    return tx.execute(  # type: ignore[no-any-return]
        "SELECT max(id) FROM inbox WHERE instance_id = ?", (instance_id,)
    ).fetchone()[0]


def queue_behind(tx: Tx, instance_id: str, last_id: int) -> None:
    """Move an instance's inbox rows up to `last_id` (events that arrived while its
    continue-as-new step was out) behind those queued since (the new execution's start and
    the events it carries over), keeping their order. Workers expect a new execution to
    open with executionStarted; the official SDK's worker would otherwise buffer the
    early events and never wake the orchestrator's first wait."""
    rows = tx.execute(
        "DELETE FROM inbox WHERE instance_id = ? AND id <= ? "
        "RETURNING id, execution_id, event, visible_at",
        (instance_id, last_id),
    ).fetchall()
    for old_id, execution_id, event, visible_at in sorted(rows):
        new_id = tx.insert(
            "INSERT INTO inbox (instance_id, execution_id, event, visible_at) "
            "VALUES (?, ?, ?, ?)",
            (instance_id, execution_id, event, visible_at),
        )
        tx.moved(old_id, new_id)


def refresh_ready(tx: Tx, instance_id: str, now: int) -> None:
    ready = tx.execute(
        "UPDATE instances SET ready_at = (SELECT min(visible_at) FROM inbox "
        "WHERE instance_id = ?) WHERE instance_id = ? RETURNING ready_at",
        (instance_id, instance_id),
    ).fetchone()
    if ready is not None and ready[0] is not None:
        tx.due("orchestration", ready[0], now)


_LIVE_CHILDREN = (
    "SELECT instance_id, status FROM instances WHERE parent_instance_id = ? "
    f"AND status NOT IN ({TERMINAL_SQL}) ORDER BY instance_id"
)


def terminate_children(tx: Tx, instance_id: str, output: str | None, now: int) -> None:
    children = tx.execute(_LIVE_CHILDREN, (instance_id,)).fetchall()
    for child_id, status in children:
        event = h.execution_terminated(from_us(now), output, recurse=True)
        enqueue(tx, child_id, None, StoredEvent.made(event), now, now)
        if status == _PENDING:
            tx.execute(WAKE_PENDING, (now, now, child_id))


def prepare_rewind(tx: Tx, instance_id: str, reason: str | None,
                   parent_execution_id: str | None, now: int) -> None:
    """Mark a failed instance running again and ask its orchestrator for a clean history."""
    tx.execute(
        "UPDATE instances SET status = ?, output = NULL, failure = NULL, completed_at = NULL, "
        "updated_at = ? WHERE instance_id = ?",
        (_RUNNING, now, instance_id),
    )
    tx.changed(instance_id)
    event = h.event(from_us(now), execution_rewound=pb.ExecutionRewoundEvent(
        reason=reason, parent_execution_id=parent_execution_id,
    ))
    enqueue(tx, instance_id, None, StoredEvent.made(event), now, now)


def rewind_child(tx: Tx, child: ChildRewind, now: int) -> None:
    status = status_of(tx, child.instance_id)
    if status is None:
        insert_instance(tx, child.recreate, now)
    elif status == _FAILED:
        prepare_rewind(tx, child.instance_id, child.reason, child.parent_execution_id, now)


# -- entities ----------------------------------------------------------------------------


# Whether a message from a source (or none) makes the entity ready now: not while another
# orchestration holds its lock.
_READY_ANY = (
    f"UPDATE entities SET ready_at = {EARLIER} WHERE instance_id = ? AND locked_by IS NULL"
)
_READY_FROM = (
    f"UPDATE entities SET ready_at = {EARLIER} "
    "WHERE instance_id = ? AND (locked_by IS NULL OR locked_by = ?)"
)


def deliver_entity(tx: Tx, message: Message, now: int) -> None:
    """Put a message in an entity's inbox, creating the entity when it is new."""
    event = message.event.event
    eid, at = message.instance_id, message.visible_at
    tx.execute(
        "INSERT INTO entities (instance_id, name, created_at, last_modified) "
        "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (eid, eid.split("@", 2)[1], now, now),
    )
    source = source_of(event)
    request = event.entity_lock_requested
    lock_for = (request.parent_instance_id or None) if request is not None else None
    inbox_id = tx.insert(
        "INSERT INTO entity_inbox (instance_id, source, event, visible_at, lock_for) "
        "VALUES (?, ?, ?, ?, ?)",
        (eid, source, message.event.data, at, lock_for),
    )
    # Negative keys: the kept events share their keys with the orchestration inbox's ids.
    tx.keep(-inbox_id, message.event)
    if source is None:
        updated = tx.execute(_READY_ANY, (at, at, eid))
    else:
        updated = tx.execute(_READY_FROM, (at, at, eid, source))
    if updated.rowcount:
        tx.due("entity", at, now)


_REFRESH_ENTITY = (
    "UPDATE entities AS e SET ready_at = (SELECT min(i.visible_at) FROM entity_inbox i "
    f"WHERE i.instance_id = e.instance_id AND {ELIGIBLE}) "
    "WHERE e.instance_id = ? RETURNING ready_at"
)


def refresh_entity(tx: Tx, instance_id: str, now: int) -> None:
    ready = tx.execute(_REFRESH_ENTITY, (instance_id,)).fetchone()
    if ready is not None and ready[0] is not None:
        tx.due("entity", ready[0], now)


def release_entity_locks(tx: Tx, orchestration_id: str, now: int) -> int:
    """Unlock every entity an orchestration holds (it finished, or is gone), and take back
    its lock requests still on their way: granted later, they would lock an entity for an
    execution that is over, or for a new instance under the same ID."""
    # Run for every execution that ends, mostly holding nothing: SELECTs look first (on SQLite
    # an UPDATE or DELETE ... RETURNING that finds no row costs more than one).
    held = [r[0] for r in tx.execute(
        "SELECT instance_id FROM entities WHERE locked_by = ?" + tx.dialect.for_update,
        (orchestration_id,)).fetchall()]
    if held:
        tx.execute(
            "UPDATE entities SET locked_by = NULL, lock_section = NULL, last_modified = ? "
            "WHERE locked_by = ?", (now, orchestration_id))
    waiting = [r[0] for r in tx.execute(
        "SELECT DISTINCT instance_id FROM entity_inbox WHERE lock_for = ?",
        (orchestration_id,)).fetchall()]
    if waiting:
        tx.execute("DELETE FROM entity_inbox WHERE lock_for = ?", (orchestration_id,))
    for entity_id in sorted({*held, *waiting}):
        refresh_entity(tx, entity_id, now)
        drop_if_empty(tx, entity_id)
    return len(held)


def drop_if_empty(tx: Tx, entity_id: str) -> None:
    """An entity without state, lock or messages no longer exists."""
    tx.execute(
        "DELETE FROM entities WHERE instance_id = ? AND state IS NULL "
        "AND locked_by IS NULL AND lock_token IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM entity_inbox WHERE instance_id = ?)",
        (entity_id, entity_id),
    )


def schedule_calls(tx: Tx, tasks: list[ActivityTask]) -> None:
    """Queue the tasks of calls with a retry policy: each counts on from the attempts its call's
    earlier tasks made (and from no fewer than the orchestrator counted), which it takes over."""
    for a in tasks:
        row = tx.execute(
            "DELETE FROM activity_calls WHERE instance_id = ? AND execution_id = ? "
            "AND call_id = ? RETURNING attempts", (a.instance_id, a.execution_id, a.call_id),
        ).fetchone()
        tx.execute(
            "INSERT INTO activities (instance_id, execution_id, task_id, name, version, input, "
            "available_at, trace_context, call_id, attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (a.instance_id, a.execution_id, a.task_id, a.name, a.version, a.input, a.visible_at,
             encode(a.trace_context) if a.trace_context else None, a.call_id,
             max(a.retries, row[0] if row else 0)),
        )
