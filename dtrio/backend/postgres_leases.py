"""Leases in PostgreSQL, for every kind of work item: taking a batch, renewing one, giving one back.

Taking uses `SELECT ... FOR UPDATE SKIP LOCKED` inside an `UPDATE ... RETURNING`: workers in
other processes leasing at the same moment skip each other's rows instead of waiting on them.
Columns as in `sqlite_leases`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

from ..errors import LeaseLost
from .base import TakenOver
from .postgres_store import PostgresStore, Tx
from .tables import LEASE_COLUMNS

Table = Literal["instances", "entities", "activities"]
T = TypeVar("T")



async def take(
    store: PostgresStore, update: str, params: dict[str, Any], lease_us: int,
    then: Callable[[Tx, list[Any], int], T],
) -> T:
    """Run `update` (an UPDATE ... RETURNING taking the rows it leases; %(expires)s is the new
    expiry, %(now)s "now", `params` the rest) and turn its rows into work items with
    `then(tx, rows, now)`, in one transaction that is never cancelled once begun."""

    def op(tx: Tx) -> T:
        now = tx.clock.now_us()
        rows = tx.execute(update, {**params, "expires": now + lease_us, "now": now}).fetchall()
        return then(tx, rows, now)

    return await store.lease(op)


async def renew(store: PostgresStore, table: Table, key: Any, token: str, lease_us: int,
                what: str) -> None:
    """Move the lease's expiry; LeaseLost (naming `what`) if the lease is no longer `token`."""
    key_column, expiry, _ = LEASE_COLUMNS[table]

    def op(tx: Tx) -> None:
        cur = tx.execute(
            f"UPDATE {table} SET {expiry} = %s WHERE {key_column} = %s AND lock_token = %s",
            (tx.clock.now_us() + lease_us, key, token),
        )
        if cur.rowcount != 1:
            raise LeaseLost(f"lease on {what} was lost")

    await store.write(op)


async def give_back(store: PostgresStore, table: Table, key: Any, token: str,
                    delay_us: int) -> None:
    """End the lease `token`; the row may be leased again after `delay_us`. Nothing happens if
    the lease is no longer `token`."""
    key_column, expiry, kind = LEASE_COLUMNS[table]

    def op(tx: Tx) -> None:
        now = tx.clock.now_us()
        tx.execute(
            f"UPDATE {table} SET lock_owner = NULL, lock_token = NULL, {expiry} = %s "
            f"WHERE {key_column} = %s AND lock_token = %s",
            (now + delay_us, key, token),
        )
        tx.due(kind, now + delay_us, now)

    await store.write(op)


async def owners(store: PostgresStore) -> set[str]:
    """The owners of the leases that have not lapsed, in every table."""

    def read(tx: Tx) -> set[str]:
        now = tx.clock.now_us()
        return {
            row[0]
            for table, (_, expiry, _) in LEASE_COLUMNS.items()
            for row in tx.execute(
                f"SELECT DISTINCT lock_owner FROM {table} "
                f"WHERE {expiry} > %s AND lock_owner IS NOT NULL", (now,)).fetchall()
        }

    return await store.read(read)


# Per table: what a work item released from a gone owner is reported as (typed for this
# dialect, so not shared).
_TAKEN = {
    "instances": "instance_id, name, NULL::integer",
    "entities": "instance_id, name, NULL::integer",
    "activities": "instance_id, name, task_id",
}


async def release_owner(store: PostgresStore, owner: str) -> list[TakenOver]:
    """End every lease `owner` holds, as `give_back` without delay does."""

    def op(tx: Tx) -> list[TakenOver]:
        now = tx.clock.now_us()
        taken: list[TakenOver] = []
        for table, (_, expiry, kind) in LEASE_COLUMNS.items():
            rows = tx.execute(
                f"UPDATE {table} SET lock_owner = NULL, lock_token = NULL, {expiry} = %(now)s "
                f"WHERE {expiry} > %(now)s AND lock_owner = %(owner)s RETURNING {_TAKEN[table]}",
                {"now": now, "owner": owner},
            ).fetchall()
            if rows:
                tx.due(kind, now, now)
                taken += [TakenOver(kind, *row) for row in sorted(rows)]
        return taken

    return await store.write(op)
