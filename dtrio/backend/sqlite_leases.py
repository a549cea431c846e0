"""Leases on rows keyed by instance ID (orchestrations in `instances`, entities in `entities`):
both kinds keep their lease in the same three columns, and renew and give it back alike."""

from __future__ import annotations

import sqlite3
from typing import Literal

from ..errors import LeaseLost

Table = Literal["instances", "entities"]


def renew_lease(
    conn: sqlite3.Connection, table: Table, instance_id: str, token: str, expires: int,
    what: str,
) -> None:
    """Move the lease's expiry; LeaseLost (naming `what`) if the lease is no longer `token`."""
    cur = conn.execute(
        f"UPDATE {table} SET lock_expires = ? WHERE instance_id = ? AND lock_token = ?",
        (expires, instance_id, token),
    )
    if cur.rowcount != 1:
        raise LeaseLost(f"lease on {what} {instance_id!r} was lost")


def give_back(
    conn: sqlite3.Connection, table: Table, instance_id: str, token: str, retry_at: int
) -> None:
    """End the lease `token`; the row may be leased again from `retry_at` (lock_expires then
    holds the backoff). Nothing happens if the lease is no longer `token`."""
    conn.execute(
        f"UPDATE {table} SET lock_owner = NULL, lock_token = NULL, lock_expires = ? "
        "WHERE instance_id = ? AND lock_token = ?",
        (retry_at, instance_id, token),
    )
