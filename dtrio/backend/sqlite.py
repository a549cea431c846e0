"""The SQLite backend: the default store, a file in WAL mode or an in-memory database.

Composed of plain parts: `SqliteStore` (the connection and its transactions), the row-level
steps in `sqlite_rows`, and the entity and management operations (`SqliteEntities`,
`SqliteAdmin`), which this class hands on to.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any

from .. import _pb as pb
from ..clock import Clock
from ..entities.batch import EntityStep
from ..errors import InstanceAlreadyExists, InstanceNotFound, LeaseLost, StorageError
from ..events import StoredEvent
from ..inbox import Message, NewInstance
from ..state import TERMINAL, OrchestrationStep
from ..wire import encode
from .base import (
    ActivityWorkItem,
    EntityPage,
    EntityQuery,
    EntityRecord,
    EntityWorkItem,
    InstancePage,
    InstanceQuery,
    InstanceRecord,
    Listener,
    NameFilter,
    NextStep,
    OrchestrationWorkItem,
    TakenOver,
)
from .sqlite_admin import SqliteAdmin
from .sqlite_entities import SqliteEntities
from .sqlite_leases import give_back, owners, release_owner, renew, take
from .sqlite_rows import (
    delete_instances,
    deliver,
    enqueue,
    insert_instance,
    last_inbox_id,
    queue_behind,
    refresh_ready,
    release_entity_locks,
    rewind_child,
    schedule_calls,
    status_of,
    terminate_children,
)
from .sqlite_schema import check_and_migrate
from .sqlite_store import SqliteStore
from .tables import record, record_columns

_PENDING = int(pb.OrchestrationStatus.PENDING)
_RUNNING = int(pb.OrchestrationStatus.RUNNING)


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


class SqliteBackend:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.where = store.where
        self._entities = SqliteEntities(store)
        self._admin = SqliteAdmin(store)

    def listen(self, listener: Listener) -> None:
        self._store.listen(listener)

    # -- instances and their inboxes -------------------------------------------------------

    async def create_instance(
        self,
        new: NewInstance,
        *,
        replace: frozenset[int] = frozenset(),
        ignore: frozenset[int] = frozenset(),
    ) -> bool:
        """Create `new`. If the ID exists: replace it when its status is in `replace`, do
        nothing (returning False) when in `ignore`, else raise InstanceAlreadyExists."""
        store = self._store

        def op(conn: sqlite3.Connection) -> bool:
            now = store.clock.now_us()
            if insert_instance(store, new, now):
                return True
            status = status_of(store, new.instance_id)
            assert status is not None
            if status in ignore:
                return False
            if status not in replace:
                raise InstanceAlreadyExists(new.instance_id, pb.OrchestrationStatus(status).name)
            delete_instances(store, [new.instance_id], now)
            if not insert_instance(store, new, now):
                raise StorageError(f"could not replace instance {new.instance_id!r}")
            return True

        return await store.write(op)

    async def get_instance(
        self, instance_id: str, *, payloads: bool = True
    ) -> InstanceRecord | None:
        row = await self._store.read(lambda conn: conn.execute(
            f"SELECT {record_columns(payloads)} FROM instances WHERE instance_id = ?",
            (instance_id,),
        ).fetchone())
        return None if row is None else record(row, payloads)

    async def add_event(
        self, instance_id: str, event: StoredEvent, *, visible_at: int | None = None,
        wake_pending: bool = False,
    ) -> bool:
        """Queue an event for a live instance; False (and nothing queued) if it has finished.

        `wake_pending` makes a not-yet-started instance run now (to terminate it)."""
        store = self._store

        def op(conn: sqlite3.Connection) -> bool:
            now = store.clock.now_us()
            status = status_of(store, instance_id)
            if status is None:
                raise InstanceNotFound(instance_id)
            if status in TERMINAL:
                return False
            at = now if visible_at is None else visible_at
            enqueue(store, instance_id, None, event, at, now)
            if wake_pending and status == _PENDING:
                conn.execute(
                    "UPDATE instances SET ready_at = min(ready_at, ?) WHERE instance_id = ?",
                    (at, instance_id),
                )
            return True

        return await store.write(op)

    async def rewind_instance(self, instance_id: str, reason: str | None) -> None:
        await self._admin.rewind_instance(instance_id, reason)

    async def purge_instance(self, instance_id: str, *, recursive: bool = True) -> int:
        return await self._admin.purge_instance(instance_id, recursive=recursive)

    async def purge_instances(
        self, created_from: int | None, created_to: int | None, statuses: frozenset[int] | None
    ) -> int:
        return await self._admin.purge_instances(created_from, created_to, statuses)

    async def query_instances(self, query: InstanceQuery) -> InstancePage:
        return await self._admin.query_instances(query)

    async def list_instance_ids(
        self, statuses: frozenset[int] | None, completed_from: int | None,
        completed_to: int | None, page_size: int, last_key: str | None,
    ) -> tuple[list[str], str | None]:
        return await self._admin.list_instance_ids(
            statuses, completed_from, completed_to, page_size, last_key)

    # -- orchestration work items ----------------------------------------------------------

    async def lease_orchestrations(
        self, owner: str, limit: int, lease_us: int, names: NameFilter | None = None
    ) -> list[OrchestrationWorkItem]:
        store = self._store
        matching, params = _matching(names, 5)

        def items(conn: sqlite3.Connection, rows: list[Any], now: int) -> list[Any]:
            leased = {r[0]: OrchestrationWorkItem(*r, []) for r in rows}
            if leased:
                marks = ",".join("?" * len(leased))
                for instance_id, inbox_id, event in conn.execute(
                    f"SELECT instance_id, id, event FROM inbox WHERE instance_id IN ({marks}) "
                    f"AND visible_at <= ? ORDER BY id",
                    (*leased, now),
                ):
                    leased[instance_id].events.append((inbox_id, store.leased(inbox_id, event)))
            return list(leased.values())

        return await take(store, (
            "UPDATE instances SET lock_owner = ?3, lock_token = hex(randomblob(12)), "
            "lock_expires = ?1 WHERE instance_id IN (SELECT instance_id FROM instances "
            "WHERE ready_at <= ?2 AND (lock_expires IS NULL OR lock_expires <= ?2) "
            f"AND ({matching}) ORDER BY ready_at LIMIT ?4) "
            "RETURNING instance_id, execution_id, name, status, lock_token, step"
        ), (owner, limit, *params), lease_us, items)

    async def load_history(self, instance_id: str) -> list[StoredEvent]:
        rows = await self._store.read(lambda conn: conn.execute(
            "SELECT event FROM history WHERE instance_id = ? ORDER BY seq", (instance_id,)
        ).fetchall())
        return [StoredEvent.read(r[0]) for r in rows]

    async def renew_orchestration(self, item: OrchestrationWorkItem, lease_us: int) -> None:
        await renew(self._store, "instances", item.instance_id, item.lock_token, lease_us,
                    f"orchestration {item.instance_id!r}")

    async def complete_orchestration(
        self, item: OrchestrationWorkItem, step: OrchestrationStep
    ) -> None:
        await self._store.write(self._step_op(item, step))

    def _step_op(
        self, item: OrchestrationWorkItem, step: OrchestrationStep
    ) -> Callable[[sqlite3.Connection], None]:
        store = self._store

        def op(conn: sqlite3.Connection) -> None:
            now = store.clock.now_us()
            iid = item.instance_id
            completed = step.completed
            if step.reset_history:
                conn.execute("DELETE FROM history WHERE instance_id = ?", (iid,))
                conn.execute(
                    "DELETE FROM inbox WHERE instance_id = ? AND execution_id IS NOT NULL", (iid,)
                )
                # The old execution's queued activities would only be discarded on completion.
                conn.execute(
                    "DELETE FROM activities WHERE instance_id = ? AND lock_token IS NULL", (iid,)
                )
            # (Inbox id 0: an event handed over that never entered the inbox.)
            conn.executemany("DELETE FROM inbox WHERE id = ?", [(i,) for i, _ in item.events if i])
            # One statement checks the lease, records the step and finds when the instance is
            # next ready (messages this step sends to itself move that earlier as they go in).
            # A lost lease raises below, and the savepoint undoes the deletes above.
            row = conn.execute(
                "UPDATE instances SET execution_id = ?1, status = ?2, custom_status = ?3, "
                "output = ?4, failure = ?5, updated_at = ?6, completed_at = ?7, step = step + 1, "
                "history_len = CASE WHEN ?8 THEN 0 ELSE history_len END + ?9, "
                "lock_owner = NULL, lock_token = NULL, lock_expires = NULL, "
                "input = CASE WHEN ?8 THEN ?10 ELSE input END, "
                "ready_at = CASE WHEN ?11 THEN NULL ELSE "
                "(SELECT min(visible_at) FROM inbox WHERE instance_id = ?12) END "
                "WHERE instance_id = ?12 AND lock_token = ?13 RETURNING history_len, ready_at",
                (step.execution_id, step.status, step.custom_status, step.output, step.failure,
                 now, now if completed else None, step.reset_history, len(step.history),
                 step.new_input, completed, iid, item.lock_token),
            ).fetchone()
            if row is None:
                raise LeaseLost(f"lease on orchestration {iid!r} was lost; its step was not saved")
            # Held under this lease, the instance's status is the one it was leased with.
            if item.status != step.status or step.reset_history:
                store.changed(iid)
            if row[1] is not None:
                store.due("orchestration", row[1], now)
            first = row[0] - len(step.history)
            conn.executemany(
                "INSERT INTO history (instance_id, seq, event) VALUES (?, ?, ?)",
                [(iid, first + i, event.data) for i, event in enumerate(step.history)],
            )
            for new in step.new_instances:
                if insert_instance(store, new, now):
                    continue
                if new.replace_finished and status_of(store, new.instance_id) in TERMINAL:
                    delete_instances(store, [new.instance_id], now)
                    insert_instance(store, new, now)
                elif new.conflict is not None:
                    deliver(store, new.conflict, now)
            if step.terminate_children:
                terminate_children(store, iid, step.output, now)
            for child in step.rewind_children:
                rewind_child(store, child, now)
            arrived = last_inbox_id(store, iid) if step.continued_as_new else None
            for message in step.messages:
                deliver(store, message, now)
            if arrived is not None:
                queue_behind(store, iid, arrived)
            if step.activities:
                conn.executemany(
                    "INSERT INTO activities (instance_id, execution_id, task_id, name, version, "
                    "input, available_at, trace_context) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(a.instance_id, a.execution_id, a.task_id, a.name, a.version, a.input,
                      a.visible_at, encode(a.trace_context) if a.trace_context else None)
                     for a in step.activities if a.call_id is None],
                )
                retried = [a for a in step.activities if a.call_id is not None]
                if retried:
                    schedule_calls(store, retried)
                for a in step.activities:
                    store.due("activity", a.visible_at, now)
            if completed:
                conn.execute("DELETE FROM inbox WHERE instance_id = ?", (iid,))
            if completed or step.reset_history:
                conn.execute("DELETE FROM activity_calls WHERE instance_id = ?", (iid,))
            if completed or step.continued_as_new:
                # Critical sections end with their execution, however it ended.
                release_entity_locks(store, iid, now)

        return op

    async def release_orchestration(self, item: OrchestrationWorkItem) -> None:
        """Give back a lease that turned out to have nothing to do."""
        store = self._store

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE instances SET lock_owner = NULL, lock_token = NULL, lock_expires = NULL "
                "WHERE instance_id = ? AND lock_token = ?",
                (item.instance_id, item.lock_token),
            )
            refresh_ready(store, item.instance_id, store.clock.now_us())

        await store.write(op)

    async def abandon_orchestration(self, item: OrchestrationWorkItem, delay_us: int) -> None:
        await give_back(self._store, "instances", item.instance_id, item.lock_token, delay_us)

    # -- activity work items ---------------------------------------------------------------

    async def lease_activities(
        self, owner: str, limit: int, lease_us: int, names: NameFilter | None = None
    ) -> list[ActivityWorkItem]:
        matching, params = _matching(names, 5)

        def items(conn: sqlite3.Connection, rows: list[Any], now: int) -> list[Any]:
            return [
                ActivityWorkItem(*r[:-2], pb.TraceContext.parse(r[-2]) if r[-2] else None, r[-1])
                for r in sorted(rows)
            ]

        return await take(self._store, (
            "UPDATE activities SET lock_owner = ?3, lock_token = hex(randomblob(12)), "
            "available_at = ?1, attempt = attempt + 1 WHERE id IN (SELECT id FROM activities "
            f"WHERE available_at <= ?2 AND ({matching}) ORDER BY available_at LIMIT ?4) "
            "RETURNING id, instance_id, execution_id, task_id, name, version, input, "
            "lock_token, attempt, trace_context, call_id"
        ), (owner, limit, *params), lease_us, items)

    async def renew_activity(self, item: ActivityWorkItem, lease_us: int) -> None:
        await renew(self._store, "activities", item.id, item.lock_token, lease_us,
                    f"activity {item.name!r} #{item.task_id} of {item.instance_id!r}")

    async def complete_activity(
        self, item: ActivityWorkItem, result: StoredEvent, then: NextStep | None = None
    ) -> bool:
        store = self._store

        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "DELETE FROM activities WHERE id = ? AND lock_token = ?", (item.id, item.lock_token)
            )
            if cur.rowcount != 1:
                raise LeaseLost(
                    f"lease on activity {item.name!r} #{item.task_id} of {item.instance_id!r} was "
                    "lost; its result was not saved"
                )
            if item.call_id is not None and result.event.task_failed is not None:
                # Its call may be retried: the next task counts on from these attempts.
                conn.execute(
                    "INSERT OR REPLACE INTO activity_calls (instance_id, execution_id, call_id, "
                    "attempts) VALUES (?, ?, ?, ?)",
                    (item.instance_id, item.execution_id, item.call_id, item.attempt),
                )
            now = store.clock.now_us()
            if then is not None and self._next_step(conn, item, result, then, now):
                return True
            deliver(store, Message(item.instance_id, result, now, item.execution_id), now)
            return False

        return await store.write(op)

    def _next_step(self, conn: sqlite3.Connection, item: ActivityWorkItem, result: StoredEvent,
                   then: NextStep, now: int) -> bool:
        """Lease the activity's instance if it is idle at `then.step` (the lease lapses at once:
        it ends in this transaction), and commit the step `then` plans; False if either the
        instance or `then` declined, the instance then left unleased and unchanged."""
        iid = item.instance_id
        row = conn.execute(
            "UPDATE instances SET lock_owner = ?1, lock_token = hex(randomblob(12)), "
            "lock_expires = ?2 WHERE instance_id = ?3 AND execution_id = ?4 AND step = ?5 "
            "AND status = ?6 AND (lock_expires IS NULL OR lock_expires <= ?2) "
            "AND (ready_at IS NULL OR ready_at > ?2) "
            "RETURNING instance_id, execution_id, name, status, lock_token, step",
            (then.owner, now, iid, item.execution_id, then.step, _RUNNING),
        ).fetchone()
        if row is None:
            return False
        taken = OrchestrationWorkItem(*row, [(0, result)])
        step = then.plan(taken)
        if step is None:
            conn.execute(
                "UPDATE instances SET lock_owner = NULL, lock_token = NULL, lock_expires = NULL "
                "WHERE instance_id = ?", (iid,))
            return False
        self._step_op(taken, step)(conn)
        return True

    async def abandon_activity(self, item: ActivityWorkItem, delay_us: int) -> None:
        await give_back(self._store, "activities", item.id, item.lock_token, delay_us)

    # -- entities --------------------------------------------------------------------------

    async def send_entity_message(self, message: Message) -> None:
        await self._entities.send_entity_message(message)

    async def lease_entities(
        self, owner: str, limit: int, lease_us: int, batch_size: int,
        names: frozenset[str] | None = None,
    ) -> list[EntityWorkItem]:
        return await self._entities.lease_entities(owner, limit, lease_us, batch_size, names)

    async def renew_entity(self, item: EntityWorkItem, lease_us: int) -> None:
        await self._entities.renew_entity(item, lease_us)

    async def complete_entity(self, item: EntityWorkItem, step: EntityStep) -> None:
        await self._entities.complete_entity(item, step)

    async def abandon_entity(self, item: EntityWorkItem, delay_us: int) -> None:
        await self._entities.abandon_entity(item, delay_us)

    async def get_entity(self, instance_id: str, *, include_state: bool) -> EntityRecord | None:
        return await self._entities.get_entity(instance_id, include_state=include_state)

    async def query_entities(self, query: EntityQuery) -> EntityPage:
        return await self._entities.query_entities(query)

    async def clean_entity_storage(
        self, remove_empty: bool, release_orphaned_locks: bool
    ) -> tuple[int, int]:
        return await self._entities.clean_entity_storage(remove_empty, release_orphaned_locks)

    # -- owners ----------------------------------------------------------------------------

    async def lease_owners(self) -> set[str]:
        return await owners(self._store)

    async def release_owner(self, owner: str) -> list[TakenOver]:
        return await release_owner(self._store, owner)

    # -- scheduling ------------------------------------------------------------------------

    async def next_due(self) -> int | None:
        """The earliest future time at which some work item may become available."""
        now = self._store.clock.now_us()

        def read(conn: sqlite3.Connection) -> list[int | None]:
            return [
                conn.execute(sql, (now,)).fetchone()[0]
                for sql in (
                    "SELECT min(ready_at) FROM instances WHERE ready_at > ?",
                    "SELECT min(lock_expires) FROM instances WHERE lock_expires > ?",
                    "SELECT min(available_at) FROM activities WHERE available_at > ?",
                    "SELECT min(ready_at) FROM entities WHERE ready_at > ?",
                    "SELECT min(lock_expires) FROM entities WHERE lock_expires > ?",
                )
            ]

        due = [c for c in await self._store.read(read) if c is not None]
        return min(due) if due else None

    async def aclose(self) -> None:
        await self._store.aclose()


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
    return SqliteBackend(SqliteStore(conn, clock, where))
