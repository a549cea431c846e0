"""Leases in SQLite, for every kind of work item: taking a batch, renewing one, giving one back.

Orchestrations (`instances`) and entities (`entities`) keep their lease in the same three
columns, keyed by instance ID; activities keep theirs in `activities`, keyed by row id, with
`available_at` as the expiry.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

from ..errors import LeaseLost
from .base import TakenOver
from .sqlite_store import SqliteStore
from .tables import LEASE_COLUMNS

Table = Literal["instances", "entities", "activities"]
T = TypeVar("T")

async def take(
    store: SqliteStore, update: str, params: Sequence[Any], lease_us: int,
    then: Callable[[sqlite3.Connection, list[Any], int], T],
) -> T:
    """Run `update` (an UPDATE ... RETURNING taking the rows it leases; ?1 is the new expiry,
    ?2 "now", `params` follow) and turn its rows into work items with `then(conn, rows, now)`,
    in one transaction that is never cancelled once begun."""

    def op(conn: sqlite3.Connection) -> T:
        now = store.clock.now_us()
        rows = conn.execute(update, (now + lease_us, now, *params)).fetchall()
        return then(conn, rows, now)

    return await store.lease(op)


async def renew(store: SqliteStore, table: Table, key: Any, token: str, lease_us: int,
                what: str) -> None:
    """Move the lease's expiry; LeaseLost (naming `what`) if the lease is no longer `token`."""
    key_column, expiry, _ = LEASE_COLUMNS[table]

    def op(conn: sqlite3.Connection) -> None:
        cur = conn.execute(
            f"UPDATE {table} SET {expiry} = ? WHERE {key_column} = ? AND lock_token = ?",
            (store.clock.now_us() + lease_us, key, token),
        )
        if cur.rowcount != 1:
            raise LeaseLost(f"lease on {what} was lost")

    await store.write(op)


async def give_back(store: SqliteStore, table: Table, key: Any, token: str, delay_us: int) -> None:
    """End the lease `token`; the row may be leased again after `delay_us` (the expiry column
    then holds the backoff). Nothing happens if the lease is no longer `token`."""
    key_column, expiry, kind = LEASE_COLUMNS[table]

    def op(conn: sqlite3.Connection) -> None:
        now = store.clock.now_us()
        conn.execute(
            f"UPDATE {table} SET lock_owner = NULL, lock_token = NULL, {expiry} = ? "
            f"WHERE {key_column} = ? AND lock_token = ?",
            (now + delay_us, key, token),
        )
        store.due(kind, now + delay_us, now)

    await store.write(op)


async def owners(store: SqliteStore) -> set[str]:
    """The owners of the leases that have not lapsed, in every table."""

    def read(conn: sqlite3.Connection) -> set[str]:
        now = store.clock.now_us()
        return {
            row[0]
            for table, (_, expiry, _) in LEASE_COLUMNS.items()
            for row in conn.execute(
                f"SELECT DISTINCT lock_owner FROM {table} "
                f"WHERE {expiry} > ? AND lock_owner IS NOT NULL", (now,))
        }

    return await store.read(read)


# Per table: what a work item released from a gone owner is reported as.
_TAKEN = {
    "instances": "instance_id, name, NULL",
    "entities": "instance_id, name, NULL",
    "activities": "instance_id, name, task_id",
}


async def release_owner(store: SqliteStore, owner: str) -> list[TakenOver]:
    """End every lease `owner` holds, as `give_back` without delay does."""

    def op(conn: sqlite3.Connection) -> list[TakenOver]:
        now = store.clock.now_us()
        taken: list[TakenOver] = []
        for table, (_, expiry, kind) in LEASE_COLUMNS.items():
            rows = conn.execute(
                f"UPDATE {table} SET lock_owner = NULL, lock_token = NULL, {expiry} = ?1 "
                f"WHERE {expiry} > ?1 AND lock_owner = ?2 RETURNING {_TAKEN[table]}",
                (now, owner),
            ).fetchall()
            if rows:
                store.due(kind, now, now)
                taken += [TakenOver(kind, *row) for row in sorted(rows)]
        return taken

    return await store.write(op)
