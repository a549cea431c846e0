"""Instances and entities as plain data for operators (pure): what the CLI prints as JSON and
the dashboard shows. Payloads are shown as their JSON values; a payload that is not JSON (an SDK
may store anything) is shown as the text it is."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .errors import FailureDetails, InvalidInput

if TYPE_CHECKING:
    from .client import EntityMetadata, OrchestrationState
    from .timeline import Row


def payload(data: str | None) -> Any:
    if data is None or data == "":
        return None
    try:
        return json.loads(data)
    except ValueError:
        return data


def pretty(data: str | None) -> str:
    """A payload as indented JSON (or its text, if it is not JSON)."""
    if data is None or data == "":
        return ""
    value = payload(data)
    if isinstance(value, str) and value == data:
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def when(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at is not None else None


def failure(details: FailureDetails | None) -> dict[str, Any] | None:
    if details is None:
        return None
    return {
        "type": details.error_type,
        "message": details.message,
        "stack_trace": details.stack_trace,
        "non_retriable": details.is_non_retriable,
        "inner": failure(details.inner),
    }


def instance(state: OrchestrationState, *, payloads: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "instance_id": state.instance_id,
        "name": state.name,
        "version": state.version,
        "status": state.runtime_status.name,
        "created_at": when(state.created_at),
        "last_updated_at": when(state.last_updated_at),
        "completed_at": when(state.completed_at),
        "scheduled_start": when(state.scheduled_start),
        "parent_instance_id": state.parent_instance_id,
        "custom_status": payload(state.serialized_custom_status),
        "tags": state.tags or {},
        "failure": failure(state.failure_details),
    }
    if payloads:
        data["input"] = payload(state.serialized_input)
        data["output"] = payload(state.serialized_output)
    return data


def event_row(row: Row) -> dict[str, Any]:
    return {
        "index": row.index, "event_id": row.event_id, "timestamp": when(row.timestamp),
        "kind": row.kind, "name": row.name, "elapsed": row.elapsed, "duration": row.duration,
        "data": payload(row.data),
    }


def entity(meta: EntityMetadata) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(meta.id),
        "name": meta.id.name,
        "key": meta.id.key,
        "last_modified": when(meta.last_modified),
        "locked_by": meta.locked_by,
        "backlog": meta.backlog_queue_size,
    }
    if meta.includes_state:
        data["state"] = payload(meta.serialized_state)
    return data


def seconds(value: float | None) -> str:
    """A duration for people: 850ms, 12.3s, 4m05s, 2h03m, 3d04h."""
    if value is None:
        return ""
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02}h"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def moment(text: str, now: datetime | None = None) -> datetime:
    """A time as operators write it: `1h`, `30m`, `2d` ago, or an ISO 8601 time (UTC unless
    it says otherwise)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.strip())
    if match:
        ago = timedelta(seconds=float(match[1]) * _UNITS[match[2]])
        return (now or datetime.now(UTC)) - ago
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"not a time: {text!r} (e.g. 1h, 30m, 2d, or 2026-12-01T05:00:00Z)") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
