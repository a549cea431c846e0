"""Storage: the `Backend` contract and its implementations."""

from .base import (
    ActivityWorkItem,
    Backend,
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
    "InstancePage",
    "InstanceQuery",
    "InstanceRecord",
    "NameFilter",
    "OrchestrationWorkItem",
    "SqliteBackend",
    "open_sqlite_backend",
]
