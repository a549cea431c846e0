"""What every SQL store's tables share, whatever its dialect: the columns an instance record is
read from, the continuation tokens of paged queries, and where each kind of work item keeps its
lease."""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidInput
from .base import InstanceRecord

# Per leased table: the key column, the expiry column, and the kind of work item it holds.
# Orchestrations and entities keep their lease in the same three columns, keyed by instance
# ID; activities keep theirs keyed by row id, with `available_at` as the expiry.
LEASE_COLUMNS = {
    "instances": ("instance_id", "lock_expires", "orchestration"),
    "entities": ("instance_id", "lock_expires", "entity"),
    "activities": ("id", "available_at", "activity"),
}

_BASE_COLUMNS = (
    "instance_id, execution_id, name, version, status, created_at, updated_at, completed_at, "
    "scheduled_start, parent_instance_id, custom_status, failure, tags"
)


def record_columns(payloads: bool) -> str:
    """Columns for `record`: inputs and outputs only when asked for (they can be large)."""
    return _BASE_COLUMNS + (", input, output" if payloads else "")


def record(row: Any, payloads: bool) -> InstanceRecord:
    rec = InstanceRecord(*row[:10])
    rec.custom_status, rec.failure = row[10], row[11]
    rec.tags = json.loads(row[12]) if row[12] else None
    if payloads:
        rec.input, rec.output = row[13], row[14]
    return rec


def parse_token(token: str) -> tuple[int, str]:
    """A continuation token of a paged instance query: "<time>:<instance ID>"."""
    created, sep, key = token.partition(":")
    if not sep or not created.isdigit():
        raise InvalidInput(f"continuation token {token!r} is not one this engine issued")
    return int(created), key
