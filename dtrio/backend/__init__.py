"""Storage: the `Backend` contract and its implementations."""

from .base import (
    ActivityWorkItem,
    Backend,
    EntityPage,
    EntityQuery,
    EntityRecord,
    EntityWorkItem,
    InstancePage,
    InstanceQuery,
    InstanceRecord,
    NameFilter,
    OrchestrationWorkItem,
)
from .sqlite import SqliteBackend, open_sqlite_backend

__all__ = [
    "ActivityWorkItem",
    "Backend",
    "EntityPage",
    "EntityQuery",
    "EntityRecord",
    "EntityWorkItem",
    "InstancePage",
    "InstanceQuery",
    "InstanceRecord",
    "NameFilter",
    "OrchestrationWorkItem",
    "SqliteBackend",
    "open_sqlite_backend",
]
