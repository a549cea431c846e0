"""Storage: the `Backend` contract and its implementations."""

from .base import ActivityWorkItem, Backend, InstanceRecord, OrchestrationWorkItem
from .sqlite import SqliteBackend, open_sqlite_backend

__all__ = [
    "ActivityWorkItem",
    "Backend",
    "InstanceRecord",
    "OrchestrationWorkItem",
    "SqliteBackend",
    "open_sqlite_backend",
]
