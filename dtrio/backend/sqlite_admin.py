"""Management operations of the SQLite backend: rewind, purge, query."""

from __future__ import annotations

import sqlite3
from typing import Any

import trio

from .. import _pb as pb
from ..errors import InstanceNotFound, InvalidOperation
from ..replay.rewind import sections_open_at_failure
from ..state import TERMINAL
from ..wire import decode
from .base import InstancePage, InstanceQuery
from .sqlite_rows import TERMINAL_SQL, delete_instances, prepare_rewind
from .sqlite_store import SqliteStore
from .tables import SQLITE, count_sql, page_of, page_sql, parse_token

_FAILED = int(pb.OrchestrationStatus.FAILED)
PURGE_CHUNK = 500


class SqliteAdmin:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def rewind_instance(self, instance_id: str, reason: str | None) -> None:
        store = self._store

        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT status FROM instances WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            if row is None:
                raise InstanceNotFound(instance_id)
            if row[0] != _FAILED:
                raise InvalidOperation(
                    f"cannot rewind orchestration {instance_id!r}: it is "
                    f"{pb.OrchestrationStatus(row[0]).name}, "
                    "and only FAILED instances can be rewound"
                )
            history = [decode(pb.HistoryEvent, r[0]) for r in conn.execute(
                "SELECT event FROM history WHERE instance_id = ? ORDER BY seq", (instance_id,))]
            if sections_open_at_failure(history):
                raise InvalidOperation(
                    f"cannot rewind orchestration {instance_id!r}: it failed inside an entity "
                    "critical section, whose locks were released when it failed; start it again "
                    "instead"
                )
            prepare_rewind(store, instance_id, reason, None, store.clock.now_us())

        await store.write(op)

    # -- purge -----------------------------------------------------------------------------

    async def purge_instance(self, instance_id: str, *, recursive: bool = True) -> int:
        """Delete a finished instance (and, with `recursive`, its finished sub-orchestrations).
        Returns how many were deleted: 0 for unknown or unfinished instances."""
        store = self._store

        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT status FROM instances WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            if row is None or row[0] not in TERMINAL:
                return 0
            doomed, frontier = [instance_id], [instance_id]
            while recursive and frontier:
                marks = ",".join("?" * len(frontier))
                frontier = [r[0] for r in conn.execute(
                    f"SELECT instance_id FROM instances WHERE parent_instance_id IN ({marks}) "
                    f"AND status IN ({TERMINAL_SQL})", frontier)]
                doomed += frontier
            delete_instances(store, doomed, store.clock.now_us())
            return len(doomed)

        return await store.write(op)

    async def purge_instances(
        self, created_from: int | None, created_to: int | None, statuses: frozenset[int] | None
    ) -> int:
        """Delete finished instances created in [created_from, created_to) whose status is in
        `statuses` (any finished status when None), a chunk per transaction."""
        wanted = TERMINAL if not statuses else frozenset(statuses) & TERMINAL
        if not wanted:
            return 0
        where, args = _created_range(created_from, created_to)
        sql = (
            "SELECT instance_id FROM instances "
            f"WHERE status IN ({','.join(map(str, sorted(wanted)))})"
            f"{where} LIMIT {PURGE_CHUNK}"
        )
        total = 0
        store = self._store
        while True:
            def op(conn: sqlite3.Connection) -> int:
                ids = [r[0] for r in conn.execute(sql, args)]
                delete_instances(store, ids, store.clock.now_us())
                return len(ids)

            deleted = await store.write(op)
            total += deleted
            if deleted < PURGE_CHUNK:
                return total
            await trio.lowlevel.checkpoint()  # let the engine run between chunks

    # -- query -----------------------------------------------------------------------------

    async def query_instances(self, query: InstanceQuery) -> InstancePage:
        """A page of instances ordered by (created_at, instance_id): stable under inserts."""
        sql, args = page_sql(query, SQLITE)
        rows = await self._store.read(lambda conn: conn.execute(sql, args).fetchall())
        return page_of(rows, query)

    async def count_instances(self, query: InstanceQuery) -> dict[int, int]:
        sql, args = count_sql(query, SQLITE)
        rows = await self._store.read(lambda conn: conn.execute(sql, args).fetchall())
        return {int(status): int(n) for status, n in rows}

    async def list_instance_ids(
        self,
        statuses: frozenset[int] | None,
        completed_from: int | None,
        completed_to: int | None,
        page_size: int,
        last_key: str | None,
    ) -> tuple[list[str], str | None]:
        """IDs of finished instances, ordered by completion time, a page at a time; the key is
        None on the last page."""
        wanted = TERMINAL if not statuses else frozenset(statuses) & TERMINAL
        if not wanted:
            return [], None
        where = f"status IN ({','.join(map(str, sorted(wanted)))}) AND completed_at IS NOT NULL"
        args: list[Any] = []
        if completed_from is not None:
            where += " AND completed_at >= ?"
            args.append(completed_from)
        if completed_to is not None:
            where += " AND completed_at < ?"
            args.append(completed_to)
        if last_key:
            completed, key = parse_token(last_key)
            where += " AND (completed_at, instance_id) > (?, ?)"
            args += [completed, key]
        rows = await self._store.read(lambda conn: conn.execute(
            f"SELECT instance_id, completed_at FROM instances WHERE {where} "
            f"ORDER BY completed_at, instance_id LIMIT ?",
            [*args, page_size + 1],
        ).fetchall())
        page = rows[:page_size]
        more = len(rows) > page_size
        return [r[0] for r in page], f"{page[-1][1]}:{page[-1][0]}" if more else None


def _created_range(created_from: int | None, created_to: int | None) -> tuple[str, list[Any]]:
    where, args = "", []
    if created_from is not None:
        where += " AND created_at >= ?"
        args.append(created_from)
    if created_to is not None:
        where += " AND created_at < ?"
        args.append(created_to)
    return where, args
