"""The entity operations of the backend: entities, their inboxes, leases and locks (the row-level
steps they share with instances are in `statements_rows`)."""

from __future__ import annotations

import logging
from typing import Any

from ..entities.batch import EntityStep
from ..errors import InvalidInput, LeaseLost
from ..inbox import Message
from ..state import TERMINAL
from .base import EntityPage, EntityQuery, EntityRecord, EntityWorkItem
from .dialect import Store, Tx
from .statements_leases import give_back, renew, take
from .statements_rows import (
    ELIGIBLE,
    TERMINAL_SQL,
    deliver,
    deliver_entity,
    drop_if_empty,
    insert_instance,
    refresh_entity,
    release_entity_locks,
    status_of,
)

log = logging.getLogger("dtrio.backend")

# Entities that exist for queries: with a state or a lock (others only have messages waiting).
_EXISTS = "(e.state IS NOT NULL OR e.locked_by IS NOT NULL)"
# The messages an entity may process now, oldest first, up to a batch.
_MESSAGES = (
    "SELECT i.id, i.event FROM entity_inbox i JOIN entities e USING (instance_id) "
    f"WHERE i.instance_id = ? AND i.visible_at <= ? AND {ELIGIBLE} ORDER BY i.id LIMIT ?"
)


class EntityStatements:
    _store: Store

    async def send_entity_message(self, message: Message) -> None:
        await self._store.write(lambda tx: deliver_entity(tx, message, tx.clock.now_us()))

    # -- work items ------------------------------------------------------------------------

    async def lease_entities(
        self, owner: str, limit: int, lease_us: int, batch_size: int,
        names: frozenset[str] | None = None,
    ) -> list[EntityWorkItem]:
        def items(tx: Tx, rows: list[Any], now: int) -> list[EntityWorkItem]:
            leased = sorted((EntityWorkItem(*r, []) for r in rows), key=lambda i: i.instance_id)
            for item in leased:
                for inbox_id, event in tx.execute(
                    _MESSAGES, (item.instance_id, now, batch_size)
                ):
                    item.messages.append((inbox_id, tx.leased(-inbox_id, event)))
            return leased

        # Entities have no versions: any version of each name.
        any_version = None if names is None else frozenset((n, frozenset()) for n in names)
        return await take(
            self._store, "entities", owner, limit, lease_us, any_version,
            "instance_id, name, state, locked_by, lock_section, lock_token", items,
        )

    async def renew_entity(self, item: EntityWorkItem, lease_us: int) -> None:
        await renew(self._store, "entities", item.instance_id, item.lock_token, lease_us,
                    f"entity {item.instance_id!r}")

    async def complete_entity(self, item: EntityWorkItem, step: EntityStep) -> None:
        def op(tx: Tx) -> None:
            now = tx.clock.now_us()
            eid = item.instance_id
            if tx.execute(
                "SELECT 1 FROM entities WHERE instance_id = ? AND lock_token = ?"
                + tx.dialect.for_update,
                (eid, item.lock_token),
            ).fetchone() is None:
                raise LeaseLost(f"lease on entity {eid!r} was lost; its batch was not saved")
            messages = step.messages
            locked_by, section = step.locked_by, step.lock_section
            before = (item.locked_by, item.lock_section)
            if locked_by is not None and status_of(tx, locked_by) in (None, *TERMINAL):
                # The holder finished while the batch ran (its locks were released then), or
                # before its request got here: nobody would ever release this lock, so it is
                # not kept and the request goes no further.
                messages = [m for m in messages if not _lock_message_of(m, section)]
                locked_by = section = None
            tx.executemany("DELETE FROM entity_inbox WHERE id = ?", [(i,) for i in step.consumed])
            changed = step.operations > 0 or (locked_by, section) != before
            tx.execute(
                "UPDATE entities SET state = ?, locked_by = ?, lock_section = ?, "
                "last_modified = CASE WHEN ? THEN ? ELSE last_modified END, lock_owner = NULL, "
                "lock_token = NULL, lock_expires = NULL WHERE instance_id = ?",
                (step.state, locked_by, section, changed, now, eid),
            )
            for message in messages:
                deliver(tx, message, now)
            for new in step.new_instances:
                if not insert_instance(tx, new, now):
                    log.warning("entity %s started orchestration %r, but an instance with "
                                "that ID exists already; nothing was started",
                                eid, new.instance_id)
            refresh_entity(tx, eid, now)
            drop_if_empty(tx, eid)

        await self._store.write(op)

    async def abandon_entity(self, item: EntityWorkItem, delay_us: int) -> None:
        await give_back(self._store, "entities", item.instance_id, item.lock_token, delay_us)

    # -- reading and cleaning --------------------------------------------------------------

    async def _entity_records(
        self, where: str, args: list[Any], include_state: bool, limit: int
    ) -> list[EntityRecord]:
        rows = await self._store.read(lambda tx: tx.execute(
            "SELECT e.instance_id, e.name, e.created_at, e.last_modified, e.locked_by, "
            "(SELECT count(*) FROM entity_inbox i WHERE i.instance_id = e.instance_id), "
            f"{'e.state' if include_state else 'NULL'} FROM entities e WHERE {where} "
            "ORDER BY e.instance_id LIMIT ?",
            [*args, limit],
        ).fetchall())
        return [EntityRecord(*r) for r in rows]

    async def get_entity(self, instance_id: str, *, include_state: bool) -> EntityRecord | None:
        found = await self._entity_records(
            f"e.instance_id = ? AND {_EXISTS}", [instance_id], include_state, 1)
        return found[0] if found else None

    async def query_entities(self, query: EntityQuery) -> EntityPage:
        """A page of entities ordered by ID; the token is the last ID of the page."""
        if query.page_size < 1:
            raise InvalidInput("page_size must be at least 1")
        where = "true" if query.include_transient else _EXISTS
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
        records = await self._entity_records(
            where, args, query.include_state, query.page_size + 1)
        more = len(records) > query.page_size
        page = records[: query.page_size]
        return EntityPage(page, page[-1].instance_id if more else None)

    async def clean_entity_storage(
        self, remove_empty: bool, release_orphaned_locks: bool
    ) -> tuple[int, int]:
        """Release locks whose orchestration is gone or finished, then delete entities without
        state, lock or messages. Returns (entities removed, locks released)."""

        def op(tx: Tx) -> tuple[int, int]:
            now = tx.clock.now_us()
            released = 0
            if release_orphaned_locks:
                orphaned = [r[0] for r in tx.execute(
                    "SELECT DISTINCT e.locked_by FROM entities e LEFT JOIN instances o "
                    "ON o.instance_id = e.locked_by WHERE e.locked_by IS NOT NULL AND "
                    f"(o.instance_id IS NULL OR o.status IN ({TERMINAL_SQL})) "
                    "ORDER BY e.locked_by").fetchall()]
                for orchestration_id in orphaned:
                    released += release_entity_locks(tx, orchestration_id, now)
            removed = 0
            if remove_empty:
                removed = tx.execute(
                    "DELETE FROM entities WHERE state IS NULL AND locked_by IS NULL AND "
                    "lock_token IS NULL AND NOT EXISTS (SELECT 1 FROM entity_inbox i "
                    "WHERE i.instance_id = entities.instance_id)"
                ).rowcount
            return removed, released

        return await self._store.write(op)


def _lock_message_of(message: Message, section: str | None) -> bool:
    event = message.event.event
    body = event.entity_lock_requested or event.entity_lock_granted
    return body is not None and body.critical_section_id == section
