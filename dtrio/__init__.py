"""dtrio: durable async-def orchestrations on Trio, and a Durable Task gRPC sidecar.

Public names are re-exported lazily so that importing a pure part (`dtrio.replay`,
`dtrio.state`) does not pull in Trio or SQLite.
"""

from importlib import import_module
from typing import Any

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
