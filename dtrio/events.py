"""A history event and its stored bytes, as one value (pure).

The store and the wire see bytes; the pure core sees events. An event read from the store is
parsed only if something looks at it, and an event made by the core is encoded when its step is
planned (`made`), while the step's timestamp is the one the encoder remembers. Either side is
made at most once: both are plain attributes once known.
"""

from __future__ import annotations

from typing import Any

from . import _pb as pb
from .wire import decode, encode


class StoredEvent:
    __slots__ = ("data", "event")

    event: pb.HistoryEvent
    data: bytes

    def __init__(self, event: pb.HistoryEvent | None = None, data: bytes | None = None) -> None:
        if event is None and data is None:
            raise ValueError("a stored event needs the event or its bytes")
        if event is not None:
            self.event = event
        if data is not None:
            self.data = data

    @classmethod
    def of(cls, event: pb.HistoryEvent) -> StoredEvent:
        """An event whose bytes are made when first asked for."""
        return cls(event)

    @classmethod
    def made(cls, event: pb.HistoryEvent) -> StoredEvent:
        """An event the core made for the store, encoded at once."""
        return cls(event, encode(event))

    @classmethod
    def read(cls, data: bytes) -> StoredEvent:
        """Stored bytes, parsed when first looked at."""
        return cls(None, data)

    def __getattr__(self, name: str) -> Any:
        # Only called for a side not known yet: make it from the other, once.
        if name == "event":
            value: Any = decode(pb.HistoryEvent, object.__getattribute__(self, "data"))
        elif name == "data":
            value = encode(object.__getattribute__(self, "event"))
        else:
            raise AttributeError(name)
        setattr(self, name, value)
        return value

    @property
    def parsed(self) -> bool:
        """Whether the event is at hand without parsing."""
        try:
            _EVENT.__get__(self)
        except AttributeError:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        """Equal when their stored bytes are."""
        if not isinstance(other, StoredEvent):
            return NotImplemented
        return self.data == other.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        shown = repr(self.event) if self.parsed else f"{len(self.data)} bytes"
        return f"StoredEvent({shown})"


_EVENT = StoredEvent.event  # the slot, read without falling back to __getattr__
