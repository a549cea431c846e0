"""Per-key change notifications for tasks that wait on one instance."""

from __future__ import annotations

import trio


class ChangeBoard:
    """Lets tasks wait for "instance X changed" notifications from this process's commits.

    trio-util's AsyncValue and RepeatedEvent wake every waiter on any change; with thousands
    of clients waiting on different instances, each commit would wake them all. Here a commit
    wakes only the waiters of the instances it changed, and a key nobody waits on costs nothing.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, trio.Event] = {}

    def notify(self, key: str) -> None:
        event = self._waiting.pop(key, None)
        if event is not None:
            event.set()

    def notify_all(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for event in waiting.values():
            event.set()

    def event_for(self, key: str) -> trio.Event:
        event = self._waiting.get(key)
        if event is None:
            event = self._waiting[key] = trio.Event()
        return event
