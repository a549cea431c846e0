"""The PostgreSQL backend: a store many processes can share, selected by a `postgresql://` URL.

Composed like the SQLite backend: `PostgresStore` (the pool, its worker threads and group commit),
the row-level steps in `postgres_rows`, and the entity and management operations
(`PostgresEntities`, `PostgresAdmin`), which this class hands on to.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool

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
    OrchestrationWorkItem,
    TakenOver,
)
from .postgres_admin import PostgresAdmin
from .postgres_entities import PostgresEntities
from .postgres_health import WAIT
from .postgres_leases import give_back, owners, release_owner, renew, take
from .postgres_rows import (
    NEW_TOKEN,
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
from .postgres_schema import check_and_migrate
from .postgres_store import PostgresStore, Tx, describe
from .tables import record, record_columns

_PENDING = int(pb.OrchestrationStatus.PENDING)
DEFAULT_POOL_SIZE = 8


def masked(url: str) -> str:
    """The URL with its password (if any) replaced by ***, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def matching(names: NameFilter | None) -> tuple[str, dict[str, Any]]:
    """An SQL condition on the `name` and `version` columns, with its named parameters: rows a
    worker taking `names` (None: every name) takes."""
    if names is None:
        return "true", {}
    params: dict[str, Any] = {}
    any_version = [name for name, versions in names if not versions]
    parts = []
    if any_version:
        params["any_names"] = any_version
        parts.append("name = ANY(%(any_names)s)")
    for n, (name, versions) in enumerate(sorted(names)):
        if versions:
            params[f"n{n}"], params[f"v{n}"] = name, sorted(versions)
            parts.append(f"(name = %(n{n})s AND coalesce(version, '') = ANY(%(v{n})s))")
    return " OR ".join(parts) or "false", params


