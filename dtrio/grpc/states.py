"""Stored instances as the protocol's OrchestrationState messages."""

from __future__ import annotations

from datetime import datetime

from .. import _pb as pb
from ..backend import InstanceRecord
from ..times import from_us


def orchestration_state(record: InstanceRecord, *, payloads: bool) -> pb.OrchestrationState:
    """`payloads=False` leaves input and output out, as the request asked."""
    return pb.OrchestrationState(
        instance_id=record.instance_id,
        name=record.name,
        version=record.version,
        orchestration_status=pb.OrchestrationStatus(record.status),
        scheduled_start_timestamp=_time(record.scheduled_start),
        created_timestamp=from_us(record.created_at),
        last_updated_timestamp=from_us(record.updated_at),
        input=record.input if payloads else None,
        output=record.output if payloads else None,
        custom_status=record.custom_status,
        # Only a failed instance has details: some SDKs take a present (even empty)
        # failureDetails for a failure.
        failure_details=pb.TaskFailureDetails.parse(record.failure) if record.failure else None,
        execution_id=record.execution_id,
        completed_timestamp=_time(record.completed_at),
        parent_instance_id=record.parent_instance_id,
        tags=record.tags or {},
    )


def _time(us: int | None) -> datetime | None:
    return from_us(us) if us is not None else None
