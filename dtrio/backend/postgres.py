"""The PostgreSQL store, which many processes can share, selected by a `postgresql://` URL. Its
operations are the statement layer's (`SqlBackend`) over a `PostgresStore` (the pool, its worker
threads and group commit)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool

from ..clock import Clock
from ..errors import StorageError
from .postgres_health import WAIT
from .postgres_schema import check_and_migrate
from .postgres_store import PostgresStore, describe
from .statements import SqlBackend

DEFAULT_POOL_SIZE = 8


def masked(url: str) -> str:
    """The URL with its password (if any) replaced by ***, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def open_postgres_backend(
    url: str, clock: Clock, *, pool_size: int = DEFAULT_POOL_SIZE
) -> SqlBackend:
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
    return SqlBackend(PostgresStore(pool, clock, where, pool_size))
