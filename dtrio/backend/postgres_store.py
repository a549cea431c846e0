"""A PostgreSQL connection pool bridged into Trio: group-committed writes, reads and leases run in
worker threads, and the report of what each commit made due.

psycopg's blocking calls run in worker threads (`trio.to_thread.run_sync`) under a
`trio.CapacityLimiter` as large as the pool, so a thread never waits for a connection. Once a
transaction has begun it is never abandoned: the Trio side waits for its thread shielded from
cancellation, so a COMMIT in flight finishes or fails as a whole, and the connection goes back to
the pool clean (psycopg's `transaction()` blocks roll back whatever did not commit).

Trio's MockClock (tests run under `autojump_clock`) jumps as soon as every task is blocked, and a
task waiting for a worker thread counts as blocked. While any storage call is in flight its
autojump is switched off (the threshold set to infinity) and restored when the last one ends, so
durable time never moves in the middle of a transaction. The alternative, a Trio task spinning on
checkpoints while the thread works, keeps the GIL busy and slows every statement by up to the
interpreter's switch interval.

Concurrent writes are group-committed as on SQLite: the writes queued in one scheduling tick share
one transaction (one thread hop), a savepoint each.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import psycopg.errors
import trio
import trio.testing
from psycopg_pool import ConnectionPool

from ..clock import Clock
from ..errors import StorageError
from ..events import StoredEvent
from .base import Committed, Listener
from .dialect import POSTGRES, percent_style
from .postgres_health import Health, is_lost
from .write_queue import WriteQueue

T = TypeVar("T")

# A statement chosen as a deadlock victim, or a serialization failure: run the op again.
_RETRY = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_ATTEMPTS = 4
# Parsed events this process wrote, kept so that leasing them again spares a parse.
_WRITTEN_KEPT = 50_000


class Now:
    """"Now" read on the Trio thread before a transaction goes to its worker thread (Trio's
    clock cannot be read there), the same for the whole transaction."""

    __slots__ = ("_us",)

    def __init__(self, clock: Clock) -> None:
        self._us = clock.now_us()

    def now_us(self) -> int:
        return self._us


class Written:
    """Parsed events this process wrote, by inbox id (entity inbox ids negated), kept so that
    leasing them again spares a parse. Shared by worker threads, hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: OrderedDict[int, StoredEvent] = OrderedDict()

    def add(self, kept: list[tuple[int, StoredEvent]]) -> None:
        with self._lock:
            events = self._events
            events.update(kept)
            while len(events) > _WRITTEN_KEPT:
                events.popitem(last=False)

    def take(self, key: int) -> StoredEvent | None:
        with self._lock:
            return self._events.pop(key, None)


class Tx:
    """One operation's view of its transaction: statements, "now", what it makes due, and the
    parsed events it wrote (kept once it commits)."""

    __slots__ = ("_written", "clock", "cur", "kept", "notes")
    dialect = POSTGRES

    def __init__(self, cur: psycopg.Cursor[Any], clock: Now, written: Written) -> None:
        self.cur = cur
        self.clock = clock
        self.notes = Committed()
        self.kept: list[tuple[int, StoredEvent]] = []
        self._written = written

    def keep(self, key: int, event: StoredEvent) -> None:
        """Keep an event written under inbox id `key` parsed, for whoever leases it here."""
        if event.parsed:
            self.kept.append((key, event))

    def leased(self, key: int, data: bytes) -> StoredEvent:
        """The event stored under inbox id `key`: parsed already if this process wrote it."""
        return self._written.take(key) or StoredEvent.read(data)

    def moved(self, old: int, new: int) -> None:
        """An inbox row was written again under a new id."""
        event = self._written.take(old)
        if event is not None:
            self.keep(new, event)

    def execute(self, sql: str, params: Any = ()) -> psycopg.Cursor[Any]:
        return self.cur.execute(percent_style(sql), params)  # type: ignore[arg-type]

    def executemany(self, sql: str, rows: list[Any]) -> None:
        if rows:
            self.cur.executemany(percent_style(sql), rows)  # type: ignore[arg-type]

    def insert(self, sql: str, params: Any) -> int:
        """Run an INSERT of one row into a table keyed by `id`; its new id."""
        return self.execute(sql + " RETURNING id", params).fetchone()[0]  # type: ignore[index]

    def due(self, kind: str, visible_at: int, now: int) -> None:
        """Note that work of `kind` ("orchestration", "activity", "entity") becomes due at
        `visible_at`."""
        self.notes.due(kind, visible_at, now)

    def changed(self, instance_id: str) -> None:
        """Note that an instance's status or execution changed (its waiters look again)."""
        self.notes.instances.add(instance_id)


