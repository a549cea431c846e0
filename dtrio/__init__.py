"""dtrio: durable async-def orchestrations on Trio, and a Durable Task gRPC sidecar."""

from ._pb import OrchestrationStatus
from .activity import ActivityContext
from .client import Client, OrchestrationState
from .errors import (
    DtrioError,
    EngineClosed,
    FailureDetails,
    InstanceAlreadyExists,
    InstanceNotFound,
    InvalidInput,
    LeaseLost,
    NonDeterminismError,
    NotRegistered,
    OrchestratorAwaitError,
    SerializationError,
    StorageError,
    TaskFailedError,
)
from .registry import Registry
from .replay import OrchestrationContext, Task, when_all, when_any
from .services import Engine, EngineOptions, open_engine, serve_engine

__all__ = [
    "ActivityContext",
    "Client",
    "DtrioError",
    "Engine",
    "EngineClosed",
    "EngineOptions",
    "FailureDetails",
    "InstanceAlreadyExists",
    "InstanceNotFound",
    "InvalidInput",
    "LeaseLost",
    "NonDeterminismError",
    "NotRegistered",
    "OrchestrationContext",
    "OrchestrationState",
    "OrchestrationStatus",
    "OrchestratorAwaitError",
    "Registry",
    "SerializationError",
    "StorageError",
    "Task",
    "TaskFailedError",
    "open_engine",
    "serve_engine",
    "when_all",
    "when_any",
]
