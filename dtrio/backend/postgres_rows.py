"""Row-level steps shared by every PostgreSQL operation, run inside a transaction (`Tx`):
inboxes (of instances and of entities), instance rows, readiness and entity locks. A port of
`sqlite_rows`; see there for what each step means.
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
from .postgres_store import Tx

_PENDING = int(pb.OrchestrationStatus.PENDING)
_RUNNING = int(pb.OrchestrationStatus.RUNNING)
_FAILED = int(pb.OrchestrationStatus.FAILED)
TERMINAL_SQL = ",".join(str(s) for s in sorted(TERMINAL))
# Messages an entity may process now, given its lock (`e` is its row, `i` the inbox).
ELIGIBLE = "(e.locked_by IS NULL OR i.source = e.locked_by)"
# A fresh lease token.
NEW_TOKEN = "md5(random()::text || clock_timestamp()::text)"


# -- instances and their inboxes -----------------------------------------------------------


def enqueue(tx: Tx, instance_id: str, execution_id: str | None, event: StoredEvent,
            visible_at: int, now: int) -> None:
    """Put an event in an instance's inbox (the caller knows the instance is live)."""
    tx.execute(
        "UPDATE instances SET ready_at = least(coalesce(ready_at, %(at)s), %(at)s) "
        "WHERE instance_id = %(id)s AND (status != %(pending)s OR ready_at IS NULL)",
        {"at": visible_at, "id": instance_id, "pending": _PENDING},
    )
    _inbox_row(tx, instance_id, execution_id, event, visible_at, now)


def _inbox_row(tx: Tx, instance_id: str, execution_id: str | None, event: StoredEvent,
               visible_at: int, now: int) -> None:
    row = tx.execute(
        "INSERT INTO inbox (instance_id, execution_id, event, visible_at) "
        "VALUES (%s, %s, %s, %s) RETURNING id",
        (instance_id, execution_id, event.data, visible_at),
    ).fetchone()
    tx.keep(row[0], event)  # type: ignore[index]
    tx.due("orchestration", visible_at, now)


def deliver(tx: Tx, message: Message, now: int) -> None:
    """Put a message in a live instance's inbox (of `message.execution_id`, if set); messages to
    finished or other executions are dropped. Messages to entities go to the entity's inbox."""
    if is_entity_id(message.instance_id):
        deliver_entity(tx, message, now)
        return
    execution = "" if message.execution_id is None else "AND execution_id = %(execution)s "
    live = tx.execute(
        "UPDATE instances SET ready_at = CASE WHEN status != %(pending)s OR ready_at IS NULL "
        "THEN least(coalesce(ready_at, %(at)s), %(at)s) ELSE ready_at END "
        f"WHERE instance_id = %(id)s AND status NOT IN ({TERMINAL_SQL}) {execution}RETURNING 1",
        {"at": message.visible_at, "id": message.instance_id, "pending": _PENDING,
         "execution": message.execution_id},
    ).fetchone()
    if live is not None:
        _inbox_row(tx, message.instance_id, message.execution_id, message.event,
                   message.visible_at, now)