class _Op:
    __slots__ = ("done", "error", "fn", "kept", "notes", "result", "taken")

    def __init__(self, fn: Callable[[Tx], Any]) -> None:
        self.fn = fn
        self.taken = False
        self.done: trio.Event | None = None
        self.error: BaseException | None = None
        self.result: Any = None
        self.notes: Committed | None = None
        self.kept: list[tuple[int, StoredEvent]] = []


# Storage calls in flight per MockClock, and the autojump threshold to restore after them.
_held: weakref.WeakKeyDictionary[trio.testing.MockClock, list[float]] = (
    weakref.WeakKeyDictionary()
)


class NoJump:
    """Switch a MockClock's autojump off while storage work runs in threads."""

    __slots__ = ("clock",)

    def __enter__(self) -> None:
        clock = trio.lowlevel.current_clock()
        if not isinstance(clock, trio.testing.MockClock):
            self.clock = None
            return
        self.clock = clock
        held = _held.setdefault(clock, [0, clock.autojump_threshold])
        if held[0] == 0:
            held[1] = clock.autojump_threshold
            clock.autojump_threshold = math.inf
        held[0] += 1

    def __exit__(self, *exc: object) -> None:
        if self.clock is not None:
            held = _held[self.clock]
            held[0] -= 1
            if held[0] == 0:
                self.clock.autojump_threshold = held[1]


def describe(exc: psycopg.Error) -> str:
    """A psycopg error in one line, with its condition (NOT NULL VIOLATION, ...) when known."""
    message = (exc.diag.message_primary or str(exc)).strip().splitlines()[0]
    name = type(exc).__name__
    if exc.sqlstate and name not in ("Error", "DatabaseError", "OperationalError"):
        condition = "".join(f" {c}" if c.isupper() else c for c in name).strip().upper()
        return f"{message} ({condition})"
    return message


