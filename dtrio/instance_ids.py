"""Orchestration instance IDs: what the protocol lets one be (pure)."""

from __future__ import annotations

from .entities.ids import MAX_ID_LENGTH, has_control_characters, is_entity_id
from .errors import InvalidInput

MAX_INSTANCE_ID_LENGTH = MAX_ID_LENGTH


def validate_instance_id(instance_id: str) -> str:
    if not isinstance(instance_id, str) or not instance_id:
        raise InvalidInput("instance ID must be a non-empty string")
    if len(instance_id) > MAX_INSTANCE_ID_LENGTH:
        raise InvalidInput(
            f"instance ID is {len(instance_id)} characters long; "
            f"the limit is {MAX_INSTANCE_ID_LENGTH}"
        )
    if has_control_characters(instance_id):
        raise InvalidInput(f"instance ID {instance_id!r} contains control characters")
    if is_entity_id(instance_id):
        raise InvalidInput(
            f"instance ID {instance_id!r} starts with '@', which the protocol reserves for "
            "entities; signal entities with signal_entity"
        )
    return instance_id