def insert_instance(tx: Tx, new: NewInstance, now: int) -> bool:
    cur = tx.execute(
        "INSERT INTO instances (instance_id, execution_id, name, version, status, "
        "input, tags, created_at, updated_at, scheduled_start, parent_instance_id, ready_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
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


def status_of(tx: Tx, instance_id: str) -> int | None:
    row = tx.execute(
        "SELECT status FROM instances WHERE instance_id = %s", (instance_id,)
    ).fetchone()
    return None if row is None else int(row[0])


def delete_instances(tx: Tx, instance_ids: list[str], now: int) -> None:
    if not instance_ids:
        return
    # Their rows locked first: a step of one being committed meanwhile finishes before its
    # history is deleted, or the rows it adds would outlive it under the next instance.
    tx.execute("SELECT 1 FROM instances WHERE instance_id = ANY(%s) ORDER BY instance_id "
               "FOR UPDATE", (instance_ids,))
    for table in ("history", "inbox", "activities", "activity_calls", "instances"):
        tx.execute(f"DELETE FROM {table} WHERE instance_id = ANY(%s)", (instance_ids,))
    for instance_id in instance_ids:
        tx.changed(instance_id)
        # A running instance replaced by a new start held its locks to the end.
        release_entity_locks(tx, instance_id, now)


def last_inbox_id(tx: Tx, instance_id: str) -> int | None:
    return tx.execute(  # type: ignore[index]
        "SELECT max(id) FROM inbox WHERE instance_id = %s", (instance_id,)
    ).fetchone()[0]


def queue_behind(tx: Tx, instance_id: str, last_id: int) -> None:
    """Move an instance's inbox rows up to `last_id` behind those queued since, keeping their
    order (see `sqlite_rows.queue_behind`)."""
    rows = tx.execute(
        "DELETE FROM inbox WHERE instance_id = %s AND id <= %s "
        "RETURNING id, execution_id, event, visible_at",
        (instance_id, last_id),
    ).fetchall()
    for old_id, execution_id, event, visible_at in sorted(rows):
        new_id = tx.execute(
            "INSERT INTO inbox (instance_id, execution_id, event, visible_at) "
            "VALUES (%s, %s, %s, %s) RETURNING id",
            (instance_id, execution_id, event, visible_at),
        ).fetchone()[0]  # type: ignore[index]
        tx.moved(old_id, new_id)


def refresh_ready(tx: Tx, instance_id: str, now: int) -> None:
    ready = tx.execute(
        "UPDATE instances SET ready_at = (SELECT min(visible_at) FROM inbox "
        "WHERE instance_id = %(id)s) WHERE instance_id = %(id)s RETURNING ready_at",
        {"id": instance_id},
    ).fetchone()
    if ready is not None and ready[0] is not None:
        tx.due("orchestration", ready[0], now)


def terminate_children(tx: Tx, instance_id: str, output: str | None, now: int) -> None:
    children = tx.execute(
        f"SELECT instance_id, status FROM instances WHERE parent_instance_id = %s "
        f"AND status NOT IN ({TERMINAL_SQL})",
        (instance_id,),
    ).fetchall()
    for child_id, status in children:
        event = h.execution_terminated(from_us(now), output, recurse=True)
        enqueue(tx, child_id, None, StoredEvent.made(event), now, now)
        if status == _PENDING:
            tx.execute(
                "UPDATE instances SET ready_at = least(ready_at, %s) WHERE instance_id = %s",
                (now, child_id),
            )


def prepare_rewind(tx: Tx, instance_id: str, reason: str | None,
                   parent_execution_id: str | None, now: int) -> None:
    """Mark a failed instance running again and ask its orchestrator for a clean history."""
    tx.execute(
        "UPDATE instances SET status = %s, output = NULL, failure = NULL, completed_at = NULL, "
        "updated_at = %s WHERE instance_id = %s",
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


def deliver_entity(tx: Tx, message: Message, now: int) -> None:
    """Put a message in an entity's inbox, creating the entity when it is new."""
    event = message.event.event
    name = message.instance_id.split("@", 2)[1]
    tx.execute(
        "INSERT INTO entities (instance_id, name, created_at, last_modified) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (message.instance_id, name, now, now),
    )
    source = source_of(event)
    request = event.entity_lock_requested
    lock_for = (request.parent_instance_id or None) if request is not None else None
    inbox_id = tx.execute(
        "INSERT INTO entity_inbox (instance_id, source, event, visible_at, lock_for) "
        "VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (message.instance_id, source, message.event.data, message.visible_at, lock_for),
    ).fetchone()[0]  # type: ignore[index]
    # Negative keys: the kept events share their keys with the orchestration inbox's ids.
    tx.keep(-inbox_id, message.event)
    holder = "locked_by IS NULL" if source is None else \
        "(locked_by IS NULL OR locked_by = %(source)s)"
    updated = tx.execute(
        "UPDATE entities SET ready_at = least(coalesce(ready_at, %(at)s), %(at)s) "
        f"WHERE instance_id = %(id)s AND {holder}",
        {"at": message.visible_at, "id": message.instance_id, "source": source},
    )
    if updated.rowcount:
        tx.due("entity", message.visible_at, now)


def refresh_entity(tx: Tx, instance_id: str, now: int) -> None:
    ready = tx.execute(
        "UPDATE entities e SET ready_at = (SELECT min(i.visible_at) FROM entity_inbox i "
        f"WHERE i.instance_id = e.instance_id AND {ELIGIBLE}) "
        "WHERE e.instance_id = %s RETURNING e.ready_at",
        (instance_id,),
    ).fetchone()
    if ready is not None and ready[0] is not None:
        tx.due("entity", ready[0], now)


def release_entity_locks(tx: Tx, orchestration_id: str, now: int) -> int:
    """Unlock every entity an orchestration holds (it finished, or is gone), and take back
    its lock requests still on their way."""
    held = [r[0] for r in tx.execute(
        "UPDATE entities SET locked_by = NULL, lock_section = NULL, last_modified = %s "
        "WHERE locked_by = %s RETURNING instance_id", (now, orchestration_id))]
    waiting = [r[0] for r in tx.execute(
        "DELETE FROM entity_inbox WHERE lock_for = %s RETURNING instance_id",
        (orchestration_id,))]
    for entity_id in sorted(set(held + waiting)):
        refresh_entity(tx, entity_id, now)
        drop_if_empty(tx, entity_id)
    return len(held)


def drop_if_empty(tx: Tx, entity_id: str) -> None:
    """An entity without state, lock or messages no longer exists."""
    tx.execute(
        "DELETE FROM entities WHERE instance_id = %(id)s AND state IS NULL "
        "AND locked_by IS NULL AND lock_token IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM entity_inbox WHERE instance_id = %(id)s)",
        {"id": entity_id},
    )


def schedule_calls(tx: Tx, tasks: list[ActivityTask]) -> None:
    """Queue the tasks of calls with a retry policy: each counts on from the attempts its call's
    earlier tasks made (and from no fewer than the orchestrator counted), which it takes over."""
    for a in tasks:
        row = tx.execute(
            "DELETE FROM activity_calls WHERE instance_id = %s AND execution_id = %s "
            "AND call_id = %s RETURNING attempts", (a.instance_id, a.execution_id, a.call_id),
        ).fetchone()
        tx.execute(
            "INSERT INTO activities (instance_id, execution_id, task_id, name, version, input, "
            "available_at, trace_context, call_id, attempt) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (a.instance_id, a.execution_id, a.task_id, a.name, a.version, a.input, a.visible_at,
             encode(a.trace_context) if a.trace_context else None, a.call_id,
             max(a.retries, row[0] if row else 0)),
        )
