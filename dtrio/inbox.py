"""What one step sends to other instances' inboxes (pure): an event for an instance, or a new
instance with its first event. Orchestration steps (`dtrio.state`), entity steps
(`dtrio.entities.batch`) and the client all send them; the backend delivers them."""

from __future__ import annotations

from dataclasses import dataclass

from .events import StoredEvent


@dataclass(slots=True)
class NewInstance:
    """An instance to create with `started` (an executionStarted event) as its first message."""

    instance_id: str
    execution_id: str
    name: str
    version: str | None
    input: str | None
    started: StoredEvent
    visible_at: int
    parent_instance_id: str | None = None
    tags: dict[str, str] | None = None
    # Sent to the parent instead when the ID is taken by a live instance (sub-orchestrations).
    conflict: Message | None = None
    # Sub-orchestrations replace a finished instance of the same ID (a retry with an explicit ID).
    replace_finished: bool = False


@dataclass(slots=True)
class Message:
    """An event for an instance's inbox, delivered only while `execution_id` (if set) is current."""

    instance_id: str
    event: StoredEvent
    visible_at: int
    execution_id: str | None = None
