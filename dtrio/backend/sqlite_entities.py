"""Entity storage of the SQLite backend: entities, their inboxes, leases and locks.

An entity's row holds its state and lock; its inbox holds operation and lock messages. An
entity is ready when its inbox holds a message it may process now: any message while it is
unlocked, only the lock holder's calls and unlock while it is locked (the rest wait).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from .. import _pb as pb
from ..entities.batch import EntityStep, source_of
from ..errors import InvalidInput, LeaseLost
from ..state import TERMINAL, Message, NewInstance
from ..wire import decode
from .base import EntityPage, EntityQuery, EntityRecord, EntityWorkItem
from .sqlite_leases import give_back, renew_lease

if TYPE_CHECKING:
    from ..clock import Clock

log = logging.getLogger("dtrio.backend")

_TERMINAL_SQL = ",".join(str(s) for s in sorted(TERMINAL))
# Messages an entity may process now, given its lock (`e` is its row, `i` the inbox).
_ELIGIBLE = "(e.locked_by IS NULL OR i.source = e.locked_by)"
# Entities that exist for queries: with a state or a lock (others only have messages waiting).
_EXISTS = "(e.state IS NOT NULL OR e.locked_by IS NOT NULL)"


class SqliteEntities:
    # Provided by SqliteBackend.
    _conn: sqlite3.Connection
    _clock: Clock
    _decoded: Any
    _op_decoded: list[tuple[int, pb.HistoryEvent]]
    poller_due: int | None
    _earliest_future: int | None
    _wake_entities: bool

    async def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        raise NotImplementedError

    def _check_open(self) -> None:
        raise NotImplementedError

    def _insert_instance(self, conn: sqlite3.Connection, new: NewInstance, now: int) -> bool:
        raise NotImplementedError

    def _deliver(self, conn: sqlite3.Connection, message: Message, now: int) -> None:
        raise NotImplementedError

    # -- messages --------------------------------------------------------------------------

    def _note_entity_visible(self, visible_at: int, now: int) -> None:
        if visible_at <= now:
            self._wake_entities = True
        elif self.poller_due is None or visible_at < self.poller_due:
            self._earliest_future = visible_at

    def _deliver_entity(self, conn: sqlite3.Connection, message: Message, now: int) -> None:
        """Put a message in an entity's inbox, creating the entity when it is new."""
        event = message.decoded or decode(pb.HistoryEvent, message.event)
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
            (message.instance_id, source, message.event, message.visible_at, lock_for),
        )
        # Negative keys: the decoded-event cache is shared with the orchestration inbox's ids.
        self._op_decoded.append((-cur.lastrowid, event))
        updated = conn.execute(
            "UPDATE entities SET ready_at = min(coalesce(ready_at, ?1), ?1) "
            "WHERE instance_id = ?2 AND (locked_by IS NULL OR locked_by = ?3)",
            (message.visible_at, message.instance_id, source),
        )
        if updated.rowcount:
            self._note_entity_visible(message.visible_at, now)

    async def send_entity_message(self, message: Message) -> None:
        def op(conn: sqlite3.Connection) -> None:
            self._deliver_entity(conn, message, self._clock.now_us())

        await self._write(op)

    def _refresh_entity(self, conn: sqlite3.Connection, instance_id: str, now: int) -> None:
        ready = conn.execute(
            f"SELECT min(i.visible_at) FROM entity_inbox i JOIN entities e USING (instance_id) "
            f"WHERE i.instance_id = ? AND {_ELIGIBLE}",
            (instance_id,),
        ).fetchone()[0]
        conn.execute(
            "UPDATE entities SET ready_at = ? WHERE instance_id = ?", (ready, instance_id))
        if ready is not None:
            self._note_entity_visible(ready, now)

    def _release_entity_locks(
        self, conn: sqlite3.Connection, orchestration_id: str, now: int
    ) -> int:
        """Unlock every entity an orchestration holds (it finished, or is gone), and take back
        its lock requests still on their way: granted later, they would lock an entity for an
        execution that is over, or for a new instance under the same ID."""
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
            self._refresh_entity(conn, entity_id, now)
            self._drop_if_empty(conn, entity_id)
        return len(held)

    def _drop_if_empty(self, conn: sqlite3.Connection, entity_id: str) -> None:
        """An entity without state, lock or messages no longer exists."""
        conn.execute(
            "DELETE FROM entities WHERE instance_id = ?1 AND state IS NULL "
            "AND locked_by IS NULL AND lock_token IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM entity_inbox WHERE instance_id = ?1)",
            (entity_id,),
        )

    def _orchestration_live(self, conn: sqlite3.Connection, instance_id: str) -> bool:
        row = conn.execute(
            "SELECT status FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()
        return row is not None and row[0] not in TERMINAL

    # -- work items ------------------------------------------------------------------------

    async def lease_entities(
        self, owner: str, limit: int, lease_us: int, batch_size: int,
        names: frozenset[str] | None = None,
    ) -> list[EntityWorkItem]:
        self._check_open()
        await trio.lowlevel.checkpoint_if_cancelled()  # never take leases we cannot hand out
        conn = self._conn
        now = self._clock.now_us()
        if names is None:
            matching, params = "1", []
        else:
            matching, params = f"name IN ({','.join('?' * len(names))})", sorted(names)
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                "UPDATE entities SET lock_owner = ?, lock_token = hex(randomblob(12)), "
                "lock_expires = ? WHERE instance_id IN (SELECT instance_id FROM entities "
                "WHERE ready_at <= ? AND (lock_expires IS NULL OR lock_expires <= ?) "
                f"AND ({matching}) ORDER BY ready_at LIMIT ?) "
                "RETURNING instance_id, name, state, locked_by, lock_section, lock_token",
                (owner, now + lease_us, now, now, *params, limit),
            ).fetchall()
            items = [EntityWorkItem(*r, []) for r in rows]
            for item in items:
                for inbox_id, event in conn.execute(
                    "SELECT i.id, i.event FROM entity_inbox i JOIN entities e USING (instance_id) "
                    f"WHERE i.instance_id = ? AND i.visible_at <= ? AND {_ELIGIBLE} "
                    "ORDER BY i.id LIMIT ?",
                    (item.instance_id, now, batch_size),
                ):
                    item.messages.append((inbox_id, event))
                    parsed = self._decoded.pop(-inbox_id, None)
                    if parsed is not None:
                        item.decoded[inbox_id] = parsed
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        await trio.lowlevel.cancel_shielded_checkpoint()
        return items

    async def renew_entity(self, item: EntityWorkItem, lease_us: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            renew_lease(conn, "entities", item.instance_id, item.lock_token,
                        self._clock.now_us() + lease_us, "entity")

        await self._write(op)

    async def complete_entity(self, item: EntityWorkItem, step: EntityStep) -> None:
        def op(conn: sqlite3.Connection) -> None:
            now = self._clock.now_us()
            eid = item.instance_id
            if conn.execute(
                "SELECT 1 FROM entities WHERE instance_id = ? AND lock_token = ?",
                (eid, item.lock_token),
            ).fetchone() is None:
                raise LeaseLost(f"lease on entity {eid!r} was lost; its batch was not saved")
            messages = step.messages
            locked_by, section = step.locked_by, step.lock_section
            before = (item.locked_by, item.lock_section)
            if locked_by is not None and not self._orchestration_live(conn, locked_by):
                # The holder finished while the batch ran (its locks were released then), or
                # before its request got here: nobody would ever release this lock, so it is
                # not kept and the request goes no further.
                messages = [m for m in messages if not _lock_message_of(m, section)]
                locked_by = section = None
            conn.executemany(
                "DELETE FROM entity_inbox WHERE id = ?", [(i,) for i in step.consumed])
            changed = step.operations > 0 or (locked_by, section) != before
            conn.execute(
                "UPDATE entities SET state = ?, locked_by = ?, lock_section = ?, "
                "last_modified = CASE WHEN ? THEN ? ELSE last_modified END, lock_owner = NULL, "
                "lock_token = NULL, lock_expires = NULL WHERE instance_id = ?",
                (step.state, locked_by, section, changed, now, eid),
            )
            for message in messages:
                self._deliver(conn, message, now)
            for new in step.new_instances:
                if not self._insert_instance(conn, new, now):
                    log.warning("entity %s started orchestration %r, but an instance with "
                                "that ID exists already; nothing was started",
                                eid, new.instance_id)
            self._refresh_entity(conn, eid, now)
            self._drop_if_empty(conn, eid)

        await self._write(op)

    async def abandon_entity(self, item: EntityWorkItem, delay_us: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            retry_at = self._clock.now_us() + delay_us
            give_back(conn, "entities", item.instance_id, item.lock_token, retry_at)
            self._note_entity_visible(retry_at, retry_at - delay_us)

        await self._write(op)

    # -- reading and cleaning --------------------------------------------------------------

    def _records(
        self, where: str, args: list[Any], include_state: bool, limit: int
    ) -> list[EntityRecord]:
        rows = self._conn.execute(
            "SELECT e.instance_id, e.name, e.created_at, e.last_modified, e.locked_by, "
            "(SELECT count(*) FROM entity_inbox i WHERE i.instance_id = e.instance_id), "
            f"{'e.state' if include_state else 'NULL'} FROM entities e WHERE {where} "
            "ORDER BY e.instance_id LIMIT ?",
            [*args, limit],
        ).fetchall()
        return [EntityRecord(*r) for r in rows]

    async def get_entity(self, instance_id: str, *, include_state: bool) -> EntityRecord | None:
        self._check_open()
        found = self._records(
            f"e.instance_id = ? AND {_EXISTS}",
            [instance_id], include_state, 1,
        )
        await trio.lowlevel.checkpoint()
        return found[0] if found else None

    async def query_entities(self, query: EntityQuery) -> EntityPage:
        """A page of entities ordered by ID; the token is the last ID of the page."""
        self._check_open()
        if query.page_size < 1:
            raise InvalidInput("page_size must be at least 1")
        where = "1 = 1" if query.include_transient else _EXISTS
        args: list[Any] = []
        if query.instance_id_prefix:
            where += " AND substr(e.instance_id, 1, ?) = ?"
            args += [len(query.instance_id_prefix), query.instance_id_prefix]
        if query.modified_from is not None:
            where += " AND e.last_modified >= ?"
            args.append(query.modified_from)
        if query.modified_to is not None:
            where += " AND e.last_modified < ?"
            args.append(query.modified_to)
        if query.continuation_token:
            if not query.continuation_token.startswith("@"):
                raise InvalidInput(f"continuation token {query.continuation_token!r} is not "
                                   "one this engine issued")
            where += " AND e.instance_id > ?"
            args.append(query.continuation_token)
        records = self._records(where, args, query.include_state, query.page_size + 1)
        await trio.lowlevel.checkpoint()
        more = len(records) > query.page_size
        page = records[: query.page_size]
        return EntityPage(page, page[-1].instance_id if more else None)

    async def clean_entity_storage(
        self, remove_empty: bool, release_orphaned_locks: bool
    ) -> tuple[int, int]:
        """Release locks whose orchestration is gone or finished, then delete entities without
        state, lock or messages. Returns (entities removed, locks released)."""

        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            now = self._clock.now_us()
            released = 0
            if release_orphaned_locks:
                orphaned = [r[0] for r in conn.execute(
                    "SELECT DISTINCT e.locked_by FROM entities e LEFT JOIN instances o "
                    "ON o.instance_id = e.locked_by WHERE e.locked_by IS NOT NULL AND "
                    f"(o.instance_id IS NULL OR o.status IN ({_TERMINAL_SQL}))")]
                for orchestration_id in orphaned:
                    released += self._release_entity_locks(conn, orchestration_id, now)
            removed = 0
            if remove_empty:
                removed = conn.execute(
                    "DELETE FROM entities WHERE state IS NULL AND locked_by IS NULL AND "
                    "lock_token IS NULL AND NOT EXISTS (SELECT 1 FROM entity_inbox i "
                    "WHERE i.instance_id = entities.instance_id)"
                ).rowcount
            return removed, released

        return await self._write(op)


def _lock_message_of(message: Message, section: str | None) -> bool:
    event = message.decoded or decode(pb.HistoryEvent, message.event)
    body = event.entity_lock_requested or event.entity_lock_granted
    return body is not None and body.critical_section_id == section
