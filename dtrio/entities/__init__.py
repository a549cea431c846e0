"""Durable entities: small stateful actors addressed by name and key."""

from .context import DurableEntity, EntityContext
from .ids import EntityId

__all__ = ["DurableEntity", "EntityContext", "EntityId"]
