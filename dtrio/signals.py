"""Small Trio synchronisation helpers shared by the backend and the services."""

from __future__ import annotations

import trio


class Wakeup:
    """A level-triggered "there may be work" flag that one or more tasks wait on."""

    def __init__(self) -> None:
        self._flag = False
        self._event = trio.Event()

    def set(self) -> None:
        self._flag = True
        self._event.set()

    def clear(self) -> None:
        self._flag = False
        if self._event.is_set():
            self._event = trio.Event()

    async def wait(self) -> None:
        if not self._flag:
            await self._event.wait()
        self.clear()


class ChangeBoard:
    """Lets tasks wait for "instance X changed" notifications from this process's commits."""

    def __init__(self) -> None:
        self._waiting: dict[str, trio.Event] = {}

    def notify(self, key: str) -> None:
        event = self._waiting.pop(key, None)
        if event is not None:
            event.set()

    def event_for(self, key: str) -> trio.Event:
        event = self._waiting.get(key)
        if event is None:
            event = self._waiting[key] = trio.Event()
        return event
