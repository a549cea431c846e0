"""Management operations of the SQLite backend: rewind, recursive terminate, purge, query."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from .. import _pb as pb
from .. import history as h
from ..errors import InstanceNotFound, InvalidInput, InvalidOperation
from ..replay.rewind import sections_open_at_failure
from ..state import TERMINAL, ChildRewind
from ..times import from_us
from ..wire import decode, encode
from .base import InstancePage, InstanceQuery, InstanceRecord

if TYPE_CHECKING:
    from ..clock import Clock
    from ..signals import ChangeBoard

_FAILED = int(pb.OrchestrationStatus.FAILED)
_RUNNING = int(pb.OrchestrationStatus.RUNNING)
_TERMINAL_SQL = ",".join(str(s) for s in sorted(TERMINAL))
PURGE_CHUNK = 500


class SqliteAdmin:
    # Provided by SqliteBackend.
    _conn: sqlite3.Connection
    _clock: Clock
    _changed: set[str]
    instance_changes: ChangeBoard

    async def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        raise NotImplementedError

    def _enqueue(self, conn: sqlite3.Connection, instance_id: str, execution_id: str | None,
                 event: bytes, visible_at: int, now: int,
                 decoded: pb.HistoryEvent | None = None) -> None:
        raise NotImplementedError

    def _insert_instance(self, conn: sqlite3.Connection, new: Any, now: int) -> bool:
        raise NotImplementedError

    def _delete_instances(self, conn: sqlite3.Connection, instance_ids: list[str]) -> None:
        raise NotImplementedError

    def _check_open(self) -> None:
        raise NotImplementedError

    # -- rewind ----------------------------------------------------------------------------

    def _prepare_rewind(self, conn: sqlite3.Connection, instance_id: str, reason: str | None,
                        parent_execution_id: str | None, now: int) -> None:
        """Mark a failed instance running again and ask its orchestrator for a clean history."""
        conn.execute(
            "UPDATE instances SET status = ?, output = NULL, failure = NULL, completed_at = NULL, "
            "updated_at = ? WHERE instance_id = ?",
            (_RUNNING, now, instance_id),
        )
        self._changed.add(instance_id)
        event = h.event(from_us(now), execution_rewound=pb.ExecutionRewoundEvent(
            reason=reason, parent_execution_id=parent_execution_id,
        ))
        self._enqueue(conn, instance_id, None, encode(event), now, now, event)

    async def rewind_instance(self, instance_id: str, reason: str | None) -> None:
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
            self._prepare_rewind(conn, instance_id, reason, None, self._clock.now_us())

        await self._write(op)

    def _rewind_child(self, conn: sqlite3.Connection, child: ChildRewind, now: int) -> None:
        row = conn.execute(
            "SELECT status FROM instances WHERE instance_id = ?", (child.instance_id,)
        ).fetchone()
        if row is None:
            self._insert_instance(conn, child.recreate, now)
        elif row[0] == _FAILED:
            self._prepare_rewind(
                conn, child.instance_id, child.reason, child.parent_execution_id, now
            )

    # -- recursive terminate ---------------------------------------------------------------

    def _terminate_children(self, conn: sqlite3.Connection, instance_id: str, output: str | None,
                            now: int) -> None:
        children = conn.execute(
            f"SELECT instance_id, status FROM instances WHERE parent_instance_id = ? "
            f"AND status NOT IN ({_TERMINAL_SQL})",
            (instance_id,),
        ).fetchall()
        for child_id, status in children:
            event = h.execution_terminated(from_us(now), output, recurse=True)
            self._enqueue(conn, child_id, None, encode(event), now, now, event)
            if status == int(pb.OrchestrationStatus.PENDING):
                conn.execute(
                    "UPDATE instances SET ready_at = min(ready_at, ?) WHERE instance_id = ?",
                    (now, child_id),
                )

    # -- purge -----------------------------------------------------------------------------

    async def purge_instance(self, instance_id: str, *, recursive: bool = True) -> int:
        """Delete a finished instance (and, with `recursive`, its finished sub-orchestrations).
        Returns how many were deleted: 0 for unknown or unfinished instances."""

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
                    f"AND status IN ({_TERMINAL_SQL})", frontier)]
                doomed += frontier
            self._delete_instances(conn, doomed)
            return len(doomed)

        return await self._write(op)

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
        while True:
            def op(conn: sqlite3.Connection) -> int:
                ids = [r[0] for r in conn.execute(sql, args)]
                self._delete_instances(conn, ids)
                return len(ids)

            deleted = await self._write(op)
            total += deleted
            if deleted < PURGE_CHUNK:
                return total
            await trio.lowlevel.checkpoint()  # let the engine run between chunks

    # -- query -----------------------------------------------------------------------------

    async def query_instances(self, query: InstanceQuery) -> InstancePage:
        """A page of instances ordered by (created_at, instance_id): stable under inserts."""
        self._check_open()
        if query.page_size < 1:
            raise InvalidInput("page_size must be at least 1")
        where, args = _created_range(query.created_from, query.created_to)
        if query.statuses:
            where += f" AND status IN ({','.join(str(int(s)) for s in sorted(query.statuses))})"
        if query.instance_id_prefix:
            where += " AND substr(instance_id, 1, ?) = ?"
            args += [len(query.instance_id_prefix), query.instance_id_prefix]
        if query.continuation_token:
            created, key = _parse_token(query.continuation_token)
            where += " AND (created_at, instance_id) > (?, ?)"
            args += [created, key]
        columns = record_columns(query.fetch_payloads)
        rows = self._conn.execute(
            f"SELECT {columns} FROM instances WHERE 1 = 1{where} "
            f"ORDER BY created_at, instance_id LIMIT ?",
            [*args, query.page_size + 1],
        ).fetchall()
        await trio.lowlevel.checkpoint()
        more = len(rows) > query.page_size
        records = [record(r, query.fetch_payloads) for r in rows[: query.page_size]]
        token = f"{records[-1].created_at}:{records[-1].instance_id}" if more else None
        return InstancePage(records, token)


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
        self._check_open()
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
            completed, key = _parse_token(last_key)
            where += " AND (completed_at, instance_id) > (?, ?)"
            args += [completed, key]
        rows = self._conn.execute(
            f"SELECT instance_id, completed_at FROM instances WHERE {where} "
            f"ORDER BY completed_at, instance_id LIMIT ?",
            [*args, page_size + 1],
        ).fetchall()
        await trio.lowlevel.checkpoint()
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


def _parse_token(token: str) -> tuple[int, str]:
    created, sep, key = token.partition(":")
    if not sep or not created.isdigit():
        raise InvalidInput(f"continuation token {token!r} is not one this engine issued")
    return int(created), key


_BASE_COLUMNS = (
    "instance_id, execution_id, name, version, status, created_at, updated_at, completed_at, "
    "scheduled_start, parent_instance_id, custom_status, failure, tags"
)


def record_columns(payloads: bool) -> str:
    """Columns for `record`: inputs and outputs only when asked for (they can be large)."""
    return _BASE_COLUMNS + (", input, output" if payloads else "")


def record(row: Any, payloads: bool) -> InstanceRecord:
    rec = InstanceRecord(*row[:10])
    rec.custom_status, rec.failure = row[10], row[11]
    rec.tags = json.loads(row[12]) if row[12] else None
    if payloads:
        rec.input, rec.output = row[13], row[14]
    return rec