class PostgresStore(WriteQueue):
    dialect = POSTGRES

    def __init__(self, pool: ConnectionPool, clock: Clock, where: str, size: int) -> None:
        self.pool = pool
        self.clock = clock
        self.where = where
        self._limiter = trio.CapacityLimiter(size)
        self._queue: list[_Op] = []
        self._closed = False
        self._listeners: list[Listener] = []
        self._written = Written()
        self._health = Health(pool, where)

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def check_open(self) -> None:
        if self._closed:
            raise StorageError(f"the store {self.where} is closed")

    def _refused(self, what: str, exc: psycopg.Error) -> StorageError:
        return StorageError(f"the store {self.where} refused a {what}: {describe(exc)}")

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        """Run `fn` in a worker thread; never abandoned once begun (callers shield it)."""
        with NoJump():
            return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    # -- transactions ----------------------------------------------------------------------

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in a read-only transaction of its own."""
        self.check_open()
        await trio.lowlevel.checkpoint_if_cancelled()

        now = Now(self.clock)

        def attempt() -> T:
            with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                return fn(Tx(cur, now, self._written))

        def run() -> T:
            return self._health.run(attempt)

        try:
            with trio.CancelScope(shield=True):
                return await self._in_thread(run)
        except psycopg.Error as exc:
            raise self._refused("read", exc) from None

    async def lease(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in a transaction of its own, never cancelled once begun: leases taken are
        always handed to the caller."""
        self.check_open()
        await trio.lowlevel.checkpoint_if_cancelled()

        now = Now(self.clock)

        def attempt() -> T:
            with self.pool.connection() as conn:
                for attempt in range(_ATTEMPTS):
                    try:
                        with conn.transaction(), conn.cursor() as cur:
                            return fn(Tx(cur, now, self._written))
                    except _RETRY:
                        if attempt == _ATTEMPTS - 1:
                            raise
            raise AssertionError("unreachable")

        def run() -> T:
            # A lease cut off in its COMMIT may have been taken: it lapses, and is leased again.
            return self._health.run(attempt)

        try:
            with trio.CancelScope(shield=True):
                return await self._in_thread(run)
        except psycopg.Error as exc:
            raise self._refused("lease", exc) from None

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in a transaction shared with every write queued in the same scheduling tick."""
        self.check_open()
        op = _Op(fn)
        await self._join(op)
        with trio.CancelScope(shield=True):
            if op.taken:
                assert op.done is not None
                await op.done.wait()
            else:
                await self._flush()
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[no-any-return]

    async def _flush(self) -> None:
        ops, self._queue = self._queue, []
        done = trio.Event()
        for op in ops:
            op.taken, op.done = True, done
        try:
            now = Now(self.clock)
            await self._in_thread(lambda: self._run_group(ops, now))
        except psycopg.Error as exc:
            error = self._refused("write", exc)
            for op in ops:
                op.error = op.error or error
        except BaseException as exc:
            for op in ops:
                op.error = op.error or exc
            raise
        else:
            notes = Committed()
            for op in ops:
                if op.notes is not None:
                    notes.merge(op.notes)
                    self._written.add(op.kept)
            self._announce(notes)
        finally:
            done.set()

    def _run_group(self, ops: list[_Op], now: Now) -> None:
        """In a worker thread: one transaction, a savepoint per op. One failing op must not
        take the rest of the group down with it. A deadlock with another process's transaction
        runs the whole group again: retrying the one op would keep the locks the others took,
        and deadlock again. A lost connection takes it all too, and the group runs again unless
        its COMMIT was in flight."""
        committing = False

        def commit() -> None:
            nonlocal committing
            committing = True

        def attempt() -> None:
            for tries in range(_ATTEMPTS):
                try:
                    with self.pool.connection() as conn:
                        if len(ops) == 1:
                            # Alone, an op is its transaction: a savepoint would add two round
                            # trips and protect nobody.
                            self._run_op(ops[0], conn, now, commit)
                        else:
                            with conn.transaction():
                                for op in ops:
                                    self._run_op(op, conn, now)
                                commit()
                    return
                except _RETRY:
                    if committing or tries == _ATTEMPTS - 1:
                        raise

        self._health.run(attempt, again=lambda: not committing)

    def _run_op(
        self, op: _Op, conn: psycopg.Connection[Any], now: Now,
        alone: Callable[[], None] | None = None,
    ) -> None:
        """Run `op` in a savepoint of the group's transaction, or (`alone`, called just before
        its COMMIT) in a transaction of its own."""
        op.error, op.notes, op.kept = None, None, []
        try:
            with conn.transaction(), conn.cursor() as cur:
                tx = Tx(cur, now, self._written)
                op.result = op.fn(tx)
                if alone is not None:
                    alone()
        except _RETRY:
            raise
        except psycopg.Error as exc:
            if is_lost(exc):
                raise
            op.error = self._refused("write", exc)
        except Exception as exc:
            op.error = exc
        else:
            op.notes, op.kept = tx.notes, tx.kept

    def _announce(self, notes: Committed) -> None:
        for listener in self._listeners:
            listener(notes)

    async def aclose(self) -> None:
        if self._closed:
            return
        if self._queue:
            with trio.CancelScope(shield=True):
                await self._flush()
        self._closed = True
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.pool.close)
