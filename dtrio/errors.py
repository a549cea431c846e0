"""Typed exceptions raised inside dtrio; the edges (gRPC, CLI) translate them once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class FailureDetails:
    """Why a task or orchestration failed, as recorded in history."""

    error_type: str
    message: str
    stack_trace: str | None = None
    inner: FailureDetails | None = None
    is_non_retriable: bool = False
    # Custom properties an SDK worker attached (google.protobuf.Value messages by name), kept
    # as they came so a parent or client sees what the failing side sent.
    properties: Mapping[str, Any] | None = field(default=None, hash=False)


class DtrioError(Exception):
    """Base class of every error dtrio raises on purpose."""


class TaskFailedError(DtrioError):
    """An activity or sub-orchestration failed; `details` says how it failed."""

    def __init__(self, message: str, details: FailureDetails):
        super().__init__(message)
        self.details = details


class NonDeterminismError(DtrioError):
    """The orchestrator code no longer produces the steps recorded in its history."""


class OrchestratorAwaitError(DtrioError):
    """An orchestrator awaited something that is not a dtrio task."""


class SerializationError(DtrioError, TypeError):
    """A value could not be turned into (or read back from) a JSON payload."""


class InstanceNotFound(DtrioError, LookupError):
    def __init__(self, instance_id: str):
        super().__init__(f"no orchestration instance with ID {instance_id!r}")
        self.instance_id = instance_id


class InstanceAlreadyExists(DtrioError):
    def __init__(self, instance_id: str, status: str):
        super().__init__(
            f"an orchestration instance with ID {instance_id!r} already exists (status {status})"
        )
        self.instance_id = instance_id
        self.status = status


class NotRegistered(DtrioError, LookupError):
    """An orchestrator or activity name that the registry does not know."""


class InvalidInput(DtrioError, ValueError):
    """A caller passed a malformed argument (empty name, bad instance ID, ...)."""


class StorageError(DtrioError):
    """The store could not be opened or used (corrupt, foreign, newer schema, ...)."""


class MessageTooLarge(DtrioError):
    """A message exceeds the size limit of the receiving side."""


class LeaseLost(DtrioError):
    """A work item's lease expired or was taken by another worker; its completion was refused."""


class WorkItemTooLarge(DtrioError):
    """A work item is larger than a worker accepts: sent, it would break the worker's stream."""


class StreamStalled(DtrioError):
    """A worker's stream stopped reading or stopped finishing work: it counts as gone."""


class EngineClosed(DtrioError):
    """The engine is shutting down or has shut down."""


class InvalidOperation(DtrioError):
    """The instance's state does not allow this (rewind a completed instance, restart a
    running one, ...)."""
