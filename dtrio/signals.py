"""Per-key change notifications for tasks that wait on one instance."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


class _Watch:
    __slots__ = ("event", "users")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.users = 0


class ChangeBoard:
    """Lets tasks wait for "instance X changed" notifications from this process's commits.

    trio-util's AsyncValue and RepeatedEvent wake every waiter on any change; with thousands
    of clients waiting on different instances, each commit would wake them all. Here a commit
    wakes only the waiters of the instances it changed, and a key nobody waits on costs nothing:
    a key's entry goes once its last watcher leaves, even if no change came (a wait that is
    satisfied at once must not leave an entry behind for each instance it looked at).
    """

    def __init__(self) -> None:
        self._waiting: dict[str, _Watch] = {}

    def notify(self, key: str) -> None:
        watch = self._waiting.pop(key, None)
        if watch is not None:
            watch.event.set()

    def notify_all(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for watch in waiting.values():
            watch.event.set()

    @contextmanager
    def watching(self, key: str) -> Iterator[trio.Event]:
        """The event set on the next change to `key`, for the block's duration."""
        watch = self._waiting.get(key)
        if watch is None:
            watch = self._waiting[key] = _Watch()
        watch.users += 1
        try:
            yield watch.event
        finally:
            watch.users -= 1
            if not watch.users and self._waiting.get(key) is watch:
                del self._waiting[key]

    def waiting(self, key: str) -> int:
        """How many tasks wait on `key`'s next change now."""
        watch = self._waiting.get(key)
        return 0 if watch is None else watch.event.statistics().tasks_waiting

    def __len__(self) -> int:
        return len(self._waiting)
