"""Storage: the `Backend` contract and its implementations."""

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
    OrchestrationWorkItem,
    TakenOver,
)
from .sqlite import SqliteBackend, open_sqlite_backend

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
    "OrchestrationWorkItem",
    "SqliteBackend",
    "TakenOver",
    "open_sqlite_backend",
]
