"""A history event and its stored bytes, as one value (pure).

The store and the wire see bytes; the pure core sees events. An event read from the store is
parsed only if something looks at it, and an event made by the core is encoded only when it is
written; either way at most once, and a value that has both never converts again.
"""

from __future__ import annotations

from . import _pb as pb
from .wire import decode, encode


class StoredEvent:
    __slots__ = ("_data", "_event")

    def __init__(self, event: pb.HistoryEvent | None = None, data: bytes | None = None) -> None:
        if event is None and data is None:
            raise ValueError("a stored event needs the event or its bytes")
        self._event = event
        self._data = data

    @classmethod
    def of(cls, event: pb.HistoryEvent) -> StoredEvent:
        return cls(event, None)

    @classmethod
    def read(cls, data: bytes) -> StoredEvent:
        return cls(None, data)

    @property
    def event(self) -> pb.HistoryEvent:
        if self._event is None:
            assert self._data is not None
            self._event = decode(pb.HistoryEvent, self._data)
        return self._event

    @property
    def data(self) -> bytes:
        if self._data is None:
            assert self._event is not None
            self._data = encode(self._event)
        return self._data

    @property
    def parsed(self) -> bool:
        """Whether the event is at hand without parsing."""
        return self._event is not None

    def __eq__(self, other: object) -> bool:
        """Equal when their stored bytes are."""
        if not isinstance(other, StoredEvent):
            return NotImplemented
        return self.data == other.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        shown = repr(self._event) if self._event is not None else f"{len(self._data or b'')} bytes"
        return f"StoredEvent({shown})"
