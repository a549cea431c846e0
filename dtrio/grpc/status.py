"""dtrio's typed errors as gRPC statuses: the one place they are translated for remote callers."""

from __future__ import annotations

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ..errors import (
    EngineClosed,
    InstanceAlreadyExists,
    InstanceNotFound,
    InvalidInput,
    InvalidOperation,
    LeaseLost,
    MessageTooLarge,
    NotRegistered,
    SerializationError,
    StorageError,
    StreamStalled,
)

# Checked in order: the first class the error is an instance of decides.
_STATUSES: tuple[tuple[type[Exception], Status], ...] = (
    (InstanceNotFound, Status.NOT_FOUND),
    (InstanceAlreadyExists, Status.ALREADY_EXISTS),
    (InvalidInput, Status.INVALID_ARGUMENT),
    (SerializationError, Status.INVALID_ARGUMENT),
    (NotRegistered, Status.NOT_FOUND),
    # The instance's state forbids it (restart a running instance, rewind a non-failed one).
    (InvalidOperation, Status.FAILED_PRECONDITION),
    # A completion for a work item this caller no longer holds (stale or unknown token).
    (LeaseLost, Status.FAILED_PRECONDITION),
    (MessageTooLarge, Status.RESOURCE_EXHAUSTED),
    (EngineClosed, Status.UNAVAILABLE),
    (StorageError, Status.UNAVAILABLE),
    # A worker that stopped reading or finishing work: it may reconnect.
    (StreamStalled, Status.UNAVAILABLE),
)


def grpc_error(exc: Exception) -> GRPCError | None:
    """The status a remote caller gets for `exc`, or None for an unexpected error (a bug)."""
    for cls, status in _STATUSES:
        if isinstance(exc, cls):
            return GRPCError(status, str(exc))
    return None
