"""dtrio: durable async-def orchestrations on Trio, and a Durable Task gRPC sidecar.

Public names are re-exported lazily so that importing a pure part (`dtrio.replay`,
`dtrio.state`) does not pull in Trio or SQLite.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "OrchestrationStatus": "dtrio._pb",
    "ActivityContext": "dtrio.activity",
    "Client": "dtrio.client",
    "OrchestrationState": "dtrio.client",
    "QueryResult": "dtrio.client",
    "ReusePolicy": "dtrio.client",
    "EntityMetadata": "dtrio.client",
    "EntityQueryResult": "dtrio.client",
    "CleanEntityStorageResult": "dtrio.client",
    "EntityId": "dtrio.entities.ids",
    "EntityContext": "dtrio.entities.context",
    "DurableEntity": "dtrio.entities.context",
    "CriticalSection": "dtrio.replay.context",
    "Registry": "dtrio.registry",
    "OrchestrationContext": "dtrio.replay",
    "ReplaySafeLogger": "dtrio.replay",
    "Task": "dtrio.replay",
    "RetryPolicy": "dtrio.replay",
    "when_all": "dtrio.replay",
    "when_any": "dtrio.replay",
    "Engine": "dtrio.services",
    "EngineOptions": "dtrio.services",
    "open_engine": "dtrio.services",
    "serve_engine": "dtrio.services",
    **{
        name: "dtrio.errors"
        for name in (
            "DtrioError",
            "EngineClosed",
            "FailureDetails",
            "InstanceAlreadyExists",
            "InstanceNotFound",
            "InvalidInput",
            "InvalidOperation",
            "LeaseLost",
            "NonDeterminismError",
            "NotRegistered",
            "OrchestratorAwaitError",
            "SerializationError",
            "StorageError",
            "TaskFailedError",
        )
    },
}

__all__ = sorted(_EXPORTS)

# For type checkers, which cannot follow the lazy imports: the same names, re-exported.
if TYPE_CHECKING:
    from ._pb import OrchestrationStatus as OrchestrationStatus
    from .activity import ActivityContext as ActivityContext
    from .client import (
        CleanEntityStorageResult as CleanEntityStorageResult,
    )
    from .client import (
        Client as Client,
    )
    from .client import (
        EntityMetadata as EntityMetadata,
    )
    from .client import (
        EntityQueryResult as EntityQueryResult,
    )
    from .client import (
        OrchestrationState as OrchestrationState,
    )
    from .client import (
        QueryResult as QueryResult,
    )
    from .client import (
        ReusePolicy as ReusePolicy,
    )
    from .entities.context import DurableEntity as DurableEntity
    from .entities.context import EntityContext as EntityContext
    from .entities.ids import EntityId as EntityId
    from .errors import (
        DtrioError as DtrioError,
    )
    from .errors import (
        EngineClosed as EngineClosed,
    )
    from .errors import (
        FailureDetails as FailureDetails,
    )
    from .errors import (
        InstanceAlreadyExists as InstanceAlreadyExists,
    )
    from .errors import (
        InstanceNotFound as InstanceNotFound,
    )
    from .errors import (
        InvalidInput as InvalidInput,
    )
    from .errors import (
        InvalidOperation as InvalidOperation,
    )
    from .errors import (
        LeaseLost as LeaseLost,
    )
    from .errors import (
        NonDeterminismError as NonDeterminismError,
    )
    from .errors import (
        NotRegistered as NotRegistered,
    )
    from .errors import (
        OrchestratorAwaitError as OrchestratorAwaitError,
    )
    from .errors import (
        SerializationError as SerializationError,
    )
    from .errors import (
        StorageError as StorageError,
    )
    from .errors import (
        TaskFailedError as TaskFailedError,
    )
    from .registry import Registry as Registry
    from .replay import (
        OrchestrationContext as OrchestrationContext,
    )
    from .replay import (
        ReplaySafeLogger as ReplaySafeLogger,
    )
    from .replay import (
        RetryPolicy as RetryPolicy,
    )
    from .replay import (
        Task as Task,
    )
    from .replay import (
        when_all as when_all,
    )
    from .replay import (
        when_any as when_any,
    )
    from .replay.context import CriticalSection as CriticalSection
    from .services import (
        Engine as Engine,
    )
    from .services import (
        EngineOptions as EngineOptions,
    )
    from .services import (
        open_engine as open_engine,
    )
    from .services import (
        serve_engine as serve_engine,
    )


def _version() -> str:
    """The installed distribution's version; a source tree that was never installed has none."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dtrio")
    except PackageNotFoundError:
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read on first use: importing dtrio stays cheap
        globals()[name] = value = _version()
        return value
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dtrio' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
