"""The SQLite backend: the default store, a file in WAL mode or an in-memory database.

Statements run on the Trio thread in short transactions: a commit in WAL mode with
synchronous=NORMAL costs tens of microseconds, less than a hop to a worker thread, and storage
work never leaves the event loop idle (so trio's MockClock cannot jump while it runs).
Concurrent completions are group-committed: one transaction, a savepoint each.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import trio

from .. import _pb as pb
from ..clock import Clock
from ..entities.ids import is_entity_id
from ..errors import InstanceAlreadyExists, InstanceNotFound, LeaseLost, StorageError
from ..signals import ChangeBoard, Wakeup
from ..state import TERMINAL, Message, NewInstance, OrchestrationStep
from ..wire import encode
from .base import ActivityWorkItem, InstanceRecord, NameFilter, OrchestrationWorkItem
from .sqlite_admin import SqliteAdmin, record, record_columns
from .sqlite_entities import SqliteEntities
from .sqlite_leases import give_back, renew_lease
from .sqlite_schema import check_and_migrate

_PENDING = int(pb.OrchestrationStatus.PENDING)
_RUNNING = int(pb.OrchestrationStatus.RUNNING)
_SUSPENDED = int(pb.OrchestrationStatus.SUSPENDED)

_DECODED_CACHE = 50_000


def _matching(names: NameFilter | None, first: int) -> tuple[str, list[str]]:
    """An SQL condition on the `name` and `version` columns, with parameters numbered from
    `first`: rows a worker taking `names` (None: every name) takes."""
    if names is None:
        return "1", []
    params: list[str] = []

    def mark(value: str) -> str:
        params.append(value)
        return f"?{first + len(params) - 1}"

    any_version = [name for name, versions in names if not versions]
    parts = [f"name IN ({', '.join(map(mark, any_version))})"] if any_version else []
    for name, versions in names:
        if versions:
            parts.append(f"(name = {mark(name)} AND coalesce(version, '') IN "
                         f"({', '.join(map(mark, sorted(versions)))}))")
    return " OR ".join(parts) or "0", params


class _Op:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        self.done = False
        self.error: BaseException | None = None
        self.result: Any = None


class SqliteBackend(SqliteAdmin, SqliteEntities):
    def __init__(self, conn: sqlite3.Connection, clock: Clock, where: str) -> None:
        self._conn = conn
        self._clock = clock
        self.where = where
        self._queue: list[_Op] = []
        self._closed = False
        self.orchestrations_ready = Wakeup()
        self.activities_ready = Wakeup()
        self.entities_ready = Wakeup()
        self.schedule_changed = Wakeup()
        self.instance_changes = ChangeBoard()
        # Collected while a transaction runs, acted on after it commits.
        self._wake_orchestrations = False
        self._wake_activities = False
        self._wake_entities = False
        self._earliest_future: int | None = None
        self._changed: set[str] = set()
        # The poller's next wake-up; only work due earlier than this needs to wake it.
        self.poller_due: int | None = None
        self.commits = 0
        # Parsed events this process inserted, by inbox id; merged only once committed.
        self._decoded: OrderedDict[int, pb.HistoryEvent] = OrderedDict()
        self._op_decoded: list[tuple[int, pb.HistoryEvent]] = []
        self._tx_decoded: list[tuple[int, pb.HistoryEvent]] = []

    # -- transactions ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"the store {self.where} is closed")

    async def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `fn` in a transaction shared with every write queued in the same scheduling tick."""
        self._check_open()
        # Cancelled may be raised only before the op is queued: once queued, a neighbour's flush
        # may commit it, so a write that raised Cancelled would have happened after all.
        await trio.lowlevel.checkpoint_if_cancelled()
        op = _Op(fn)
        self._queue.append(op)
        try:
            await trio.lowlevel.cancel_shielded_checkpoint()
        except BaseException:
            if not op.done:
                self._queue.remove(op)
            raise
        if not op.done:
            self._flush()
        if op.error is not None:
            raise op.error
        return op.result

    def _flush(self) -> None:
        ops, self._queue = self._queue, []
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    op.result = op.fn(conn)
                    self._tx_decoded += self._op_decoded
                except Exception as exc:
                    # One failing write must not take the rest of the batch down with it.
                    conn.execute("ROLLBACK TO op")
                    op.error = (
                        StorageError(f"the store {self.where} refused a write: {exc}")
                        if isinstance(exc, sqlite3.Error) else exc
                    )
                finally:
                    self._op_decoded.clear()
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._reset_notes()
            for op in ops:
                op.done, op.error = True, op.error or exc
            raise
        for op in ops:
            op.done = True
        self._announce()

    def _reset_notes(self) -> None:
        self._tx_decoded.clear()
        self._wake_orchestrations = self._wake_activities = self._wake_entities = False
        self._earliest_future = None
        self._changed.clear()

    def _announce(self) -> None:
        self.commits += 1
        decoded = self._decoded
        for inbox_id, event in self._tx_decoded:
            decoded[inbox_id] = event
        while len(decoded) > _DECODED_CACHE:
            decoded.popitem(last=False)
        if self._wake_orchestrations:
            self.orchestrations_ready.set()
        if self._wake_activities:
            self.activities_ready.set()
        if self._wake_entities:
            self.entities_ready.set()
        if self._earliest_future is not None:
            self.schedule_changed.set()
        for instance_id in self._changed:
            self.instance_changes.notify(instance_id)
        self._reset_notes()

    def _note_visible(self, visible_at: int, now: int, orchestration: bool = True) -> None:
        if visible_at <= now:
            if orchestration:
                self._wake_orchestrations = True
            else:
                self._wake_activities = True
        elif self.poller_due is None or visible_at < self.poller_due:
            self._earliest_future = visible_at

    # -- instances and their inboxes -------------------------------------------------------

    def _enqueue(self, conn: sqlite3.Connection, instance_id: str, execution_id: str | None,
                 event: bytes, visible_at: int, now: int,
                 decoded: pb.HistoryEvent | None = None) -> None:
        cur = conn.execute(
            "INSERT INTO inbox (instance_id, execution_id, event, visible_at) VALUES (?, ?, ?, ?)",
            (instance_id, execution_id, event, visible_at),
        )
        if decoded is not None:
            self._op_decoded.append((cur.lastrowid, decoded))
        # A pending instance becomes ready when its start comes due, not when an early event
        # arrives: the event waits in the inbox for the orchestration to begin.
        conn.execute(
            "UPDATE instances SET ready_at = min(coalesce(ready_at, ?1), ?1) "
            "WHERE instance_id = ?2 AND (status != ?3 OR ready_at IS NULL)",
            (visible_at, instance_id, _PENDING),
        )
        self._note_visible(visible_at, now)

    def _deliver(self, conn: sqlite3.Connection, message: Message, now: int) -> None:
        """Put a message in a live instance's inbox; messages to finished ones are dropped.
        Messages to entities go to the entity's inbox."""
        if is_entity_id(message.instance_id):
            self._deliver_entity(conn, message, now)
            return
        row = conn.execute(
            "SELECT execution_id, status FROM instances WHERE instance_id = ?",
            (message.instance_id,),
        ).fetchone()
        if row is None or row[1] in TERMINAL:
            return
        if message.execution_id is not None and row[0] != message.execution_id:
            return
        self._enqueue(conn, message.instance_id, message.execution_id, message.event,
                      message.visible_at, now, message.decoded)

    def _insert_instance(self, conn: sqlite3.Connection, new: NewInstance, now: int) -> bool:
        cur = conn.execute(
            "INSERT OR IGNORE INTO instances (instance_id, execution_id, name, version, status, "
            "input, tags, created_at, updated_at, scheduled_start, parent_instance_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (new.instance_id, new.execution_id, new.name, new.version, _PENDING, new.input,
             json.dumps(new.tags) if new.tags else None, now, now,
             new.visible_at if new.visible_at > now else None, new.parent_instance_id),
        )
        if cur.rowcount != 1:
            return False
        self._enqueue(conn, new.instance_id, new.execution_id, new.started, new.visible_at, now,
                      new.started_event)
        self._changed.add(new.instance_id)
        return True

    async def create_instance(
        self,
        new: NewInstance,
        *,
        replace: frozenset[int] = frozenset(),
        ignore: frozenset[int] = frozenset(),
    ) -> bool:
        """Create `new`. If the ID exists: replace it when its status is in `replace`, do
        nothing (returning False) when in `ignore`, else raise InstanceAlreadyExists."""

        def op(conn: sqlite3.Connection) -> bool:
            now = self._clock.now_us()
            if self._insert_instance(conn, new, now):
                return True
            status = conn.execute(
                "SELECT status FROM instances WHERE instance_id = ?", (new.instance_id,)
            ).fetchone()[0]
            if status in ignore:
                return False
            if status not in replace:
                raise InstanceAlreadyExists(new.instance_id, pb.OrchestrationStatus(status).name)
            self._delete_instances(conn, [new.instance_id])
            if not self._insert_instance(conn, new, now):
                raise StorageError(f"could not replace instance {new.instance_id!r}")
            return True

        return await self._write(op)

    def _delete_instances(self, conn: sqlite3.Connection, instance_ids: list[str]) -> None:
        rows = [(i,) for i in instance_ids]
        for table in ("history", "inbox", "activities", "instances"):
            conn.executemany(f"DELETE FROM {table} WHERE instance_id = ?", rows)
        now = self._clock.now_us()
        for instance_id in instance_ids:
            self._changed.add(instance_id)
            # A running instance replaced by a new start held its locks to the end.
            self._release_entity_locks(conn, instance_id, now)

    async def get_instance(
        self, instance_id: str, *, payloads: bool = True
    ) -> InstanceRecord | None:
        self._check_open()
        row = self._conn.execute(
            f"SELECT {record_columns(payloads)} FROM instances WHERE instance_id = ?",
            (instance_id,),
        ).fetchone()
        await trio.lowlevel.checkpoint()
        return None if row is None else record(row, payloads)

    async def add_event(
        self, instance_id: str, event: bytes, *, visible_at: int | None = None,
        decoded: pb.HistoryEvent | None = None, wake_pending: bool = False,
    ) -> bool:
        """Queue an event for a live instance; False (and nothing queued) if it has finished.

        `wake_pending` makes a not-yet-started instance run now (to terminate it)."""

        def op(conn: sqlite3.Connection) -> bool:
            now = self._clock.now_us()
            row = conn.execute(
                "SELECT status FROM instances WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            if row is None:
                raise InstanceNotFound(instance_id)
            if row[0] in TERMINAL:
                return False
            at = now if visible_at is None else visible_at
            self._enqueue(conn, instance_id, None, event, at, now, decoded)
            if wake_pending and row[0] == _PENDING:
                conn.execute(
                    "UPDATE instances SET ready_at = min(ready_at, ?) WHERE instance_id = ?",
                    (at, instance_id),
                )
            return True

        return await self._write(op)

    # -- orchestration work items ----------------------------------------------------------

    async def lease_orchestrations(
        self, owner: str, limit: int, lease_us: int, names: NameFilter | None = None
    ) -> list[OrchestrationWorkItem]:
        self._check_open()
        await trio.lowlevel.checkpoint_if_cancelled()  # never take leases we cannot hand out
        conn = self._conn
        now = self._clock.now_us()
        matching, params = _matching(names, 5)
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                "UPDATE instances SET lock_owner = ?1, lock_token = hex(randomblob(12)), "
                "lock_expires = ?2 WHERE instance_id IN (SELECT instance_id FROM instances "
                "WHERE ready_at <= ?3 AND (lock_expires IS NULL OR lock_expires <= ?3) "
                f"AND ({matching}) ORDER BY ready_at LIMIT ?4) "
                "RETURNING instance_id, execution_id, name, status, lock_token, step",
                (owner, now + lease_us, now, limit, *params),
            ).fetchall()
            items = {r[0]: OrchestrationWorkItem(*r, []) for r in rows}
            if items:
                marks = ",".join("?" * len(items))
                for instance_id, inbox_id, event in conn.execute(
                    f"SELECT instance_id, id, event FROM inbox WHERE instance_id IN ({marks}) "
                    f"AND visible_at <= ? ORDER BY id",
                    (*items, now),
                ):
                    item = items[instance_id]
                    item.events.append((inbox_id, event))
                    parsed = self._decoded.pop(inbox_id, None)
                    if parsed is not None:
                        item.decoded[inbox_id] = parsed
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        await trio.lowlevel.cancel_shielded_checkpoint()
        return list(items.values())

    async def load_history(self, instance_id: str) -> list[bytes]:
        self._check_open()
        rows = self._conn.execute(
            "SELECT event FROM history WHERE instance_id = ? ORDER BY seq", (instance_id,)
        ).fetchall()
        await trio.lowlevel.checkpoint()
        return [r[0] for r in rows]

    async def renew_orchestration(self, item: OrchestrationWorkItem, lease_us: int) -> None:
        """Keep a step's lease while its worker (a remote one) still works on it."""

        def op(conn: sqlite3.Connection) -> None:
            renew_lease(conn, "instances", item.instance_id, item.lock_token,
                        self._clock.now_us() + lease_us, "orchestration")

        await self._write(op)

    async def complete_orchestration(
        self, item: OrchestrationWorkItem, step: OrchestrationStep
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            now = self._clock.now_us()
            iid = item.instance_id
            row = conn.execute(
                "SELECT history_len, status FROM instances "
                "WHERE instance_id = ? AND lock_token = ?",
                (iid, item.lock_token),
            ).fetchone()
            if row is None:
                raise LeaseLost(f"lease on orchestration {iid!r} was lost; its step was not saved")
            history_len = row[0]
            if row[1] != step.status or step.reset_history:
                self._changed.add(iid)
            if step.reset_history:
                conn.execute("DELETE FROM history WHERE instance_id = ?", (iid,))
                conn.execute(
                    "DELETE FROM inbox WHERE instance_id = ? AND execution_id IS NOT NULL", (iid,)
                )
                # The old execution's queued activities would only be discarded on completion.
                conn.execute(
                    "DELETE FROM activities WHERE instance_id = ? AND lock_token IS NULL", (iid,)
                )
                history_len = 0
            conn.executemany(
                "INSERT INTO history (instance_id, seq, event) VALUES (?, ?, ?)",
                [(iid, history_len + i, data) for i, data in enumerate(step.history)],
            )
            conn.executemany("DELETE FROM inbox WHERE id = ?", [(i,) for i, _ in item.events])
            completed = step.completed
            conn.execute(
                "UPDATE instances SET execution_id = ?, status = ?, custom_status = ?, output = ?, "
                "failure = ?, updated_at = ?, completed_at = ?, step = step + 1, history_len = ?, "
                "lock_owner = NULL, lock_token = NULL, lock_expires = NULL, "
                "input = CASE WHEN ? THEN ? ELSE input END WHERE instance_id = ?",
                (step.execution_id, step.status, step.custom_status, step.output, step.failure,
                 now, now if completed else None, history_len + len(step.history),
                 step.reset_history, step.new_input, iid),
            )
            for new in step.new_instances:
                if self._insert_instance(conn, new, now):
                    continue
                existing = conn.execute(
                    "SELECT status FROM instances WHERE instance_id = ?", (new.instance_id,)
                ).fetchone()
                if new.replace_finished and existing[0] in TERMINAL:
                    self._delete_instances(conn, [new.instance_id])
                    self._insert_instance(conn, new, now)
                elif new.conflict is not None:
                    self._deliver(conn, new.conflict, now)
            if step.terminate_children:
                self._terminate_children(conn, iid, step.output, now)
            for child in step.rewind_children:
                self._rewind_child(conn, child, now)
            arrived = self._last_inbox_id(conn, iid) if step.continued_as_new else None
            for message in step.messages:
                self._deliver(conn, message, now)
            if arrived is not None:
                self._queue_behind(conn, iid, arrived)
            if step.activities:
                conn.executemany(
                    "INSERT INTO activities (instance_id, execution_id, task_id, name, version, "
                    "input, available_at, trace_context) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(a.instance_id, a.execution_id, a.task_id, a.name, a.version, a.input,
                      a.visible_at, encode(a.trace_context) if a.trace_context else None)
                     for a in step.activities],
                )
                for a in step.activities:
                    self._note_visible(a.visible_at, now, orchestration=False)
            if completed:
                conn.execute("DELETE FROM inbox WHERE instance_id = ?", (iid,))
            if completed or step.continued_as_new:
                # Critical sections end with their execution, however it ended.
                self._release_entity_locks(conn, iid, now)
            self._refresh_ready(conn, iid, now)

        await self._write(op)

    def _last_inbox_id(self, conn: sqlite3.Connection, instance_id: str) -> int | None:
        return conn.execute(
            "SELECT max(id) FROM inbox WHERE instance_id = ?", (instance_id,)
        ).fetchone()[0]

    def _queue_behind(self, conn: sqlite3.Connection, instance_id: str, last_id: int) -> None:
        """Move an instance's inbox rows up to `last_id` (events that arrived while its
        continue-as-new step was out) behind those queued since (the new execution's start and
        the events it carries over), keeping their order. Workers expect a new execution to
        open with executionStarted; the official SDK's worker would otherwise buffer the
        early events and never wake the orchestrator's first wait."""
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
            parsed = self._decoded.pop(old_id, None)
            if parsed is not None:
                self._op_decoded.append((cur.lastrowid, parsed))

    def _refresh_ready(self, conn: sqlite3.Connection, instance_id: str, now: int) -> None:
        ready = conn.execute(
            "SELECT min(visible_at) FROM inbox WHERE instance_id = ?", (instance_id,)
        ).fetchone()[0]
        conn.execute(
            "UPDATE instances SET ready_at = ? WHERE instance_id = ?", (ready, instance_id)
        )
        if ready is not None:
            self._note_visible(ready, now)

    async def release_orchestration(self, item: OrchestrationWorkItem) -> None:
        """Give back a lease that turned out to have nothing to do."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE instances SET lock_owner = NULL, lock_token = NULL, lock_expires = NULL "
                "WHERE instance_id = ? AND lock_token = ?",
                (item.instance_id, item.lock_token),
            )
            self._refresh_ready(conn, item.instance_id, self._clock.now_us())

        await self._write(op)

    async def abandon_orchestration(self, item: OrchestrationWorkItem, delay_us: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            retry_at = self._clock.now_us() + delay_us
            give_back(conn, "instances", item.instance_id, item.lock_token, retry_at)
            self._note_visible(retry_at, retry_at - delay_us)

        await self._write(op)

    # -- activity work items ---------------------------------------------------------------

    async def lease_activities(
        self, owner: str, limit: int, lease_us: int, names: NameFilter | None = None
    ) -> list[ActivityWorkItem]:
        self._check_open()
        await trio.lowlevel.checkpoint_if_cancelled()  # never take leases we cannot hand out
        now = self._clock.now_us()
        conn = self._conn
        matching, params = _matching(names, 5)
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                "UPDATE activities SET lock_owner = ?1, lock_token = hex(randomblob(12)), "
                "available_at = ?2, attempt = attempt + 1 WHERE id IN (SELECT id FROM activities "
                f"WHERE available_at <= ?3 AND ({matching}) ORDER BY available_at LIMIT ?4) "
                "RETURNING id, instance_id, execution_id, task_id, name, version, input, "
                "lock_token, attempt, trace_context",
                (owner, now + lease_us, now, limit, *params),
            ).fetchall()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        await trio.lowlevel.cancel_shielded_checkpoint()
        return [
            ActivityWorkItem(*r[:-1], pb.TraceContext.parse(r[-1]) if r[-1] else None)
            for r in sorted(rows)
        ]

    async def renew_activity(self, item: ActivityWorkItem, lease_us: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE activities SET available_at = ? WHERE id = ? AND lock_token = ?",
                (self._clock.now_us() + lease_us, item.id, item.lock_token),
            )
            if cur.rowcount != 1:
                raise LeaseLost(
                    f"lease on activity {item.name!r} #{item.task_id} of "
                    f"{item.instance_id!r} was lost"
                )

        await self._write(op)

    async def complete_activity(
        self, item: ActivityWorkItem, result: bytes, *, decoded: pb.HistoryEvent | None = None
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "DELETE FROM activities WHERE id = ? AND lock_token = ?", (item.id, item.lock_token)
            )
            if cur.rowcount != 1:
                raise LeaseLost(
                    f"lease on activity {item.name!r} #{item.task_id} of {item.instance_id!r} was "
                    "lost; its result was not saved"
                )
            now = self._clock.now_us()
            self._deliver(
                conn, Message(item.instance_id, result, now, item.execution_id, decoded), now
            )

        await self._write(op)

    async def abandon_activity(self, item: ActivityWorkItem, delay_us: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            retry_at = self._clock.now_us() + delay_us
            conn.execute(
                "UPDATE activities SET lock_owner = NULL, lock_token = NULL, available_at = ? "
                "WHERE id = ? AND lock_token = ?",
                (retry_at, item.id, item.lock_token),
            )
            self._note_visible(retry_at, retry_at - delay_us, orchestration=False)

        await self._write(op)

    # -- scheduling ------------------------------------------------------------------------

    async def next_due(self) -> int | None:
        """The earliest future time at which some work item may become available."""
        self._check_open()
        now = self._clock.now_us()
        candidates = [
            self._conn.execute(sql, (now,)).fetchone()[0]
            for sql in (
                "SELECT min(ready_at) FROM instances WHERE ready_at > ?",
                "SELECT min(lock_expires) FROM instances WHERE lock_expires > ?",
                "SELECT min(available_at) FROM activities WHERE available_at > ?",
                "SELECT min(ready_at) FROM entities WHERE ready_at > ?",
                "SELECT min(lock_expires) FROM entities WHERE lock_expires > ?",
            )
        ]
        await trio.lowlevel.checkpoint()
        due = [c for c in candidates if c is not None]
        return min(due) if due else None

    async def aclose(self) -> None:
        if not self._closed:
            if self._queue:
                self._flush()
            self._closed = True
            self._conn.close()


def open_sqlite_backend(
    db: str | os.PathLike[str] | None, clock: Clock, *, synchronous: str = "NORMAL"
) -> SqliteBackend:
    """Open (creating or upgrading) a store. `db=None` or ":memory:" keeps it in memory."""
    if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise StorageError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
    memory = db is None or str(db) == ":memory:"
    where = "the in-memory store" if memory else os.fspath(db)  # type: ignore[arg-type]
    if not memory:
        parent = os.path.dirname(os.path.abspath(where))
        if not os.path.isdir(parent):
            raise StorageError(f"cannot open {where}: directory {parent} does not exist")
    try:
        conn = sqlite3.connect(":memory:" if memory else where, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open {where}: {exc}") from None
    try:
        check_and_migrate(conn, where)
        if not memory:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StorageError(f"{where} could not be switched to WAL mode (got {mode})")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        conn.execute("PRAGMA busy_timeout=5000")
    except sqlite3.Error as exc:
        conn.close()
        raise StorageError(f"cannot use {where}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return SqliteBackend(conn, clock, where)
