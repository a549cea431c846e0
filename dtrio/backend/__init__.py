"""Storage: the `Backend` contract and its implementations."""

import os

from ..clock import Clock
from ..errors import StorageError
from .base import (
    ActivityWorkItem,
    Backend,
    Committed,
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
from .sqlite import open_sqlite_backend
from .statements import SqlBackend


def is_postgres_url(db: object) -> bool:
    """True for a `postgresql://` or `postgres://` URL: the store is a PostgreSQL database."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def open_backend(
    db: str | os.PathLike[str] | None, clock: Clock, *, synchronous: str = "NORMAL"
) -> Backend:
    """Open the store `db` names: a PostgreSQL URL, else a SQLite file (None or ":memory:" for
    a throwaway one). `synchronous` is SQLite's durability setting."""
    if is_postgres_url(db):
        try:  # psycopg is imported only when used: an optional extra
            from .postgres import open_postgres_backend
        except ImportError as exc:
            raise StorageError(
                f"a PostgreSQL store needs psycopg ({exc}); pip install 'dtrio[postgres]'"
            ) from None
        return open_postgres_backend(str(db), clock)
    return open_sqlite_backend(db, clock, synchronous=synchronous)

__all__ = [
    "ActivityWorkItem",
    "Backend",
    "Committed",
    "EntityPage",
    "EntityQuery",
    "EntityRecord",
    "EntityWorkItem",
    "InstancePage",
    "InstanceQuery",
    "InstanceRecord",
    "Listener",
    "NameFilter",
    "NextStep",
    "OrchestrationWorkItem",
    "SqlBackend",
    "TakenOver",
    "is_postgres_url",
    "open_backend",
    "open_sqlite_backend",
]
