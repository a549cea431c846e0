"""Leases in PostgreSQL, for every kind of work item: taking a batch, renewing one, giving one back.

Taking uses `SELECT ... FOR UPDATE SKIP LOCKED` inside an `UPDATE ... RETURNING`: workers in
other processes leasing at the same moment skip each other's rows instead of waiting on them.
Columns as in `sqlite_leases`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

from ..errors import LeaseLost
from .postgres_store import PostgresStore, Tx

Table = Literal["instances", "entities", "activities"]
T = TypeVar("T")

_COLUMNS = {
    "instances": ("instance_id", "lock_expires", "orchestration"),
    "entities": ("instance_id", "lock_expires", "entity"),
    "activities": ("id", "available_at", "activity"),
}


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
    key_column, expiry, _ = _COLUMNS[table]

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
    key_column, expiry, kind = _COLUMNS[table]

    def op(tx: Tx) -> None:
        now = tx.clock.now_us()
        tx.execute(
            f"UPDATE {table} SET lock_owner = NULL, lock_token = NULL, {expiry} = %s "
            f"WHERE {key_column} = %s AND lock_token = %s",
            (now + delay_us, key, token),
        )
        tx.due(kind, now + delay_us, now)

    await store.write(op)