class PostgresBackend:
    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self.where = store.where
        self._entities = PostgresEntities(store)
        self._admin = PostgresAdmin(store)

    def listen(self, listener: Listener) -> None:
        self._store.listen(listener)

    # -- instances and their inboxes -------------------------------------------------------

    async def create_instance(
        self, new: NewInstance, *, replace: frozenset[int] = frozenset(),
        ignore: frozenset[int] = frozenset(),
    ) -> bool:
        """Create `new`. If the ID exists: replace it when its status is in `replace`, do
        nothing (returning False) when in `ignore`, else raise InstanceAlreadyExists."""

        def op(tx: Tx) -> bool:
            now = tx.clock.now_us()
            if insert_instance(tx, new, now):
                return True
            status = status_of(tx, new.instance_id)
            if status is None:  # deleted by a concurrent purge since the insert looked
                raise StorageError(f"could not create instance {new.instance_id!r}; try again")
            if status in ignore:
                return False
            if status not in replace:
                raise InstanceAlreadyExists(new.instance_id, pb.OrchestrationStatus(status).name)
            delete_instances(tx, [new.instance_id], now)
            if not insert_instance(tx, new, now):
                raise StorageError(f"could not replace instance {new.instance_id!r}")
            return True

        return await self._store.write(op)

    async def get_instance(
        self, instance_id: str, *, payloads: bool = True
    ) -> InstanceRecord | None:
        row = await self._store.read(lambda tx: tx.execute(
            f"SELECT {record_columns(payloads)} FROM instances WHERE instance_id = %s",
            (instance_id,),
        ).fetchone())
        return None if row is None else record(row, payloads)

    async def add_event(
        self, instance_id: str, event: StoredEvent, *, visible_at: int | None = None,
        wake_pending: bool = False,
    ) -> bool:
        """Queue an event for a live instance; False (and nothing queued) if it has finished.

        `wake_pending` makes a not-yet-started instance run now (to terminate it)."""

        def op(tx: Tx) -> bool:
            now = tx.clock.now_us()
            row = tx.execute("SELECT status FROM instances WHERE instance_id = %s FOR UPDATE",
                             (instance_id,)).fetchone()
            if row is None:
                raise InstanceNotFound(instance_id)
            status = row[0]
            if status in TERMINAL:
                return False
            at = now if visible_at is None else visible_at
            enqueue(tx, instance_id, None, event, at, now)
            if wake_pending and status == _PENDING:
                tx.execute(
                    "UPDATE instances SET ready_at = least(ready_at, %s) WHERE instance_id = %s",
                    (at, instance_id),
                )
            return True

        return await self._store.write(op)

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
        condition, params = matching(names)

        def items(tx: Tx, rows: list[Any], now: int) -> list[Any]:
            leased = {r[0]: OrchestrationWorkItem(*r, []) for r in rows}
            if leased:
                for instance_id, inbox_id, event in tx.execute(
                    "SELECT instance_id, id, event FROM inbox WHERE instance_id = ANY(%s) "
                    "AND visible_at <= %s ORDER BY id",
                    (list(leased), now),
                ):
                    leased[instance_id].events.append((inbox_id, tx.leased(inbox_id, event)))
            return sorted(leased.values(), key=lambda i: i.instance_id)

        return await take(self._store, (
            f"UPDATE instances SET lock_owner = %(owner)s, lock_token = {NEW_TOKEN}, "
            "lock_expires = %(expires)s WHERE instance_id IN (SELECT instance_id FROM instances "
            "WHERE ready_at <= %(now)s AND (lock_expires IS NULL OR lock_expires <= %(now)s) "
            f"AND ({condition}) ORDER BY ready_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
            "RETURNING instance_id, execution_id, name, status, lock_token, step"
        ), {"owner": owner, "limit": limit, **params}, lease_us, items)

    async def load_history(self, instance_id: str) -> list[StoredEvent]:
        rows = await self._store.read(lambda tx: tx.execute(
            "SELECT event FROM history WHERE instance_id = %s ORDER BY seq", (instance_id,)
        ).fetchall())
        return [StoredEvent.read(r[0]) for r in rows]

    async def renew_orchestration(self, item: OrchestrationWorkItem, lease_us: int) -> None:
        await renew(self._store, "instances", item.instance_id, item.lock_token, lease_us,
                    f"orchestration {item.instance_id!r}")

    async def complete_orchestration(
        self, item: OrchestrationWorkItem, step: OrchestrationStep
    ) -> None:
        def op(tx: Tx) -> None:
            now = tx.clock.now_us()
            iid = item.instance_id
            completed = step.completed
            # Checking the lease first locks the row: the rest of the step runs under it.
            if tx.execute(
                "SELECT 1 FROM instances WHERE instance_id = %s AND lock_token = %s FOR UPDATE",
                (iid, item.lock_token),
            ).fetchone() is None:
                raise LeaseLost(f"lease on orchestration {iid!r} was lost; its step was not saved")
            if step.reset_history:
                tx.execute("DELETE FROM history WHERE instance_id = %s", (iid,))
                tx.execute(
                    "DELETE FROM inbox WHERE instance_id = %s AND execution_id IS NOT NULL", (iid,)
                )
                tx.execute(
                    "DELETE FROM activities WHERE instance_id = %s AND lock_token IS NULL", (iid,)
                )
            if item.events:
                tx.execute("DELETE FROM inbox WHERE id = ANY(%s)", ([i for i, _ in item.events],))
            row = tx.execute(
                "UPDATE instances SET execution_id = %(execution)s, status = %(status)s, "
                "custom_status = %(custom)s, output = %(output)s, failure = %(failure)s, "
                "updated_at = %(now)s, completed_at = %(completed_at)s, step = step + 1, "
                "history_len = CASE WHEN %(reset)s THEN 0 ELSE history_len END + %(added)s, "
                "lock_owner = NULL, lock_token = NULL, lock_expires = NULL, "
                "input = CASE WHEN %(reset)s THEN %(input)s ELSE input END, "
                "ready_at = CASE WHEN %(completed)s THEN NULL ELSE "
                "(SELECT min(visible_at) FROM inbox WHERE instance_id = %(id)s) END "
                "WHERE instance_id = %(id)s RETURNING history_len, ready_at",
                {"execution": step.execution_id, "status": step.status,
                 "custom": step.custom_status, "output": step.output, "failure": step.failure,
                 "now": now, "completed_at": now if completed else None,
                 "reset": step.reset_history, "added": len(step.history),
                 "input": step.new_input, "completed": completed, "id": iid},
            ).fetchone()
            if item.status != step.status or step.reset_history:
                tx.changed(iid)
            if row[1] is not None:
                tx.due("orchestration", row[1], now)
            first = row[0] - len(step.history)
            tx.executemany(
                "INSERT INTO history (instance_id, seq, event) VALUES (%s, %s, %s)",
                [(iid, first + i, event.data) for i, event in enumerate(step.history)],
            )
            for new in step.new_instances:
                if insert_instance(tx, new, now):
                    continue
                if new.replace_finished and status_of(tx, new.instance_id) in TERMINAL:
                    delete_instances(tx, [new.instance_id], now)
                    insert_instance(tx, new, now)
                elif new.conflict is not None:
                    deliver(tx, new.conflict, now)
            if step.terminate_children:
                terminate_children(tx, iid, step.output, now)
            for child in step.rewind_children:
                rewind_child(tx, child, now)
            arrived = last_inbox_id(tx, iid) if step.continued_as_new else None
            for message in step.messages:
                deliver(tx, message, now)
            if arrived is not None:
                queue_behind(tx, iid, arrived)
            if step.activities:
                tx.executemany(
                    "INSERT INTO activities (instance_id, execution_id, task_id, name, version, "
                    "input, available_at, trace_context) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    [(a.instance_id, a.execution_id, a.task_id, a.name, a.version, a.input,
                      a.visible_at, encode(a.trace_context) if a.trace_context else None)
                     for a in step.activities if a.call_id is None],
                )
                retried = [a for a in step.activities if a.call_id is not None]
                if retried:
                    schedule_calls(tx, retried)
                for a in step.activities:
                    tx.due("activity", a.visible_at, now)
            if completed:
                tx.execute("DELETE FROM inbox WHERE instance_id = %s", (iid,))
            if completed or step.reset_history:
                tx.execute("DELETE FROM activity_calls WHERE instance_id = %s", (iid,))
            if completed or step.continued_as_new:
                release_entity_locks(tx, iid, now)

        await self._store.write(op)

    async def release_orchestration(self, item: OrchestrationWorkItem) -> None:
        """Give back a lease that turned out to have nothing to do."""

        def op(tx: Tx) -> None:
            tx.execute(
                "UPDATE instances SET lock_owner = NULL, lock_token = NULL, lock_expires = NULL "
                "WHERE instance_id = %s AND lock_token = %s",
                (item.instance_id, item.lock_token),
            )
            refresh_ready(tx, item.instance_id, tx.clock.now_us())

        await self._store.write(op)

    async def abandon_orchestration(self, item: OrchestrationWorkItem, delay_us: int) -> None:
        await give_back(self._store, "instances", item.instance_id, item.lock_token, delay_us)

    # -- activity work items ---------------------------------------------------------------

    async def lease_activities(
        self, owner: str, limit: int, lease_us: int, names: NameFilter | None = None
    ) -> list[ActivityWorkItem]:
        condition, params = matching(names)

        def items(tx: Tx, rows: list[Any], now: int) -> list[Any]:
            return [
                ActivityWorkItem(*r[:-2], pb.TraceContext.parse(r[-2]) if r[-2] else None, r[-1])
                for r in sorted(rows)
            ]

        return await take(self._store, (
            f"UPDATE activities SET lock_owner = %(owner)s, lock_token = {NEW_TOKEN}, "
            "available_at = %(expires)s, attempt = attempt + 1 WHERE id IN (SELECT id FROM "
            f"activities WHERE available_at <= %(now)s AND ({condition}) ORDER BY available_at "
            "LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
            "RETURNING id, instance_id, execution_id, task_id, name, version, input, "
            "lock_token, attempt, trace_context, call_id"
        ), {"owner": owner, "limit": limit, **params}, lease_us, items)

    async def renew_activity(self, item: ActivityWorkItem, lease_us: int) -> None:
        await renew(self._store, "activities", item.id, item.lock_token, lease_us,
                    f"activity {item.name!r} #{item.task_id} of {item.instance_id!r}")

    async def complete_activity(self, item: ActivityWorkItem, result: StoredEvent) -> None:
        def op(tx: Tx) -> None:
            cur = tx.execute(
                "DELETE FROM activities WHERE id = %s AND lock_token = %s",
                (item.id, item.lock_token),
            )
            if cur.rowcount != 1:
                raise LeaseLost(
                    f"lease on activity {item.name!r} #{item.task_id} of {item.instance_id!r} was "
                    "lost; its result was not saved"
                )
            if item.call_id is not None and result.event.task_failed is not None:
                # Its call may be retried: the next task counts on from these attempts.
                tx.execute(
                    "INSERT INTO activity_calls (instance_id, execution_id, call_id, attempts) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (instance_id, execution_id, call_id) "
                    "DO UPDATE SET attempts = EXCLUDED.attempts",
                    (item.instance_id, item.execution_id, item.call_id, item.attempt),
                )
            now = tx.clock.now_us()
            deliver(tx, Message(item.instance_id, result, now, item.execution_id), now)

        await self._store.write(op)

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

    # -- scheduling ------------------------------------------------------------------------

    async def lease_owners(self) -> set[str]:
        return await owners(self._store)

    async def release_owner(self, owner: str) -> list[TakenOver]:
        return await release_owner(self._store, owner)

    async def next_due(self) -> int | None:
        """The earliest future time at which some work item may become available."""
        now = self._store.clock.now_us()
        row = await self._store.read(lambda tx: tx.execute(
            "SELECT least("
            "(SELECT min(ready_at) FROM instances WHERE ready_at > %(now)s), "
            "(SELECT min(lock_expires) FROM instances WHERE lock_expires > %(now)s), "
            "(SELECT min(available_at) FROM activities WHERE available_at > %(now)s), "
            "(SELECT min(ready_at) FROM entities WHERE ready_at > %(now)s), "
            "(SELECT min(lock_expires) FROM entities WHERE lock_expires > %(now)s))",
            {"now": now},
        ).fetchone())
        return None if row is None else row[0]

    async def aclose(self) -> None:
        await self._store.aclose()


def open_postgres_backend(
    url: str, clock: Clock, *, pool_size: int = DEFAULT_POOL_SIZE
) -> PostgresBackend:
    """Connect to the database at `url` (creating or upgrading dtrio's schema in it).

    Blocks while it connects: call it before the engine's tasks start, as `open_backend` does."""
    where = masked(url)
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            check_and_migrate(conn, where)
    except psycopg.Error as exc:
        raise StorageError(f"cannot use {where}: {describe(exc)}") from None
    pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=False, timeout=WAIT,
                          kwargs={"autocommit": True}, name="dtrio")
    try:
        pool.open(wait=True, timeout=10)
    except Exception as exc:
        pool.close()
        raise StorageError(f"cannot connect to {where}: {exc}") from None
    return PostgresBackend(PostgresStore(pool, clock, where, pool_size))


