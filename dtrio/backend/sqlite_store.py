"""One SQLite connection: group-committed writes, reads and leases on the Trio thread, and the
report of what each commit made due.

Statements run on the Trio thread in short transactions: a commit in WAL mode with
synchronous=NORMAL costs tens of microseconds, less than a hop to a worker thread, and storage
work never leaves the event loop idle (so trio's MockClock cannot jump while it runs).
Concurrent writes are group-committed: one transaction, a savepoint each.

The store is also the `Tx` its operations run in: one connection, one transaction at a time, so
`execute` is the connection's own (no wrapper on any statement).
"""

from __future__ import annotations

import os
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio

from ..clock import Clock
from ..errors import StorageError
from ..events import StoredEvent
from .base import Committed, Listener
from .dialect import SQLITE, Tx
from .write_queue import WriteQueue

T = TypeVar("T")

# Parsed events this process wrote, kept so that leasing them again spares a parse.
_WRITTEN_KEPT = 50_000


class _Op:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[Tx], Any]) -> None:
        self.fn = fn
        self.done = False
        self.error: BaseException | None = None
        self.result: Any = None


class SqliteStore(WriteQueue):
    dialect = SQLITE

    def __init__(self, conn: sqlite3.Connection, clock: Clock, where: str,
                 file: os.stat_result | None = None) -> None:
        self.conn = conn
        # The file opened (None: in memory), to notice it being removed or replaced.
        self._file = file
        self.execute = conn.execute
        self.executemany = conn.executemany
        self.clock = clock
        self.where = where
        self._queue: list[_Op] = []
        self._closed = False
        self._listeners: list[Listener] = []
        # What the transaction under way makes due, reported once it commits.
        self._notes = Committed()
        # Events this process wrote, parsed, by inbox id (entity inbox ids negated); an op's own
        # become visible to lessees only once its transaction commits.
        self._written: OrderedDict[int, StoredEvent] = OrderedDict()
        self._op_written: list[tuple[int, StoredEvent]] = []
        self._tx_written: list[tuple[int, StoredEvent]] = []

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def insert(self, sql: str, params: Sequence[Any]) -> int:
        """Run an INSERT of one row into a table keyed by `id`; its new id."""
        return self.conn.execute(sql, params).lastrowid or 0

    # -- what a transaction makes due ------------------------------------------------------

    def due(self, kind: str, visible_at: int, now: int) -> None:
        """Note that work of `kind` ("orchestration", "activity", "entity") becomes due at
        `visible_at`."""
        self._notes.due(kind, visible_at, now)

    def changed(self, instance_id: str) -> None:
        """Note that an instance's status or execution changed (its waiters look again)."""
        self._notes.instances.add(instance_id)

    def keep(self, key: int, event: StoredEvent) -> None:
        """Keep an event written under inbox id `key` parsed, for whoever leases it here."""
        if event.parsed:
            self._op_written.append((key, event))

    def leased(self, key: int, data: bytes) -> StoredEvent:
        """The event stored under inbox id `key`: parsed already if this process wrote it."""
        return self._written.pop(key, None) or StoredEvent.read(data)

    def moved(self, old: int, new: int) -> None:
        """An inbox row was written again under a new id."""
        event = self._written.pop(old, None)
        if event is not None:
            self.keep(new, event)

    # -- transactions ----------------------------------------------------------------------

    def check_open(self) -> None:
        if self._closed:
            raise StorageError(f"the store {self.where} is closed")

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` outside any transaction (a read sees the last commit)."""
        self.check_open()
        try:
            result = fn(self)
        except sqlite3.Error as exc:
            raise self._refused("read", exc) from None
        await trio.lowlevel.checkpoint()
        return result

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in a transaction shared with every write queued in the same scheduling tick."""
        self.check_open()
        op = _Op(fn)
        await self._join(op)
        if not op.done:
            self._flush()
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[no-any-return]

    async def lease(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in a transaction of its own, never cancelled once begun: leases taken are
        always handed to the caller."""
        self.check_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        moved = self._moved()
        if moved is not None:
            raise moved
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self)
                conn.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (a full disk) has already rolled back on its own.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._refused("lease", exc) from None
        await trio.lowlevel.cancel_shielded_checkpoint()
        return result

    def _moved(self) -> StorageError | None:
        """Why not to write: the path no longer names the file opened. SQLite would go on
        writing to it, and every commit would vanish with this process."""
        if self._file is None:
            return None
        try:
            now = os.stat(self.where)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (self._file.st_dev, self._file.st_ino):
            return None
        return StorageError(f"the store {self.where} was removed or replaced while open; "
                            "nothing more is written to it (restart on the right file)")

    def _refused(self, what: str, exc: sqlite3.Error) -> StorageError:
        name = getattr(exc, "sqlite_errorname", "")
        damaged = name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
        hint = (" (the file is damaged: check it with PRAGMA integrity_check, restore a backup)"
                if damaged else "")
        return StorageError(f"the store {self.where} refused a {what}: {exc}{hint}")

    def _flush(self) -> None:
        ops, self._queue = self._queue, []
        moved = self._moved()
        if moved is not None:
            for op in ops:
                op.done, op.error = True, moved
            return
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    op.result = op.fn(self)
                    self._tx_written += self._op_written
                except Exception as exc:
                    # One failing write must not take the rest of the batch down with it.
                    conn.execute("ROLLBACK TO op")
                    op.error = (
                        self._refused("write", exc) if isinstance(exc, sqlite3.Error) else exc
                    )
                finally:
                    self._op_written.clear()
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._tx_written.clear()
            self._notes = Committed()
            error = self._refused("write", exc) if isinstance(exc, sqlite3.Error) else exc
            for op in ops:
                op.done, op.error = True, op.error or error
            if isinstance(exc, sqlite3.Error):
                return  # each op raises it to its own caller
            raise
        for op in ops:
            op.done = True
        self._announce()

    def _announce(self) -> None:
        written = self._written
        for inbox_id, event in self._tx_written:
            written[inbox_id] = event
        self._tx_written.clear()
        while len(written) > _WRITTEN_KEPT:
            written.popitem(last=False)
        notes, self._notes = self._notes, Committed()
        for listener in self._listeners:
            listener(notes)

    async def aclose(self) -> None:
        if not self._closed:
            if self._queue:
                self._flush()
            self._closed = True
            self.conn.close()
