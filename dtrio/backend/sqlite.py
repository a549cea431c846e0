"""The SQLite store: the default, a file in WAL mode or an in-memory database. Its operations are
the statement layer's (`SqlBackend`) over a `SqliteStore` (the connection, group commit)."""

from __future__ import annotations

import os
import sqlite3

from ..clock import Clock
from ..errors import StorageError
from .sqlite_schema import check_and_migrate
from .sqlite_store import SqliteStore
from .statements import SqlBackend


def open_sqlite_backend(
    db: str | os.PathLike[str] | None, clock: Clock, *, synchronous: str = "NORMAL"
) -> SqlBackend:
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
    return SqlBackend(SqliteStore(conn, clock, where, None if memory else os.stat(where)))
