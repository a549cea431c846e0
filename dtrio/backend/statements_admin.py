"""The management operations of the backend: rewind, purge, query."""

from __future__ import annotations

from typing import Any

import trio

from .. import _pb as pb
from ..errors import InstanceNotFound, InvalidInput, InvalidOperation
from ..replay.rewind import sections_open_at_failure
from ..state import TERMINAL
from ..wire import decode
from .base import InstancePage, InstanceQuery
from .dialect import Store, Tx
from .statements_rows import (
    HISTORY_OF,
    TERMINAL_SQL,
    delete_instances,
    prepare_rewind,
    status_of,
)
from .tables import parse_token, record, record_columns

_FAILED = int(pb.OrchestrationStatus.FAILED)
PURGE_CHUNK = 500


class AdminStatements:
    _store: Store

    async def rewind_instance(self, instance_id: str, reason: str | None) -> None:
        def op(tx: Tx) -> None:
            status = status_of(tx, instance_id, lock=True)
            if status is None:
                raise InstanceNotFound(instance_id)
            if status != _FAILED:
                raise InvalidOperation(
                    f"cannot rewind orchestration {instance_id!r}: it is "
                    f"{pb.OrchestrationStatus(status).name}, "
                    "and only FAILED instances can be rewound"
                )
            history = [decode(pb.HistoryEvent, r[0])
                       for r in tx.execute(HISTORY_OF, (instance_id,)).fetchall()]
            if sections_open_at_failure(history):
                raise InvalidOperation(
                    f"cannot rewind orchestration {instance_id!r}: it failed inside an entity "
                    "critical section, whose locks were released when it failed; start it again "
                    "instead"
                )
            prepare_rewind(tx, instance_id, reason, None, tx.clock.now_us())

        await self._store.write(op)

    # -- purge -----------------------------------------------------------------------------

    async def purge_instance(self, instance_id: str, *, recursive: bool = True) -> int:
        """Delete a finished instance (and, with `recursive`, its finished sub-orchestrations).
        Returns how many were deleted: 0 for unknown or unfinished instances."""

        def op(tx: Tx) -> int:
            if status_of(tx, instance_id, lock=True) not in TERMINAL:
                return 0
            doomed, frontier = [instance_id], [instance_id]
            while recursive and frontier:
                parents, params = tx.dialect.in_list("parent_instance_id", frontier)
                frontier = [r[0] for r in tx.execute(
                    f"SELECT instance_id FROM instances WHERE {parents} "
                    f"AND status IN ({TERMINAL_SQL})", params).fetchall()]
                doomed += frontier
            delete_instances(tx, doomed, tx.clock.now_us())
            return len(doomed)

        return await self._store.write(op)

    async def purge_instances(
        self, created_from: int | None, created_to: int | None, statuses: frozenset[int] | None
    ) -> int:
        """Delete finished instances created in [created_from, created_to) whose status is in
        `statuses` (any finished status when None), a chunk per transaction."""
        wanted = TERMINAL if not statuses else frozenset(statuses) & TERMINAL
        if not wanted:
            return 0
        where, args = _since("created_at", created_from, created_to)
        sql = (
            "SELECT instance_id FROM instances "
            f"WHERE status IN ({','.join(map(str, sorted(wanted)))})"
            f"{where} LIMIT {PURGE_CHUNK}{self._store.dialect.skip_locked}"
        )
        total = 0
        while True:
            def op(tx: Tx) -> int:
                ids = [r[0] for r in tx.execute(sql, args).fetchall()]
                delete_instances(tx, ids, tx.clock.now_us())
                return len(ids)

            deleted = await self._store.write(op)
            total += deleted
            if deleted < PURGE_CHUNK:
                return total
            await trio.lowlevel.checkpoint()  # let the engine run between chunks

    # -- query -----------------------------------------------------------------------------

    async def query_instances(self, query: InstanceQuery) -> InstancePage:
        """A page of instances ordered by (created_at, instance_id): stable under inserts."""
        if query.page_size < 1:
            raise InvalidInput("page_size must be at least 1")
        where, args = _instance_filters(query)
        if query.statuses:
            where += f" AND status IN ({','.join(str(int(s)) for s in sorted(query.statuses))})"
        rows = await self._page(
            f"SELECT {record_columns(query.fetch_payloads)} FROM instances", "created_at",
            where, args, query.continuation_token, query.page_size,
            descending=query.newest_first)
        more = len(rows) > query.page_size
        records = [record(r, query.fetch_payloads) for r in rows[: query.page_size]]
        token = f"{records[-1].created_at}:{records[-1].instance_id}" if more else None
        return InstancePage(records, token)

    async def count_instances(self, query: InstanceQuery) -> dict[int, int]:
        where, args = _instance_filters(query)
        rows = await self._store.read(lambda tx: tx.execute(
            f"SELECT status, count(*) FROM instances WHERE true{where} GROUP BY status", args,
        ).fetchall())
        return {int(status): int(n) for status, n in rows}

    async def list_instance_ids(
        self, statuses: frozenset[int] | None, completed_from: int | None,
        completed_to: int | None, page_size: int, last_key: str | None,
    ) -> tuple[list[str], str | None]:
        """IDs of finished instances, ordered by completion time, a page at a time; the key is
        None on the last page."""
        wanted = TERMINAL if not statuses else frozenset(statuses) & TERMINAL
        if not wanted:
            return [], None
        where, args = _since("completed_at", completed_from, completed_to)
        where += (f" AND status IN ({','.join(map(str, sorted(wanted)))}) "
                  "AND completed_at IS NOT NULL")
        rows = await self._page("SELECT instance_id, completed_at FROM instances",
                                "completed_at", where, args, last_key, page_size)
        page = rows[:page_size]
        more = len(rows) > page_size
        return [r[0] for r in page], f"{page[-1][1]}:{page[-1][0]}" if more else None

    async def _page(self, select: str, time_column: str, where: str, args: list[Any],
                    token: str | None, page_size: int, *, descending: bool = False) -> list[Any]:
        """Rows of `select` ordered by (`time_column`, instance_id), from the continuation token
        on, one more than a page (telling whether another page follows)."""
        if token:
            after, key = parse_token(token)
            where += f" AND ({time_column}, instance_id) {'<' if descending else '>'} (?, ?)"
            args = [*args, after, key]
        order = " DESC" if descending else ""
        return await self._store.read(lambda tx: tx.execute(
            f"{select} WHERE true{where} ORDER BY {time_column}{order}, instance_id{order} "
            "LIMIT ?", [*args, page_size + 1],
        ).fetchall())


def _instance_filters(query: InstanceQuery) -> tuple[str, list[Any]]:
    """`query`'s conditions but its statuses and page, each as " AND ...", and their
    parameters."""
    where, args = _since("created_at", query.created_from, query.created_to)
    for column, value in (("name", query.name), ("parent_instance_id", query.parent_instance_id)):
        if value is not None:
            where += f" AND {column} = ?"
            args.append(value)
    if query.instance_id_prefix:
        where += " AND substr(instance_id, 1, ?) = ?"
        args += [len(query.instance_id_prefix), query.instance_id_prefix]
    return where, args


def _since(column: str, start: int | None, end: int | None) -> tuple[str, list[Any]]:
    """A condition that `column` lies in [start, end) (either end open when None)."""
    where, args = "", []
    if start is not None:
        where += f" AND {column} >= ?"
        args.append(start)
    if end is not None:
        where += f" AND {column} < ?"
        args.append(end)
    return where, args
