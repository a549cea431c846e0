"""The backend over an SQL store: every operation of the `Backend` contract written once, as the
statements it runs in one transaction of the store, whatever its dialect (SQLite or PostgreSQL).

The entity and management operations come from `EntityStatements` and `AdminStatements`; the
row-level steps they share are in `statements_rows`, leases in `statements_leases`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import _pb as pb
from ..errors import InstanceAlreadyExists, InstanceNotFound, LeaseLost, StorageError
from ..events import StoredEvent
from ..inbox import Message, NewInstance
from ..state import TERMINAL, OrchestrationStep
from ..wire import encode
from .base import (
    ActivityWorkItem,
    InstanceRecord,
    Listener,
    NameFilter,
    NextStep,
    OrchestrationWorkItem,
    TakenOver,
)
from .dialect import Dialect, Store, Tx
from .statements_admin import AdminStatements
from .statements_entities import EntityStatements
from .statements_leases import give_back, owners, release_owner, renew, take
from .statements_rows import (
    HISTORY_OF,
    WAKE_PENDING,
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
from .tables import record, record_columns

_PENDING = int(pb.OrchestrationStatus.PENDING)
_RUNNING = int(pb.OrchestrationStatus.RUNNING)

# Records a step under the lease it was taken with, and finds when the instance is next ready
# (messages the step sends to itself move that earlier as they go in).
_SAVE_STEP = (
    "UPDATE instances SET execution_id = ?, status = ?, custom_status = ?, output = ?, "
    "failure = ?, updated_at = ?, completed_at = ?, step = step + 1, "
    "history_len = CASE WHEN ? THEN 0 ELSE history_len END + ?, "
    "lock_owner = NULL, lock_token = NULL, lock_expires = NULL, "
    "input = CASE WHEN ? THEN ? ELSE input END, "
    "ready_at = CASE WHEN ? THEN NULL ELSE "
    "(SELECT min(visible_at) FROM inbox WHERE instance_id = ?) END "
    "WHERE instance_id = ? AND lock_token = ? RETURNING id, history_len, ready_at"
)
# When some work item may next become available, after "now" (given five times).
_NEXT_DUE = (
    "SELECT min(t) FROM ("
    "SELECT min(ready_at) AS t FROM instances WHERE ready_at > ? UNION ALL "
    "SELECT min(lock_expires) FROM instances WHERE lock_expires > ? UNION ALL "
    "SELECT min(available_at) FROM activities WHERE available_at > ? UNION ALL "
    "SELECT min(ready_at) FROM entities WHERE ready_at > ? UNION ALL "
    "SELECT min(lock_expires) FROM entities WHERE lock_expires > ?) AS due"
)


def _step_lost(instance_id: str) -> LeaseLost:
    return LeaseLost(f"lease on orchestration {instance_id!r} was lost; its step was not saved")


class SqlBackend(EntityStatements, AdminStatements):
    def __init__(self, store: Store) -> None:
        self._store = store
        self.where = store.where

    @property
    def dialect(self) -> Dialect:
        return self._store.dialect

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
            # Locked as read (where writers run side by side): another process finishing it
            # between this read and the replacement would be replaced against the policy.
            status = status_of(tx, new.instance_id, lock=True)
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

        def op(tx: Tx) -> bool:
            now = tx.clock.now_us()
            status = status_of(tx, instance_id, lock=True)
            if status is None:
                raise InstanceNotFound(instance_id)
            if status in TERMINAL:
                return False
            at = now if visible_at is None else visible_at
            enqueue(tx, instance_id, None, event, at, now)
            if wake_pending and status == _PENDING:
                tx.execute(WAKE_PENDING, (at, at, instance_id))
            return True

        return await self._store.write(op)

    # -- orchestration work items ----------------------------------------------------------

    async def lease_orchestrations(
        self, owner: str, limit: int, lease_us: int, names: NameFilter | None = None
    ) -> list[OrchestrationWorkItem]:
        in_list = self._store.dialect.in_list

        def items(tx: Tx, rows: list[Any], now: int) -> list[Any]:
            leased = {r[0]: OrchestrationWorkItem(*r, []) for r in rows}
            if leased:
                which, ids = in_list("instance_id", list(leased))
                for instance_id, inbox_id, event in tx.execute(
                    f"SELECT instance_id, id, event FROM inbox WHERE {which} "
                    "AND visible_at <= ? ORDER BY id",
                    (*ids, now),
                ):
                    leased[instance_id].events.append((inbox_id, tx.leased(inbox_id, event)))
            return sorted(leased.values(), key=lambda i: i.instance_id)

        return await take(
            self._store, "instances", owner, limit, lease_us, names,
            "instance_id, execution_id, name, status, lock_token, step", items,
        )

    async def load_history(self, instance_id: str) -> list[StoredEvent]:
        rows = await self._store.read(
            lambda tx: tx.execute(HISTORY_OF, (instance_id,)).fetchall())
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
    ) -> Callable[[Tx], None]:
        def op(tx: Tx) -> None:
            now = tx.clock.now_us()
            iid = item.instance_id
            completed = step.completed
            # Where writers run side by side, the step runs under the instance's row lock, taken
            # first: the inbox it reads below then holds every message committed before it.
            # (SQLite's transaction holds the whole store; the UPDATE below checks the lease.)
            locking = tx.dialect.for_update
            if locking and tx.execute(
                "SELECT 1 FROM instances WHERE instance_id = ? AND lock_token = ?" + locking,
                (iid, item.lock_token),
            ).fetchone() is None:
                raise _step_lost(iid)
            if step.reset_history:
                tx.execute(
                    "DELETE FROM inbox WHERE instance_id = ? AND execution_id IS NOT NULL", (iid,)
                )
                # The old execution's queued activities would only be discarded on completion.
                tx.execute(
                    "DELETE FROM activities WHERE instance_id = ? AND lock_token IS NULL", (iid,)
                )
            # (Inbox id 0: an event handed over that never entered the inbox.)
            tx.executemany("DELETE FROM inbox WHERE id = ?", [(i,) for i, _ in item.events if i])
            # A lost lease raises here, and the transaction undoes the deletes above.
            row = tx.execute(_SAVE_STEP, (
                step.execution_id, step.status, step.custom_status, step.output, step.failure,
                now, now if completed else None, step.reset_history, len(step.history),
                step.reset_history, step.new_input, completed, iid, iid, item.lock_token,
            )).fetchone()
            if row is None:
                raise _step_lost(iid)
            # Held under this lease, the instance's status is the one it was leased with.
            if item.status != step.status or step.reset_history:
                tx.changed(iid)
            key, history_len, ready_at = row
            if ready_at is not None:
                tx.due("orchestration", ready_at, now)
            if step.reset_history:
                tx.execute("DELETE FROM history WHERE instance_key = ?", (key,))
            first = history_len - len(step.history)
            tx.executemany(
                "INSERT INTO history (instance_key, seq, event) VALUES (?, ?, ?)",
                [(key, first + i, event.data) for i, event in enumerate(step.history)],
            )
            for new in step.new_instances:
                if insert_instance(tx, new, now):
                    continue
                if new.replace_finished and status_of(tx, new.instance_id, lock=True) in TERMINAL:
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
                    "input, available_at, trace_context) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
                tx.execute("DELETE FROM inbox WHERE instance_id = ?", (iid,))
            if completed or step.reset_history:
                tx.execute("DELETE FROM activity_calls WHERE instance_id = ?", (iid,))
            if completed or step.continued_as_new:
                # Critical sections end with their execution, however it ended.
                release_entity_locks(tx, iid, now)

        return op

    async def release_orchestration(self, item: OrchestrationWorkItem) -> None:
        """Give back a lease that turned out to have nothing to do."""

        def op(tx: Tx) -> None:
            tx.execute(
                "UPDATE instances SET lock_owner = NULL, lock_token = NULL, lock_expires = NULL "
                "WHERE instance_id = ? AND lock_token = ?",
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
        def items(tx: Tx, rows: list[Any], now: int) -> list[Any]:
            return [
                ActivityWorkItem(*r[:-2], pb.TraceContext.parse(r[-2]) if r[-2] else None, r[-1])
                for r in sorted(rows)
            ]

        return await take(
            self._store, "activities", owner, limit, lease_us, names,
            "id, instance_id, execution_id, task_id, name, version, input, lock_token, attempt, "
            "trace_context, call_id", items, also=", attempt = attempt + 1",
        )

    async def renew_activity(self, item: ActivityWorkItem, lease_us: int) -> None:
        await renew(self._store, "activities", item.id, item.lock_token, lease_us,
                    f"activity {item.name!r} #{item.task_id} of {item.instance_id!r}")

    async def complete_activity(
        self, item: ActivityWorkItem, result: StoredEvent, then: NextStep | None = None
    ) -> bool:
        if not self._store.dialect.plans_in_place:
            then = None  # its orchestrator code would run in a worker thread

        def op(tx: Tx) -> bool:
            cur = tx.execute(
                "DELETE FROM activities WHERE id = ? AND lock_token = ?", (item.id, item.lock_token)
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
                    "VALUES (?, ?, ?, ?) ON CONFLICT (instance_id, execution_id, call_id) "
                    "DO UPDATE SET attempts = excluded.attempts",
                    (item.instance_id, item.execution_id, item.call_id, item.attempt),
                )
            now = tx.clock.now_us()
            if then is not None and self._next_step(tx, item, result, then, now):
                return True
            deliver(tx, Message(item.instance_id, result, now, item.execution_id), now)
            return False

        return await self._store.write(op)

    def _next_step(self, tx: Tx, item: ActivityWorkItem, result: StoredEvent, then: NextStep,
                   now: int) -> bool:
        """Lease the activity's instance if it is idle at `then.step` (the lease lapses at once:
        it ends in this transaction), and commit the step `then` plans; False if either the
        instance or `then` declined, the instance then left unleased and unchanged."""
        iid = item.instance_id
        row = tx.execute(
            f"UPDATE instances SET lock_owner = ?, lock_token = {tx.dialect.new_token}, "
            "lock_expires = ? WHERE instance_id = ? AND execution_id = ? AND step = ? "
            "AND status = ? AND (lock_expires IS NULL OR lock_expires <= ?) "
            "AND (ready_at IS NULL OR ready_at > ?) "
            "RETURNING instance_id, execution_id, name, status, lock_token, step",
            (then.owner, now, iid, item.execution_id, then.step, _RUNNING, now, now),
        ).fetchone()
        if row is None:
            return False
        taken = OrchestrationWorkItem(*row, [(0, result)])
        step = then.plan(taken)
        if step is None:
            tx.execute(
                "UPDATE instances SET lock_owner = NULL, lock_token = NULL, lock_expires = NULL "
                "WHERE instance_id = ?", (iid,))
            return False
        self._step_op(taken, step)(tx)
        return True

    async def abandon_activity(self, item: ActivityWorkItem, delay_us: int) -> None:
        await give_back(self._store, "activities", item.id, item.lock_token, delay_us)

    # -- owners ----------------------------------------------------------------------------

    async def lease_owners(self) -> set[str]:
        return await owners(self._store)

    async def release_owner(self, owner: str) -> list[TakenOver]:
        return await release_owner(self._store, owner)

    # -- scheduling ------------------------------------------------------------------------

    async def next_due(self) -> int | None:
        """The earliest future time at which some work item may become available."""
        now = self._store.clock.now_us()
        row = await self._store.read(lambda tx: tx.execute(_NEXT_DUE, (now,) * 5).fetchone())
        return None if row is None else row[0]

    async def aclose(self) -> None:
        await self._store.aclose()
