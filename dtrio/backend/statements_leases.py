"""Leases, for every kind of work item: taking a batch, renewing one, giving one back, and ending
those of an owner that is gone. Where each kind keeps its lease: `tables.LEASE_COLUMNS`.

Taking is one `UPDATE ... RETURNING` over a subquery that picks the due rows; where writers run
side by side the subquery skips rows another lease is taking (`Dialect.skip_locked`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

from ..errors import LeaseLost
from .base import NameFilter, TakenOver
from .dialect import Dialect, Store, Tx
from .tables import LEASE_COLUMNS

Table = Literal["instances", "entities", "activities"]
T = TypeVar("T")


def matching(dialect: Dialect, names: NameFilter | None) -> tuple[str, list[Any]]:
    """An SQL condition on the `name` and `version` columns, with its parameters: rows a worker
    taking `names` (None: every name) takes."""
    if names is None:
        return "true", []
    parts, params = [], []
    any_version = sorted(name for name, versions in names if not versions)
    if any_version:
        condition, params = dialect.in_list("name", any_version)
        parts.append(condition)
    for name, versions in sorted(names):
        if versions:
            condition, values = dialect.in_list("coalesce(version, '')", sorted(versions))
            parts.append(f"(name = ? AND {condition})")
            params += [name, *values]
    return " OR ".join(parts) or "false", params


# Rows due to be leased, oldest first: instances and entities when their inbox holds a message
# for now and no lease holds them; activities when visible (a lease moves `available_at` on).
_DUE = {
    "instances": ("ready_at <= ? AND (lock_expires IS NULL OR lock_expires <= ?)", "ready_at"),
    "entities": ("ready_at <= ? AND (lock_expires IS NULL OR lock_expires <= ?)", "ready_at"),
    "activities": ("available_at <= ?", "available_at"),
}


async def take(
    store: Store, table: Table, owner: str, limit: int, lease_us: int, names: NameFilter | None,
    returning: str, then: Callable[[Tx, list[Any], int], T], *, also: str = "",
) -> T:
    """Lease up to `limit` due rows of `table` that a worker taking `names` takes, setting `also`
    besides the lease, and turn the `returning` columns of their rows into work items with
    `then(tx, rows, now)`: one UPDATE ... RETURNING, in a transaction never cancelled once
    begun."""
    dialect = store.dialect
    key, expiry, _ = LEASE_COLUMNS[table]
    due, oldest = _DUE[table]
    condition, params = matching(dialect, names)
    update = (
        f"UPDATE {table} SET {expiry} = ?, lock_owner = ?, lock_token = {dialect.new_token}"
        f"{also} WHERE {key} IN (SELECT {key} FROM {table} WHERE {due} AND ({condition}) "
        f"ORDER BY {oldest} LIMIT ?{dialect.skip_locked}) RETURNING {returning}"
    )
    nows = due.count("?")

    def op(tx: Tx) -> T:
        now = tx.clock.now_us()
        rows = tx.execute(
            update, (now + lease_us, owner, *(now,) * nows, *params, limit)).fetchall()
        return then(tx, rows, now)

    return await store.lease(op)


async def renew(store: Store, table: Table, key: Any, token: str, lease_us: int,
                what: str) -> None:
    """Move the lease's expiry; LeaseLost (naming `what`) if the lease is no longer `token`."""
    key_column, expiry, _ = LEASE_COLUMNS[table]

    def op(tx: Tx) -> None:
        cur = tx.execute(
            f"UPDATE {table} SET {expiry} = ? WHERE {key_column} = ? AND lock_token = ?",
            (tx.clock.now_us() + lease_us, key, token),
        )
        if cur.rowcount != 1:
            raise LeaseLost(f"lease on {what} was lost")

    await store.write(op)


async def give_back(store: Store, table: Table, key: Any, token: str, delay_us: int) -> None:
    """End the lease `token`; the row may be leased again after `delay_us` (the expiry column
    then holds the backoff). Nothing happens if the lease is no longer `token`."""
    key_column, expiry, kind = LEASE_COLUMNS[table]

    def op(tx: Tx) -> None:
        now = tx.clock.now_us()
        tx.execute(
            f"UPDATE {table} SET lock_owner = NULL, lock_token = NULL, {expiry} = ? "
            f"WHERE {key_column} = ? AND lock_token = ?",
            (now + delay_us, key, token),
        )
        tx.due(kind, now + delay_us, now)

    await store.write(op)


async def owners(store: Store) -> set[str]:
    """The owners of the leases that have not lapsed, in every table."""

    def read(tx: Tx) -> set[str]:
        now = tx.clock.now_us()
        return {
            row[0]
            for table, (_, expiry, _) in LEASE_COLUMNS.items()
            for row in tx.execute(
                f"SELECT DISTINCT lock_owner FROM {table} "
                f"WHERE {expiry} > ? AND lock_owner IS NOT NULL", (now,)).fetchall()
        }

    return await store.read(read)


# Per table: what a work item released from a gone owner is reported as.
_TAKEN = {
    "instances": "instance_id, name, CAST(NULL AS integer)",
    "entities": "instance_id, name, CAST(NULL AS integer)",
    "activities": "instance_id, name, task_id",
}


async def release_owner(store: Store, owner: str) -> list[TakenOver]:
    """End every lease `owner` holds, as `give_back` without delay does."""

    def op(tx: Tx) -> list[TakenOver]:
        now = tx.clock.now_us()
        taken: list[TakenOver] = []
        for table, (_, expiry, kind) in LEASE_COLUMNS.items():
            rows = tx.execute(
                f"UPDATE {table} SET lock_owner = NULL, lock_token = NULL, {expiry} = ? "
                f"WHERE {expiry} > ? AND lock_owner = ? RETURNING {_TAKEN[table]}",
                (now, now, owner),
            ).fetchall()
            if rows:
                tx.due(kind, now, now)
                taken += [TakenOver(kind, *row) for row in sorted(rows)]
        return taken

    return await store.write(op)
