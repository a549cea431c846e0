"""Instance and execution IDs: what the protocol lets an instance ID be, and new execution IDs
(pure)."""

from __future__ import annotations

import uuid

from .errors import InvalidInput

# The protocol's limit on an instance ID; an entity's `@name@key` is one as well.
MAX_ID_LENGTH = 100
MAX_INSTANCE_ID_LENGTH = MAX_ID_LENGTH


def has_control_characters(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def is_entity_id(instance_id: str) -> bool:
    """Whether an instance ID names an entity: the protocol reserves IDs starting with '@'."""
    return instance_id.startswith("@")


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


def new_execution_id() -> str:
    return uuid.uuid4().hex
